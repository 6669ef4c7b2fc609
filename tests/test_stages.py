"""Every method declares its training stages and where each one's schedule lives; ``--quick`` and
``--set stages.<stage>.<key>=<value>`` reach every stage through that declaration."""

from __future__ import annotations

import functools
import sys

import pytest

from zeroseg import runner
from zeroseg.cli import main
from zeroseg.config import PRESET_DIR, ConfigError, load_config, to_dict
from zeroseg.demo import DEMO_PRESETS, demo_config, quick_config
from zeroseg.engine.trainer import TrainConfig
from zeroseg.methods import METHODS
from zeroseg.methods.base import Stage

PRESETS = sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))
ZS3 = "zs3net_unet-small_shapeworld"


@functools.cache
def methods_of_presets() -> dict[str, str]:
    return {p: load_config(p).method for p in PRESETS}


def presets_of(name: str) -> list[str]:
    return [p for p, method in methods_of_presets().items() if method == name]


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_method_declares_its_stages_and_each_schedule_exists(name):
    cls = METHODS[name]
    names = [s.name for s in cls.stages]
    assert names and len(set(names)) == len(names), names
    # exactly one stage trains on the experiment's own schedule
    assert [s.schedule for s in cls.stages].count("train") == 1
    assert all(0 < s.quick <= 1 for s in cls.stages)
    assert presets_of(name), f"method {name!r} has no preset"
    for preset in presets_of(name):
        cfg = load_config(preset)
        for stage in cls.stages:
            assert isinstance(runner.stage_schedule(cfg, stage), TrainConfig), (preset, stage)


# The deliberate changes to the quick schedule since stages were declared, each chosen on val: the
# mask family's main stage runs half of its steps, not a quarter (MaskModelMethod.stages), and
# ZS3Net/ZS5Net's GMMN half of its steps, not all (ZS3Net.stages; in old_quick).
QUICK_CHANGED = {"mask-model": 0.5, "alignzeg-model": 0.5}


def old_quick(cfg):
    # The rule --quick followed before stages were declared: only train.iters, a quarter of it
    # (at least 50 steps), and val/test cut to 200 images; QUICK_CHANGED for the mask family.
    main = next(s for s in runner.method_class(cfg).stages if s.schedule == "train")
    cfg.train.iters = max(50, int(cfg.train.iters * QUICK_CHANGED.get(main.name, 0.25)))
    if cfg.method in ("zs3net", "zs5net"):  # session 31: half the GMMN's steps (chosen on val)
        from zeroseg.methods.zs3net import ZS3NetConfig

        g = cfg.model.setdefault("generator_train", {})
        g["iters"] = max(50, int(g.get("iters", ZS3NetConfig().generator_train.iters) * 0.5))
    cfg.data.val_limit = 200
    return cfg


def test_the_mask_family_runs_half_its_steps_under_quick():
    for preset in (
        "mask-projection_unet-small_1k_shapeworld",
        "pading_unet-small_1k_shapeworld",
        "alignzeg_unet-small_1k_shapeworld",
    ):
        assert quick_config(load_config(preset)).train.iters == 500, preset
    assert quick_config(load_config("projection_unet-small_2k_shapeworld")).train.iters == 500


@pytest.mark.parametrize("preset", PRESETS)
def test_quick_gives_every_stage_the_schedule_it_had(preset):
    before = old_quick(load_config(preset))
    after = quick_config(load_config(preset))
    for stage in runner.method_class(after).stages:
        assert runner.stage_schedule(after, stage) == runner.stage_schedule(before, stage), stage
    assert to_dict(after) == to_dict(before)  # the whole config, so the run fingerprint too


def test_the_demo_rows_quick_configs_are_unchanged():
    for row, preset in DEMO_PRESETS.items():
        assert to_dict(demo_config(row, world=None, quick=True)) == to_dict(
            old_quick(load_config(preset))
        ), row


def test_quick_scales_a_model_stage_by_its_declared_factor():
    cls = METHODS["zs3net"]
    assert cls.stage("generator").quick == 0.5 and cls.stage("classifier").quick == 1.0
    full = load_config(ZS3, ["model.generator_train.iters=300"])
    cfg = quick_config(load_config(ZS3, ["model.generator_train.iters=300"]))
    generator, classifier = cls.stage("generator"), cls.stage("classifier")
    assert runner.stage_schedule(cfg, generator).iters == 150
    assert runner.stage_schedule(cfg, classifier) == runner.stage_schedule(full, classifier)
    assert cfg.train.iters == max(50, int(full.train.iters * 0.25))
    tiny = quick_config(load_config(ZS3, ["model.generator_train.iters=60"]))
    assert runner.stage_schedule(tiny, generator).iters == 50  # never below QUICK_MIN_ITERS


