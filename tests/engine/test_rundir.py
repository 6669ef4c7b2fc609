"""A run directory resumes only its own config, and only one run writes it at a time."""

from __future__ import annotations

import dataclasses
import hashlib
import json

import pytest
import torch

from zeroseg import runner
from zeroseg.cli import main
from zeroseg.config import PRESET_DIR, load_config
from zeroseg.demo import fingerprint
from zeroseg.engine.checkpoint import load_checkpoint
from zeroseg.engine.rundir import RunDirError, config_diff, config_hash, run_lock
from zeroseg.engine.trainer import TrainConfig
from zeroseg.foundation.train import FoundationConfig
from zeroseg.pretrain import PretrainConfig

QUICK = [
    "text.encoder=attributes",
    "train.iters=3",
    "train.batch_size=4",
    "train.amp=none",
    "data.train_limit=16",
    "data.val_limit=8",
    "model.foundation=null",  # 10-d attribute vectors: not the foundation's 384-d text space
]


def _cfg(world, *extra):
    # channels_last at its neutral default unless a test turns it on (the preset turns it on)
    return load_config(
        "projection_unet-small_2k_shapeworld",
        [f"data.world={world}", *QUICK, "train.channels_last=false", *extra],
    )


def test_same_config_resumes_and_another_is_refused_with_the_differing_key(tiny_world, tmp_path):
    run = tmp_path / "run"
    first = runner.train(_cfg(tiny_world), run, progress=False)
    assert first.trained_stages == ["segmenter"]
    record = json.loads((run / "run.json").read_text())
    assert record["config"]["model"]["calibration"] == 0.0  # method defaults resolved
    weights = load_checkpoint(run / "model.safetensors")[0]

    again = runner.train(_cfg(tiny_world, "train.ckpt_every=2"), run, progress=False)
    assert again.trained_stages == []  # cadence keys do not change the weights: resumed

    with pytest.raises(RunDirError, match=r"train\.lr: 0\.003 -> 0\.01\).*--overwrite"):
        runner.train(_cfg(tiny_world, "train.lr=0.01"), run, progress=False)
    after = load_checkpoint(run / "model.safetensors")[0]
    assert all(torch.equal(weights[k], after[k]) for k in weights)  # untouched

    redone = runner.train(_cfg(tiny_world, "train.lr=0.01"), run, progress=False, overwrite=True)
    assert redone.trained_stages == ["segmenter"]
    assert json.loads((run / "run.json").read_text())["config"]["train"]["lr"] == 0.01


def test_a_second_concurrent_run_is_refused(tiny_world, tmp_path):
    run = tmp_path / "run"
    with run_lock(run):
        with pytest.raises(RunDirError, match=r"in use by another zeroseg run \(pid \d+\)"):
            runner.train(_cfg(tiny_world), run, progress=False)
    assert not (run / "run.json").exists()
    runner.train(_cfg(tiny_world), run, progress=False)  # the lock is released on exit
    assert (run / "model.safetensors").is_file()


def test_a_directory_of_unknown_files_is_refused(tiny_world, tmp_path):
    run = tmp_path / "run"
    (run / "segmenter").mkdir(parents=True)
    (run / "segmenter" / "step-0000002.safetensors").write_bytes(b"x")
    with pytest.raises(RunDirError, match=r"no run\.json"):
        runner.train(_cfg(tiny_world), run, progress=False)


def test_invalid_settings_fail_before_a_finished_run_is_reused(tiny_world, tmp_path, capsys):
    sets = [x for s in [f"data.world={tiny_world}", *QUICK] for x in ("--set", s)]
    args = ["train", "projection_unet-small_2k_shapeworld", "--out", str(tmp_path), "--no-progress"]
    assert main([*args, *sets]) == 0
    capsys.readouterr()
    assert main([*args, *sets, "--set", "train.batch_size=0"]) == 2
    err = capsys.readouterr().err
    assert err == (
        "zeroseg: error: "
        f"{PRESET_DIR / 'projection_unet-small_2k_shapeworld.yaml'} with --set overrides: "
        "train.batch_size must be an integer 1-65536, got 0\n"
    )


