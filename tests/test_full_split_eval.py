"""benchmarks/full_split_eval.py: the same trained models re-evaluated on whole splits."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "full_split_eval.py"


def _module():
    spec = importlib.util.spec_from_file_location("full_split_eval", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _runs(*hious):
    return [{"seen_miou": 70.0, "unseen_miou": h, "hiou": h} for h in hious]


def test_a_gap_counts_only_beyond_the_two_rows_stds_added():
    mod = _module()
    results = {
        "default": {"a": _runs(66.0, 67.0, 68.0), "b": _runs(64.0, 64.0, 64.0)},  # +3 vs 1.0
        "second": {"a": _runs(64.0, 65.0, 66.0), "b": _runs(64.0, 64.5, 65.0)},  # +0.5 vs 1.5
    }
    text = mod.tables(results, ["a", "b"], [("a", "b")])
    gaps = next(line for line in text.splitlines() if line.startswith("| a | b | **"))
    assert gaps == "| a | b | **+3.0** (1.0) | **+3.0** (1.0) | = +0.5 (1.5) | = +0.5 (1.5) |"
    assert "| a | b | +2.0, +3.0, +4.0 | +2.0, +3.0, +4.0 | +0.0, +0.5, +1.0 |" in text
    assert "| a | 70.0 ± 0.0 | 67.0 ± 1.0 | 67.0 ± 1.0 | 70.0 ± 0.0 | 65.0 ± 1.0 |" in text


def test_each_seed_must_hold_exactly_one_trained_run_of_a_row(tmp_path):
    mod = _module()
    runs = tmp_path / "seed-0" / "runs"
    for name in ("zegclip-0123456789", "zegclip-st-0123456789", "zegclip-abcdef0123"):
        (runs / name).mkdir(parents=True)
    (runs / "zegclip-st-0123456789" / "model.safetensors").touch()
    with pytest.raises(SystemExit, match="expected one trained run of 'zegclip', found none"):
        mod.model_dir(tmp_path / "seed-0", "zegclip")  # the -st run is another row's
    for name in ("zegclip-0123456789", "zegclip-abcdef0123"):
        (runs / name / "model.safetensors").touch()
    with pytest.raises(SystemExit, match="found \\['zegclip-0123456789', 'zegclip-abcdef0123'\\]"):
        mod.model_dir(tmp_path / "seed-0", "zegclip")
    (runs / "zegclip-abcdef0123" / "model.safetensors").unlink()
    assert mod.model_dir(tmp_path / "seed-0", "zegclip") == runs / "zegclip-0123456789"
    with pytest.raises(SystemExit, match="no seed-<s> directories"):
        mod.seed_dirs(tmp_path / "seed-0")


def test_pairs_must_name_rows_that_are_evaluated(tmp_path):
    mod = _module()
    with pytest.raises(SystemExit, match="--pairs 'a:c': expected METHOD:BASELINE"):
        mod.main([str(tmp_path), "--rows", "a", "b", "--pairs", "a:c"])


def test_the_interval_table_gives_each_pairs_gap_over_images():
    mod = _module()
    results = {"default": {"a": _runs(66.0, 67.0), "b": _runs(64.0, 64.0)}}
    g = torch.Generator().manual_seed(0)
    conf = torch.randint(0, 30, (12, 4, 4), generator=g, dtype=torch.int32)
    better = conf.clone()
    better[:, 3, 3] += 20  # row a: more of the unseen class 3 right on every image
    files = {"seen": [0, 1, 2], "unseen": [3]}
    confusions = {
        "default": {
            "a": [{"confusions": better, **files}] * 2,
            "b": [{"confusions": conf, **files}] * 2,
        }
    }
    gaps = mod.intervals(confusions, [("a", "b")], reps=200)
    unseen = gaps["default"][("a", "b")]["unseen_miou"]
    assert 0 < unseen["low"] <= unseen["gap"] <= unseen["high"]
    text = mod.tables(results, ["a", "b"], [("a", "b")], gaps)
    row = text.splitlines()[-1]
    assert row.startswith("| a | b | ") and row.count("[") == 2
    assert mod.interval_cell({"gap": 1.25, "low": -0.31, "high": 2.6}) == "+1.2 [-0.3, +2.6]"
