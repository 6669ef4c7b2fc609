"""Full-resolution class scores from low-resolution mask logits, one pass over the output.

Per-pixel sigmoid scores of K independent masks (ZegCLIP's non-mutually-exclusive prediction,
Zhou et al., CVPR 2023, Sec. 3.5) at the image's resolution are

    S_k = sigmoid(up(M_k)) - r_k        (up: bilinear, align_corners=False; r_k the seen-class
                                         reduction, 0 for unseen classes)

Done as three whole-tensor operations, each reads and writes K * H * W floats (180 MB at 512 px
with 171 classes) from main memory and the two out-of-place ones allocate it afresh. Here the
classes go a few at a time: each block is upsampled straight into its slice of the one output
tensor, and the sigmoid and the shift run on it while it is still in the CPU's cache. Every
element goes through the same kernels as the whole-tensor version, so the result is
bit-identical (tested).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["sigmoid_scores"]

# Classes per block: 2 x (512 x 512 fp32) = 2 MiB, the L2 cache of this machine's two cores
# together; smaller blocks add per-call overhead, larger ones spill to L3.
BLOCK_BYTES = 2 << 20


def sigmoid_scores(
    logits: Tensor,
    size: tuple[int, int],
    shift: Tensor | None = None,
    *,
    block_bytes: int = BLOCK_BYTES,
) -> Tensor:
    """sigmoid(bilinear(logits, size)) - shift, in fp32, written once.

    Args:
        logits: (B, K, h, w) mask logits (any float dtype; upsampled in fp32).
        size: (H, W) of the output.
        shift: (K,) subtracted from every pixel of class k after the sigmoid (None: nothing).
        block_bytes: how much output each block writes (at least one class).

    Returns:
        (B, K, H, W) fp32, equal to ``F.interpolate(logits.float(), size, mode="bilinear",
        align_corners=False).sigmoid() - shift.view(1, -1, 1, 1)``.
    """
    if logits.ndim != 4:
        raise ValueError(f"sigmoid_scores: logits must be (B, K, h, w), got {tuple(logits.shape)}")
    b, k = logits.shape[:2]
    if shift is not None and tuple(shift.shape) != (k,):
        raise ValueError(f"sigmoid_scores: shift must be ({k},), got {tuple(shift.shape)}")
    height, width = int(size[0]), int(size[1])
    x = logits.float().contiguous()
    out = torch.empty(b, k, height, width, dtype=torch.float32, device=x.device)
    step = max(1, block_bytes // (height * width * 4))
    shift = None if shift is None else shift.to(torch.float32).view(1, k, 1, 1)
    upsample = torch.ops.aten.upsample_bilinear2d.out
    for i in range(b):
        for c in range(0, k, step):
            block = out[i : i + 1, c : c + step]  # contiguous: one image, consecutive classes
            upsample(x[i : i + 1, c : c + step], [height, width], False, None, None, out=block)
            block.sigmoid_()
            if shift is not None:
                block.sub_(shift[:, c : c + step])
    return out
