"""zeroseg's CPU dropout (``zeroseg.models.dropout``) against ``torch.dropout``, forward and
backward, on the attention-weight shape of the demo's ZegCLIP training step.

Prints medians of wall-clock milliseconds and the ratio torch / zeroseg (> 1: zeroseg is
faster). Run it alone on the machine: timings on 2 shared cores are noisy.

    .venv/bin/python benchmarks/bench_dropout.py [--threads 2] [--reps 20]
"""

from __future__ import annotations

import argparse

import torch

from zeroseg.bench import median_seconds
from zeroseg.models.dropout import dropout

# (batch, heads, classes, tokens) of the demo's ZegCLIP decoder: 16 images, 4 heads, the
# default world's 33 seen classes, 32x32 tokens
SHAPE = (16, 4, 33, 1024)


def _median_ms(fn, reps: int) -> float:
    return median_seconds(fn, reps, warmup=1) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--p", type=float, default=0.1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"shape {SHAPE}, p {args.p}, {args.threads} thread(s), median of {args.reps}")
    print(f"{'dtype':>9} {'pass':>13} {'torch ms':>9} {'zeroseg ms':>11} {'ratio':>6}")
    for dtype in (torch.float32, torch.bfloat16):
        for name, (ref, ours) in _passes(dtype, args.p).items():
            a, b = _median_ms(ref, args.reps), _median_ms(ours, args.reps)
            print(
                f"{str(dtype).removeprefix('torch.'):>9} {name:>13} {a:9.2f} {b:11.2f} {a / b:6.2f}"
            )


def _passes(dtype: torch.dtype, p: float) -> dict:
    """pass name -> (torch's, zeroseg's) callables on one (SHAPE, dtype) input."""
    x = torch.randn(SHAPE, dtype=dtype, requires_grad=True)
    grad = torch.randn(SHAPE, dtype=dtype)
    return {
        "forward": (
            lambda: torch.dropout(x.detach(), p, True),
            lambda: dropout(x.detach(), p),
        ),
        "fwd+backward": (
            lambda: torch.dropout(x, p, True).backward(grad),
            lambda: dropout(x, p).backward(grad),
        ),
    }


if __name__ == "__main__":
    main()
