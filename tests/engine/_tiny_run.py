"""A tiny training run in its own process, for the distributed and kill/resume tests.

Usage: python _tiny_run.py OUT_DIR [sleep_per_step]; under torch.multiprocessing it is imported.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

from zeroseg.data.loader import StepLoader, StepSampler
from zeroseg.engine.trainer import TrainConfig, train_stage


class Data(torch.utils.data.Dataset):
    def __len__(self):
        return 64

    def __getitem__(self, i):
        g = torch.Generator().manual_seed(i)
        x = torch.randn(6, generator=g)
        return {"x": x, "y": x[:3].sum(0, keepdim=True)}


def model_fn():
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Dropout(0.2), torch.nn.Linear(16, 1)
    )


def step_fn(model, batch):
    return {"loss": ((model(batch["x"]) - batch["y"]) ** 2).mean()}


def run(out: Path, sleep: float = 0.0, iters: int = 30, ckpt_every: int = 5) -> torch.nn.Module:
    model = model_fn()
    data = Data()
    loader = StepLoader(data, StepSampler(len(data), 8, seed=1))

    def batches(start, stop):
        for step, batch in loader(start, stop):
            if sleep:
                time.sleep(sleep)
            yield step, batch

    cfg = TrainConfig(
        iters=iters,
        lr=0.05,
        optimizer="sgd",
        ckpt_every=ckpt_every,
        keep_ckpts=2,
        seed=2,
        scheduler="poly",
    )
    train_stage(
        stage="tiny",
        model=model,
        step_fn=step_fn,
        batches=batches,
        cfg=cfg,
        directory=out,
        progress=False,
    )
    return model


if __name__ == "__main__":
    torch.set_num_threads(1)
    run(Path(sys.argv[1]), float(sys.argv[2]) if len(sys.argv) > 2 else 0.0)
