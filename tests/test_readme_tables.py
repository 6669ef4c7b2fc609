"""benchmarks/readme_tables.py: README's 3-seed tables from seed reports."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "readme_tables.py"


def _row(s, u, h, a, std, comparisons=None):
    row = {"seen_miou": s, "unseen_miou": u, "hiou": h, "ausuc": a}
    row.update({f"{k}_std": std for k in list(row)})
    if comparisons:
        row["comparisons"] = comparisons
    return row


def _report(world, rows):
    return {"world": world, "seeds": [0, 1, 2], "methods": rows}


def test_tables_mark_only_gaps_beyond_the_spread(tmp_path):
    gap = {
        "projection": {
            "unseen_miou": {"value": -32.94, "spread": 4.31, "exceeds_spread": True},
            "hiou": {"value": 0.04, "spread": 3.3, "exceeds_spread": False},
        }
    }
    for world, shift in (("default", 0.0), ("second", 10.0)):
        rows = {
            "projection": _row(73.94 - shift, 61.5, 67.14, 38.5, 1.26),
            "zs3net": _row(55.5, 28.6, 37.7, 14.1, 1.7, gap),
        }
        (tmp_path / world).mkdir()
        (tmp_path / world / "report.json").write_text(json.dumps(_report(world, rows)))
    out = subprocess.run(
        [sys.executable, str(SCRIPT), str(tmp_path / "default"), str(tmp_path / "second")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    assert out[0].startswith("| method | default: mIoU(S) |") and "second: mIoU(S)" in out[0]
    assert out[2] == (
        "| projection | 73.9 ± 1.3 | 61.5 ± 1.3 | **67.1 ± 1.3** | 38.5 ± 1.3 "
        "| 63.9 ± 1.3 | 61.5 ± 1.3 | **67.1 ± 1.3** | 38.5 ± 1.3 |"
    )
    assert out[-1] == (
        "| zs3net | projection | **-32.9** (4.3) | = +0.0 (3.3) | **-32.9** (4.3) | = +0.0 (3.3) |"
    )


def test_a_report_without_seeds_is_refused(tmp_path):
    (tmp_path / "report.json").write_text(json.dumps({"world": "default", "methods": {}}))
    res = subprocess.run(
        [sys.executable, str(SCRIPT), str(tmp_path)], capture_output=True, text=True
    )
    assert res.returncode != 0 and "not a seed report" in res.stderr


def test_by_seed_prints_each_gap_seed_by_seed_from_the_gaps_by_seed(tmp_path):
    by_seed = {"unseen_miou": [2.0, 3.0, -1.0], "hiou": [1.0, 1.5, -0.5]}
    gap = {
        "projection": {
            m: {
                "value": 0,
                "spread": 0,
                "exceeds_spread": False,
                "by_seed": {str(s): d for s, d in enumerate(diffs)},
            }
            for m, diffs in by_seed.items()
        }
    }
    run = tmp_path / "default"
    run.mkdir()
    summary = {"projection": _row(70, 60, 65, 40, 1), "zs3net": _row(70, 62, 66, 39, 1, gap)}
    (run / "report.json").write_text(json.dumps(_report("default", summary)))
    out = subprocess.run(
        [sys.executable, str(SCRIPT), str(run), "--by-seed"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    assert out[-3].startswith("| method | vs | default: Δ mIoU(U) by seed |")
    assert out[-1] == "| zs3net | projection | +2.0, +3.0, -1.0 | +1.0, +1.5, -0.5 |"


def test_over_images_prints_each_gap_with_its_interval_and_refuses_reports_without(tmp_path):
    gap = {
        "projection": {
            "unseen_miou": {"value": 2.04, "spread": 1.0, "exceeds_spread": True},
            "hiou": {"value": 1.0, "spread": 1.5, "exceeds_spread": False},
        }
    }
    run = tmp_path / "default"
    run.mkdir()
    summary = {"projection": _row(70, 60, 65, 40, 1), "zs3net": _row(70, 62, 66, 39, 1, gap)}
    (run / "report.json").write_text(json.dumps(_report("default", summary)))
    args = [sys.executable, str(SCRIPT), str(run), "--over-images"]
    res = subprocess.run(args, capture_output=True, text=True)
    assert res.returncode != 0 and "no intervals over images" in res.stderr  # an older report
    gap["projection"]["unseen_miou"]["over_images"] = {"low": 0.46, "high": 3.61}
    gap["projection"]["hiou"]["over_images"] = {"low": -0.72, "high": 2.2}
    (run / "report.json").write_text(json.dumps(_report("default", summary)))
    out = subprocess.run(args, capture_output=True, text=True, check=True).stdout.splitlines()
    assert out[-3].startswith("| method | vs | default: Δ mIoU(U) [95% over images] | Δ hIoU |")
    assert out[-1] == "| zs3net | projection | +2.0 [+0.5, +3.6] | +1.0 [-0.7, +2.2] |"


def test_pairs_print_the_headline_table_a_column_per_run(tmp_path):
    runs = []
    for world, (u, h) in (("default", (True, False)), ("second", (False, True))):
        gap = {
            "projection": {
                "unseen_miou": {"value": 3.04, "spread": 2.2, "exceeds_spread": u},
                "hiou": {"value": -1.46, "spread": 1.6, "exceeds_spread": h},
            }
        }
        rows = {
            "projection": _row(75.9, 66.0, 70.6, 42.8, 0.5),
            "zs3net": _row(75.6, 69.0, 72.2, 41.2, 0.9, gap),
        }
        (tmp_path / world).mkdir()
        (tmp_path / world / "report.json").write_text(json.dumps(_report(world, rows)))
        runs.append(str(tmp_path / world))
    cmd = [sys.executable, str(SCRIPT), *runs, "--pairs"]
    out = subprocess.run(
        [*cmd, "zs3net:projection"], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    assert out == [
        "| method | vs | default | second |",
        "|---|---|---:|---:|",
        "| zs3net | projection | **+3.0** / = -1.5 | = +3.0 / **-1.5** |",
    ]
    for pair, message in (
        ("projection:zs3net", "not compared with 'zs3net'"),
        ("sazs:projection", "has no method 'sazs'"),
        ("zs3net", "not METHOD:BASELINE"),
    ):
        res = subprocess.run([*cmd, pair], capture_output=True, text=True)
        assert res.returncode != 0 and message in res.stderr, (pair, res.stderr)