def test_a_stage_override_sets_that_stages_schedule():
    cfg = runner.load_experiment(
        ZS3, ["stages.generator.iters=7", "stages.segmenter.lr=0.5", "stages.classifier.seed=3"]
    )
    same = load_config(
        ZS3, ["model.generator_train.iters=7", "train.lr=0.5", "model.classifier_train.seed=3"]
    )
    assert to_dict(cfg) == to_dict(same)
    # the method an override picks decides which stages exist
    st = runner.load_experiment(
        "zegclip_vit-tiny_shapeworld",
        ["method=zegclip-st", "stages.self-training.iters=5"],
    )
    assert runner.stage_schedule(st, METHODS["zegclip-st"].stage("self-training")).iters == 5


@pytest.mark.parametrize(
    "override, match",
    [
        (
            "stages.bogus.iters=3",
            r"override 'stages.bogus.iters=3': method 'zs3net' has no stage 'bogus'; its stages: "
            r"segmenter, generator, classifier$",
        ),
        ("stages.generator=3", r"must look like stages.<stage>.<key>=<value>"),
        ("stages.generator.iterz=3", r"unknown keys \['iterz'\]"),
    ],
)
def test_a_bad_stage_override_fails_in_one_line(override, match):
    with pytest.raises(ConfigError, match=match) as info:
        runner.load_experiment(ZS3, [override])
    assert "\n" not in str(info.value)


