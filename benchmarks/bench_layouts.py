"""NCHW against channels-last (NHWC) on the two paths session 34 moved to NHWC: the fp32
evaluation forward of the ShapeWorld foundation U-Net (``eval.channels_last``,
``zeroseg.engine.inference.inference_layout``) and the forward + backward of the bilinear
upsampling of class scores in training (``zeroseg.models.upsample.bilinear``).

Prints medians of wall-clock milliseconds and the ratio NCHW / NHWC (> 1: NHWC is faster), and
whether the two layouts gave equal results. Run it alone on the machine: timings on 2 shared
cores are noisy.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_layouts.py [--threads 1] [--reps 9]
"""

from __future__ import annotations

import argparse
import copy

import torch
import torch.nn.functional as F

from zeroseg.bench import median_seconds
from zeroseg.foundation.model import FoundationEncoder
from zeroseg.models.upsample import bilinear


def _foundation(reps: int) -> tuple[float, float, bool]:
    """The foundation's fp32 forward on 50 64-pixel images (make demo's eval batch)."""
    torch.manual_seed(0)
    nchw = FoundationEncoder().eval()
    nhwc = copy.deepcopy(nchw).to(memory_format=torch.channels_last)
    images = torch.rand(50, 3, 64, 64) * 255

    def run(model):
        with torch.no_grad():
            return model.forward_features(images)["patch_proj"]

    same = torch.allclose(run(nchw), run(nhwc), atol=1e-4)
    a = median_seconds(lambda: run(nchw), reps, warmup=1)
    b = median_seconds(lambda: run(nhwc), reps, warmup=1)
    return a * 1e3, b * 1e3, same


def _upsample(reps: int) -> tuple[float, float, bool]:
    """16 maps of 33 classes from 32x32 to 64x64 (the projection loss), forward + backward."""
    torch.manual_seed(0)
    x = torch.randn(16, 33, 32, 32, requires_grad=True)
    grad = torch.randn(16, 33, 64, 64)

    def nchw():
        F.interpolate(x, size=(64, 64), mode="bilinear", align_corners=False).backward(grad)

    def nhwc():
        bilinear(x, (64, 64)).backward(grad)

    x.grad = None
    nchw()
    want = x.grad.clone()
    x.grad = None
    nhwc()
    same = torch.equal(want, x.grad)
    return (
        median_seconds(nchw, reps, warmup=1) * 1e3,
        median_seconds(nhwc, reps, warmup=1) * 1e3,
        same,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--reps", type=int, default=9)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"{args.threads} thread(s), median of {args.reps}")
    print(f"{'path':<52} {'NCHW ms':>8} {'NHWC ms':>8} {'ratio':>6}  same")
    rows = {
        "foundation U-Net, fp32 forward, 50 images": _foundation(args.reps),
        "bilinear 33 classes 32->64, forward + backward": _upsample(args.reps),
    }
    for name, (a, b, same) in rows.items():
        print(f"{name:<52} {a:8.1f} {b:8.1f} {a / b:6.2f}  {'yes' if same else 'no'}")


if __name__ == "__main__":
    main()
