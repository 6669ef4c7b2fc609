"""``zeroseg bench --train``: the step hook's timings, hand-derived FLOP counts, schedules cut."""

from __future__ import annotations

import pytest
import torch

from zeroseg.bench_train import StageTimer, batch_size, bench_config, train_schedules
from zeroseg.engine.trainer import TrainConfig, step_hooks, train_stage
from zeroseg.runner import model_config

B, IN, OUT = 8, 32, 16


def _batches(start, stop):
    g = torch.Generator().manual_seed(0)
    for step in range(start, stop):
        yield step, {"image": torch.randn(B, IN, generator=g), "label": torch.zeros(B)}


def _step(model, batch):
    return {"loss": model(batch["image"]).square().mean()}


def test_stage_timer_times_the_middle_steps_and_counts_the_last_steps_flops(tmp_path):
    timer = StageTimer()
    torch.manual_seed(0)
    model = torch.nn.Linear(IN, OUT)
    reference = torch.nn.Linear(IN, OUT)
    reference.load_state_dict(model.state_dict())
    cfg = TrainConfig(iters=5, lr=0.1, log_every=5, ckpt_minutes=0)
    with step_hooks(timer):
        train_stage(
            stage="a",
            model=model,
            step_fn=_step,
            batches=_batches,
            cfg=cfg,
            directory=tmp_path / "a",
            progress=False,
        )
    # outside the block the hook is gone: nothing more is recorded
    train_stage(
        stage="b",
        model=reference,
        step_fn=_step,
        batches=_batches,
        cfg=cfg,
        directory=tmp_path / "b",
        progress=False,
    )
    assert torch.equal(model.weight, reference.weight)  # observing a step does not change it
    (row,) = timer.rows({"fp32": 100.0, "bf16": 200.0})
    assert row["stage"] == "a" and row["unit"] == "images" and row["batch"] == B
    assert row["timed_steps"] == 3  # steps 1-3; step 0 warms up, step 4 is counted
    # forward x W^T: 2*B*IN*OUT; backward: grad of W (2*B*IN*OUT); the input needs no gradient
    assert row["gflop_per_step"] * 1e9 == 2 * (2 * B * IN * OUT)
    assert row["images_per_s"] == pytest.approx(B / row["s_per_step"])
    assert row["fraction_of_peak"] == pytest.approx(row["gflops"] / 100.0)
    assert row["peak_rss_mb"] > 0


def test_batch_size_reads_images_or_samples():
    assert batch_size({"image": torch.zeros(3, 1), "label": torch.zeros(3)}) == (3, "images")
    assert batch_size({"features": torch.zeros(7, 2)}) == (7, "samples")
    assert batch_size((torch.zeros(5, 2), torch.zeros(5))) == (5, "samples")
    with pytest.raises(ValueError, match="cannot tell the batch size of a str batch"):
        batch_size("x")


def test_bench_config_cuts_every_stage_of_a_demo_preset():
    cfg = bench_config("zs3net", steps=4)
    assert cfg.train.iters == 4 and cfg.train.ckpt_minutes == 0
    found = train_schedules(model_config(cfg))
    assert {"generator_train", "classifier_train"} <= set(found)
    mc = model_config(cfg)
    for path in found:
        sched = mc
        for part in path.split("."):
            sched = getattr(sched, part)
        assert sched.iters == 4 and sched.ckpt_every == 0, path
    with pytest.raises(ValueError, match=">= 3 steps"):
        bench_config("zs3net", steps=2)


def test_bench_config_applies_overrides_on_top_of_the_cut_schedules():
    cfg = bench_config("zegclip", steps=4, overrides=["model.token_pool=1"])
    assert model_config(cfg).token_pool == 1 and cfg.train.iters == 4
    assert model_config(bench_config("zegclip", steps=4)).token_pool == 2


def test_bench_set_without_train_is_refused_in_one_line():
    from zeroseg.cli import main

    with pytest.raises(SystemExit, match="--set applies to --train only"):
        main(["bench", "--set", "model.token_pool=1"])
