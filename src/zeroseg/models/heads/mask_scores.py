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

When only the segmentation is wanted (the argmax over classes), :func:`sigmoid_labels` gets it
without the (K, H, W) scores at all: an output pixel's upsampled logit is a convex combination of
the four low-resolution logits around it, so it lies between their minimum and maximum. A class
whose best case there is below some other class's worst case cannot win at any pixel of that
cell; only the classes that can win in some cell of the image are upsampled, into a running
argmax. The rest cost work at low resolution only.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["candidate_classes", "sigmoid_labels", "sigmoid_scores"]

# Classes per block: 2 x (512 x 512 fp32) = 2 MiB, the L2 cache of this machine's two cores
# together; smaller blocks add per-call overhead, larger ones spill to L3.
BLOCK_BYTES = 2 << 20


def _check_shapes(name: str, logits: Tensor, shift: Tensor | None) -> tuple[int, int]:
    """(B, K) of (B, K, h, w) logits and a (K,) shift (or None); a clear error otherwise."""
    if logits.ndim != 4:
        raise ValueError(f"{name}: logits must be (B, K, h, w), got {tuple(logits.shape)}")
    b, k = logits.shape[:2]
    if shift is not None and tuple(shift.shape) != (k,):
        raise ValueError(f"{name}: shift must be ({k},), got {tuple(shift.shape)}")
    return b, k


def _shift_or_zeros(shift: Tensor | None, k: int, device: torch.device) -> Tensor:
    """(K,) fp32 shift on ``device``; zeros for None (nothing subtracted)."""
    return torch.zeros(k, device=device) if shift is None else shift.to(device, torch.float32)


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
    b, k = _check_shapes("sigmoid_scores", logits, shift)
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


def sigmoid_labels(
    logits: Tensor,
    size: tuple[int, int],
    shift: Tensor | None = None,
    *,
    block_bytes: int = BLOCK_BYTES,
) -> Tensor:
    """argmax over classes of :func:`sigmoid_scores` ``(logits, size, shift)``, without them.

    Each output pixel's upsampled logit lies between the minimum and the maximum of the (up to)
    four low-resolution logits it is interpolated from. Per such cell, a class can win at one of
    its pixels only if ``sigmoid(its maximum) - shift`` reaches the largest
    ``sigmoid(minimum) - shift`` of any class; the classes that can win in some cell of an image
    are upsampled (by :func:`sigmoid_scores`, block by block, into a running argmax), the others
    never are. Every value compared is the one ``sigmoid_scores`` computes and the candidates go
    in class order, so the labels equal ``sigmoid_scores(...).argmax(1)``, ties included.

    Args:
        logits: (B, K, h, w) mask logits (any float dtype; computed in fp32).
        size: (H, W) of the output.
        shift: (K,) subtracted from class k's sigmoid (None: nothing).
        block_bytes: scores computed at once (at least one class).

    Returns:
        (B, H, W) int64 class indices.
    """
    b, k = _check_shapes("sigmoid_labels", logits, shift)
    height, width = int(size[0]), int(size[1])
    x = logits.float()
    shift = _shift_or_zeros(shift, k, x.device)
    step = max(1, block_bytes // (height * width * 4))
    out = torch.empty(b, height, width, dtype=torch.long, device=x.device)
    for i in range(b):
        classes = candidate_classes(x[i], shift)
        best = torch.full((height, width), float("-inf"), device=x.device)
        label = torch.zeros(height, width, dtype=torch.long, device=x.device)
        for c in range(0, len(classes), step):
            block = classes[c : c + step]
            scores = sigmoid_scores(x[i : i + 1, block], (height, width), shift[block])[0]
            value, index = scores.max(0)  # first maximum: the lowest class of the block
            better = value > best  # strictly: an earlier (lower) class keeps a tie
            best = torch.where(better, value, best)
            label = torch.where(better, block[index], label)
        out[i] = label
    return out


def candidate_classes(x: Tensor, shift: Tensor | None = None) -> Tensor:
    """Ascending indices of the classes of (K, h, w) logits that can be the argmax of
    ``sigmoid(bilinear(x)) - shift`` at some output pixel (a superset: see :func:`sigmoid_labels`;
    ``shift`` None: nothing subtracted)."""
    k = x.shape[0]
    shift = _shift_or_zeros(shift, k, x.device)
    # Cell (r, c): rows {r, min(r + 1, h - 1)} x columns {c, min(c + 1, w - 1)}, which hold the
    # taps of every output pixel, at any output size (align_corners=False, source clamped at 0).
    padded = torch.nn.functional.pad(x[None], (0, 1, 0, 1), mode="replicate")[0]
    hi = torch.nn.functional.max_pool2d(padded, 2, stride=1)
    lo = -torch.nn.functional.max_pool2d(-padded, 2, stride=1)
    # The interpolation's weights sum to 1 only up to rounding: widen the range by more than that.
    hi = hi + 1e-5 * (hi.abs() + 1)
    lo = lo - 1e-5 * (lo.abs() + 1)
    best = hi.sigmoid_().sub_(shift.view(k, 1, 1))  # each class's best case in each cell
    worst = lo.sigmoid_().sub_(shift.view(k, 1, 1)).amax(0)  # the best worst case of the cell
    return (best >= worst).flatten(1).any(1).nonzero().flatten()
