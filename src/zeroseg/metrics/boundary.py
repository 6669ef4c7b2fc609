"""Boundary F-measure of semantic label maps.

The boundary precision / recall / F of the DAVIS benchmark (Perazzi et al., CVPR 2016, Sec. 3.1,
after Martin et al., TPAMI 2004), applied per class to multi-class label maps as boundary-quality
studies of zero-shot segmentation do (SAZS, CVPR 2023):

    P = |{b in B_pred : a boundary pixel of the same class in B_gt lies within d}| / |B_pred|
    R = |{b in B_gt : a boundary pixel of the same class in B_pred lies within d}| / |B_gt|
    F = 2PR / (P + R)

Definitions used here:

- a pixel is a boundary pixel of a label map when one of its 4-neighbours has a different label;
  its class is its own label, so both sides of an edge carry a boundary pixel of their class;
- ignore pixels (ground truth = ``ignore_index``) are excluded: they are never boundary pixels and
  a labelled pixel next to one is not made a boundary by it (the prediction is read only where the
  ground truth is labelled). Edges the ground truth does not draw are not scored, so on datasets
  that outline objects with a void band (PASCAL VOC) object/background edges are not scored;
- "within d" is Euclidean distance <= d (a disk, as DAVIS's dilation by ``disk(d)``), with
  d = max(1, ceil(0.01 · sqrt(H² + W²))) pixels by default (1% of the image diagonal);
- DAVIS's conventions for empty sets: no boundary in either map gives P = R = 1; boundaries only
  in the ground truth give P = 1, R = 0; only in the prediction P = 0, R = 1.

P, R and F are computed per image and averaged over images; values are in percent.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from scipy import ndimage

_STATE_KEYS = ("precision", "recall", "f", "count")


def _as_numpy(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def default_tolerance(height: int, width: int) -> int:
    """max(1, ceil(1% of the image diagonal)) pixels."""
    return max(1, math.ceil(0.01 * math.hypot(height, width)))


def boundary_map(labels: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """(H, W) bool: valid pixels with a valid 4-neighbour of a different label.

    Args:
        labels: (H, W) integer labels.
        valid: (H, W) bool, the pixels that take part (neighbours outside it are not compared).
    """
    b = np.zeros(labels.shape, dtype=bool)
    horiz = (labels[:, 1:] != labels[:, :-1]) & valid[:, 1:] & valid[:, :-1]
    b[:, 1:] |= horiz
    b[:, :-1] |= horiz
    vert = (labels[1:, :] != labels[:-1, :]) & valid[1:, :] & valid[:-1, :]
    b[1:, :] |= vert
    b[:-1, :] |= vert
    return b


def _within(source: np.ndarray, target: np.ndarray, tolerance: float) -> int:
    """How many ``source`` pixels have a ``target`` pixel within ``tolerance`` (Euclidean)."""
    if not source.any() or not target.any():
        return 0
    # All pixels of both sets lie in their joint bounding box, so distances inside it are exact.
    rows = np.flatnonzero((source | target).any(1))
    cols = np.flatnonzero((source | target).any(0))
    box = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
    dist = ndimage.distance_transform_edt(~target[box])
    return int((dist[source[box]] <= tolerance).sum())


def boundary_scores(
    pred: np.ndarray | torch.Tensor,
    gt: np.ndarray | torch.Tensor,
    *,
    ignore_index: int = 255,
    tolerance: float | None = None,
) -> tuple[float, float, float]:
    """Boundary precision, recall and F of one image, in [0, 1].

    Args:
        pred: (H, W) predicted class per pixel.
        gt: (H, W) ground-truth class per pixel, ``ignore_index`` for void.
        ignore_index: void label of the ground truth.
        tolerance: match distance in pixels; None for :func:`default_tolerance`.
    """
    pred, gt = _as_numpy(pred).astype(np.int64), _as_numpy(gt).astype(np.int64)
    if pred.ndim != 2 or pred.shape != gt.shape:
        raise ValueError(
            f"label maps must be (H, W) and equal: prediction {pred.shape}, ground truth {gt.shape}"
        )
    d = default_tolerance(*gt.shape) if tolerance is None else float(tolerance)
    if d < 0:
        raise ValueError(f"boundary tolerance must be >= 0 pixels, got {d}")
    valid = gt != ignore_index
    b_pred, b_gt = boundary_map(pred, valid), boundary_map(gt, valid)
    n_pred, n_gt = int(b_pred.sum()), int(b_gt.sum())
    if n_pred == 0 and n_gt == 0:
        return 1.0, 1.0, 1.0
    hit_pred = hit_gt = 0
    for c in np.union1d(pred[b_pred], gt[b_gt]):
        bp, bg = b_pred & (pred == c), b_gt & (gt == c)
        hit_pred += _within(bp, bg, d)
        hit_gt += _within(bg, bp, d)
    precision = hit_pred / n_pred if n_pred else 1.0
    recall = hit_gt / n_gt if n_gt else 1.0
    f = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return precision, recall, f


class BoundaryFScore:
    """reset / process / evaluate of the mean per-image boundary precision, recall and F.

    Args:
        ignore_index: void label of the ground truth.
        tolerance: match distance in pixels; None for 1% of each image's diagonal (at least 1).
    """

    def __init__(self, ignore_index: int = 255, tolerance: float | None = None):
        if tolerance is not None and tolerance < 0:
            raise ValueError(f"boundary tolerance must be >= 0 pixels, got {tolerance}")
        self.ignore_index, self.tolerance = ignore_index, tolerance
        self.reset()

    def reset(self) -> None:
        self._sums = np.zeros(3, np.float64)  # precision, recall, F
        self._count = 0

    def process(self, pred: np.ndarray | torch.Tensor, gt: np.ndarray | torch.Tensor) -> None:
        """Adds images: ``pred`` and ``gt`` are (H, W) or (B, H, W) class indices."""
        p, g = _as_numpy(pred), _as_numpy(gt)
        if p.shape != g.shape or p.ndim not in (2, 3):
            raise ValueError(
                f"expected (H, W) or (B, H, W) maps of one shape: prediction {p.shape}, "
                f"ground truth {g.shape}"
            )
        for pi, gi in zip(p.reshape(-1, *p.shape[-2:]), g.reshape(-1, *g.shape[-2:])):
            self._sums += boundary_scores(
                pi, gi, ignore_index=self.ignore_index, tolerance=self.tolerance
            )
            self._count += 1

    def state(self) -> dict[str, torch.Tensor]:
        """Sums of per-image ``precision, recall, f`` and the image ``count``: sum across ranks."""
        return {
            "precision": torch.tensor(self._sums[0], dtype=torch.float64),
            "recall": torch.tensor(self._sums[1], dtype=torch.float64),
            "f": torch.tensor(self._sums[2], dtype=torch.float64),
            "count": torch.tensor(self._count, dtype=torch.int64),
        }

    def merge(self, other_state: Mapping[str, torch.Tensor | np.ndarray]) -> None:
        """Adds another evaluator's :meth:`state` (e.g. another rank's) to this one."""
        missing = [k for k in _STATE_KEYS if k not in other_state]
        if missing:
            raise KeyError(f"boundary state has no {missing}; expected keys {_STATE_KEYS}")
        self._sums += [float(_as_numpy(other_state[k])) for k in ("precision", "recall", "f")]
        self._count += int(_as_numpy(other_state["count"]))

    def evaluate(self) -> dict[str, float]:
        """``boundary_f``, ``boundary_precision``, ``boundary_recall`` (percent; 0 if no image)."""
        mean = self._sums / self._count * 100 if self._count else np.zeros(3)
        return {
            "boundary_f": float(mean[2]),
            "boundary_precision": float(mean[0]),
            "boundary_recall": float(mean[1]),
        }
