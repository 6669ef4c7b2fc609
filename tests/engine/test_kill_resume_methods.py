"""SIGKILL a multi-stage method mid-stage; with the default checkpoint settings (wall-time
checkpoints, scaled down here), the resumed run ends with the weights of an uninterrupted one."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from zeroseg.engine.checkpoint import load_checkpoint

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
import _method_run  # noqa: E402

sys.path.insert(0, str(HERE.parent / "methods"))
from _tiny_mask import FIT_MASK  # noqa: E402

FAST = 0.0005  # minutes (30 ms): the default 5-minute cadence, scaled to a 1-second run

ZS3NET = {
    "method": "zs3net",
    "data": {"dataset": "shapeworld", "train_limit": 32},
    "text": {"encoder": "attributes", "templates": "none"},
    "train": {"iters": 6, "batch_size": 4, "lr": 0.01},
    "model": {
        "generator": {"bank_images": 16, "bank_per_class": 32, "pixels_per_class": 16},
        "generator_train": {"iters": 6, "lr": 0.0002},
        "classifier_train": {"iters": 6, "lr": 0.01},
    },
}
PADING = {
    "method": "pading",
    "data": {"dataset": "shapeworld", "protocol": "strict", "train_limit": 48},
    "text": {"encoder": "attributes", "templates": "none"},
    "train": {"iters": 6, "batch_size": 4, "lr": 0.003},
    "model": {
        "mask": FIT_MASK,
        "generator": {"primitives": 32, "dim": 32, "layers": 2, "heads": 2, "ffn_dim": 32},
        "real_per_class": 16,
        "fake_per_class": 16,
        "generator_train": {"iters": 6, "batch_size": 1, "lr": 0.002, "scheduler": "constant"},
        "classifier_train": {"iters": 6, "batch_size": 128, "lr": 0.005, "scheduler": "cosine"},
    },
}


def _with_cadence(cfg: dict, world: Path, minutes: float | None) -> dict:
    cfg = json.loads(json.dumps(cfg))
    cfg["data"]["world"] = str(world)
    if minutes is not None:
        for section in (
            cfg["train"],
            cfg["model"]["generator_train"],
            cfg["model"]["classifier_train"],
        ):
            section["ckpt_minutes"] = minutes
    return cfg


@pytest.mark.parametrize(
    "cfg, second_stage",
    [(ZS3NET, "_shared/zs3-generator-*"), (PADING, "run/generator")],
    ids=["zs3net", "pading"],
)
def test_sigkill_mid_stage_resumes_to_the_uninterrupted_weights(
    cfg, second_stage, tiny_world, tmp_path
):
    torch.set_num_threads(1)
    _method_run.run(_with_cadence(cfg, tiny_world, None), tmp_path / "full" / "run")

    killed = tmp_path / "killed"
    config = tmp_path / "cfg.json"
    config.write_text(json.dumps(_with_cadence(cfg, tiny_world, FAST)))
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
    }
    proc = subprocess.Popen(
        # Only the second stage is slowed (0.5 s a step): the kill at its first checkpoint
        # lands with seconds to spare, even on a loaded machine.
        [
            sys.executable,
            str(HERE / "_method_run.py"),
            str(config),
            str(killed / "run"),
            "0.5",
            "generator",
        ],
        env=env,
    )
    deadline = time.time() + 600  # generous: the machine may be loaded
    while not list(killed.glob(f"{second_stage}/step-*.safetensors")):
        assert time.time() < deadline and proc.poll() is None, "no checkpoint in the 2nd stage"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    (stage,) = killed.glob(second_stage)
    assert not (stage / "final.safetensors").exists()  # killed mid-stage
    assert not (killed / "run" / "model.safetensors").exists()

    starts = _method_run.run(_with_cadence(cfg, tiny_world, FAST), killed / "run")
    # The first stage is loaded, not retrained; the killed one continues from its checkpoint.
    assert starts[0][0] == "generator" and starts[0][1] > 0, starts
    a = load_checkpoint(tmp_path / "full" / "run" / "model.safetensors")[0]
    b = load_checkpoint(killed / "run" / "model.safetensors")[0]
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_every_stage_of_every_preset_checkpoints_by_default():
    from zeroseg.config import PRESET_DIR, load_config
    from zeroseg.engine.trainer import TrainConfig
    from zeroseg.runner import check_config, model_config

    for preset in sorted(PRESET_DIR.glob("*.yaml")):
        cfg = load_config(preset)
        check_config(cfg)
        stages = [cfg.train]
        stack = [model_config(cfg)]
        while stack:  # every TrainConfig nested anywhere in the method's config
            obj = stack.pop()
            for value in vars(obj).values():
                if isinstance(value, TrainConfig):
                    stages.append(value)
                elif hasattr(value, "__dataclass_fields__"):
                    stack.append(value)
        for t in stages:
            assert t.ckpt_minutes > 0 or 0 < t.ckpt_every < t.iters, (preset.name, t)


def test_checkpoint_cadence():
    from zeroseg.engine.trainer import TrainConfig, checkpoint_due

    t = TrainConfig(iters=100, ckpt_every=10, ckpt_minutes=5)
    assert [s for s in range(100) if checkpoint_due(t, s, 0.0)] == [
        9,
        19,
        29,
        39,
        49,
        59,
        69,
        79,
        89,
    ]
    assert checkpoint_due(t, 3, 300.0) and not checkpoint_due(t, 3, 299.0)
    assert not checkpoint_due(t, 99, 1e9)  # the last step: final.safetensors follows
    off = TrainConfig(iters=100, ckpt_every=0, ckpt_minutes=0)
    assert not any(checkpoint_due(off, s, 1e9) for s in range(100))
