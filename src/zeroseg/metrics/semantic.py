"""Semantic segmentation metrics for generalized zero-shot segmentation.

IoU_c = TP_c / (TP_c + FP_c + FN_c) from a confusion matrix over all classes; mIoU(S) and mIoU(U)
average IoU over the seen and unseen classes that occur (in ground truth or prediction), and the
headline hIoU = 2 · mIoU(S) · mIoU(U) / (mIoU(S) + mIoU(U)) (Xian et al. 2019, SPNet; the harmonic
mean ZS3Net, ZegCLIP, PADing and AlignZeg report). Values are in percent, as the papers print them.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch


def confusion_matrix(
    pred: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int = 255
) -> torch.Tensor:
    """(K, K) int64 counts, rows = ground truth, columns = prediction; ignore pixels dropped.

    Args:
        pred: (...) predicted class indices.
        target: (...) ground-truth class indices (``ignore_index`` for void).
    """
    pred, target = pred.reshape(-1).long(), target.reshape(-1).long()
    keep = target != ignore_index
    pred, target = pred[keep], target[keep]
    if target.numel() and (target.min() < 0 or target.max() >= num_classes):
        bad = target[(target < 0) | (target >= num_classes)].unique().tolist()
        raise ValueError(f"ground-truth labels {bad[:10]} are outside [0, {num_classes})")
    if pred.numel() and (pred.min() < 0 or pred.max() >= num_classes):
        raise ValueError(f"predicted labels are outside [0, {num_classes})")
    return torch.bincount(target * num_classes + pred, minlength=num_classes**2).view(
        num_classes, num_classes
    )


def harmonic_mean(a: float, b: float) -> float:
    """2ab/(a+b), and 0 when either side is 0 (a model that ignores one side scores 0)."""
    return 0.0 if a <= 0 or b <= 0 else 2 * a * b / (a + b)


def iou_per_class(conf: torch.Tensor) -> np.ndarray:
    """(K,) IoU in [0, 1]; NaN for classes absent from both ground truth and prediction."""
    conf = conf.double()
    tp = conf.diag()
    denom = conf.sum(0) + conf.sum(1) - tp
    iou = torch.where(denom > 0, tp / denom.clamp(min=1), torch.full_like(tp, float("nan")))
    return iou.numpy()


def summarize(
    conf: torch.Tensor,
    seen: Sequence[int],
    unseen: Sequence[int],
    names: Sequence[str] | None = None,
) -> dict:
    """Seen/unseen/harmonic metrics from a confusion matrix (percent).

    Classes whose IoU is undefined (absent everywhere) are left out of the means, as
    mmsegmentation and detectron2 do.
    """
    iou = iou_per_class(conf)
    seen_iou = iou[list(seen)] if len(seen) else np.array([])
    unseen_iou = iou[list(unseen)] if len(unseen) else np.array([])

    def mean(x: np.ndarray) -> float:
        x = x[~np.isnan(x)]
        return float(x.mean() * 100) if len(x) else 0.0

    total = conf.sum().item()
    s, u = mean(seen_iou), mean(unseen_iou)
    # Without unseen classes there is no zero-shot side: unseen mIoU and hIoU are not
    # applicable (None, shown as "–"), not 0.0, which would read as a failed model.
    applicable = len(unseen) > 0
    out = {
        "miou": mean(iou),
        "seen_miou": s,
        "unseen_miou": u if applicable else None,
        "hiou": harmonic_mean(s, u) if applicable else None,
        "pixel_acc": float(conf.diag().sum().item() / total * 100) if total else 0.0,
        "per_class_iou": {
            (names[i] if names else str(i)): (None if np.isnan(v) else float(v * 100))
            for i, v in enumerate(iou)
        },
    }
    return out


class SemanticEvaluator:
    """reset / process / evaluate around a confusion matrix (mergeable across ranks).

    Args:
        num_classes: K.
        seen / unseen: class indices of each group.
        names: class names for the per-class table.
        ignore_index: void label.
    """

    def __init__(
        self,
        num_classes: int,
        seen: Sequence[int],
        unseen: Sequence[int],
        names: Sequence[str] | None = None,
        ignore_index: int = 255,
    ):
        self.num_classes, self.seen, self.unseen = num_classes, list(seen), list(unseen)
        self.names, self.ignore_index = names, ignore_index
        self.reset()

    def reset(self) -> None:
        self.conf = torch.zeros(self.num_classes, self.num_classes, dtype=torch.int64)

    def process(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """Adds a batch: ``pred`` and ``target`` are (B, H, W) or (H, W) class indices."""
        if pred.shape != target.shape:
            raise ValueError(
                f"prediction shape {tuple(pred.shape)} != label shape {tuple(target.shape)}"
            )
        self.conf += confusion_matrix(pred.cpu(), target.cpu(), self.num_classes, self.ignore_index)

    def evaluate(self) -> dict:
        return summarize(self.conf, self.seen, self.unseen, self.names)
