"""End-to-end: the demo on a tiny world with fixed seeds, asserting that models really learn."""

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from zeroseg.cli import main
from zeroseg.data.shapeworld import ShapeWorldDataset, load_spec
from zeroseg.predict import Predictor

pytestmark = pytest.mark.slow


def test_demo_writes_report_with_the_headline_keys(demo_run):
    report = json.loads((demo_run / "report.json").read_text())
    for name in ("projection", "oracle"):
        row = report["methods"][name]
        for key in (
            "seen_miou",
            "unseen_miou",
            "hiou",
            "per_class_iou",
            "train_seconds",
            "infer_ms_per_image",
        ):
            assert key in row
    assert report["methods"]["projection"]["protocol"] == "inductive"
    assert report["methods"]["oracle"]["protocol"] == "supervised"
    assert report["eval_split"] == "test" and report["tuned_on"] == "val"
    assert report["cpu"]["model"] and "Machine: " in (demo_run / "report.md").read_text()
    assert report["test_images"] == report["val_images"] == 96  # the tiny world's splits
    assert (demo_run / "report.md").read_text().startswith("# zeroseg report")
    for fig in ("bars.png", "predictions.png", "seen_unseen.png"):
        assert Image.open(demo_run / fig).size[0] > 100


def test_figures_are_on_test_at_the_gamma_chosen_on_val(demo_run, tiny_world):
    from zeroseg.metrics.calibration import RULE

    row = json.loads((demo_run / "report.json").read_text())["methods"]["projection"]
    cal, curve = row["calibration"], row["calibration_curve"]
    assert cal["how"] == RULE and cal["replaces"] == {"calibration": 0.0}
    # the reported hIoU is the test sweep's value at the val-chosen gamma ...
    i = curve["gamma"].index(cal["gamma"])
    assert row["hiou"] == pytest.approx(curve["hiou"][i], abs=1e-9)
    assert row["seen_miou"] == pytest.approx(curve["seen_miou"][i], abs=1e-9)
    # ... and that gamma is the one val's own sweep picks (val, not test, decided it)
    from zeroseg import runner
    from zeroseg.metrics.calibration import choose_gamma

    run = next((demo_run / "runs").glob("projection-*"))
    method, cfg, split, _ = runner.load_model(run)
    data = runner.build_data(cfg, progress=False)
    embed = runner.Embedder(cfg.text, world=data.world)
    val_curve = runner.calibration_curve(method, cfg, data.val, split, embed, progress=False)
    assert choose_gamma(val_curve) == cal["gamma"]
    assert cal["val_hiou"] == pytest.approx(max(val_curve["hiou"]), abs=1e-9)
    # AUSUC: calibration-free, the area under the test sweep's mIoU(S)-over-mIoU(U) points
    # (numpy's trapezoid rule over the points ordered along the unseen axis)
    order = np.lexsort((-np.array(curve["seen_miou"]), np.array(curve["unseen_miou"])))
    xs, ys = np.array(curve["unseen_miou"])[order], np.array(curve["seen_miou"])[order]
    assert row["ausuc"] == pytest.approx(np.trapezoid(ys, xs) / 100, abs=1e-9)
    assert 0 < row["ausuc"] < max(curve["seen_miou"])
    detail = row["protocol_detail"]
    # the projection preset starts from the ShapeWorld foundation, whose captions name unseen
    # classes (CLIP-like); its own training uses no unseen name and no unlabelled image
    assert detail["unseen_names"] == []
    assert [e["encoder"].split(" (")[0] for e in detail["captioned_encoder"]] == [
        "ShapeWorld foundation shapeworld-foundation"
    ]
    assert detail["unlabelled_images"] is False and detail["clip_like"] is True
    assert "seen classes only" in detail["training_labels"]


