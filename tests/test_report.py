"""Seed reports (mean, spread, gaps beyond the spread) and the protocol words of the tables."""

from __future__ import annotations

import json

import numpy as np
import pytest

from zeroseg.config import ConfigError
from zeroseg.demo import GAP_RULE, seed_gaps, seed_rows, seed_spread
from zeroseg.report import comparison_lines, protocol_label, write_seed_summary


def _row(s: float, u: float, h: float, a: float, gamma: float) -> dict:
    return {
        "protocol": "inductive",
        "seen_miou": s,
        "unseen_miou": u,
        "hiou": h,
        "ausuc": a,
        "calibration": {"gamma": gamma, "how": "rule"},
    }


# three seeds: zs3net's hIoU lead over the projection baseline (20 vs 10, spreads 1 and 1) is
# real; its mIoU(S) lead (50 vs 48, spreads 3 and 3) is not
BY_SEED = {
    0: {"projection": _row(45, 5, 10, 8, 0.5), "zs3net": _row(47, 12, 19, 9, 0.4)},
    1: {"projection": _row(48, 6, 9, 9, 0.6), "zs3net": _row(50, 13, 20, 10, 0.4)},
    2: {"projection": _row(51, 7, 11, 10, 0.5), "zs3net": _row(53, 14, 21, 11, 0.3)},
}


def test_seed_rows_hold_mean_and_std_and_gaps_beyond_the_spread():
    rows = seed_rows(BY_SEED, seed_spread(BY_SEED))
    z, p = rows["zs3net"], rows["projection"]
    assert z["hiou"] == pytest.approx(20.0) and z["hiou_std"] == pytest.approx(1.0)
    assert z["seen_miou"] == pytest.approx(50.0) and z["seen_miou_std"] == pytest.approx(3.0)
    assert z["ausuc_std"] == pytest.approx(np.std([9, 10, 11], ddof=1))
    assert z["calibration"]["gamma_by_seed"] == {"0": 0.4, "1": 0.4, "2": 0.3}
    assert z["baseline"] == "projection" and "gap" not in p
    # hIoU: 20 - 10 = 10 > 1 + 1; mIoU(S): 50 - 48 = 2 < 3 + 3
    hiou = {k: v for k, v in z["gap"]["hiou"].items() if k not in ("by_seed", "same_sign")}
    assert hiou == {"value": 10.0, "spread": 2.0, "exceeds_spread": True}
    assert z["gap"]["seen_miou"]["exceeds_spread"] is False
    assert z["gap"]["seen_miou"]["value"] == pytest.approx(2.0)


def test_a_gap_equal_to_the_spread_does_not_count():
    row = {"hiou": 12.0, "hiou_std": 1.0}
    base = {"hiou": 10.0, "hiou_std": 1.0}
    assert seed_gaps(row, base, ["hiou"])["hiou"]["exceeds_spread"] is False


def test_seed_report_marks_only_gaps_beyond_the_spread(tmp_path):
    rows = seed_rows(BY_SEED, seed_spread(BY_SEED))
    summary = {
        "title": "t",
        "seeds": [0, 1, 2],
        "eval_split": "test",
        "tuned_on": "val",
        "gap_rule": GAP_RULE,
        "methods": rows,
    }
    md, js = write_seed_summary(tmp_path, summary)
    data = json.loads(js.read_text())
    assert data["methods"]["zs3net"]["hiou_std"] == pytest.approx(1.0)
    assert data["eval_split"] == "test" and data["tuned_on"] == "val"
    line = next(x for x in md.read_text().splitlines() if x.startswith("| zs3net"))
    cells = [c.strip() for c in line.split("|")[1:-1]]
    assert cells[2] == "projection"
    assert cells[3] == "50.0 ± 3.0 (+2.0, within spread)"  # mIoU(S)
    assert cells[5] == "20.0 ± 1.0 (**+10.0**)"  # hIoU (the per-seed view is in "Like for like")
    assert cells[7] == "+0.40, +0.40, +0.30"


