"""Panoptic Quality for generalized zero-shot panoptic segmentation.

Kirillov et al., "Panoptic Segmentation", CVPR 2019, Eq. (1):

    PQ_c = sum_{(p, g) in TP_c} IoU(p, g) / (|TP_c| + 1/2 |FP_c| + 1/2 |FN_c|) = SQ_c · RQ_c,
    SQ_c = sum IoU / |TP_c|,   RQ_c = |TP_c| / (|TP_c| + 1/2 |FP_c| + 1/2 |FN_c|).

A predicted and a ground-truth segment of the same class match when their IoU is > 0.5, which
makes the matching unique (Theorem 1 of the paper). The rules follow the COCO panopticapi
(``pq_compute_single_core``):

- void pixels of the ground truth are not part of any segment; a prediction's pixels that fall
  on void are removed from its area in the IoU union;
- crowd ground-truth segments are never matched and never counted as FN;
- an unmatched prediction is not an FP when more than half of its area lies on void or on a crowd
  region of its own class (panopticapi keeps one crowd region per class and image, as COCO has;
  here the overlaps with every crowd region of that class are summed, which is the same thing on
  COCO and well defined elsewhere).

PQ, SQ and RQ are averaged over the classes that occur (TP + FP + FN > 0), for all classes, things,
stuff, seen and unseen classes; the generalized zero-shot headline is hPQ = 2·PQ(S)·PQ(U) /
(PQ(S) + PQ(U)) (PADing, CVPR 2023). Values are in percent, as the papers print them.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from zeroseg.metrics.semantic import harmonic_mean

Segments = Sequence[Mapping[str, Any]] | np.ndarray | torch.Tensor

_STATE_KEYS = ("tp", "fp", "fn", "iou")


def _as_numpy(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _parse_segments(
    segments: Segments, *, what: str, num_classes: int, void_id: int, ignore_label: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Segment ids, class indices and crowd flags as (n,) arrays.

    Args:
        segments: either dicts ``{"id", "category_id", "iscrowd" (optional)}`` as in COCO
            panoptic JSON, or an (n, >=2) integer array/tensor of rows ``(segment_id,
            class_index[, is_thing[, is_crowd]])`` as zeroseg.data gives (COCO panoptic has the
            crowd column; rows without it are non-crowd).
        what: "prediction" or "ground truth", for error messages.
    """
    if isinstance(segments, (np.ndarray, torch.Tensor)):
        rows = _as_numpy(segments)
        if rows.ndim != 2 or (rows.shape[0] and rows.shape[1] < 2):
            raise ValueError(
                f"{what} segments: expected an (n, >=2) array of (segment_id, class_index) rows, "
                f"got shape {rows.shape}"
            )
        ids = rows[:, 0].astype(np.int64) if len(rows) else np.zeros(0, np.int64)
        cats = rows[:, 1].astype(np.int64) if len(rows) else np.zeros(0, np.int64)
        crowd = crowd_flags(rows)
    else:
        ids_l, cats_l, crowd_l = [], [], []
        for j, seg in enumerate(segments):
            try:
                ids_l.append(int(seg["id"]))
                cats_l.append(int(seg["category_id"]))
            except KeyError as e:
                raise ValueError(
                    f"{what} segment {j} has no key {e.args[0]!r}: {dict(seg)}"
                ) from None
            crowd_l.append(bool(seg.get("iscrowd", 0)))
        ids = np.asarray(ids_l, dtype=np.int64)
        cats = np.asarray(cats_l, dtype=np.int64)
        crowd = np.asarray(crowd_l, dtype=bool)
    if len(np.unique(ids)) != len(ids):
        uniq, counts = np.unique(ids, return_counts=True)
        raise ValueError(f"{what} segment ids repeat: {uniq[counts > 1].tolist()}")
    if np.any(ids == void_id):
        raise ValueError(f"{what} segment id {void_id} is the void id; segments need other ids")
    bad = (cats < 0) | (cats >= num_classes)
    # Ground truth may label a segment with the ignore class (an unlabeled region): it is void.
    if what == "ground truth":
        bad &= cats != ignore_label
    if bad.any():
        raise ValueError(
            f"{what} segments {ids[bad].tolist()} have class indices {cats[bad].tolist()}, "
            f"expected [0, {num_classes})"
        )
    return ids, cats, crowd