def test_the_test_sweep_riding_on_the_evaluation_equals_a_pass_of_its_own(demo_run):
    # evaluate_protocol feeds the AUSUC sweep from the calibrated evaluation's forward passes
    # (one pass over test); a separate sweep pass gives the very same curve, and the reported
    # figures are that curve's at the chosen gamma
    from zeroseg import runner
    from zeroseg.methods.sazs import Sazs

    row = json.loads((demo_run / "report.json").read_text())["methods"]["projection"]
    run = next((demo_run / "runs").glob("projection-*"))
    method, cfg, split, _ = runner.load_model(run)
    assert runner.one_pass_calibration(method) and not runner.one_pass_calibration(
        Sazs.__new__(Sazs)
    )
    data = runner.build_data(cfg, progress=False)
    assert data.eval_split("test").max_image_side == 32  # the tiny world's: scored whole
    embed = runner.Embedder(cfg.text, world=data.world)
    apart = runner.calibration_curve(
        method, cfg, data.eval_split("test"), split, embed, progress=False
    )
    assert row["calibration_curve"] == json.loads(json.dumps(apart))
    metrics, _, _ = runner.evaluate_protocol(
        method, cfg, data, embed, progress=False, calibration=row["calibration"]
    )
    assert metrics["calibration_curve"] == apart
    assert metrics["hiou"] == row["hiou"] and metrics["ausuc"] == row["ausuc"]


def _demo_over_the_fixtures_runs(demo_run, tiny_world, out, *methods: str) -> list[str]:
    """``zeroseg demo`` arguments for ``methods`` into ``out``, which first gets a copy of the
    ``demo_run`` fixture's trained runs (its report stays untouched); the fixture's settings, so
    every stage is reused. A later ``--out`` in the same argument list overrides this one."""
    shutil.copytree(demo_run / "runs", out / "runs")
    args = ["demo", "--world", str(tiny_world), "--methods", *methods, "--out", str(out)]
    return [*args, "--no-progress", "--set", "train.iters=300", "--set", "eval.batch_size=32"]


def _eval_projection(out, capsys, *options: str) -> dict:
    """``zeroseg eval`` of the projection run under ``out`` with ``options``: its JSON."""
    capsys.readouterr()
    run = next((out / "runs").glob("projection-*"))
    assert main(["eval", str(run), *options, "--no-progress"]) == 0
    return json.loads(capsys.readouterr().out)


def test_a_rerun_reuses_finished_stages_and_says_so(demo_run, tiny_world, tmp_path, capsys):
    first = json.loads((demo_run / "report.json").read_text())["methods"]["projection"]
    assert first["reused"] is False
    out = tmp_path / "again"
    assert main(_demo_over_the_fixtures_runs(demo_run, tiny_world, out, "projection")) == 0
    assert "every stage reused from an earlier run" in capsys.readouterr().out
    again = json.loads((out / "report.json").read_text())["methods"]["projection"]
    assert again["reused"] is True and again["hiou"] == first["hiou"]
    assert "| reused |" in (out / "report.md").read_text()