def test_protocol_labels_use_the_documented_words():
    row = {
        "protocol": "transductive",
        "protocol_detail": {
            "category": "transductive",
            "unseen_names": ["2-3", "5"],
            "clip_like": False,
            "unlabelled_images": True,
        },
    }
    assert protocol_label(row) == "transductive; unseen names (stage 2-3, 5); unlabelled images"
    clip = {"protocol_detail": {"category": "inductive", "unseen_names": [], "clip_like": True}}
    assert protocol_label(clip) == "inductive; CLIP-like encoder"
    assert protocol_label({"protocol": "supervised"}) == "supervised"


def test_sazs_is_compared_with_the_refined_baseline_only_when_the_run_has_it():
    def with_sazs(refined: bool) -> dict:
        out = {}
        for s, rows in BY_SEED.items():
            p = rows["projection"]
            extra = {"sazs": _row(p["seen_miou"], p["unseen_miou"] + 3, p["hiou"] + 3, 9, 0.2)}
            if refined:
                extra["projection+spectral"] = _row(
                    p["seen_miou"], p["unseen_miou"], p["hiou"] + 3, 9, 0.5
                )
            out[s] = {**rows, **extra}
        return out

    rows = seed_rows(with_sazs(True), seed_spread(with_sazs(True)))
    assert list(rows["sazs"]["comparisons"]) == ["projection", "projection+spectral"]
    assert rows["sazs"]["comparisons"]["projection"]["hiou"]["value"] == pytest.approx(3.0)
    assert rows["sazs"]["comparisons"]["projection+spectral"]["hiou"]["value"] == pytest.approx(0.0)
    rows = seed_rows(with_sazs(False), seed_spread(with_sazs(False)))
    assert list(rows["sazs"]["comparisons"]) == ["projection"]


def test_seed_report_has_a_like_for_like_table_marking_only_gaps_beyond_the_spread(tmp_path):
    by_seed = {
        s: {**rows, "zs5net": _row(r["seen_miou"], r["unseen_miou"] + 4, r["hiou"] + 4, 9, 0.1)}
        for s, rows in BY_SEED.items()
        for r in [rows["zs3net"]]
    }
    rows = seed_rows(by_seed, seed_spread(by_seed))
    # zs5net is compared with zs3net first, then with the projection baseline (its preset)
    assert rows["zs5net"]["baseline"] == "zs3net"
    assert list(rows["zs5net"]["comparisons"]) == ["zs3net", "projection"]
    assert rows["zs5net"]["comparisons"]["projection"]["hiou"]["value"] == pytest.approx(14.0)
    summary = {"title": "t", "seeds": [0, 1, 2], "eval_split": "test", "tuned_on": "val"}
    md, _ = write_seed_summary(tmp_path, {**summary, "gap_rule": GAP_RULE, "methods": rows})
    text = md.read_text()
    table = text[text.index("## Like for like") :].splitlines()
    line = next(x for x in table if x.startswith("| zs3net | projection"))
    cells = [c.strip() for c in line.split("|")[1:-1]]
    assert cells[2] == "+2.0 (± 6.0, no difference; by seed +2.0, +2.0, +2.0)"  # 2 < 3 + 3
    assert cells[4] == "**+10.0** (± 2.0; by seed +9.0, +11.0, +10.0)"  # hIoU: 10 > 1 + 1
    line = next(x for x in table if x.startswith("| zs5net | zs3net"))
    assert [c.strip() for c in line.split("|")[1:-1]][
        3
    ] == "**+4.0** (± 2.0; by seed +4.0, +4.0, +4.0)"


def test_one_seed_report_lists_each_row_against_its_baselines():
    rows = {
        "projection": {"seen_miou": 70.0, "unseen_miou": 60.0, "hiou": 64.6, "ausuc": 39.0},
        "zs3net": {"seen_miou": 45.0, "unseen_miou": 30.0, "hiou": 36.0, "ausuc": None},
    }
    rows["zs3net"]["baselines"] = ["projection"]
    lines = comparison_lines(rows)
    assert lines[-1] == "| zs3net | projection | -25.0 | -30.0 | -28.6 | – |"
    assert comparison_lines({"projection": rows["projection"]}) == []


