"""Two small operations session 28 made faster, timed on this CPU (docs/benchmarks.md, session 28).

- ``upsample``: score maps resized 32 -> 64 px by ``F.interpolate`` in the usual NCHW layout
  against ``zeroseg.models.upsample.bilinear`` (channels-last kernel, layout copies included), at
  the evaluation shape (50 images, 44 classes) and the training shape (16, 33); checks that the
  two give the same tensor.
- ``matcher``: ``zeroseg.models.matching.hungarian_match`` on a batch shaped like the ShapeWorld
  mask model's (16 images, 16 queries, 33 seen classes + no-object, 32x32 masks, 1-4 targets per
  image). Run it under ``PYTHONPATH`` of two checkouts to compare code versions.

Prints medians of wall-clock milliseconds. Run it alone on the machine: timings on 2 shared cores
are noisy.

    .venv/bin/python benchmarks/bench_ops.py [--threads 2] [--reps 20] [--only upsample|matcher]
"""

from __future__ import annotations

import argparse
from functools import partial

import torch
import torch.nn.functional as F
from bench_dropout import _median_ms  # the benchmarks' shared timer (this script's directory)

from zeroseg.models.matching import Target, hungarian_match
from zeroseg.models.upsample import bilinear


def _plain(x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, size=(64, 64), mode="bilinear", align_corners=False)


def bench_upsample(reps: int) -> None:
    print("| shape (B, K, 32, 32) -> 64 px | F.interpolate NCHW ms | bilinear ms | ratio | equal |")
    print("|---|---:|---:|---:|---|")
    for shape in ((50, 44, 32, 32), (16, 33, 32, 32)):
        x = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
        with torch.inference_mode():
            plain = _median_ms(partial(_plain, x), reps)
            ours = _median_ms(partial(bilinear, x, (64, 64)), reps)
            same = torch.equal(bilinear(x, (64, 64)), _plain(x))
        print(f"| {shape} | {plain:.1f} | {ours:.1f} | {plain / ours:.2f} | {same} |")


def bench_matcher(reps: int) -> None:
    g = torch.Generator().manual_seed(0)
    b, n, k, side = 16, 16, 34, 32
    logits = torch.randn(b, n, k, generator=g)
    masks = torch.randn(b, n, side, side, generator=g) * 3
    targets = []
    for i in range(b):
        m = 1 + i % 4
        labels = torch.randperm(k - 1, generator=g)[:m]
        owner = torch.randint(0, m, (side, side), generator=g)
        targets.append(
            Target(
                labels=labels,
                masks=(owner[None] == torch.arange(m)[:, None, None]).float(),
                valid=None,
            )
        )
    ms = _median_ms(lambda: hungarian_match(logits, masks, targets), reps)
    print(
        f"hungarian_match, {b} images x {n} queries, {side}x{side} masks: {ms:.2f} ms (median of {reps})"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--only", choices=("upsample", "matcher"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.only in (None, "upsample"):
        bench_upsample(args.reps)
    if args.only in (None, "matcher"):
        bench_matcher(args.reps)


if __name__ == "__main__":
    main()
