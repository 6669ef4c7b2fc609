from pathlib import Path

import pytest
import torch

from zeroseg.engine.checkpoint import (
    CheckpointError,
    load_checkpoint,
    load_state_dict_strict,
    save_checkpoint,
)
from zeroseg.engine.inference import slide_scores
from zeroseg.engine.trainer import (
    NonFiniteLossError,
    TrainConfig,
    copy_stage,
    load_stage,
    lr_factor,
    stage_done,
    train_stage,
)


class Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a = torch.nn.Linear(4, 8)
        self.drop = torch.nn.Dropout(0.3)  # uses the RNG, so resume must restore it
        self.b = torch.nn.Linear(8, 1)

    def forward(self, x):
        return self.b(self.drop(torch.relu(self.a(x))))


def batches(start, stop):
    for step in range(start, stop):
        g = torch.Generator().manual_seed(step)
        x = torch.randn(8, 4, generator=g)
        yield step, {"x": x, "y": x.sum(1, keepdim=True)}


def dying(batches_fn, at: int):
    """``batches_fn`` that dies (KeyboardInterrupt) when it reaches step ``at``: a killed run."""

    def interrupted(start, stop):
        for step, b in batches_fn(start, stop):
            if step == at:
                raise KeyboardInterrupt
            yield step, b

    return interrupted


def step_fn(model, batch):
    return {"loss": ((model(batch["x"]) - batch["y"]) ** 2).mean()}


def _train(model, directory, cfg, batches_fn=batches, loss_fn=step_fn, **kwargs):
    """``train_stage`` of stage "s" with this file's loss (or ``loss_fn``), without progress bars."""
    return train_stage(
        stage="s",
        model=model,
        step_fn=loss_fn,
        batches=batches_fn,
        cfg=cfg,
        directory=directory,
        progress=False,
        **kwargs,
    )


def test_checkpoint_round_trip_and_strict_errors(tmp_path):
    m = Tiny()
    path = save_checkpoint(tmp_path / "m.safetensors", m.state_dict(), {"hello": 1})
    tensors, meta = load_checkpoint(path)
    assert meta == {"hello": 1} and path.with_suffix(".json").is_file()
    load_state_dict_strict(Tiny(), tensors, what="m")
    del tensors["a.bias"]
    tensors["b.weight"] = torch.zeros(2, 8)
    with pytest.raises(
        CheckpointError,
        match=r"missing keys: a.bias(.|\n)*b.weight: checkpoint \(2, 8\) vs model \(1, 8\)",
    ):
        load_state_dict_strict(Tiny(), tensors, what="m")