def _preset(directory, stem: str, demo: str) -> None:
    (directory / f"{stem}.yaml").write_text(f"method: projection\ndemo: {demo}\n")


def test_demo_rows_take_baselines_from_the_presets(tmp_path, monkeypatch):
    import zeroseg.demo as demo

    monkeypatch.setattr(demo, "PRESET_DIR", tmp_path)
    _preset(tmp_path, "projection_x", "{row: default, order: 1}")
    _preset(tmp_path, "zs3net_x", "{row: default, order: 2, baselines: [projection]}")
    rows = demo.demo_rows()
    assert rows["zs3net"].baselines == ("projection",) and rows["projection"].baselines == ()
    _preset(tmp_path, "zs5net_x", "{row: default, order: 3, baselines: [zs4net]}")
    with pytest.raises(ConfigError, match=r"zs5net_x: demo.baselines \['zs4net'\] are not other"):
        demo.demo_rows()
    _preset(tmp_path, "zs5net_x", "{row: default, order: 3, baselines: projection}")
    with pytest.raises(ConfigError, match="must be a list of demo row names"):
        demo.demo_rows()
    # a row refined at inference may be a baseline; an unknown refinement or row may not
    _preset(tmp_path, "zs5net_x", "{row: default, order: 3, baselines: [zs3net+spectral]}")
    assert demo.demo_rows()["zs5net"].baselines == ("zs3net+spectral",)
    for bad in ("zs3net+crf", "zs4net+spectral", "zs3net+", "zs5net+spectral"):
        _preset(tmp_path, "zs5net_x", f"{{row: default, order: 3, baselines: ['{bad}']}}")
        with pytest.raises(ConfigError, match="are not other demo rows"):
            demo.demo_rows()


def test_a_parallel_run_starts_the_ready_row_with_the_longest_chain(tmp_path, monkeypatch):
    import zeroseg.demo as demo

    monkeypatch.setattr(demo, "PRESET_DIR", tmp_path)
    _preset(tmp_path, "projection_x", "{row: default, order: 1, cost: 10}")
    _preset(tmp_path, "zs3net_x", "{row: default, order: 2, baselines: [projection], cost: 50}")
    _preset(tmp_path, "oracle_x", "{row: default, order: 3, cost: 40}")
    _preset(tmp_path, "sazs_x", "{row: default, order: 4}")  # no cost: a typical row's 100 s
    monkeypatch.setattr(demo, "DEMO_ROWS", demo.demo_rows())
    planned = ["projection", "zs3net", "oracle", "sazs"]
    # projection alone is the cheapest, but zs3net waits for it: 10 + 50 > 40
    assert demo._rows_to_start(planned, set(), planned) == ["sazs", "projection", "oracle"]
    assert demo._rows_to_start(["zs3net", "oracle"], {"projection"}, planned) == [
        "zs3net",
        "oracle",
    ]
    planned = ["projection", "oracle"]  # without zs3net, projection's chain is its own 10 s
    assert demo._rows_to_start(planned, set(), planned) == ["oracle", "projection"]
    # two rows waiting for each other: each chain ends where it would repeat
    _preset(tmp_path, "projection_x", "{row: default, order: 1, baselines: [zs3net], cost: 10}")
    monkeypatch.setattr(demo, "DEMO_ROWS", demo.demo_rows())
    assert demo._priority("projection", ["projection", "zs3net"]) == 60
    for bad in ("-1", "fast", "true", "[3]"):
        _preset(tmp_path, "oracle_x", f"{{row: default, order: 3, cost: {bad}}}")
        with pytest.raises(ConfigError, match="oracle_x: demo.cost must be a number of seconds"):
            demo.demo_rows()


