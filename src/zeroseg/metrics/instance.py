"""Instance segmentation mask AP@0.5 and recall@100 for generalized zero-shot evaluation.

The COCO detection metric (Lin et al., "Microsoft COCO", ECCV 2014; the ``COCOeval`` of
cocodataset/cocoapi) restricted to one IoU threshold 0.5, at most 100 detections per image and
category, and the "all" area range, as PADing (CVPR 2023) reports for zero-shot instance
segmentation:

- per image and category, detections are taken by descending score (stable order) and each is
  matched greedily to the unmatched ground truth of highest mask IoU >= 0.5; crowd ground truth
  may absorb any number of detections, which are then ignored, and its IoU is
  |d ∩ g| / |d| (the detection's share inside the crowd region);
- per category, all detections of all images are ranked by score, precision p(r) is made
  monotone (p(r) = max_{r' >= r} p(r')), and AP = (1/101) Σ_{r ∈ {0, 0.01, ..., 1}} p(r) with
  p(r) read at the first rank whose recall reaches r (0 when recall never does);
- recall@100 is the recall after all (<= 100 per image) detections;
- a category without non-crowd ground truth anywhere has no AP (COCO's -1) and is left out of
  the means.

AP and recall are averaged over the thing classes, the seen things and the unseen things, with the
harmonic mean of seen and unseen as the headline. Values are in percent.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from zeroseg.metrics.semantic import harmonic_mean

IOU_THRESHOLD = 0.5
MAX_DETS = 100
# COCOeval's recall thresholds, written as COCOeval builds them so the floats are identical.
REC_THRS = np.linspace(0.0, 1.00, int(np.round((1.00 - 0.0) / 0.01)) + 1)

_STATE_KEYS = ("scores", "labels", "matched", "ignored", "num_gt")


def _as_numpy(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def mask_iou(dt: np.ndarray, gt: np.ndarray, iscrowd: np.ndarray) -> np.ndarray:
    """(D, G) mask IoU as ``pycocotools.mask.iou``: |d ∩ g| / |d ∪ g|, or / |d| for crowd g.

    Args:
        dt: (D, P) bool flattened detection masks.
        gt: (G, P) bool flattened ground-truth masks.
        iscrowd: (G,) bool.
    """
    if len(dt) == 0 or len(gt) == 0:
        return np.zeros((len(dt), len(gt)), np.float64)
    # float32 sums of 0/1 products are exact up to 2**24 pixels; beyond, use float64.
    ftype = np.float32 if dt.shape[1] < 2**24 else np.float64
    g = gt.astype(ftype).T
    inter = np.empty((len(dt), len(gt)), np.float64)
    chunk = 32  # bounds the float copy of the detections to 32 masks at a time
    for s in range(0, len(dt), chunk):
        inter[s : s + chunk] = dt[s : s + chunk].astype(ftype) @ g
    area_d = dt.sum(1).astype(np.float64)
    area_g = gt.sum(1).astype(np.float64)
    union = area_d[:, None] + area_g[None, :] - inter
    union = np.where(iscrowd[None, :], area_d[:, None], union)
    # pycocotools gives 0 when the masks do not intersect, whatever the areas.
    return np.divide(inter, union, out=np.zeros_like(inter), where=inter > 0)


def match_detections(
    ious: np.ndarray, gt_ignore: np.ndarray, iscrowd: np.ndarray, threshold: float = IOU_THRESHOLD
) -> tuple[np.ndarray, np.ndarray]:
    """COCOeval's greedy matching of one image and category.

    Args:
        ious: (D, G) IoU of detections sorted by descending score with ground truth sorted
            non-ignored first.
        gt_ignore: (G,) bool, ignored ground truth (crowd).
        iscrowd: (G,) bool; a crowd ground truth can be matched more than once.
        threshold: the minimum IoU of a match (inclusive, as COCOeval).

    Returns:
        ``matched`` (D,) bool and ``ignored`` (D,) bool (matched to ignored ground truth).
    """
    d_count, g_count = ious.shape
    matched = np.zeros(d_count, bool)
    ignored = np.zeros(d_count, bool)
    gt_taken = np.zeros(g_count, bool)
    for d in range(d_count):
        best, m = min(threshold, 1 - 1e-10), -1
        for g in range(g_count):
            if gt_taken[g] and not iscrowd[g]:
                continue
            # Ground truth is sorted ignored-last: once a regular match exists, stop.
            if m > -1 and not gt_ignore[m] and gt_ignore[g]:
                break
            if ious[d, g] < best:
                continue
            best, m = ious[d, g], g  # ties go to the later ground truth, as COCOeval
        if m == -1:
            continue
        matched[d], ignored[d], gt_taken[m] = True, gt_ignore[m], True
    return matched, ignored


def evaluate_image(
    pred_masks: np.ndarray | torch.Tensor,
    pred_scores: np.ndarray | torch.Tensor,
    pred_labels: np.ndarray | torch.Tensor,
    gt_masks: np.ndarray | torch.Tensor,
    gt_labels: np.ndarray | torch.Tensor,
    gt_iscrowd: np.ndarray | torch.Tensor | None = None,
    *,
    classes: Sequence[int],
    max_dets: int = MAX_DETS,
    threshold: float = IOU_THRESHOLD,
) -> dict[int, dict[str, Any]]:
    """Matches the detections of one image, per category.

    Args:
        pred_masks: (N, H, W) bool predicted masks.
        pred_scores: (N,) confidence.
        pred_labels: (N,) class index.
        gt_masks: (M, H, W) bool ground-truth masks.
        gt_labels: (M,) class index; must be in ``classes``.
        gt_iscrowd: (M,) bool crowd flags (default: none is crowd).
        classes: the evaluated (thing) classes; detections of other classes are left out, as
            COCOeval evaluates only the categories of the ground truth.
        max_dets: detections kept per image and category (the highest-scoring ones).
        threshold: IoU of a match.

    Returns:
        {class: {"scores" (D,) float64 in descending order, "matched" (D,) bool, "ignored" (D,)
        bool, "num_gt": non-crowd ground-truth count}} for each class with a detection or a
        ground truth in this image.
    """
    masks, scores = _as_numpy(pred_masks).astype(bool), _as_numpy(pred_scores).astype(np.float64)
    labels = _as_numpy(pred_labels).astype(np.int64)
    gmasks, glabels = _as_numpy(gt_masks).astype(bool), _as_numpy(gt_labels).astype(np.int64)
    n, m = len(masks), len(gmasks)
    crowd = np.zeros(m, bool) if gt_iscrowd is None else _as_numpy(gt_iscrowd).astype(bool)
    if masks.ndim != 3 or gmasks.ndim != 3 or masks.shape[1:] != gmasks.shape[1:]:
        raise ValueError(
            f"masks must be (N, H, W) of one size: predictions {masks.shape}, "
            f"ground truth {gmasks.shape}"
        )
    if scores.shape != (n,) or labels.shape != (n,):
        raise ValueError(f"{n} predicted masks but scores {scores.shape} and labels {labels.shape}")
    if glabels.shape != (m,) or crowd.shape != (m,):
        raise ValueError(
            f"{m} ground-truth masks but labels {glabels.shape}, iscrowd {crowd.shape}"
        )
    if not np.isfinite(scores).all():
        raise ValueError("predicted scores must be finite")
    class_set = set(int(c) for c in classes)
    stray = sorted(set(glabels.tolist()) - class_set)
    if stray:
        raise ValueError(f"ground-truth instances of classes {stray}, which are not thing classes")

    pixels = int(np.prod(masks.shape[1:]))
    masks, gmasks = masks.reshape(n, pixels), gmasks.reshape(m, pixels)
    out: dict[int, dict[str, Any]] = {}
    for c in sorted(class_set & (set(labels.tolist()) | set(glabels.tolist()))):
        d_idx = np.flatnonzero(labels == c)
        d_idx = d_idx[np.argsort(-scores[d_idx], kind="mergesort")][:max_dets]
        g_idx = np.flatnonzero(glabels == c)
        g_idx = g_idx[np.argsort(crowd[g_idx], kind="mergesort")]  # ignored last
        g_crowd = crowd[g_idx]
        ious = mask_iou(masks[d_idx], gmasks[g_idx], g_crowd)
        matched, ignored = match_detections(ious, g_crowd, g_crowd, threshold)
        out[c] = {
            "scores": scores[d_idx],
            "matched": matched,
            "ignored": ignored,
            "num_gt": int((~g_crowd).sum()),
        }
    return out


def average_precision(
    scores: np.ndarray, matched: np.ndarray, ignored: np.ndarray, num_gt: int
) -> tuple[float, float]:
    """COCO 101-point interpolated AP and final recall of one category, in [0, 1].

    Args:
        scores: (D,) scores of all detections of the category over all images, in image order
            and descending score within an image (ties then rank as in COCOeval).
        matched: (D,) bool, the detection matched a ground truth.
        ignored: (D,) bool, the detection matched an ignored (crowd) ground truth.
        num_gt: number of non-crowd ground truths of the category over all images.

    Returns:
        (AP, recall); (nan, nan) when ``num_gt`` is 0 (COCO's -1: not evaluated).
    """
    if num_gt == 0:
        return float("nan"), float("nan")
    order = np.argsort(-np.asarray(scores, np.float64), kind="mergesort")
    matched, ignored = np.asarray(matched, bool)[order], np.asarray(ignored, bool)[order]
    tp = np.cumsum(matched & ~ignored).astype(float)
    fp = np.cumsum(~matched & ~ignored).astype(float)
    if len(tp) == 0:
        return 0.0, 0.0
    rc = tp / num_gt
    pr = tp / (fp + tp + np.spacing(1))
    pr = np.maximum.accumulate(pr[::-1])[::-1]  # precision envelope
    idx = np.searchsorted(rc, REC_THRS, side="left")
    q = np.zeros(len(REC_THRS))
    reached = idx < len(pr)
    q[reached] = pr[idx[reached]]
    return float(q.mean()), float(rc[-1])


class InstanceEvaluator:
    """reset / process / evaluate for mask AP@0.5 and recall@100 over seen and unseen things.

    Args:
        num_classes: K; labels are class indices in [0, K).
        seen / unseen: class indices of each group (only their thing classes are evaluated).
        thing_classes: the classes with instances; the evaluated categories.
        names: class names for the per-class tables (default: the index as a string).
    """

    def __init__(
        self,
        num_classes: int,
        seen: Sequence[int],
        unseen: Sequence[int],
        thing_classes: Sequence[int],
        *,
        names: Sequence[str] | None = None,
    ):
        for what, cl in (("seen", seen), ("unseen", unseen), ("thing", thing_classes)):
            out = [int(c) for c in cl if not 0 <= int(c) < num_classes]
            if out:
                raise ValueError(f"{what} classes {out} are outside [0, {num_classes})")
        both = set(seen) & set(unseen)
        if both:
            raise ValueError(f"classes {sorted(both)} are both seen and unseen")
        if names is not None and len(names) != num_classes:
            raise ValueError(f"{len(names)} class names for {num_classes} classes")
        self.num_classes = num_classes
        self.seen, self.unseen = [int(c) for c in seen], [int(c) for c in unseen]
        self.thing_classes = sorted(set(int(c) for c in thing_classes))
        self.names = names
        self.reset()

    def reset(self) -> None:
        self._scores: list[np.ndarray] = []
        self._labels: list[np.ndarray] = []
        self._matched: list[np.ndarray] = []
        self._ignored: list[np.ndarray] = []
        self._num_gt = np.zeros(self.num_classes, np.int64)

    def process(
        self,
        pred_masks: np.ndarray | torch.Tensor,
        pred_scores: np.ndarray | torch.Tensor,
        pred_labels: np.ndarray | torch.Tensor,
        gt_masks: np.ndarray | torch.Tensor,
        gt_labels: np.ndarray | torch.Tensor,
        gt_iscrowd: np.ndarray | torch.Tensor | None = None,
    ) -> None:
        """Adds one image; arguments as in :func:`evaluate_image`."""
        labels = _as_numpy(pred_labels)
        bad = labels[(labels < 0) | (labels >= self.num_classes)]
        if len(bad):
            raise ValueError(
                f"predicted labels {bad[:10].tolist()} are outside [0, {self.num_classes})"
            )
        per_class = evaluate_image(
            pred_masks,
            pred_scores,
            pred_labels,
            gt_masks,
            gt_labels,
            gt_iscrowd,
            classes=self.thing_classes,
        )
        for c, r in per_class.items():
            self._scores.append(r["scores"])
            self._labels.append(np.full(len(r["scores"]), c, np.int64))
            self._matched.append(r["matched"])
            self._ignored.append(r["ignored"])
            self._num_gt[c] += r["num_gt"]

    def state(self) -> dict[str, torch.Tensor]:
        """Every detection's ``scores, labels, matched, ignored`` (D,) and ``num_gt`` (K,).

        Detections are in processing order; across ranks, concatenate them (e.g. with
        ``all_gather_object``) by :meth:`merge` and sum ``num_gt``.
        """

        def cat(parts: list[np.ndarray], dtype: Any) -> torch.Tensor:
            return torch.from_numpy(
                np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype)
            )

        return {
            "scores": cat(self._scores, np.float64),
            "labels": cat(self._labels, np.int64),
            "matched": cat(self._matched, bool),
            "ignored": cat(self._ignored, bool),
            "num_gt": torch.from_numpy(self._num_gt.copy()),
        }

    def merge(self, other_state: Mapping[str, torch.Tensor | np.ndarray]) -> None:
        """Appends another evaluator's :meth:`state` (e.g. another rank's) to this one."""
        missing = [k for k in _STATE_KEYS if k not in other_state]
        if missing:
            raise KeyError(f"instance state has no {missing}; expected keys {_STATE_KEYS}")
        s = {k: _as_numpy(other_state[k]) for k in _STATE_KEYS}
        d = len(s["scores"])
        if any(s[k].shape != (d,) for k in ("labels", "matched", "ignored")):
            raise ValueError(
                "instance state: scores, labels, matched, ignored must be (D,) of one length, got "
                + str({k: s[k].shape for k in ("scores", "labels", "matched", "ignored")})
            )
        if s["num_gt"].shape != (self.num_classes,):
            raise ValueError(
                f"instance state num_gt has shape {s['num_gt'].shape}, "
                f"expected ({self.num_classes},)"
            )
        self._scores.append(s["scores"].astype(np.float64))
        self._labels.append(s["labels"].astype(np.int64))
        self._matched.append(s["matched"].astype(bool))
        self._ignored.append(s["ignored"].astype(bool))
        self._num_gt += s["num_gt"].astype(np.int64)

    def evaluate(self) -> dict:
        """Metrics in percent.

        Returns:
            ``ap50, recall100, n`` over thing classes with ground truth; the same with prefixes
            ``seen_`` and ``unseen_``; ``h_ap50, h_recall100`` (harmonic means of seen and
            unseen); ``per_class_ap50, per_class_recall100``: {name: percent, or None for a
            class that is not a thing or has no non-crowd ground truth}. A group with no class
            evaluated gives 0.
        """
        st = self.state()
        scores, labels = st["scores"].numpy(), st["labels"].numpy()
        matched, ignored = st["matched"].numpy(), st["ignored"].numpy()
        ap = np.full(self.num_classes, np.nan)
        rec = np.full(self.num_classes, np.nan)
        for c in self.thing_classes:
            sel = labels == c
            ap[c], rec[c] = average_precision(
                scores[sel], matched[sel], ignored[sel], int(self._num_gt[c])
            )

        def mean(values: np.ndarray, classes: Sequence[int]) -> float:
            v = values[np.asarray(list(classes), np.int64)] if len(classes) else values[:0]
            v = v[~np.isnan(v)]
            return float(v.mean() * 100) if len(v) else 0.0

        groups = {"": self.thing_classes, "seen_": self.seen, "unseen_": self.unseen}
        out: dict[str, Any] = {}
        for prefix, classes in groups.items():
            out[f"{prefix}ap50"] = mean(ap, classes)
            out[f"{prefix}recall100"] = mean(rec, classes)
            idx = np.asarray(list(classes), np.int64)
            out[f"{prefix}n"] = int((~np.isnan(ap[idx])).sum()) if len(idx) else 0
        out["h_ap50"] = harmonic_mean(out["seen_ap50"], out["unseen_ap50"])
        out["h_recall100"] = harmonic_mean(out["seen_recall100"], out["unseen_recall100"])
        for key, values in (("per_class_ap50", ap), ("per_class_recall100", rec)):
            out[key] = {
                (self.names[c] if self.names else str(c)): (
                    None if np.isnan(values[c]) else float(values[c] * 100)
                )
                for c in range(self.num_classes)
            }
        return out