def crowd_flags(rows: np.ndarray | torch.Tensor) -> np.ndarray:
    """(n,) bool crowd flags of zeroseg segment rows ``(id, class, is_thing[, is_crowd])``."""
    rows = _as_numpy(rows)
    if rows.ndim != 2 or rows.shape[1] < 4:
        return np.zeros(len(rows), dtype=bool)
    return rows[:, 3] != 0


def _segment_index(seg_map: np.ndarray, ids: np.ndarray, *, what: str, void_id: int) -> np.ndarray:
    """Per-pixel position of the segment in ``ids``, or ``len(ids)`` for void pixels."""
    values, inverse = np.unique(seg_map, return_inverse=True)
    order = np.argsort(ids)
    if len(ids):
        pos = np.clip(np.searchsorted(ids[order], values), 0, len(ids) - 1)
        known = ids[order][pos] == values
        slot_of_value = np.where(known, order[pos], len(ids))
    else:
        known = np.zeros(len(values), dtype=bool)
        slot_of_value = np.zeros(len(values), dtype=np.int64)
    is_void = values == void_id
    unknown = ~known & ~is_void
    if unknown.any():
        raise ValueError(
            f"{what} map has segment ids {values[unknown][:10].tolist()} that are not in its "
            f"segment list (void pixels must have id {void_id})"
        )
    return slot_of_value[inverse.reshape(-1)]


def pq_stats(
    pred_map: np.ndarray | torch.Tensor,
    pred_segments: Segments,
    gt_map: np.ndarray | torch.Tensor,
    gt_segments: Segments,
    *,
    num_classes: int,
    void_id: int = 0,
    ignore_label: int = 255,
) -> dict[str, np.ndarray]:
    """Per-class PQ statistics of one image (panopticapi rules).

    Args:
        pred_map: (H, W) integer segment id per pixel; ``void_id`` marks unassigned pixels.
        pred_segments: the predicted segments (see :func:`_parse_segments`); every id in
            ``pred_map`` other than ``void_id`` must be listed, and every listed id must occur.
        gt_map: (H, W) integer segment id per pixel; ``void_id`` marks void pixels.
        gt_segments: the ground-truth segments, optionally with ``iscrowd``. A segment whose
            class is ``ignore_label`` is void as a whole.
        num_classes: K; class indices are in [0, K).
        void_id: segment id of void / unassigned pixels (0 in COCO panoptic PNGs and ShapeWorld).
        ignore_label: class index of void ground-truth segments.

    Returns:
        ``tp``, ``fp``, ``fn``: (K,) int64 counts; ``iou``: (K,) float64 sum of matched IoUs.
    """
    pred, gt = _as_numpy(pred_map), _as_numpy(gt_map)
    if pred.ndim != 2 or pred.shape != gt.shape:
        raise ValueError(
            f"panoptic maps must be (H, W) and equal: prediction {pred.shape}, "
            f"ground truth {gt.shape}"
        )
    parse = functools.partial(
        _parse_segments, num_classes=num_classes, void_id=void_id, ignore_label=ignore_label
    )
    p_ids, p_cats, _ = parse(pred_segments, what="prediction")
    g_ids, g_cats, g_crowd = parse(gt_segments, what="ground truth")
    n_p, n_g = len(p_ids), len(g_ids)
    p_idx = _segment_index(pred.astype(np.int64), p_ids, what="prediction", void_id=void_id)
    g_idx = _segment_index(gt.astype(np.int64), g_ids, what="ground truth", void_id=void_id)
    # Ground-truth segments of the ignore class are void: send their pixels to the void slot.
    void_seg = np.append(g_cats == ignore_label, True)
    g_idx = np.where(void_seg[g_idx], n_g, g_idx)

    # (G+1, P+1) pixel counts; the last row / column is void.
    conf = np.bincount(g_idx * (n_p + 1) + p_idx, minlength=(n_g + 1) * (n_p + 1))
    conf = conf.reshape(n_g + 1, n_p + 1).astype(np.int64)
    p_area = conf[:, :n_p].sum(0)
    g_area = conf[:n_g, :].sum(1)
    missing = np.flatnonzero(p_area == 0)
    if len(missing):
        raise ValueError(f"predicted segments {p_ids[missing].tolist()} have no pixel in the map")
    real_g = ~void_seg[:n_g]
    missing = np.flatnonzero((g_area == 0) & real_g)
    if len(missing):
        raise ValueError(
            f"ground-truth segments {g_ids[missing].tolist()} have no pixel in the map "
            "(a segment list out of step with its map would count them as missed)"
        )

    inter = conf[:n_g, :n_p].astype(np.float64)
    on_void = conf[n_g, :n_p]
    # panopticapi's union leaves out the prediction's void pixels, which the gt does not label.
    union = p_area[None, :] + g_area[:, None] - inter - on_void[None, :]
    iou = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
    candidate = (g_cats[:, None] == p_cats[None, :]) & (real_g & ~g_crowd)[:, None]
    match = candidate & (iou > 0.5)  # IoU > 0.5 makes each segment match at most once
    g_matched, p_matched = match.any(1), match.any(0)

    tp = np.zeros(num_classes, np.int64)
    fp = np.zeros(num_classes, np.int64)
    fn = np.zeros(num_classes, np.int64)
    iou_sum = np.zeros(num_classes, np.float64)
    gi, pi = np.nonzero(match)
    np.add.at(tp, g_cats[gi], 1)
    np.add.at(iou_sum, g_cats[gi], iou[gi, pi])

    is_fn = real_g & ~g_crowd & ~g_matched
    np.add.at(fn, g_cats[is_fn], 1)

    crowd_g = real_g & g_crowd
    same_crowd = (g_cats[crowd_g][:, None] == p_cats[None, :]) * conf[:n_g][crowd_g, :n_p]
    ignored_px = on_void + same_crowd.sum(0)
    is_fp = ~p_matched & ~(ignored_px / p_area > 0.5)
    np.add.at(fp, p_cats[is_fp], 1)
    return {"tp": tp, "fp": fp, "fn": fn, "iou": iou_sum}