def test_demo_after_names_the_rows_whose_stages_a_row_reuses(tmp_path, monkeypatch):
    import zeroseg.demo as demo

    monkeypatch.setattr(demo, "PRESET_DIR", tmp_path)
    _preset(tmp_path, "projection_x", "{row: default, order: 1, cost: 10}")
    _preset(tmp_path, "mask_x", "{row: default, order: 2, cost: 20}")
    _preset(tmp_path, "sazs_x", "{row: default, order: 3, baselines: [projection], after: []}")
    _preset(
        tmp_path, "zs3net_x", "{row: default, order: 4, baselines: [projection], after: [mask]}"
    )
    monkeypatch.setattr(demo, "DEMO_ROWS", demo.demo_rows())
    assert demo.waits_for("sazs") == () and demo.waits_for("zs3net") == ("mask",)
    planned = ["projection", "mask", "sazs", "zs3net"]
    # sazs is ready though its baseline has not run; zs3net waits for mask (20 + 100 s ahead of
    # sazs's 100), not for projection
    assert demo._rows_to_start(planned, set(), planned) == ["mask", "sazs", "projection"]
    assert demo._rows_to_start(["zs3net"], {"projection"}, planned) == []
    assert demo._rows_to_start(["zs3net"], {"mask"}, planned) == ["zs3net"]
    assert demo._priority("mask", planned) == 20 + 100  # zs3net's chain hangs on mask now
    for bad, match in (
        ("[zs4net]", r"zs3net_x: demo.after \['zs4net'\] are not other demo rows"),
        ("[zs3net]", r"demo.after \['zs3net'\] are not other demo rows"),
        ("mask", "zs3net_x: demo.after must be a list of demo row names"),
        ("[1]", "demo.after must be a list of demo row names"),
    ):
        _preset(tmp_path, "zs3net_x", f"{{row: default, order: 4, after: {bad}}}")
        with pytest.raises(ConfigError, match=match):
            demo.demo_rows()


def test_pooled_runs_start_the_longest_chain_of_any_run_and_wait_within_their_own_run(
    tmp_path, monkeypatch
):
    import zeroseg.demo as demo

    monkeypatch.setattr(demo, "PRESET_DIR", tmp_path)
    _preset(tmp_path, "projection_x", "{row: default, order: 1, cost: 10}")
    _preset(tmp_path, "zs3net_x", "{row: default, order: 2, baselines: [projection], cost: 50}")
    _preset(tmp_path, "oracle_x", "{row: default, order: 3, cost: 40}")
    monkeypatch.setattr(demo, "DEMO_ROWS", demo.demo_rows())
    planned = [["projection", "zs3net", "oracle"], ["projection", "zs3net", "oracle"]]
    pending = [(r, n) for r in (0, 1) for n in planned[r]]
    # equal chains: the earlier run first; every projection (60) before any oracle (40)
    assert demo._start_order(pending, [set(), set()], planned) == [
        (0, "projection"),
        (1, "projection"),
        (0, "oracle"),
        (1, "oracle"),
    ]
    # run 0's projection finished: run 0's zs3net may start, run 1's still waits for its own
    pending = [(0, "zs3net"), (0, "oracle"), (1, "zs3net"), (1, "oracle")]
    assert demo._start_order(pending, [{"projection"}, set()], planned) == [
        (0, "zs3net"),
        (0, "oracle"),
        (1, "oracle"),
    ]


def test_the_shipped_rows_start_with_the_longest_chains():
    """A make demo run with --jobs 2 starts projection (whose segmenter ZS3Net and then ZS5Net
    reuse) and AlignZeg, the longest row (it shares no stage with its baselines), and leaves
    sazs-nofusion, which reuses every stage of sazs, to the end."""
    import zeroseg.demo as demo

    planned = list(demo.DEFAULT_METHODS)
    order = demo._rows_to_start(planned, set(), planned)
    assert order[:2] == ["projection", "alignzeg"]
    assert "sazs-nofusion" not in order and "zs5net" not in order  # waiting for their stages


def test_every_shipped_baseline_is_a_demo_row_of_the_same_family():
    import zeroseg.demo as demo

    rows = demo.demo_rows()
    assert rows["zs5net"].baselines == ("zs3net", "projection")
    assert rows["zegclip"].baselines == ("projection-frozen", "projection-probe")
    assert rows["alignzeg"].baselines == ("mask-projection", "pading")
    assert rows["sazs"].baselines == ("projection", "projection+spectral")
    assert demo.baselines_of("zs3net+spectral") == ("zs3net",)
    # ablation rows are compared with their full method
    for name, row in rows.items():
        if row.kind == "ablation":
            assert row.baselines and name.startswith(row.baselines[0].split("-")[0]), name


