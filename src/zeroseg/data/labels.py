"""Label maps as the training stages use them: seen-label lookup, nearest downsampling and
confidence-ranked pseudo-labels. Shared by every method, so no method imports another for them."""

from __future__ import annotations

import torch
from torch import Tensor

from zeroseg.data.classes import ClassSplit


def seen_position_lookup(split: ClassSplit) -> torch.Tensor:
    """(256,) int64: full label -> position among the seen classes; unseen/void -> ignore."""
    table = torch.full((256,), split.ignore_index, dtype=torch.int64)
    for pos, c in enumerate(split.seen):
        table[c] = pos
    return table


def downsample_labels(labels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, H, W) labels -> (B, h, w) by nearest sampling (no label is ever interpolated)."""
    if tuple(labels.shape[-2:]) == tuple(size):
        return labels.long().clamp(0, 255)
    out = torch.nn.functional.interpolate(labels[:, None].float(), size=size, mode="nearest")
    return out[:, 0].long().clamp(0, 255)


def select_top_percent(
    pred: Tensor,
    conf: Tensor,
    classes: list[int],
    percent: float,
    ignore: int = 255,
    dtype: torch.dtype = torch.int64,
) -> Tensor:
    """ZS5Net pseudo-labels: per class, the top ``percent`` % most confident pixels predicted as it.

    Args:
        pred: (N, H, W) predicted class per pixel.
        conf: (N, H, W) confidence of that prediction.
        classes: the classes to pseudo-label (the unseen ones).
        percent: p in (0, 100].
        ignore: the value of pixels not selected.
        dtype: of the result (uint8 holds classes below 255 in an eighth of int64's memory).

    Returns:
        (N, H, W) ``dtype``: the class where a pixel is selected, ``ignore`` elsewhere.
    """
    if not 0 < percent <= 100:
        raise ValueError(f"pseudo_percent must be in (0, 100], got {percent}")
    out = torch.full_like(pred, ignore, dtype=dtype)
    for c in classes:
        mask = pred == c
        n = int(mask.sum())
        if n == 0:
            continue
        keep = max(1, int(round(n * percent / 100)))
        # The keep-th largest confidence; ties at the threshold are all kept. The threshold is
        # one of ``conf``'s values, so comparing in ``conf``'s own dtype is exact (and makes no
        # fp32 copy of every pixel's confidence per class).
        threshold = torch.topk(conf[mask].float(), keep).values[-1].to(conf.dtype)
        mask &= conf >= threshold
        out[mask] = c
    return out
