"""``zeroseg bench --train``: training speed of every ShapeWorld demo preset's stages on this machine.

Each method of ``zeroseg demo`` trains in its own subprocess (so peak RSS is its own), from its
ShapeWorld preset with every stage's schedule cut to a few steps, through the same code path
``zeroseg demo`` takes (``runner.train``, the one trainer). A step hook
(``zeroseg.engine.trainer.step_hooks``) observes each stage's steps without changing them:

- the first step is a warm-up (oneDNN picks its kernels, buffers are allocated) and not timed;
- the middle steps are timed (forward, backward, optimiser step; data loading is timed apart);
- the last step runs under ``torch.utils.flop_counter.FlopCounterMode``, which counts the
  matmul / convolution / attention FLOPs of forward and backward (multiply-add = 2).

Throughput is given per second of wall time and per second of process CPU time; GFLOP/s is per
CPU-second against a matmul peak also measured in CPU time, so that other jobs sharing the CPU
(which stretch wall time, not CPU time) distort the ratio least.

Per stage: samples per step, images/s (samples/s for stages whose batches are not images, such
as a generator's), GFLOP per step, achieved GFLOP/s and its fraction of a measured matmul peak
in the stage's precision (bf16 under ``amp: bf16``, or ``auto`` on a CPU that multiplies bf16
natively; else fp32), and the peak RSS of the process
while the stage ran.
"""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch

from zeroseg.engine.memory import reset_peak_rss, status_mib
from zeroseg.engine.trainer import resolve_amp

__all__ = [
    "StageTimer",
    "bench_train",
    "bench_train_one",
    "matmul_peak",
    "reset_peak_rss",
    "status_mib",
    "train_schedules",
]

STEPS = 5  # per stage: 1 warm-up, STEPS - 2 timed, 1 counted


def matmul_peak(dtype: torch.dtype, n: int = 1024, reps: int = 5, clock=time.process_time) -> float:
    """Median GFLOP/s of an n x n x n matmul in ``dtype``, timed by ``clock``.

    By default per second of process CPU time, not wall time: other jobs on the machine
    lengthen the wall time of the measurement and of the training steps alike, but not (much)
    their CPU time. With one thread this is the core's peak; with T threads, per CPU-second
    (T x wall-time peak / T). The inference benchmarks pass ``time.perf_counter`` (wall time).
    """
    a = torch.randn(n, n).to(dtype)
    b = torch.randn(n, n).to(dtype)
    for _ in range(2):
        a @ b
    runs = []
    for _ in range(reps):
        start = clock()
        a @ b
        runs.append(clock() - start)
    return 2 * n**3 / statistics.median(runs) / 1e9


def batch_size(batch: object) -> tuple[int, str]:
    """(samples, unit) of a training batch: images when it holds an ``image`` tensor."""
    if isinstance(batch, dict):
        if isinstance(batch.get("image"), torch.Tensor):
            return int(batch["image"].shape[0]), "images"
        values = list(batch.values())
    elif isinstance(batch, (tuple, list)):
        values = list(batch)
    else:
        values = [batch]
    for v in values:
        if isinstance(v, torch.Tensor) and v.ndim > 0:
            return int(v.shape[0]), "samples"
    raise ValueError(f"cannot tell the batch size of a {type(batch).__name__} batch")


class _GlobalOnly:
    """Stands in for ``FlopCounterMode``'s module tracker: every FLOP counts for "Global"."""

    parents = frozenset({"Global"})

    def __enter__(self) -> _GlobalOnly:
        return self

    def __exit__(self, *exc) -> None:
        return None


@dataclasses.dataclass
class _Stage:
    name: str
    amp: str
    iters: int
    samples: int = 0
    unit: str = "images"
    step_s: list[float] = dataclasses.field(default_factory=list)
    cpu_s: list[float] = dataclasses.field(default_factory=list)
    wait_s: list[float] = dataclasses.field(default_factory=list)
    flops: float = float("nan")
    peak_rss_mb: float = 0.0


