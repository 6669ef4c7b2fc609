"""A tiny multi-stage method run in its own process, for the kill-and-resume test.

Usage: python _method_run.py CONFIG.json RUN_DIR SLEEP_PER_STEP STAGE
Every training step of STAGE sleeps SLEEP seconds, so the test can kill it mid-stage.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

from zeroseg import runner
from zeroseg.config import load_config
from zeroseg.engine import trainer


def run(cfg: dict, directory: Path, sleep: float = 0.0, stage: str = "") -> list[tuple[str, int]]:
    """Trains ``cfg`` into ``directory``; returns ``(stage, first step)`` of each stage trained."""
    torch.set_num_threads(1)
    real = trainer.train_stage
    starts: list[tuple[str, int]] = []

    def slowed(**kw):
        batches = kw["batches"]

        def paced(start, stop):
            starts.append((kw["stage"], start))
            for step, batch in batches(start, stop):
                if kw["stage"] == stage:
                    time.sleep(sleep)
                yield step, batch

        return real(**{**kw, "batches": paced})

    trainer.train_stage = slowed
    try:
        runner.train(load_config(cfg), directory, progress=False)
    finally:
        trainer.train_stage = real
    return starts


if __name__ == "__main__":
    run(
        json.loads(Path(sys.argv[1]).read_text()),
        Path(sys.argv[2]),
        float(sys.argv[3]),
        sys.argv[4],
    )
