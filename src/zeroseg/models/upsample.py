"""Bilinear resizing of score maps, in the layout where the CPU kernel is fast.

torch's CPU bilinear kernel for the usual (N, C, H, W) layout is several times slower than its
channels-last one when the maps have many channels (one per class): measured on this project's
2-core CPU, 50 maps of 44 classes from 32x32 to 64x64 took 111 ms against 33 ms through the
channels-last kernel, the two layout copies included (docs/benchmarks.md). Its backward is
slower too: 16 maps of 33 classes, 32x32 to 64x64, forward + backward 16.4 ms against 12.5 ms
at one thread (``benchmarks/bench_layouts.py``, session 34). Both kernels compute every output
value and every input gradient the same way, so the results are the same tensors, bit for bit
(tested, gradients included).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["bilinear"]


def bilinear(x: torch.Tensor, size, *, align_corners: bool = False) -> torch.Tensor:
    """``F.interpolate(x, size, mode="bilinear", align_corners=...)``, returned contiguous.

    The input goes through the channels-last kernel and comes back in the usual layout: the same
    values and gradients, faster.

    Args:
        x: (B, C, h, w) float maps.
        size: (H, W) of the output.
        align_corners: as ``F.interpolate``'s.
    """
    if x.dim() != 4:
        raise ValueError(f"bilinear needs (B, C, h, w) maps, got shape {tuple(x.shape)}")
    size = (int(size[0]), int(size[1]))
    x = x.contiguous(memory_format=torch.channels_last)
    out = F.interpolate(x, size=size, mode="bilinear", align_corners=align_corners)
    return out.contiguous()