class StageTimer:
    """A step hook that times each stage's steps, counts the last one's FLOPs and tracks RSS.

    Use with ``zeroseg.engine.trainer.step_hooks(timer)``. A stage needs at least 3 steps
    (one warm-up, one timed, one counted).
    """

    def __init__(self) -> None:
        self.stages: list[_Stage] = []
        self._last_end: float | None = None

    @contextmanager
    def __call__(self, stage: str, step: int, batch: object, cfg) -> Iterator[None]:
        if not self.stages or self.stages[-1].name != stage or step == 0:
            reset_peak_rss()
            self.stages.append(_Stage(stage, resolve_amp(cfg.amp, torch.device("cpu")), cfg.iters))
            self._last_end = None
        s = self.stages[-1]
        s.samples, s.unit = batch_size(batch)
        begin, cpu = time.perf_counter(), time.process_time()
        if self._last_end is not None and 0 < step < cfg.iters - 1:
            s.wait_s.append(begin - self._last_end)  # data loading, logging between steps
        if step == cfg.iters - 1 and cfg.iters >= 3:
            from torch.utils.flop_counter import FlopCounterMode

            counter = FlopCounterMode(display=False)
            # Totals only: its per-module tracker hooks every module's inputs for autograd and
            # fails on inputs that require grad without a graph (PADing's generator).
            counter.mod_tracker = _GlobalOnly()
            with counter:
                yield
            s.flops = float(counter.get_total_flops())
        else:
            yield
            if step > 0:
                s.step_s.append(time.perf_counter() - begin)
                s.cpu_s.append(time.process_time() - cpu)
        self._last_end = time.perf_counter()
        s.peak_rss_mb = max(s.peak_rss_mb, status_mib("VmHWM"))

    def rows(self, peaks: dict[str, float]) -> list[dict]:
        out = []
        for s in self.stages:
            if not s.step_s:
                raise ValueError(f"stage {s.name!r} ran no timed step ({s.iters} iters; need >= 3)")
            step = statistics.median(s.step_s)
            cpu = max(statistics.median(s.cpu_s), 1e-9)  # a clock tick at least
            precision = "bf16" if s.amp == "bf16" else "fp32"
            gflops = s.flops / cpu / 1e9  # per CPU-second, as the peak
            out.append(
                {
                    "stage": s.name,
                    "unit": s.unit,
                    "batch": s.samples,
                    "amp": s.amp,
                    "timed_steps": len(s.step_s),
                    "s_per_step": step,
                    # process CPU time (all threads): what other jobs' load distorts least
                    "cpu_s_per_step": cpu,
                    f"{s.unit}_per_cpu_s": s.samples / cpu,
                    f"{s.unit}_per_s": s.samples / step,
                    "per_s": s.samples / step,
                    "data_s_per_step": statistics.median(s.wait_s) if s.wait_s else 0.0,
                    "gflop_per_step": s.flops / 1e9,
                    "gflops": gflops,
                    "peak": precision,
                    "fraction_of_peak": gflops / peaks[precision],
                    "peak_rss_mb": s.peak_rss_mb,
                }
            )
        return out


def train_schedules(config: object, prefix: str = "") -> list[str]:
    """Dotted paths of every ``TrainConfig`` inside a method's config dataclass."""
    from zeroseg.engine.trainer import TrainConfig

    out = []
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if isinstance(value, TrainConfig):
            out.append(prefix + f.name)
        elif dataclasses.is_dataclass(value):
            out += train_schedules(value, f"{prefix}{f.name}.")
    return out


def bench_config(method: str, *, steps: int = STEPS, world: str | None = None, overrides=()):
    """The demo preset of ``method`` with every training stage cut to ``steps`` steps."""
    from zeroseg.demo import demo_config
    from zeroseg.runner import model_config

    if steps < 3:
        raise ValueError(
            f"bench --train needs >= 3 steps per stage (warm-up, timed, counted), got {steps}"
        )
    base = demo_config(method, world=world, quick=False, overrides=overrides)
    sets = []
    for path in ["train", *(f"model.{p}" for p in train_schedules(model_config(base)))]:
        sets += [f"{path}.iters={steps}", f"{path}.log_every={steps}", f"{path}.ckpt_every=0"]
        sets += [f"{path}.ckpt_minutes=0", f"{path}.warmup_iters=0"]
    return demo_config(method, world=world, quick=False, overrides=[*overrides, *sets])