def test_the_cli_names_the_valid_stages(capsys, tmp_path):
    code = main(["train", ZS3, "--out", str(tmp_path), "--set", "stages.decoder.iters=3"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "has no stage 'decoder'; its stages: segmenter, generator, classifier" in err
    assert not any(tmp_path.iterdir())  # refused before any work


def test_stage_is_a_plain_declaration():
    assert Stage("x", "train").quick == 0.25  # the default share: the old --quick rule's


def test_a_method_without_stages_is_refused_at_registration(tmp_path, monkeypatch):
    from zeroseg.methods import discover

    package = tmp_path / "stageless_methods"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "toy.py").write_text(
        "from zeroseg.methods.base import Method\n\n\nclass Toy(Method):\n    name = 'toy'\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ValueError, match=r"method 'toy' \(stageless_methods.toy.Toy\) declares no"):
        discover("stageless_methods", [str(package)])
    (package / "toy.py").write_text(
        "from zeroseg.methods.base import Method, Stage\n\n\n"
        "class Toy(Method):\n"
        "    name = 'toy'\n"
        "    stages = (Stage('toy', 'train'),)\n"
    )
    monkeypatch.delitem(sys.modules, "stageless_methods.toy")
    assert list(discover("stageless_methods", [str(package)])) == ["toy"]


def test_a_method_revision_enters_the_demo_fingerprint_and_its_stage_keys(monkeypatch, tmp_path):
    import hashlib
    import json

    import torch

    from zeroseg.demo import fingerprint
    from zeroseg.methods.base import RunContext

    # channels_last at its neutral default (the preset turns it on)
    cfg = demo_config(
        "mask-projection", world=None, quick=True, overrides=["train.channels_last=false"]
    )
    assert METHODS["mask-projection"].revision == 0
    # revision 0 adds nothing: the fingerprint of runs made before revisions existed
    run = {k: v for k, v in to_dict(cfg).items() if k != "demo"}
    del run["train"]["channels_last"], run["train"]["ema_decay"]  # nor did these options
    blob = json.dumps({"cfg": run, "world": "w"}, sort_keys=True, default=str)
    assert fingerprint(cfg, "w") == hashlib.sha256(blob.encode()).hexdigest()[:10]
    ctx = RunContext(cfg, tmp_path / "run", None, None, None, None, torch.device("cpu"))
    key = ctx.stage_key(model={"width": 8})
    assert "revision" not in key
    shared = ctx.shared_stage_dir("segmenter", key)

    monkeypatch.setattr(METHODS["mask-projection"], "revision", 2)
    assert fingerprint(cfg, "w") != hashlib.sha256(blob.encode()).hexdigest()[:10]
    ctx.revision = 2  # as runner.train sets it from the method class
    revised = ctx.stage_key(model={"width": 8})
    assert revised == {**key, "revision": 2}
    assert ctx.shared_stage_dir("segmenter", revised) != shared


def test_a_reused_stage_gives_the_run_the_notes_its_training_wrote(tmp_path):
    import torch

    from zeroseg.methods.base import RunContext, StagePlan

    cfg = demo_config("projection", world=None, quick=True)
    prepared = []

    def prepare(ctx):
        prepared.append(1)
        ctx.notes.append("pseudo-labelled 7 pixels")  # as ZS5Net's stage 5 does
        x = torch.ones(2, 3)
        return StagePlan(
            step_fn=lambda m, b: {"loss": m(b).pow(2).mean()},
            batches=lambda start, stop: ((s, x) for s in range(start, stop)),
            cfg=TrainConfig(iters=2),
        )

    def run(directory):
        ctx = RunContext(cfg, directory, None, None, None, None, torch.device("cpu"))
        ctx.progress = False
        ctx.notes.append("the run's own note")
        model = torch.nn.Linear(3, 1)
        ctx.run_stage("s", model=model, prepare=lambda: prepare(ctx), guard=False)
        return ctx, model

    first, trained = run(tmp_path / "run")
    again, loaded = run(tmp_path / "run")  # the finished stage is reused, not trained
    assert len(prepared) == 1
    assert first.notes == again.notes == ["the run's own note", "pseudo-labelled 7 pixels"]
    assert torch.equal(trained.weight, loaded.weight)


def test_stages_from_adopts_a_runs_own_stages_by_name_and_shared_ones_by_key(tmp_path):
    """``demo --stages-from``: a stage finished in the other output is copied, not trained,
    before the method looks for it (PADing asks whether its classifier is finished before
    running it); a shared stage only under the same key; the other output is only read."""
    import torch

    from zeroseg.engine.trainer import stage_done
    from zeroseg.methods.base import RunContext, StagePlan

    cfg = demo_config("projection", world=None, quick=True)
    prepared = []

    def prepare(ctx):
        prepared.append(1)
        ctx.notes.append("pseudo-labelled 7 pixels")
        x = torch.ones(2, 3)
        return StagePlan(
            step_fn=lambda m, b: {"loss": m(b).pow(2).mean()},
            batches=lambda start, stop: ((s, x) for s in range(start, stop)),
            cfg=TrainConfig(iters=2),
        )

    def context(directory, reuse_from=None):
        ctx = RunContext(cfg, directory, None, None, None, None, torch.device("cpu"))
        ctx.progress, ctx.reuse_from = False, reuse_from
        return ctx

    def run(ctx, width=8):
        own, shared = torch.nn.Linear(3, 1), torch.nn.Linear(3, 1)
        ctx.run_stage("own", model=own, prepare=lambda: prepare(ctx), guard=False)
        key = {"model": {"width": width}}
        ctx.run_stage("sh", model=shared, prepare=lambda: prepare(ctx), guard=False, key=key)
        return own, shared

    source = tmp_path / "a" / "runs" / "row-1"
    trained = run(context(source))
    assert len(prepared) == 2
    files = {p: p.read_bytes() for p in (tmp_path / "a").rglob("*") if p.is_file()}
    ctx = context(tmp_path / "b" / "runs" / "row-1", reuse_from=source)
    ctx.adopt_own_stages()
    assert ctx.stage_finished("own")  # found before the method runs it
    loaded = run(ctx)
    assert len(prepared) == 2  # nothing trained
    for a, b in zip(trained, loaded):
        assert torch.equal(a.weight, b.weight) and torch.equal(a.bias, b.bias)
    assert [p.relative_to(tmp_path / "a") for p in ctx.adopted] == [
        source.relative_to(tmp_path / "a") / "own",
        next((tmp_path / "a" / "runs" / "_shared").iterdir()).relative_to(tmp_path / "a"),
    ]
    assert ctx.notes == ["pseudo-labelled 7 pixels"] and not ctx.trained  # recorded, once
    assert {p: p.read_bytes() for p in (tmp_path / "a").rglob("*") if p.is_file()} == files
    other = context(tmp_path / "c" / "runs" / "row-1", reuse_from=source)
    run(other, width=9)  # another key: the shared stage is another stage, and trains
    assert len(prepared) == 3 and other.trained == ["sh"]
    assert stage_done(other.stage_dir("own")) and other.adopted[0].name == "own"