def test_hash_and_diff_ignore_tuples_vs_lists_and_cadence():
    a = {"train": {"lr": 0.1, "ckpt_every": 0}, "size": (1, 2)}
    b = {"train": {"lr": 0.1, "ckpt_every": 50}, "size": [1, 2]}
    assert config_hash(a) == config_hash(b) and config_diff(a, b) == []
    assert config_diff(a, {**b, "seed": 3}) == ["seed: (absent) -> 3"]


def test_a_method_revision_refuses_the_old_run_and_keys_the_new_stages(
    tiny_world, tmp_path, monkeypatch
):
    from zeroseg.methods import METHODS

    run = tmp_path / "run"
    runner.train(_cfg(tiny_world), run, progress=False)
    current = METHODS["projection"].revision
    assert json.loads((run / "run.json").read_text())["config"].get("revision", 0) == current
    monkeypatch.setattr(METHODS["projection"], "revision", current + 3)
    with pytest.raises(RunDirError, match=rf"revision: .* -> {current + 3}\).*--overwrite"):
        runner.train(_cfg(tiny_world), run, progress=False)
    made = []

    class Recording(runner.RunContext):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(runner, "RunContext", Recording)
    runner.train(_cfg(tiny_world), tmp_path / "new", progress=False)
    assert (
        json.loads((tmp_path / "new" / "run.json").read_text())["config"]["revision"] == current + 3
    )
    assert [ctx.revision for ctx in made] == [current + 3]  # so the run's stage keys carry it


def test_an_option_at_its_neutral_default_keeps_the_identities_it_had_before_it_existed(
    tiny_world, tmp_path
):
    resolved = dataclasses.asdict(_cfg(tiny_world))
    before = json.loads(json.dumps(resolved))  # as recorded before ``channels_last`` existed
    del before["train"]["channels_last"]
    assert config_hash(resolved) == config_hash(before) and config_diff(before, resolved) == []
    on = dataclasses.asdict(_cfg(tiny_world, "train.channels_last=true"))
    assert config_hash(on) != config_hash(resolved)
    assert config_diff(before, on) == ["train.channels_last: (absent) -> true"]
    assert fingerprint(_cfg(tiny_world), "w") != fingerprint(
        _cfg(tiny_world, "train.channels_last=true"), "w"
    )
    # a run recorded without the key resumes; the option set refuses it, naming the key
    run = tmp_path / "run"
    runner.train(_cfg(tiny_world), run, progress=False)
    record = json.loads((run / "run.json").read_text())
    del record["config"]["train"]["channels_last"]
    (run / "run.json").write_text(json.dumps(record))
    runner.train(_cfg(tiny_world), run, progress=False)
    with pytest.raises(RunDirError, match="train.channels_last"):
        runner.train(_cfg(tiny_world, "train.channels_last=true"), run, progress=False)
    # the shared stages' keys: the same rule
    ctx = runner.RunContext(_cfg(tiny_world), run, None, None, None, None, torch.device("cpu"))
    assert "channels_last" not in ctx.stage_key(train=TrainConfig())["train"]
    assert ctx.stage_key(train=TrainConfig(channels_last=True))["train"]["channels_last"] is True


def test_the_pretraining_keys_follow_the_same_rule():
    cfg = PretrainConfig()
    before = dataclasses.asdict(cfg)  # the stage-0 cache key before these options existed
    del before["train"]["channels_last"], before["train"]["ema_decay"]
    blob = json.dumps(before, sort_keys=True).encode()
    assert cfg.key() == hashlib.sha256(blob).hexdigest()[:10]
    for c in (cfg, FoundationConfig()):  # (the shipped foundation's sidecar checks its own key)
        on = dataclasses.replace(c, train=dataclasses.replace(c.train, channels_last=True))
        assert on.key() != c.key()


class _Unreadable(torch.utils.data.Dataset):
    """A split that fails the test the moment anything looks at it."""

    def __len__(self):
        raise AssertionError("the test split was read")

    def __getitem__(self, i):
        raise AssertionError("the test split was read")


