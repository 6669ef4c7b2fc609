"""One calibration rule for every method, and the calibration-free AUSUC.

The rule is calibrated stacking (Chao et al., "An Empirical Study and Analysis of Generalized
Zero-Shot Learning for Object Recognition in the Wild", ECCV 2016, eq. 3): a pixel is labelled
``argmax_c p_c - gamma * 1[c is seen]``, where ``p`` are the method's class probabilities. Every
method gets the same ``gamma`` search: the point of :data:`GAMMAS` with the highest hIoU on ``val``
(ties: the smallest ``|gamma|``, then the smaller ``gamma``), and the reported figures are on
``test`` at that ``gamma``. Methods' own test-time constants (ZS3Net's ``calibration``, ZegCLIP's
``seen_reduction``) are replaced by it (:meth:`zeroseg.methods.base.Method.calibration_scores`).

Probabilities come from a method's scores by its ``score_kind``: ``"logits"`` (softmax over
classes), ``"probabilities"`` (ZegCLIP's sigmoid or softmax scores, used as they are) or
``"evidence"`` (non-negative per-class evidence, the mask methods' ``sum_q p_qk m_q``, divided by
its per-pixel sum). Every kind lies in [0, 1], so ``gamma = -1`` labels every pixel seen and
``gamma = 1`` every pixel unseen: the sweep traces the whole seen-unseen curve, and the area under
it, mIoU(S) against mIoU(U) (AUSUC, Chao et al. section 3.2), measures the trade-off without any
calibration. AUSUC is in percent of the unit square (100 = both mIoUs 100 at one ``gamma``).

The sweep is exact and takes one pass: a pixel's label at ``gamma`` is its best seen class when
``p_seen* - p_unseen* > gamma`` and its best unseen class otherwise, so one histogram of
(first grid index where the pixel turns unseen, ground truth, class) gives every confusion matrix.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from zeroseg.metrics.semantic import summarize

GAMMAS: tuple[float, ...] = tuple(round(-1.0 + 0.02 * i, 2) for i in range(101))
SCORE_KINDS = ("logits", "probabilities", "evidence")
RULE = "calibrated stacking; gamma = argmax hIoU on val over -1:0.02:1 (ties: smallest |gamma|)"


def class_probabilities(scores: torch.Tensor, kind: str) -> torch.Tensor:
    """(B, K, H, W) scores of a method -> (B, K, H, W) class probabilities in [0, 1].

    Args:
        scores: the method's uncalibrated scores.
        kind: one of :data:`SCORE_KINDS` (the method's ``score_kind``).
    """
    x = scores.float()
    if kind == "logits":
        return x.softmax(1)
    if kind == "probabilities":
        return x
    if kind == "evidence":
        if (x < 0).any():
            raise ValueError("'evidence' scores must be non-negative")
        return x / x.sum(1, keepdim=True).clamp(min=1e-12)
    raise ValueError(f"unknown score kind {kind!r}; valid: {list(SCORE_KINDS)}")


def stacked_labels(probs: torch.Tensor, seen_mask: torch.Tensor, gamma: float) -> torch.Tensor:
    """(B, H, W) labels of calibrated stacking: the best seen class where ``p_s* - p_u* > gamma``.

    This is ``argmax(probs - gamma * seen)`` with its ties settled one way (towards unseen), the
    same way the sweep settles them. With no seen or no unseen class it is the plain argmax.
    """
    if seen_mask.all() or not seen_mask.any():
        return probs.argmax(1)
    best_s, cls_s, best_u, cls_u = _best_per_group(probs.float(), seen_mask)
    # the difference in float32 compared in float64, exactly as CalibrationSweep.process does
    return torch.where((best_s - best_u).double() > gamma, cls_s, cls_u)


def _best_per_group(probs: torch.Tensor, seen_mask: torch.Tensor):
    seen_idx = torch.nonzero(seen_mask.to(probs.device)).flatten()
    unseen_idx = torch.nonzero(~seen_mask.to(probs.device)).flatten()
    best_s, arg_s = probs.index_select(1, seen_idx).max(1)
    best_u, arg_u = probs.index_select(1, unseen_idx).max(1)
    return best_s, seen_idx[arg_s], best_u, unseen_idx[arg_u]


class CalibrationSweep:
    """Confusion matrices of calibrated stacking at every ``gamma`` of a grid, in one pass.

    Args:
        num_classes: K.
        seen / unseen: class indices of each group (both non-empty).
        gammas: increasing grid (default :data:`GAMMAS`).
        ignore_index: void label.
    """

    def __init__(
        self,
        num_classes: int,
        seen: Sequence[int],
        unseen: Sequence[int],
        gammas: Sequence[float] = GAMMAS,
        ignore_index: int = 255,
    ):
        if not len(seen) or not len(unseen):
            raise ValueError("a calibration sweep needs both seen and unseen classes")
        g = np.asarray(gammas, dtype=np.float64)
        if g.ndim != 1 or len(g) < 2 or not np.all(np.diff(g) > 0):
            raise ValueError(f"gammas must be an increasing list of at least 2, got {list(g)}")
        self.num_classes, self.seen, self.unseen = num_classes, list(seen), list(unseen)
        self.gammas, self.ignore_index = g, ignore_index
        self.seen_mask = torch.zeros(num_classes, dtype=torch.bool)
        self.seen_mask[self.seen] = True
        self.reset()

    def reset(self) -> None:
        k, n = self.num_classes, len(self.gammas)
        # hist_seen[j]: pixels whose label is their best seen class for grid indices < j
        self.hist_seen = torch.zeros(n + 1, k, k, dtype=torch.int64)
        self.hist_unseen = torch.zeros(n + 1, k, k, dtype=torch.int64)

    def process(self, probs: torch.Tensor, target: torch.Tensor) -> None:
        """Adds a batch: ``probs`` (B, K, H, W) class probabilities, ``target`` (B, H, W)."""
        if probs.shape[0] != target.shape[0] or probs.shape[2:] != target.shape[1:]:
            raise ValueError(
                f"probabilities {tuple(probs.shape)} do not match labels {tuple(target.shape)}"
            )
        if probs.shape[1] != self.num_classes:
            raise ValueError(f"expected {self.num_classes} classes, got {probs.shape[1]}")
        best_s, cls_s, best_u, cls_u = _best_per_group(probs.float().cpu(), self.seen_mask)
        d = (best_s - best_u).double().reshape(-1)
        t = target.cpu().reshape(-1).long()
        keep = t != self.ignore_index
        d, t, cls_s, cls_u = d[keep], t[keep], cls_s.reshape(-1)[keep], cls_u.reshape(-1)[keep]
        if t.numel() and (t.min() < 0 or t.max() >= self.num_classes):
            raise ValueError(f"ground-truth labels are outside [0, {self.num_classes})")
        # j = number of grid points strictly below d: seen label for grid indices < j
        j = torch.searchsorted(torch.from_numpy(self.gammas), d, right=False)
        k = self.num_classes
        size = (len(self.gammas) + 1) * k * k
        self.hist_seen += torch.bincount((j * k + t) * k + cls_s, minlength=size).view(-1, k, k)
        self.hist_unseen += torch.bincount((j * k + t) * k + cls_u, minlength=size).view(-1, k, k)

    def confusions(self) -> torch.Tensor:
        """(G, K, K) confusion matrices, one per grid point (rows ground truth)."""
        # grid index g labels seen the pixels with j > g, unseen those with j <= g
        seen_part = self.hist_seen.flip(0).cumsum(0).flip(0)[1:]
        unseen_part = self.hist_unseen.cumsum(0)[:-1]
        return seen_part + unseen_part

    def curve(self) -> dict[str, list[float]]:
        """Per grid point: ``gamma``, ``seen_miou``, ``unseen_miou``, ``hiou`` (percent)."""
        out: dict[str, list[float]] = {"gamma": [], "seen_miou": [], "unseen_miou": [], "hiou": []}
        for g, conf in zip(self.gammas, self.confusions(), strict=True):
            m = summarize(conf, self.seen, self.unseen)
            out["gamma"].append(float(g))
            for key in ("seen_miou", "unseen_miou", "hiou"):
                out[key].append(m[key])
        return out


def choose_gamma(curve: dict[str, list[float]]) -> float:
    """The rule: the grid point of highest hIoU; ties go to the smallest ``|gamma|``, then the
    smaller ``gamma`` (so a flat curve keeps the uncalibrated scores)."""
    best = max(
        range(len(curve["gamma"])),
        key=lambda i: (curve["hiou"][i], -abs(curve["gamma"][i]), -curve["gamma"][i]),
    )
    return float(curve["gamma"][best])


def ausuc(curve: dict[str, list[float]]) -> float:
    """Area under mIoU(S) against mIoU(U) over the sweep, in percent of the unit square.

    Points are taken in order of mIoU(U) (then of decreasing mIoU(S)) and joined by trapezoids;
    the grid's ends lie on the axes (all seen: mIoU(U) 0; all unseen: mIoU(S) 0).
    """
    pts = sorted(
        zip(curve["unseen_miou"], curve["seen_miou"], strict=True), key=lambda p: (p[0], -p[1])
    )
    x = np.array([p[0] for p in pts]) / 100
    y = np.array([p[1] for p in pts]) / 100
    return float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2) * 100)