def test_demo_split_val_reports_val_and_never_loads_test(
    demo_run, tiny_world, tmp_path, capsys, test_split_forbidden
):
    """``--split val`` (a check for a choice): every figure is val's, at the gamma val chose,
    the test split is never loaded, and neither split's report may replace the other's."""
    out = tmp_path / "val"
    args = _demo_over_the_fixtures_runs(demo_run, tiny_world, out, "projection")
    with test_split_forbidden():
        assert main([*args, "--split", "val"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["eval_split"] == "val" and report["test_images"] == 0
    assert "on the `val` split" in (out / "report.md").read_text()
    row = report["methods"]["projection"]
    assert row["reused"] is True
    val = _eval_projection(out, capsys, "--split", "val")
    for key in ("seen_miou", "unseen_miou", "hiou", "ausuc"):
        assert row[key] == val[key], key
    assert row["calibration"]["gamma"] == val["calibration"]["gamma"]
    test_row = json.loads((demo_run / "report.json").read_text())["methods"]["projection"]
    assert row["hiou"] != test_row["hiou"]  # the same model scored on another split
    # a test demo into the val run's directory (and the reverse) is refused, reports untouched
    before = (out / "report.json").read_bytes()
    assert main(args) == 2
    assert "holds a report of the 'val' split" in capsys.readouterr().err
    assert (out / "report.json").read_bytes() == before
    assert main([*args, "--out", str(demo_run), "--split", "val"]) == 2
    assert "holds a report of the 'test' split" in capsys.readouterr().err
    assert main([*args, "--seeds", "0", "1"]) == 2
    assert "holds a report of the 'val' split" in capsys.readouterr().err


def _files(directory) -> dict:
    """Every file under ``directory`` (the lock files aside) and its bytes."""
    return {p: p.read_bytes() for p in directory.rglob("*") if p.is_file() and p.name != ".lock"}


def test_demo_stages_from_scores_a_finished_test_run_on_val_without_training_or_writing_it(
    demo_run, tiny_world, tmp_path, capsys, test_split_forbidden
):
    """``--stages-from DIR --split val``: the finished ``test`` run's stages are copied, nothing
    trains, DIR is left as it was, and the figures are those of a copy of DIR's runs scored on
    val (the hand-made way it replaces)."""
    before = _files(demo_run)
    by_copy = tmp_path / "by-copy"
    args = _demo_over_the_fixtures_runs(demo_run, tiny_world, by_copy, "projection")
    assert main([*args, "--split", "val"]) == 0
    out = tmp_path / "val"
    with test_split_forbidden():
        assert (
            main([*args, "--out", str(out), "--split", "val", "--stages-from", str(demo_run)]) == 0
        )
    report = json.loads((out / "report.json").read_text())
    assert report["eval_split"] == "val" and report["stages_from"] == str(demo_run)
    assert f"copied from `{demo_run}`" in (out / "report.md").read_text()
    row = report["methods"]["projection"]
    assert row["reused"] is True
    assert any("--stages-from" in n and "projection-segmenter" in n for n in row["notes"])
    copied = json.loads((by_copy / "report.json").read_text())["methods"]["projection"]
    for key in ("seen_miou", "unseen_miou", "hiou", "ausuc", "per_class_iou"):
        assert row[key] == copied[key], key
    assert _files(demo_run) == before  # DIR only read
    # only this run's rows' stages are copied: not the oracle's run nor its shared segmenter
    assert sorted(p.name.split("-")[0] for p in (out / "runs").iterdir()) == [
        "_shared",
        "projection",
    ]
    shared = [p.name for p in (out / "runs" / "_shared").iterdir()]
    assert len(shared) == 1 and shared[0].startswith("projection-segmenter-")


def test_demo_stages_from_refuses_what_is_not_an_earlier_output_of_the_same_layout(
    demo_run, tiny_world, tmp_path, capsys
):
    args = ["demo", "--world", str(tiny_world), "--methods", "projection", "--no-progress"]
    args += ["--out", str(tmp_path / "o")]
    assert main([*args, "--stages-from", str(tmp_path / "nowhere")]) == 2
    assert "expected an earlier demo --out holding runs/" in capsys.readouterr().err
    assert main([*args, "--stages-from", str(demo_run), "--out", str(demo_run)]) == 2
    assert "is --out itself" in capsys.readouterr().err
    assert main([*args, "--stages-from", str(demo_run), "--seeds", "0", "1"]) == 2
    assert f"--stages-from {demo_run / 'seed-0'}: expected" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_stages_from_a_run_of_another_config_is_refused_before_training(demo_run, tiny_world):
    from zeroseg import runner
    from zeroseg.engine.rundir import RunDirError

    cfg = runner.load_experiment(
        "projection_unet-small_2k_shapeworld", [f"data.world={tiny_world}"]
    )
    oracle = next((demo_run / "runs").glob("oracle-*"))
    with pytest.raises(
        RunDirError, match=f"{oracle.name} was started with another config.*same settings"
    ):
        runner.train(cfg, demo_run.parent / "never", progress=False, reuse_from=oracle)
    assert not (demo_run.parent / "never").exists()


def test_demo_seeds_stages_from_copies_each_seeds_own_stages(tiny_world, tmp_path):
    """With ``--seeds``, seed ``s`` takes its stages from ``DIR/seed-<s>`` (another seed's
    would give other figures): each seed's row equals the finished run's, nothing trains."""
    args = ["demo", "--world", str(tiny_world), "--methods", "projection", "--seeds", "0", "1"]
    args += ["--no-progress", "--set", "train.iters=20", "--set", "eval.batch_size=32"]
    assert main([*args, "--out", str(tmp_path / "a")]) == 0
    assert main([*args, "--out", str(tmp_path / "b"), "--stages-from", str(tmp_path / "a")]) == 0
    for seed in (0, 1):
        a, b = (
            json.loads((tmp_path / d / f"seed-{seed}" / "report.json").read_text())["methods"]
            for d in ("a", "b")
        )
        assert a["projection"]["reused"] is False and b["projection"]["reused"] is True
        assert b["projection"]["per_class_iou"] == a["projection"]["per_class_iou"], seed
    report = json.loads((tmp_path / "b" / "report.json").read_text())
    assert report["stages_from"] == str(tmp_path / "a")
    assert "Finished stages copied from" in (tmp_path / "b" / "report.md").read_text()


def test_demo_refine_adds_a_row_at_the_methods_gamma_equal_to_eval_refine(
    demo_run, tiny_world, tmp_path, capsys
):
    """``--refine spectral --refine-on projection``: a ``projection+spectral`` row at
    projection's gamma, with no sweep of its own, whose figures are ``zeroseg eval --refine``'s."""
    out = tmp_path / "refined"
    args = _demo_over_the_fixtures_runs(demo_run, tiny_world, out, "projection", "oracle")
    assert main([*args, "--refine", "spectral", "--refine-on", "projection"]) == 0
    rows = json.loads((out / "report.json").read_text())["methods"]
    assert list(rows) == ["projection", "projection+spectral", "oracle"]
    refined, plain = rows["projection+spectral"], rows["projection"]
    assert refined["calibration"]["gamma"] == plain["calibration"]["gamma"]
    assert "ausuc" not in refined and "calibration_curve" not in refined
    assert (
        plain["hiou"]
        == json.loads((demo_run / "report.json").read_text())["methods"]["projection"]["hiou"]
    )
    alone = _eval_projection(out, capsys, "--refine", "spectral")
    for key in ("seen_miou", "unseen_miou", "hiou", "miou"):
        assert refined[key] == alone[key], key


def test_the_oracle_learns(demo_run):
    oracle = json.loads((demo_run / "report.json").read_text())["methods"]["oracle"]
    # 7 classes, 300 steps at 32 px: well above chance (~14%); measured 57 on this CPU.
    assert oracle["miou"] > 45.0, oracle
    assert oracle["seen_miou"] > 50.0, oracle
    assert oracle["pixel_acc"] > 80.0, oracle


def test_the_baseline_is_biased_toward_seen_classes_until_calibrated(demo_run):
    r = json.loads((demo_run / "report.json").read_text())["methods"]
    curve = r["projection"]["calibration_curve"]
    at0 = curve["gamma"].index(0.0)
    # uncalibrated (gamma 0 on test): seen classes well segmented, unseen ones below the oracle's
    # (from scratch it measured 63.5 and 0.0; from the foundation the bias is smaller)
    assert curve["seen_miou"][at0] > 50.0
    assert curve["unseen_miou"][at0] < r["oracle"]["unseen_miou"]
    # the shared rule moves pixels towards unseen classes (gamma > 0, chosen on val), and the test
    # hIoU gains from it (measured 58.0 -> 66.3 from the foundation; 0.0 -> 29.8 from scratch)
    assert r["projection"]["calibration"]["gamma"] > 0
    assert r["projection"]["hiou"] > curve["hiou"][at0] + 5


def test_predictor_takes_any_vocabulary(demo_run, tiny_world):
    ckpt = next((demo_run / "runs").glob("oracle-*/model.safetensors"))
    p = Predictor.from_checkpoint(ckpt)
    spec = load_spec(tiny_world)
    sample = ShapeWorldDataset(spec, "val", progress=False)[0]
    image = sample["image"].permute(1, 2, 0).numpy()
    names = list(spec.class_names)
    a = p.predict(image, names)
    b = p.predict(image, names[::-1])  # same classes, other order: same answer per pixel
    assert a.shape == image.shape[:2]
    assert np.mean(np.array(names)[a] == np.array(names[::-1])[b]) > 0.99
    assert (a == sample["label"].numpy()).mean() > 0.6


def test_cli_predict_writes_label_and_overlay(demo_run, tiny_world, tmp_path, capsys):
    ckpt = next((demo_run / "runs").glob("projection-*/model.safetensors"))
    spec = load_spec(tiny_world)
    img = ShapeWorldDataset(spec, "val", progress=False)[1]["image"].permute(1, 2, 0).numpy()
    Image.fromarray(img).save(tmp_path / "x.png")
    rc = main(
        [
            "predict",
            str(ckpt),
            str(tmp_path / "x.png"),
            "--classes",
            "red circle, blue square, flat gray ground",
            "--out",
            str(tmp_path / "out"),
        ]
    )
    assert rc == 0
    label = np.asarray(Image.open(tmp_path / "out" / "x_label.png"))
    assert label.shape == (32, 32) and label.max() <= 2
    assert (tmp_path / "out" / "x_overlay.png").is_file()


def test_cli_reports_bad_input_without_a_traceback(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "name: x\nimage_size: 32\ntrain_images: 2\nval_images: 2\nthings: [{name: a, color: [1,2,3], shape: blob}]\nstuff: [{name: b, color: [1,2,3], texture: flat}]\n"
    )
    assert main(["demo", "--world", str(bad), "--out", str(tmp_path / "o")]) == 2
    assert "unknown shape 'blob'" in capsys.readouterr().err
    ckpt = tmp_path / "fake.safetensors"
    ckpt.write_bytes(b"junk")
    assert main(["predict", str(ckpt), str(bad), "--classes", "a,b"]) == 2
    assert "fake.safetensors" in capsys.readouterr().err


def test_predict_rejects_empty_or_duplicated_class_lists(demo_run, tiny_world, tmp_path, capsys):
    ckpt = next((demo_run / "runs").glob("projection-*/model.safetensors"))
    img = tmp_path / "x.png"
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(img)
    assert main(["predict", str(ckpt), str(img), "--classes", "red circle,Red Circle"]) == 2
    assert "duplicated class name 'Red Circle'" in capsys.readouterr().err
    assert main(["predict", str(ckpt), str(img), "--classes", " , "]) == 2
    assert "--classes: entry 0" in capsys.readouterr().err


def test_a_checkpoint_of_another_architecture_fails_naming_keys(demo_run, tmp_path):
    from zeroseg.engine.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
    from zeroseg.runner import load_model

    ckpt = next((demo_run / "runs").glob("projection-*/model.safetensors"))
    tensors, meta = load_checkpoint(ckpt)
    meta["config"]["model"] = {"backbone": {"widths": [8, 16, 32, 64], "out_dim": 32}}
    save_checkpoint(tmp_path / "other.safetensors", tensors, meta)
    with pytest.raises(CheckpointError, match=r"misshaped keys: backbone\.\S+: checkpoint"):
        load_model(tmp_path / "other.safetensors")


def test_cli_eval_applies_model_overrides_and_takes_a_run_directory(demo_run, capsys):
    run = next((demo_run / "runs").glob("projection-*"))

    def evaluate(*sets: str) -> dict:
        args = ["eval", str(run), "--no-progress"]
        for s in sets:
            args += ["--set", s]
        assert main(args) == 0
        return json.loads(capsys.readouterr().out)

    plain = evaluate()
    calibrated = evaluate("model.calibration=5.0")
    # An inference option set on the command line reaches the rebuilt model (before the fix it
    # was silently ignored), and the shared calibration rule replaces it: same figures.
    assert calibrated["calibration"]["replaces"] == {"calibration": 5.0}
    assert plain["calibration"]["replaces"] == {"calibration": 0.0}
    assert calibrated["unseen_miou"] == plain["unseen_miou"]
    assert plain["eval_split"] == "test" and plain["tuned_on"] == "val"
    assert main(["eval", str(run), "--split", "val", "--no-progress"]) == 0
    val = json.loads(capsys.readouterr().out)
    # on val, the chosen gamma's figure is the best of val's sweep: what the rule picked
    assert val["eval_split"] == "val"
    assert val["hiou"] == pytest.approx(val["calibration"]["val_hiou"], abs=1e-9)
    assert main(["eval", str(run), "--set", "model.backbone.out_dim=7", "--no-progress"]) == 2
    assert "misshaped" in capsys.readouterr().err


def test_demo_seeds_writes_each_run_and_the_spread(tiny_world, tmp_path):
    out = tmp_path / "seeds"
    args = ["demo", "--world", str(tiny_world), "--methods", "projection", "--out", str(out)]
    args += ["--no-progress", "--set", "train.iters=20", "--set", "eval.batch_size=32"]
    assert main([*args, "--seeds", "0", "1"]) == 0
    spread = json.loads((out / "seeds.json").read_text())
    by_seed = [json.loads((out / f"seed-{s}" / "report.json").read_text()) for s in (0, 1)]
    hiou = [r["methods"]["projection"]["hiou"] for r in by_seed]
    row = spread["methods"]["projection"]["hiou"]
    assert row["values"] == {"0": hiou[0], "1": hiou[1]}
    assert row["mean"] == pytest.approx(np.mean(hiou))
    assert row["std"] == pytest.approx(np.std(hiou, ddof=1))
    assert "projection" in (out / "seeds.md").read_text()
    # Different seeds are different runs (initialisation and batch order both change).
    assert (
        by_seed[0]["methods"]["projection"]["miou"] != by_seed[1]["methods"]["projection"]["miou"]
    )
    # report.json: the mean as <metric>, the spread as <metric>_std
    report = json.loads((out / "report.json").read_text())
    assert report["eval_split"] == "test" and report["seeds"] == [0, 1]
    proj = report["methods"]["projection"]
    assert proj["hiou"] == pytest.approx(np.mean(hiou))
    assert proj["hiou_std"] == pytest.approx(np.std(hiou, ddof=1))
    ausuc = [r["methods"]["projection"]["ausuc"] for r in by_seed]
    assert proj["ausuc_std"] == pytest.approx(np.std(ausuc, ddof=1))
    miou = [r["methods"]["projection"]["miou"] for r in by_seed]  # the headline keys stay
    assert proj["miou"] == pytest.approx(np.mean(miou))
    assert proj["miou_std"] == pytest.approx(np.std(miou, ddof=1))
    assert set(proj["calibration"]["gamma_by_seed"]) == {"0", "1"}


def test_demo_seeds_rejects_one_seed_and_a_conflicting_override(tiny_world, tmp_path, capsys):
    args = ["demo", "--world", str(tiny_world), "--methods", "projection", "--out", str(tmp_path)]
    assert main([*args, "--seeds", "3"]) == 2
    assert "at least two distinct seeds" in capsys.readouterr().err
    assert main([*args, "--seeds", "0", "1", "--set", "seed=4"]) == 2
    assert "conflicts with --seeds" in capsys.readouterr().err


def test_demo_jobs_gives_the_one_thread_rows_exactly(tiny_world, tmp_path):
    """``--jobs 2``: two rows at once, each worker on one thread, gives exactly the figures of
    the rows run one after the other on one thread (and keeps the rows' order)."""
    import torch

    args = ["demo", "--world", str(tiny_world), "--methods", "oracle", "projection"]
    args += ["--no-progress", "--set", "train.iters=20", "--set", "eval.batch_size=32"]
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert main([*args, "--out", str(tmp_path / "one")]) == 0
        torch.set_num_threads(2)  # two jobs of one thread each
        assert main([*args, "--out", str(tmp_path / "two"), "--jobs", "2"]) == 0
    finally:
        torch.set_num_threads(threads)
    one, two = (json.loads((tmp_path / d / "report.json").read_text()) for d in ("one", "two"))
    assert list(two["methods"]) == ["oracle", "projection"]
    assert two["jobs"] == 2 and two["threads"] == 1
    for name in ("oracle", "projection"):
        for key in ("seen_miou", "unseen_miou", "hiou", "miou", "ausuc", "per_class_iou"):
            assert two["methods"][name][key] == one["methods"][name][key], (name, key)
        for run in (one, two):  # the process's memory while the row ran (Linux /proc)
            memory = run["methods"][name]["memory"]
            assert set(memory) == {"start_rss_mib", "peak_rss_mib"}
            assert memory["peak_rss_mib"] >= memory["start_rss_mib"] > 0


def test_demo_seeds_with_jobs_pools_the_seeds_rows_and_gives_each_seed_its_own_figures(
    tiny_world, tmp_path
):
    """``--seeds 0 1 --jobs 2`` runs both seeds' rows in one queue of two one-thread workers;
    each seed's report equals a one-thread run of that seed alone, row for row."""
    import torch

    args = ["demo", "--world", str(tiny_world), "--methods", "projection", "oracle"]
    args += ["--no-progress", "--set", "train.iters=20", "--set", "eval.batch_size=32"]
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        for seed in (0, 1):
            alone = [*args, "--out", str(tmp_path / f"alone-{seed}"), "--set", f"seed={seed}"]
            assert main([*alone, "--set", f"train.seed={seed}"]) == 0
        torch.set_num_threads(2)
        assert (
            main([*args, "--out", str(tmp_path / "pooled"), "--seeds", "0", "1", "--jobs", "2"])
            == 0
        )
    finally:
        torch.set_num_threads(threads)
    for seed in (0, 1):
        alone = json.loads((tmp_path / f"alone-{seed}" / "report.json").read_text())
        pooled = json.loads((tmp_path / "pooled" / f"seed-{seed}" / "report.json").read_text())
        assert pooled["jobs"] == 2 and pooled["threads"] == 1
        assert list(pooled["methods"]) == list(alone["methods"]) == ["projection", "oracle"]
        for name in ("projection", "oracle"):
            for key in ("seen_miou", "unseen_miou", "hiou", "miou", "ausuc", "per_class_iou"):
                assert pooled["methods"][name][key] == alone["methods"][name][key], (seed, name)
    a, b = (
        json.loads((tmp_path / "pooled" / f"seed-{s}" / "report.json").read_text()) for s in (0, 1)
    )
    assert a["methods"]["projection"]["miou"] != b["methods"]["projection"]["miou"]
    spread = json.loads((tmp_path / "pooled" / "seeds.json").read_text())
    assert set(spread["methods"]["oracle"]["hiou"]["values"]) == {"0", "1"}


def test_a_parallel_row_waits_for_the_baselines_it_shares_stages_with():
    from zeroseg.demo import _ready, waits_for

    planned = ["projection", "zs3net", "zs5net", "sazs"]
    assert not _ready("zs5net", set(), planned)  # zs3net trains the stages zs5net reuses
    assert _ready("zs5net", {"zs3net"}, ["zs3net", "zs5net"])  # projection is not in this run
    assert not _ready("zs3net", set(), planned)  # zs3net's segmenter is projection's
    # sazs, ZegCLIP and AlignZeg share no stage with their baselines: they start at once
    assert _ready("sazs", set(), planned)
    assert waits_for("zegclip") == () and waits_for("alignzeg") == ()
    assert waits_for("pading") == ("mask-projection",)  # PADing's mask model
    assert waits_for("sazs-nofusion") == ("sazs",) and waits_for("zs5net") == (
        "zs3net",
        "projection",
    )


def test_demo_reports_each_gaps_interval_over_the_scored_images(tiny_world, tmp_path):
    from zeroseg.metrics.bootstrap import gap_intervals, load_image_confusions
    from zeroseg.metrics.semantic import summarize

    out = tmp_path / "seeds"
    args = ["demo", "--world", str(tiny_world), "--methods", "projection", "--out", str(out)]
    args += ["--refine", "spectral", "--no-progress", "--set", "train.iters=20"]
    assert main([*args, "--set", "eval.batch_size=32", "--seeds", "0", "1"]) == 0
    images = [load_image_confusions(out / f"seed-{s}" / "image-confusions.npz") for s in (0, 1)]
    for seed, found in zip((0, 1), images, strict=True):
        report = json.loads((out / f"seed-{seed}" / "report.json").read_text())
        assert found["split"] == "test" and set(found["rows"]) == set(report["methods"])
        for name, conf in found["rows"].items():  # each row's matrices give its reported figures
            again = summarize(conf.sum(0).long(), found["seen"], found["unseen"])
            assert again["hiou"] == pytest.approx(report["methods"][name]["hiou"], abs=1e-9)
        one = report["methods"]["projection+spectral"]["over_images"]["projection"]["hiou"]
        assert one["low"] <= one["gap"] <= one["high"]
        assert (
            "projection+spectral | projection | "
            in (out / f"seed-{seed}" / "report.md").read_text()
        )
    # the seed report's interval: both seeds' images drawn together, the same draw for both rows
    rows = {
        n: [found["rows"][n] for found in images] for n in ("projection+spectral", "projection")
    }
    expected = gap_intervals(
        rows, [("projection+spectral", "projection")], images[0]["seen"], images[0]["unseen"]
    )[("projection+spectral", "projection")]["hiou"]
    gap = json.loads((out / "report.json").read_text())["methods"]["projection+spectral"]["gap"]
    assert gap["hiou"]["over_images"] == {"low": expected["low"], "high": expected["high"]}
    assert gap["hiou"]["value"] == pytest.approx(expected["gap"], abs=1e-9)
    assert "over images [" in (out / "report.md").read_text()
