"""``zeroseg.models.attention.attention`` (fp32 inside bf16 autocast) against
``F.scaled_dot_product_attention`` on bf16 inputs, forward + backward, on the attention shapes of
the demo's mask models and of a 64-token encoder; with ``--inference``, forwards without autograd
under bf16 autocast on long sequences (the query-block path) against SDPA in fp32 (the path
before it) and in bf16, and the same query blocks in fp32 (which fp32 inference does not use).

Prints medians of wall-clock milliseconds and the ratio bf16 SDPA / zeroseg (> 1: zeroseg is
faster). Run it alone on the machine: timings on 2 shared cores are noisy.

    .venv/bin/python benchmarks/bench_attention.py [--threads 1] [--reps 15] [--inference]
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from zeroseg.bench import median_seconds
from zeroseg.models.attention import _query_blocks, attention

# (batch, heads, queries, keys, channels per head)
SHAPES = {
    "AlignZeg refiner: 32x32 tokens -> 16 queries": (16, 4, 1024, 16, 16),
    "mask decoder: 16 queries -> 32x32 tokens": (16, 4, 16, 1024, 16),
    "encoder self-attention: 65 tokens": (16, 4, 65, 65, 16),
}
INFERENCE_SHAPES = {
    "ViT-B/16 at 512 px + 10 prompts: 1035 tokens": (1, 12, 1035, 1035, 64),
    "ViT-B/16 at 384 px: 577 tokens": (1, 12, 577, 577, 64),
    "ViT-L/14 at 336 px: 577 tokens": (1, 16, 577, 577, 64),
}


def _median_ms(fn, reps: int) -> float:
    return median_seconds(fn, reps, warmup=1) * 1e3


def _step(fn, shape):
    b, h, n, length, d = shape
    q = torch.randn(b, h, n, d, dtype=torch.bfloat16, requires_grad=True)
    k = torch.randn(b, h, length, d, dtype=torch.bfloat16, requires_grad=True)
    v = torch.randn(b, h, length, d, dtype=torch.bfloat16, requires_grad=True)

    def run() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = fn(q, k, v)
        out.float().sum().backward()

    return run


def _forward(fn, shape):
    b, h, n, length, d = shape
    q = torch.randn(b, h, n, d, dtype=torch.bfloat16)
    k = torch.randn(b, h, length, d, dtype=torch.bfloat16)
    v = torch.randn(b, h, length, d, dtype=torch.bfloat16)

    def run() -> None:
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
            fn(q, k, v)

    return run


def _sdpa_fp32(q, k, v):
    with torch.autocast("cpu", enabled=False):
        return F.scaled_dot_product_attention(q.float(), k.float(), v.float()).bfloat16()


def _blocks_fp32(q, k, v):
    """The query blocks in fp32: what fp32 inference would get from them (it keeps SDPA)."""
    with torch.autocast("cpu", enabled=False):
        return _query_blocks(q.float(), k.float(), v.float()).bfloat16()


def inference(reps: int) -> None:
    print(
        f"{'inference shape (no autograd)':<46} {'SDPA fp32':>10} {'SDPA bf16':>10} "
        f"{'zeroseg':>8} {'ratio':>6} {'blocks fp32':>12}"
    )
    for name, shape in INFERENCE_SHAPES.items():
        ms = [
            _median_ms(_forward(fn, shape), reps)
            for fn in (_sdpa_fp32, F.scaled_dot_product_attention, attention, _blocks_fp32)
        ]
        print(
            f"{name:<46} {ms[0]:10.2f} {ms[1]:10.2f} {ms[2]:8.2f} {ms[0] / ms[2]:6.2f} {ms[3]:12.2f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--reps", type=int, default=15)
    parser.add_argument(
        "--inference",
        action="store_true",
        help="time long-sequence forwards without autograd (ratio: SDPA fp32 / zeroseg)",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.inference:
        print(f"forward, bf16 autocast, {args.threads} thread(s), median of {args.reps}")
        inference(args.reps)
        return
    print(
        f"forward + backward under bf16 autocast, {args.threads} thread(s), median of {args.reps}"
    )
    print(f"{'shape':<46} {'bf16 SDPA ms':>12} {'zeroseg ms':>11} {'ratio':>6}")
    for name, shape in SHAPES.items():
        a = _median_ms(_step(F.scaled_dot_product_attention, shape), args.reps)
        b = _median_ms(_step(attention, shape), args.reps)
        print(f"{name:<46} {a:12.2f} {b:11.2f} {a / b:6.2f}")


if __name__ == "__main__":
    main()