def test_unreadable_checkpoint_names_the_file(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="bad.safetensors"):
        load_checkpoint(bad)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.safetensors")


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(tmp_path):
    cfg = TrainConfig(iters=40, lr=1e-2, ckpt_every=10, keep_ckpts=2, seed=3)
    torch.manual_seed(0)
    full = Tiny()
    _train(full, tmp_path / "a", cfg)

    torch.manual_seed(0)
    part = Tiny()
    half = TrainConfig(**{**cfg.__dict__, "iters": 40})

    interrupted = dying(batches, at=25)

    with pytest.raises(KeyboardInterrupt):
        _train(part, tmp_path / "b", half, interrupted)
    assert sorted(p.name for p in (tmp_path / "b").glob("step-*.safetensors")) == [
        "step-0000010.safetensors",
        "step-0000020.safetensors",
    ]
    resumed = Tiny()  # fresh weights: everything must come from the checkpoint
    _train(resumed, tmp_path / "b", cfg)
    for (k, v), w in zip(full.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(v, w), k


def test_copy_stage_copies_a_finished_stage_whole_its_weights_last(tmp_path, monkeypatch):
    """``demo --stages-from``'s copy: every file but the lock, the final weights written last
    (so the copy counts as finished only once whole), the source untouched and read only."""
    import shutil

    from zeroseg.engine import trainer

    model = Tiny()
    _train(model, tmp_path / "a", TrainConfig(iters=4, lr=1e-2, log_every=1))
    source = tmp_path / "a"
    (source / "tb").mkdir(exist_ok=True)
    (source / "tb" / "events").write_text("curve")
    before = {p: p.read_bytes() for p in source.rglob("*") if p.is_file()}
    copied, copyfile = [], shutil.copyfile

    def spy(src, dst):
        copied.append(Path(src).name)
        return copyfile(src, dst)

    monkeypatch.setattr(trainer.shutil, "copyfile", spy)
    copy_stage(source, tmp_path / "b")
    assert copied[-1] == "final.safetensors" and ".lock" not in copied
    assert {p.relative_to(source) for p in before if p.name != ".lock"} == {
        p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*") if p.is_file()
    }
    assert {p: p.read_bytes() for p in source.rglob("*") if p.is_file()} == before
    loaded = Tiny()
    load_stage(loaded, tmp_path / "b")
    for (k, v), w in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(v, w), k
    (tmp_path / "c").mkdir()
    with pytest.raises(ValueError, match="not a finished training stage"):
        copy_stage(tmp_path / "c", tmp_path / "d")
    assert not stage_done(tmp_path / "d")


def test_ema_saves_the_moving_average_of_the_trained_weights(tmp_path):
    plain = TrainConfig(iters=30, lr=1e-2, seed=3)
    torch.manual_seed(0)
    model = Tiny()
    seen: list[dict] = []  # the weights each step starts from: after the step before

    def recording(m, batch):
        seen.append({k: v.detach().clone() for k, v in m.state_dict().items()})
        return step_fn(m, batch)

    _train(model, tmp_path / "a", plain, loss_fn=recording)
    after = seen[1:] + [model.state_dict()]
    expected = {k: v.clone() for k, v in seen[0].items()}
    for t, state in enumerate(after):
        d = min(0.9, (1 + t) / (10 + t))
        for k in expected:
            expected[k] = d * expected[k] + (1 - d) * state[k]

    torch.manual_seed(0)
    averaged = Tiny()
    _train(averaged, tmp_path / "b", TrainConfig(**{**plain.__dict__, "ema_decay": 0.9}))
    saved, _ = load_checkpoint(tmp_path / "b" / "final.safetensors")
    for k, v in expected.items():
        torch.testing.assert_close(averaged.state_dict()[k], v, rtol=1e-5, atol=1e-6)
        assert torch.equal(saved[k], averaged.state_dict()[k]), k
        assert not torch.allclose(v, model.state_dict()[k], atol=1e-4), k  # not the last weights


def test_ema_resumes_exactly_and_refuses_a_checkpoint_without_it(tmp_path):
    cfg = TrainConfig(iters=40, lr=1e-2, ckpt_every=10, keep_ckpts=2, seed=3, ema_decay=0.95)
    torch.manual_seed(0)
    full = Tiny()
    _train(full, tmp_path / "a", cfg)

    interrupted = dying(batches, at=25)

    torch.manual_seed(0)
    with pytest.raises(KeyboardInterrupt):
        _train(Tiny(), tmp_path / "b", cfg, interrupted)
    resumed = Tiny()
    _train(resumed, tmp_path / "b", cfg)
    for (k, v), w in zip(full.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(v, w), k

    plain = TrainConfig(**{**cfg.__dict__, "ema_decay": 0.0})
    with pytest.raises(KeyboardInterrupt):
        _train(Tiny(), tmp_path / "c", plain, interrupted)
    with pytest.raises(CheckpointError, match=r"step-0000020.safetensors holds no weight average"):
        _train(Tiny(), tmp_path / "c", cfg)
    with pytest.raises(ValueError, match=r"train.ema_decay must be in \(0, 1\).*got 1.0"):
        _train(Tiny(), tmp_path / "d", TrainConfig(iters=2, ema_decay=1.0))


def test_ema_off_keeps_the_run_identities_recorded_before_it_existed(neutral_default):
    for preset in ("projection_unet-small_2k_shapeworld", "pading_unet-small_1k_shapeworld"):
        neutral_default(preset, "train.ema_decay", "train.ema_decay=0.99")  # session 50


def test_optimiser_groups_keep_their_rates_and_resume_exactly(tmp_path):
    """Parameter groups with their own lr (the mask family's backbone multiplier): each group
    follows the schedule at its own rate, and a resumed run ends with the uninterrupted weights."""
    cfg = TrainConfig(iters=30, lr=1e-2, ckpt_every=10, keep_ckpts=2, seed=3)

    def run(directory, model, batches_fn):
        groups = [
            {"params": list(model.a.parameters()), "lr": cfg.lr},
            {"params": list(model.b.parameters()), "lr": cfg.lr * 0.1},
        ]
        return _train(model, directory, cfg, batches_fn, params=groups)

    torch.manual_seed(0)
    full = Tiny()
    run(tmp_path / "a", full, batches)
    # the groups' rates are used: one group at the full rate trains other weights
    torch.manual_seed(0)
    one = Tiny()
    _train(one, tmp_path / "one", cfg)
    assert not torch.equal(one.b.weight, full.b.weight)

    interrupted = dying(batches, at=15)

    torch.manual_seed(0)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "b", Tiny(), interrupted)
    resumed = Tiny()
    run(tmp_path / "b", resumed, batches)
    for (k, v), w in zip(full.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(v, w), k


class TinyConv(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.drop = torch.nn.Dropout(0.3)
        self.head = torch.nn.Conv2d(4, 1, 1)

    def forward(self, x):
        return self.head(self.drop(torch.relu(self.conv(x))))


def image_batches(start, stop):
    for step in range(start, stop):
        g = torch.Generator().manual_seed(step)
        x = torch.randn(2, 3, 8, 8, generator=g)
        yield step, {"x": x, "y": x.mean(1, keepdim=True)}


def test_channels_last_trains_in_nhwc_saves_the_usual_layout_and_resumes_exactly(tmp_path):
    layouts = []

    def conv_step(model, batch):
        layouts.append(model.conv.weight.is_contiguous(memory_format=torch.channels_last))
        return {"loss": ((model(batch["x"]) - batch["y"]) ** 2).mean()}

    cfg = TrainConfig(iters=20, lr=1e-2, ckpt_every=5, seed=1, channels_last=True)
    torch.manual_seed(0)
    full = TinyConv()
    kw = dict(stage="s", step_fn=conv_step, cfg=cfg, progress=False)
    train_stage(model=full, batches=image_batches, directory=tmp_path / "a", **kw)
    assert layouts == [True] * 20  # every step ran with NHWC weights
    assert all(p.is_contiguous() for p in full.parameters())  # back to the usual layout
    saved, _ = load_checkpoint(tmp_path / "a" / "final.safetensors")
    assert all(torch.equal(saved[k], v) for k, v in full.state_dict().items())

    interrupted = dying(image_batches, at=12)

    torch.manual_seed(0)
    with pytest.raises(KeyboardInterrupt):
        train_stage(model=TinyConv(), batches=interrupted, directory=tmp_path / "b", **kw)
    resumed = TinyConv()
    train_stage(model=resumed, batches=image_batches, directory=tmp_path / "b", **kw)
    for (k, v), w in zip(full.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(v, w), k


def test_nan_loss_stops_with_step_and_batch(tmp_path):
    def nan_fn(model, batch):
        return {"loss": model(batch["x"]).sum() * float("nan")}

    with pytest.raises(NonFiniteLossError, match="at step 0"):
        train_stage(
            stage="s",
            model=Tiny(),
            step_fn=nan_fn,
            batches=batches,
            cfg=TrainConfig(iters=3),
            directory=tmp_path,
            progress=False,
        )


def test_poly_schedule():
    cfg = TrainConfig(iters=100, warmup_iters=10)
    assert lr_factor(cfg, 0) == pytest.approx(0.1)
    assert lr_factor(cfg, 10) == pytest.approx(1.0)
    assert lr_factor(cfg, 100) == pytest.approx(0.0)


def test_slide_inference_matches_whole_for_a_pixelwise_model():
    images = torch.randint(0, 255, (2, 3, 37, 50), dtype=torch.uint8)

    def fn(x):  # per-pixel scores: windows must reassemble exactly
        return torch.stack([x[:, 0].float(), x[:, 1].float() * 2], 1)

    out = slide_scores(fn, images, crop=16, stride=12)
    assert out.shape == (2, 2, 37, 50)
    assert torch.allclose(out, fn(images))
    small = slide_scores(fn, images[:, :, :10, :10], crop=16, stride=12)  # padded, then cropped
    assert torch.allclose(small, fn(images[:, :, :10, :10]))


@pytest.mark.parametrize("native", [True, False])
def test_amp_auto_trains_in_bf16_only_on_a_cpu_that_multiplies_it_natively(
    tmp_path, monkeypatch, native
):
    import zeroseg.report
    from zeroseg.engine.trainer import resolve_amp

    monkeypatch.setattr(zeroseg.report, "native_bf16_cpu", lambda cpuinfo=None: native)
    expected = "bf16" if native else "none"
    cpu = torch.device("cpu")
    assert resolve_amp("auto", cpu) == expected
    assert [resolve_amp(a, cpu) for a in ("none", "bf16")] == ["none", "bf16"]  # explicit stays
    dtypes = []

    def typed_step(model, batch):
        out = model(batch["x"])
        dtypes.append(out.dtype)
        return {"loss": ((out.float() - batch["y"]) ** 2).mean()}

    kw = dict(stage="s", model=Tiny(), step_fn=typed_step, batches=batches, progress=False)
    train_stage(cfg=TrainConfig(iters=3, amp="auto"), directory=tmp_path, **kw)
    assert dtypes == [torch.bfloat16 if native else torch.float32] * 3
    _, meta = load_checkpoint(tmp_path / "final.safetensors")
    assert meta["amp_resolved"] == expected and meta["train"]["amp"] == "auto"