def pq_per_class(stats: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """(K,) PQ, SQ, RQ in [0, 1] and a (K,) bool ``valid`` (the class occurs: TP+FP+FN > 0).

    Undefined entries (invalid classes) are 0, and SQ is 0 for a class with no TP, as panopticapi.
    """
    tp, fp, fn = (np.asarray(stats[k], np.float64) for k in ("tp", "fp", "fn"))
    iou = np.asarray(stats["iou"], np.float64)
    denom = tp + 0.5 * fp + 0.5 * fn
    valid = denom > 0
    pq = np.divide(iou, denom, out=np.zeros_like(iou), where=valid)
    sq = np.divide(iou, tp, out=np.zeros_like(iou), where=tp > 0)
    rq = np.divide(tp, denom, out=np.zeros_like(iou), where=valid)
    return {"pq": pq, "sq": sq, "rq": rq, "valid": valid}


def _mean_over(values: np.ndarray, valid: np.ndarray, classes: Sequence[int]) -> float:
    idx = np.asarray(list(classes), dtype=np.int64)
    keep = idx[valid[idx]] if len(idx) else idx
    return float(values[keep].mean() * 100) if len(keep) else 0.0


def summarize_pq(
    stats: Mapping[str, np.ndarray],
    *,
    seen: Sequence[int],
    unseen: Sequence[int],
    thing_classes: Sequence[int],
    names: Sequence[str] | None = None,
) -> dict:
    """Group means and the seen/unseen harmonic mean from per-class statistics (percent).

    A group mean is over the group's classes that occur (TP + FP + FN > 0), 0 when none does (as
    :func:`zeroseg.metrics.semantic.summarize`); ``*_n`` says how many classes entered each mean.

    Returns:
        ``pq, sq, rq, n`` over all classes; the same with prefixes ``things_``, ``stuff_``,
        ``seen_``, ``unseen_``; ``hpq, hsq, hrq`` (harmonic means of seen and unseen);
        ``per_class_pq / _sq / _rq``: {name: percent, or None for a class that does not occur}.
    """
    per = pq_per_class(stats)
    valid = per["valid"]
    k = len(valid)
    things = sorted(set(int(c) for c in thing_classes))
    groups = {
        "": range(k),
        "things_": things,
        "stuff_": [c for c in range(k) if c not in set(things)],
        "seen_": list(seen),
        "unseen_": list(unseen),
    }
    out: dict[str, Any] = {}
    for prefix, classes in groups.items():
        for m in ("pq", "sq", "rq"):
            out[f"{prefix}{m}"] = _mean_over(per[m], valid, classes)
        idx = np.asarray(list(classes), dtype=np.int64)
        out[f"{prefix}n"] = int(valid[idx].sum()) if len(idx) else 0
    for m in ("pq", "sq", "rq"):
        out[f"h{m}"] = harmonic_mean(out[f"seen_{m}"], out[f"unseen_{m}"])
    for m in ("pq", "sq", "rq"):
        out[f"per_class_{m}"] = {
            (names[c] if names else str(c)): (float(per[m][c] * 100) if valid[c] else None)
            for c in range(k)
        }
    return out


def _check_classes(num_classes: int, **groups: Sequence[int]) -> None:
    for what, classes in groups.items():
        cl = [int(c) for c in classes]
        out = [c for c in cl if not 0 <= c < num_classes]
        if out:
            raise ValueError(f"{what} classes {out} are outside [0, {num_classes})")
        if len(set(cl)) != len(cl):
            raise ValueError(f"{what} classes repeat: {cl}")
    both = set(groups.get("seen", ())) & set(groups.get("unseen", ()))
    if both:
        raise ValueError(f"classes {sorted(both)} are both seen and unseen")


class PanopticEvaluator:
    """reset / process / evaluate around per-class TP, FP, FN and IoU sums (mergeable across ranks).

    Args:
        num_classes: K; segment ``category_id`` values are class indices in [0, K).
        seen / unseen: class indices of each group (disjoint).
        thing_classes: class indices with instances; the others are stuff.
        ignore_label: class index of void ground-truth segments.
        void_id: segment id of void / unassigned pixels in both maps (0, as COCO panoptic PNGs and
            ShapeWorld's panoptic maps).
        names: class names for the per-class tables (default: the index as a string).
    """

    def __init__(
        self,
        num_classes: int,
        seen: Sequence[int],
        unseen: Sequence[int],
        thing_classes: Sequence[int],
        ignore_label: int = 255,
        *,
        void_id: int = 0,
        names: Sequence[str] | None = None,
    ):
        _check_classes(num_classes, seen=seen, unseen=unseen, thing=thing_classes)
        if names is not None and len(names) != num_classes:
            raise ValueError(f"{len(names)} class names for {num_classes} classes")
        self.num_classes = num_classes
        self.seen, self.unseen = [int(c) for c in seen], [int(c) for c in unseen]
        self.thing_classes = [int(c) for c in thing_classes]
        self.ignore_label, self.void_id, self.names = ignore_label, void_id, names
        self.reset()

    def reset(self) -> None:
        k = self.num_classes
        self._stats = {
            "tp": np.zeros(k, np.int64),
            "fp": np.zeros(k, np.int64),
            "fn": np.zeros(k, np.int64),
            "iou": np.zeros(k, np.float64),
        }

    def process(
        self,
        pred_map: np.ndarray | torch.Tensor,
        pred_segments: Segments,
        gt_map: np.ndarray | torch.Tensor,
        gt_segments: Segments,
    ) -> None:
        """Adds one image; arguments as in :func:`pq_stats`."""
        stats = pq_stats(
            pred_map,
            pred_segments,
            gt_map,
            gt_segments,
            num_classes=self.num_classes,
            void_id=self.void_id,
            ignore_label=self.ignore_label,
        )
        for key in _STATE_KEYS:
            self._stats[key] += stats[key]

    def state(self) -> dict[str, torch.Tensor]:
        """(K,) tensors ``tp, fp, fn`` (int64) and ``iou`` (float64): sum them across ranks."""
        return {key: torch.from_numpy(self._stats[key].copy()) for key in _STATE_KEYS}

    def merge(self, other_state: Mapping[str, torch.Tensor | np.ndarray]) -> None:
        """Adds another evaluator's :meth:`state` (e.g. another rank's) to this one."""
        for key in _STATE_KEYS:
            if key not in other_state:
                raise KeyError(f"panoptic state has no {key!r}; expected keys {_STATE_KEYS}")
            value = _as_numpy(other_state[key])
            if value.shape != (self.num_classes,):
                raise ValueError(
                    f"panoptic state {key!r} has shape {value.shape}, "
                    f"expected ({self.num_classes},)"
                )
            self._stats[key] += value.astype(self._stats[key].dtype)

    def evaluate(self) -> dict:
        """Metrics in percent; see :func:`summarize_pq` for the keys."""
        return summarize_pq(
            self._stats,
            seen=self.seen,
            unseen=self.unseen,
            thing_classes=self.thing_classes,
            names=self.names,
        )