def test_train_with_split_val_evaluates_val_and_never_reads_test(
    tiny_world, tmp_path, monkeypatch, capsys
):
    build = runner.build_data

    def without_test(cfg, **kw):
        return dataclasses.replace(build(cfg, **kw), test=_Unreadable())

    monkeypatch.setattr(runner, "build_data", without_test)
    sets = [x for s in [f"data.world={tiny_world}", *QUICK] for x in ("--set", s)]
    args = ["train", "projection_unet-small_2k_shapeworld", "--out", str(tmp_path), "--no-progress"]
    assert main([*args, *sets, "--split", "val"]) == 0
    printed = json.loads(capsys.readouterr().out.split("\nmodel:")[0])
    run = tmp_path / "projection"
    written = json.loads((run / "metrics-val.json").read_text())
    assert printed["eval_split"] == written["eval_split"] == "val"
    assert printed["hiou"] == written["hiou"]
    assert not (run / "metrics.json").exists()
    # the same model evaluated by zeroseg eval --split val gives the same figures
    assert main(["eval", str(run), "--split", "val", "--no-progress", *sets]) == 0
    assert json.loads(capsys.readouterr().out)["hiou"] == written["hiou"]
    with pytest.raises(AssertionError, match="the test split was read"):
        main([*args, *sets])  # the default, test, reads it: the stand-in does catch a reader


def _shared(run_parent):
    return sorted(p.name for p in (run_parent / "_shared").iterdir())


def test_the_same_world_named_another_way_is_the_same_run_and_the_same_stages(
    tiny_world, tmp_path, monkeypatch
):
    from zeroseg.data.shapeworld import load_spec

    copy = tmp_path / "elsewhere" / "copy.yaml"
    copy.parent.mkdir()
    copy.write_text(tiny_world.read_text())
    monkeypatch.chdir(tiny_world.parent)
    spellings = [tiny_world, "tiny.yaml", f"./../{tiny_world.parent.name}/tiny.yaml", copy]
    key = load_spec(tiny_world).content_key()
    assert len({fingerprint(_cfg(w), key) for w in spellings}) == 1
    assert len({fingerprint(_cfg(w), key, by_path=True) for w in spellings}) == len(spellings)

    runs = tmp_path / "runs"
    assert runner.train(_cfg(tiny_world), runs / "a", progress=False).trained_stages == [
        "segmenter"
    ]
    for spelling in spellings[1:]:  # the run directory resumes; another run finds the stage
        assert runner.train(_cfg(spelling), runs / "a", progress=False).trained_stages == []
        assert runner.train(_cfg(spelling), runs / "b", progress=False).trained_stages == []
    assert len(_shared(runs)) == 1

    # another world (one line changed) is another run: refused, naming data.world
    other = tmp_path / "other.yaml"
    other.write_text(tiny_world.read_text().replace("seed: 1", "seed: 2"))
    with pytest.raises(RunDirError, match=r"data\.world: .*content key"):
        runner.train(_cfg(other), runs / "a", progress=False)
    assert runner.train(_cfg(other), runs / "c", progress=False).trained_stages == ["segmenter"]
    assert len(_shared(runs)) == 2


def test_stages_and_demo_runs_keyed_by_the_worlds_path_before_are_still_found(
    tiny_world, tmp_path, monkeypatch
):
    from zeroseg.data.shapeworld import load_spec
    from zeroseg.demo import run_dir_of
    from zeroseg.methods.base import RunContext

    data_key = RunContext.data_key
    runs = tmp_path / "runs"
    with monkeypatch.context() as m:  # the key of the code before: the world's path as typed
        m.setattr(RunContext, "data_key", lambda self, by_path=False: data_key(self, by_path=True))
        runner.train(_cfg(tiny_world), runs / "old", progress=False)
    (old_stage,) = _shared(runs)
    again = runner.train(_cfg(tiny_world), runs / "new", progress=False)
    assert again.trained_stages == [] and _shared(runs) == [old_stage]  # found, not retrained

    cfg, key = _cfg(tiny_world), load_spec(tiny_world).content_key()
    out = tmp_path / "demo"
    today = run_dir_of("projection", cfg, key, out)
    assert today.name == f"projection-{fingerprint(cfg, key)}"
    before = out / "runs" / f"projection-{fingerprint(cfg, key, by_path=True)}"
    before.mkdir(parents=True)
    assert out / run_dir_of("projection", cfg, key, out) == before  # only the old one: reused
    (out / today).mkdir()
    assert run_dir_of("projection", cfg, key, out) == today  # both: today's
