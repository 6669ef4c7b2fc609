"""How much the choice of images moves a gap: per-image confusion matrices and a paired bootstrap.

A report's figures are computed on one fixed sample of images (ShapeWorld's first 200 or all 500
of ``test``). The seed spread measures how training moves a row on that sample, not how another
sample of images would move it. The paired bootstrap (Efron & Tibshirani 1993, ch. 16; the
paired form of Koehn 2004's test for machine translation) resamples the *images* with
replacement, the same draw for every seed of both rows, recomputes each row's mean over seeds
from the resampled images' summed confusion matrices, and reports a percentile interval of the
difference. Seeds and models stay as trained: the interval is the image-sample part of the
uncertainty, to read beside the seed spread, not instead of it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from zeroseg.metrics.semantic import confusion_matrix

__all__ = ["ImageConfusions", "group_scores", "paired_gap_interval"]

GAP_METRICS = ("seen_miou", "unseen_miou", "hiou")


class ImageConfusions:
    """An extra evaluator of :func:`zeroseg.engine.inference.evaluate_semantic` that keeps each
    image's (K, K) confusion matrix, in the order the images are scored (the dataset's)."""

    def __init__(self, num_classes: int, ignore_index: int = 255):
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.reset()

    def reset(self) -> None:
        self.images: list[torch.Tensor] = []

    def process(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """Adds a batch of (B, H, W) predictions and labels, one matrix per image."""
        for p, t in zip(pred, target):
            conf = confusion_matrix(p.cpu(), t.cpu(), self.num_classes, self.ignore_index)
            self.images.append(conf.to(torch.int32))

    def stacked(self) -> torch.Tensor:
        """(N, K, K) int32."""
        k = self.num_classes
        return torch.stack(self.images) if self.images else torch.zeros(0, k, k, dtype=torch.int32)

    def evaluate(self) -> dict:
        return {}  # the matrices are read from the evaluator, not the metrics

    def state(self) -> dict:
        raise RuntimeError(
            "per-image confusion matrices are kept in one process only (a distributed evaluation "
            "splits the images across ranks): evaluate without torchrun"
        )

    def merge(self, state: dict) -> None:
        self.state()


def group_scores(
    conf: torch.Tensor, seen: Sequence[int], unseen: Sequence[int]
) -> dict[str, torch.Tensor]:
    """Seen / unseen mIoU and hIoU (percent) of a batch of confusion matrices, as
    :func:`zeroseg.metrics.semantic.summarize` computes them for one.

    Args:
        conf: (..., K, K) counts, rows ground truth, columns prediction.

    Returns:
        ``seen_miou``, ``unseen_miou``, ``hiou``: (...) float64 each. A class whose IoU is
        undefined (absent from labels and predictions) is left out of its group's mean; an empty
        group is 0, and hIoU is 0 when either side is 0.
    """
    conf = conf.double()
    tp = conf.diagonal(dim1=-2, dim2=-1)
    denom = conf.sum(-2) + conf.sum(-1) - tp
    defined = denom > 0
    iou = torch.where(defined, tp / denom.clamp(min=1), torch.zeros_like(tp))

    def mean(idx: Sequence[int]) -> torch.Tensor:
        idx = list(idx)
        if not idx:
            return torch.zeros(conf.shape[:-2], dtype=torch.float64)
        n = defined[..., idx].sum(-1)
        total = iou[..., idx].sum(-1)
        return torch.where(n > 0, total / n.clamp(min=1) * 100, torch.zeros_like(total))

    s, u = mean(seen), mean(unseen)
    h = torch.where((s > 0) & (u > 0), 2 * s * u / (s + u).clamp(min=1e-12), torch.zeros_like(s))
    return {"seen_miou": s, "unseen_miou": u, "hiou": h}


def paired_gap_interval(
    a: Sequence[torch.Tensor],
    b: Sequence[torch.Tensor],
    seen: Sequence[int],
    unseen: Sequence[int],
    *,
    reps: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> dict[str, dict[str, float]]:
    """Percentile interval of (mean over seeds of row A) - (mean over seeds of row B) when the
    scored images are resampled with replacement.

    Args:
        a, b: one (N, K, K) per-image confusion stack per seed (the same N images, in the same
            order, for every seed of both rows).
        reps: bootstrap resamples.
        level: the interval's coverage (0.95: the 2.5th and 97.5th percentiles).
        seed: the resampling's random seed (the interval is a function of it and the inputs).

    Returns:
        metric -> ``gap`` (on the images as scored: the report's difference of the means),
        ``low``, ``high``; for ``seen_miou``, ``unseen_miou`` and ``hiou``.

    Raises:
        ValueError: no seeds, no images, or stacks of different images.
    """
    stacks = [*a, *b]
    if not a or not b:
        raise ValueError("paired_gap_interval: each row needs at least one seed's confusions")
    shapes = {tuple(s.shape) for s in stacks}
    if len(shapes) != 1 or len(next(iter(shapes))) != 3 or not stacks[0].shape[0]:
        raise ValueError(
            f"paired_gap_interval: every seed of both rows needs the same (N, K, K) images with "
            f"N > 0, got shapes {sorted(shapes)}"
        )
    if not 0 < level < 1 or reps < 1:
        raise ValueError(f"paired_gap_interval: level in (0, 1) and reps >= 1, got {level}, {reps}")
    n = stacks[0].shape[0]
    rng = np.random.default_rng(seed)
    counts = torch.from_numpy(rng.multinomial(n, np.full(n, 1.0 / n), size=reps)).double()

    def row_mean(row: Sequence[torch.Tensor], weights: torch.Tensor) -> dict[str, torch.Tensor]:
        scores = [
            group_scores(torch.einsum("rn,nkl->rkl", weights, s.double()), seen, unseen)
            for s in row
        ]
        return {m: torch.stack([x[m] for x in scores]).mean(0) for m in GAP_METRICS}

    ones = torch.ones(1, n, dtype=torch.float64)
    point_a, point_b = row_mean(a, ones), row_mean(b, ones)
    boot_a, boot_b = row_mean(a, counts), row_mean(b, counts)
    tail = (1 - level) / 2 * 100
    out = {}
    for m in GAP_METRICS:
        diffs = (boot_a[m] - boot_b[m]).numpy()
        low, high = np.percentile(diffs, [tail, 100 - tail])
        out[m] = {
            "gap": float(point_a[m][0] - point_b[m][0]),
            "low": float(low),
            "high": float(high),
        }
    return out