def bench_train_one(
    method: str, *, steps: int = STEPS, world: str | None = None, overrides: Sequence[str] = ()
) -> dict:
    """Trains ``method``'s stages ``steps`` steps each in this process and measures them."""
    from zeroseg import runner
    from zeroseg.engine.trainer import step_hooks

    cfg = bench_config(method, steps=steps, world=world, overrides=overrides)
    peaks = {"fp32": matmul_peak(torch.float32), "bf16": matmul_peak(torch.bfloat16)}
    timer = StageTimer()
    with tempfile.TemporaryDirectory() as tmp, step_hooks(timer):
        runner.train(cfg, Path(tmp) / "run", progress=False)
    return {
        "method": method,
        "threads": torch.get_num_threads(),
        "steps_per_stage": steps,
        "matmul_peak_gflops": peaks,
        "stages": timer.rows(peaks),
    }


def _loadavg() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def bench_train(
    methods: Sequence[str] | None = None,
    *,
    steps: int = STEPS,
    world: str | None = None,
    overrides: Sequence[str] = (),
) -> dict:
    """Every method (default: those ``zeroseg demo`` trains), each in a fresh subprocess."""
    from zeroseg.demo import DEFAULT_METHODS, DEMO_PRESETS

    methods = list(methods or DEFAULT_METHODS)
    for m in methods:
        if m not in DEMO_PRESETS:
            raise ValueError(f"unknown method {m!r}; valid: {sorted(DEMO_PRESETS)}")
    load_before = _loadavg()
    rows = []
    print(
        f"{'method':<18} {'stage':<22} {'batch':>5} {'s/step':>7} {'per s':>8} {'CPU s':>7} {'data s':>7} "
        f"{'GFLOP':>7} {'GFLOP/s':>8} {'% peak':>7} {'peak MB':>8}"
    )
    for m in methods:
        cmd = [sys.executable, "-m", "zeroseg.bench_train", m, "--steps", str(steps)]
        cmd += ["--world", world] if world else []
        for o in overrides:
            cmd += ["--set", o]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy())
        if proc.returncode != 0:
            raise RuntimeError(f"bench --train of {m} failed:\n{proc.stderr[-2000:]}")
        row = json.loads(proc.stdout.strip().splitlines()[-1])
        rows.append(row)
        for s in row["stages"]:
            print(
                f"{m:<18} {s['stage']:<22} {s['batch']:>5} {s['s_per_step']:>7.3f} "
                f"{s['per_s']:>8.1f} {s['cpu_s_per_step']:>7.3f} {s['data_s_per_step']:>7.3f} {s['gflop_per_step']:>7.2f} "
                f"{s['gflops']:>8.1f} {100 * s['fraction_of_peak']:>6.1f}% {s['peak_rss_mb']:>8.0f}"
            )
    peaks = rows[0]["matmul_peak_gflops"] if rows else {}
    print(
        "per s: images/s (samples/s for non-image stages) over the median step (forward, "
        "backward, optimiser); CPU s: its process CPU time; data s: between steps. matmul peak "
        + ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in peaks.items())
        + f". Load average before {load_before}, after {_loadavg()}."
    )
    return {
        "steps_per_stage": steps,
        "load_average_before": load_before,
        "load_average_after": _loadavg(),
        "overrides": list(overrides),
        "methods": rows,
    }


def main(argv: Sequence[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(
        description="one method's training stages (a bench_train child)"
    )
    parser.add_argument("method")
    parser.add_argument("--steps", type=int, default=STEPS)
    parser.add_argument("--world")
    parser.add_argument("--set", action="append", default=[], dest="overrides")
    args = parser.parse_args(argv)
    row = bench_train_one(args.method, steps=args.steps, world=args.world, overrides=args.overrides)
    print(json.dumps(row))


if __name__ == "__main__":
    main()