def test_cpu_info_reads_the_model_and_the_bf16_flags():
    from zeroseg.report import cpu_info

    text = (
        "processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Processor\n"
        "flags\t\t: fpu sse2 avx512f avx512_bf16 amx_tile amx_bf16\n\n"
        "processor\t: 1\nmodel name\t: Other\nflags\t\t: fpu\n"
    )
    assert cpu_info(text) == {
        "model": "Intel(R) Xeon(R) Processor",
        "bf16_isa": ["amx_bf16", "avx512_bf16", "avx512f"],
    }
    amd = "model name\t: AMD EPYC 7B13\nflags\t\t: fpu avx2 avx512f\n"
    assert cpu_info(amd) == {"model": "AMD EPYC 7B13", "bf16_isa": ["avx512f"]}


def test_native_bf16_needs_amx_or_avx512_bf16_not_avx512f_alone():
    from zeroseg.report import native_bf16_cpu

    assert native_bf16_cpu("flags\t: fpu avx512f amx_tile amx_bf16\n")
    assert native_bf16_cpu("flags\t: fpu avx512f avx512_bf16\n")
    assert not native_bf16_cpu("flags\t: fpu avx2 avx512f avx512_vnni\n")
    assert not native_bf16_cpu("")


def test_gaps_carry_the_seed_by_seed_differences_and_whether_each_has_the_means_sign():
    """Descriptive, beside the rule: zs3net's mIoU(S) lead (+2 in every seed) is 'no difference'
    by the rule (spreads 3 and 3) yet held in every seed; a gap one seed reverses is not."""
    by_seed = {s: {k: dict(v) for k, v in rows.items()} for s, rows in BY_SEED.items()}
    by_seed[2]["zs3net"]["ausuc"] = 9.0  # ausuc differences +1, +1, -1
    rows = seed_rows(by_seed, seed_spread(by_seed))
    gap = rows["zs3net"]["gap"]
    assert gap["seen_miou"]["by_seed"] == {"0": 2.0, "1": 2.0, "2": 2.0}
    assert gap["seen_miou"]["same_sign"] and not gap["seen_miou"]["exceeds_spread"]
    assert gap["hiou"]["by_seed"] == {"0": 9.0, "1": 11.0, "2": 10.0}
    assert gap["ausuc"]["by_seed"] == {"0": 1.0, "1": 1.0, "2": -1.0}
    assert gap["ausuc"]["same_sign"] is False


def test_the_seed_report_says_how_much_the_oracle_leaves_the_baselines(tmp_path):
    by_seed = {
        s: {**rows, "oracle": _row(60, 40 + s, 48 + s, 20, 0.0)} for s, rows in BY_SEED.items()
    }
    rows = seed_rows(by_seed, seed_spread(by_seed))
    summary = {"title": "t", "seeds": [0, 1, 2], "eval_split": "test", "tuned_on": "val"}
    md, _ = write_seed_summary(tmp_path, {**summary, "gap_rule": GAP_RULE, "methods": rows})
    line = next(x for x in md.read_text().splitlines() if x.startswith("Headroom"))
    # oracle hIoU 48 / 49 / 50: 49.0 ± 1.0; projection's mean 10.0 is 0.20 of it; zs3net has a
    # baseline, so it is not listed
    assert line == (
        "Headroom: the oracle (every training label, the unseen classes' too) reaches 49.0 ± 1.0"
        " hIoU; the rows with no baseline in this run reach, as a share of it, projection 0.20"
        " (means over seeds)."
    )
    no_oracle = seed_rows(BY_SEED, seed_spread(BY_SEED))
    md, _ = write_seed_summary(tmp_path, {**summary, "gap_rule": GAP_RULE, "methods": no_oracle})
    assert "Headroom" not in md.read_text()
