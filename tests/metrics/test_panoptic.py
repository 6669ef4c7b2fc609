"""Panoptic Quality on hand-computed cases (Kirillov et al. 2019, panopticapi rules)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from zeroseg.metrics.panoptic import PanopticEvaluator, pq_stats

# Maps are single rows of pixels: PQ does not look at geometry, only at pixel counts.


def row(*runs: tuple[int, int]) -> np.ndarray:
    """A (1, W) segment-id map from runs of (segment id, length)."""
    return np.concatenate([np.full(n, sid, np.int64) for sid, n in runs])[None, :]


def segs(*pairs: tuple[int, int], crowd: tuple[int, ...] = ()) -> list[dict]:
    return [{"id": i, "category_id": c, "iscrowd": int(i in crowd)} for i, c in pairs]


def stats(pred, pred_segs, gt, gt_segs, k=3):
    s = pq_stats(pred, pred_segs, gt, gt_segs, num_classes=k)
    return {key: v.tolist() for key, v in s.items()}


def test_two_images_things_stuff_fp_fn_and_group_means():
    ev = PanopticEvaluator(3, seen=[1, 2], unseen=[0], thing_classes=[0])
    # Image 1: thing gt 1 (8 px) vs pred 7 (6 px): IoU 6/8; stuff gt 2 (12 px) vs pred 8 (14 px):
    # IoU 12/14.
    ev.process(
        row((7, 6), (8, 14)), segs((7, 0), (8, 1)), row((1, 8), (2, 12)), segs((1, 0), (2, 1))
    )
    # Image 2: thing gt 1 matched exactly; thing gt 2 predicted as stuff class 1 (FN of class 0
    # and FP of class 1); stuff gt 3 matched exactly.
    ev.process(
        row((1, 5), (2, 5), (3, 10)),
        segs((1, 0), (2, 1), (3, 1)),
        row((1, 5), (2, 5), (3, 10)),
        segs((1, 0), (2, 0), (3, 1)),
    )
    s = ev.state()
    assert s["tp"].tolist() == [2, 2, 0]
    assert s["fp"].tolist() == [0, 1, 0]
    assert s["fn"].tolist() == [1, 0, 0]
    assert s["iou"].tolist() == pytest.approx([0.75 + 1, 12 / 14 + 1, 0])

    r = ev.evaluate()
    pq0, sq0, rq0 = 1.75 / 2.5, 1.75 / 2, 2 / 2.5  # 0.7, 0.875, 0.8
    pq1, sq1, rq1 = (12 / 14 + 1) / 2.5, (12 / 14 + 1) / 2, 2 / 2.5
    assert r["per_class_pq"] == {
        "0": pytest.approx(100 * pq0),
        "1": pytest.approx(100 * pq1),
        "2": None,
    }
    assert r["per_class_sq"]["0"] == pytest.approx(100 * sq0)
    assert r["per_class_rq"]["1"] == pytest.approx(100 * rq1)
    assert r["pq"] == pytest.approx(100 * (pq0 + pq1) / 2)  # class 2 never occurs: left out
    assert r["sq"] == pytest.approx(100 * (sq0 + sq1) / 2)
    assert r["rq"] == pytest.approx(100 * (rq0 + rq1) / 2)
    assert r["n"] == 2 and r["seen_n"] == 1 and r["unseen_n"] == 1
    assert r["things_pq"] == pytest.approx(70.0)
    assert r["stuff_pq"] == pytest.approx(100 * pq1)
    assert r["seen_pq"] == pytest.approx(100 * pq1) and r["unseen_pq"] == pytest.approx(70.0)
    s_, u_ = 100 * pq1, 70.0
    assert r["hpq"] == pytest.approx(2 * s_ * u_ / (s_ + u_))


@pytest.mark.parametrize(
    "extra, matched",
    [
        (9, True),  # thing IoU 10/19 > 0.5, stuff IoU 11/20 > 0.5
        (10, False),  # both IoU exactly 0.5: a match needs IoU > 0.5
        (11, False),  # 10/21 and 9/20
    ],
)
def test_match_needs_iou_strictly_above_half(extra, matched):
    gt = row((1, 10), (2, 20))  # thing (class 0) then stuff (class 1)
    pred = row((5, 10 + extra), (6, 20 - extra))
    s = stats(pred, segs((5, 0), (6, 1)), gt, segs((1, 0), (2, 1)))
    if matched:
        assert s["tp"] == [1, 1, 0] and s["fp"] == [0, 0, 0] and s["fn"] == [0, 0, 0]
        assert s["iou"] == pytest.approx([10 / 19, 11 / 20, 0])
    else:
        assert s["tp"] == [0, 0, 0] and s["fp"] == [1, 1, 0] and s["fn"] == [1, 1, 0]


def test_void_pixels_leave_the_union():
    # gt: thing (10 px) then 10 void pixels. The prediction spills 6 px onto void: those pixels
    # are not counted in the union, IoU = 10 / (16 + 10 - 10 - 6) = 1. A second predicted
    # segment lies wholly on void: neither TP nor FP.
    gt = row((1, 10), (0, 10))
    s = stats(row((5, 16), (6, 4)), segs((5, 0), (6, 1)), gt, segs((1, 0)))
    assert s == {"tp": [1, 0, 0], "fp": [0, 0, 0], "fn": [0, 0, 0], "iou": [1.0, 0.0, 0.0]}


def test_unmatched_prediction_is_fp_unless_more_than_half_void():
    gt = row((1, 10), (2, 4), (0, 6))  # class 0 (10 px), class 1 (4 px), void (6 px)
    gt_segs = segs((1, 0), (2, 1))
    # Pred 6 (class 1) covers 2 of gt 2's 4 px: IoU 0.5, no match -> FP + FN of class 1.
    # Pred 7 (class 2): 8 px, 6 of them void (75 %) -> not an FP.
    s = stats(row((5, 10), (6, 2), (7, 8)), segs((5, 0), (6, 1), (7, 2)), gt, gt_segs)
    assert s["tp"] == [1, 0, 0] and s["fp"] == [0, 1, 0] and s["fn"] == [0, 1, 0]
    # Pred 7 (class 2): 8 px, 4 of them void (exactly 50 %) -> an FP.
    s = stats(row((5, 10), (7, 8), (0, 2)), segs((5, 0), (7, 2)), gt, gt_segs)
    assert s["tp"] == [1, 0, 0] and s["fp"] == [0, 0, 1] and s["fn"] == [0, 1, 0]


def test_ground_truth_segment_of_ignore_class_is_void():
    # Same as the void case, with the void region given as a segment of class 255.
    gt = row((1, 10), (9, 10))
    s = stats(row((5, 16), (6, 4)), segs((5, 0), (6, 1)), gt, segs((1, 0), (9, 255)))
    assert s == {"tp": [1, 0, 0], "fp": [0, 0, 0], "fn": [0, 0, 0], "iou": [1.0, 0.0, 0.0]}


def test_crowd_regions():
    gt = row((1, 10), (2, 10))
    gt_segs = segs((1, 0), (2, 1), crowd=(1,))  # class 0 region is a crowd
    # A class-0 prediction on the crowd: never matched, and not an FP (all its pixels are crowd
    # of its class); the crowd itself is not an FN.
    s = stats(row((5, 10), (6, 10)), segs((5, 0), (6, 1)), gt, gt_segs)
    assert s == {"tp": [0, 1, 0], "fp": [0, 0, 0], "fn": [0, 0, 0], "iou": [0.0, 1.0, 0.0]}
    # A class-2 prediction on the same crowd is an FP: the crowd belongs to class 0.
    s = stats(row((5, 10), (6, 10)), segs((5, 2), (6, 1)), gt, gt_segs)
    assert s["fp"] == [0, 0, 1] and s["fn"] == [0, 0, 0]


def test_array_segments_as_zeroseg_data_gives_them():
    # Rows (segment_id, class_index, is_thing), as the ShapeWorld renderer writes them.
    gt = row((1, 10), (2, 10))
    rows = np.array([[1, 0, 1], [2, 1, 0]], np.int32)
    s = stats(gt, rows, gt, rows)
    assert s["tp"] == [1, 1, 0] and s["iou"] == [1.0, 1.0, 0.0]


def test_inconsistent_maps_and_lists_raise():
    gt = row((1, 10), (2, 10))
    with pytest.raises(ValueError, match=r"segment ids \[3\]"):
        stats(row((1, 10), (3, 10)), segs((1, 0)), gt, segs((1, 0), (2, 1)))
    with pytest.raises(ValueError, match=r"predicted segments \[4\] have no pixel"):
        stats(gt, segs((1, 0), (2, 1), (4, 1)), gt, segs((1, 0), (2, 1)))
    with pytest.raises(ValueError, match="class indices"):
        stats(gt, segs((1, 0), (2, 7)), gt, segs((1, 0), (2, 1)))


def test_state_merge_equals_one_evaluator():
    a, b, both = (PanopticEvaluator(3, [0, 1], [2], [0]) for _ in range(3))
    img1 = (
        row((5, 19), (6, 11)),
        segs((5, 0), (6, 1)),
        row((1, 10), (2, 20)),
        segs((1, 0), (2, 1)),
    )
    img2 = (
        row((1, 10), (2, 20)),
        segs((1, 2), (2, 1)),
        row((1, 10), (2, 20)),
        segs((1, 0), (2, 1)),
    )
    a.process(*img1)
    b.process(*img2)
    both.process(*img1)
    both.process(*img2)
    a.merge(b.state())
    assert a.evaluate() == both.evaluate()
    with pytest.raises(ValueError, match="shape"):
        a.merge({k: v[:2] for k, v in b.state().items()})


def test_seen_unseen_harmonic_from_statistics():
    ev = PanopticEvaluator(4, seen=[0, 2], unseen=[1, 3], thing_classes=[0, 1])
    # class 0: PQ .8/1.5; class 1: PQ 1.8/2 = .9; class 2: only an FN, PQ 0; class 3: absent.
    ev.merge(
        {
            "tp": np.array([1, 2, 0, 0]),
            "fp": np.array([1, 0, 0, 0]),
            "fn": np.array([0, 0, 2, 0]),
            "iou": np.array([0.8, 1.8, 0.0, 0.0]),
        }
    )
    r = ev.evaluate()
    seen, unseen = 100 * (0.8 / 1.5 + 0) / 2, 90.0  # 80/3 and 90
    assert r["seen_pq"] == pytest.approx(seen) and r["unseen_pq"] == pytest.approx(unseen)
    assert r["hpq"] == pytest.approx(14400 / 350)  # 2 · (80/3) · 90 / (80/3 + 90)
    assert r["unseen_n"] == 1  # class 3 never occurs
    assert r["stuff_pq"] == 0.0 and r["things_pq"] == pytest.approx(100 * (0.8 / 1.5 + 0.9) / 2)
    ev2 = PanopticEvaluator(4, seen=[0, 1], unseen=[2, 3], thing_classes=[0, 1])
    ev2.merge(ev.state())
    assert ev2.evaluate()["unseen_pq"] == 0.0 and ev2.evaluate()["hpq"] == 0.0


def test_bad_splits_raise():
    with pytest.raises(ValueError, match="both seen and unseen"):
        PanopticEvaluator(3, [0, 1], [1, 2], [0])
    with pytest.raises(ValueError, match="outside"):
        PanopticEvaluator(3, [0, 1], [5], [0])


# --- properties ------------------------------------------------------------------------------

SETTINGS = settings(
    max_examples=40, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)


@SETTINGS
@given(
    seg_map=arrays(np.int64, (6, 7), elements=st.integers(0, 5)),
    cats=st.lists(st.integers(0, 3), min_size=5, max_size=5),
)
def test_perfect_prediction_scores_100(seg_map, cats):
    present = [int(i) for i in np.unique(seg_map) if i != 0]  # 0 is void
    segments = [{"id": i, "category_id": cats[i - 1]} for i in present]
    ev = PanopticEvaluator(4, seen=[0, 1], unseen=[2, 3], thing_classes=[0, 2])
    ev.process(seg_map, segments, seg_map, segments)
    r = ev.evaluate()
    if present:
        assert r["pq"] == pytest.approx(100) and r["sq"] == pytest.approx(100)
        assert r["rq"] == pytest.approx(100)
    occurring = {cats[i - 1] for i in present}
    for c in range(4):
        assert (r["per_class_pq"][str(c)] is None) == (c not in occurring)


counts = arrays(np.int64, 4, elements=st.integers(0, 5))


@SETTINGS
@given(tp=counts, fp=counts, fn=counts, frac=arrays(np.float64, 4, elements=st.floats(0.51, 1)))
def test_hpq_symmetric_and_zero_when_a_side_is_zero(tp, fp, fn, frac):
    state = {"tp": tp, "fp": fp, "fn": fn, "iou": tp * frac}
    a = PanopticEvaluator(4, seen=[0, 1], unseen=[2, 3], thing_classes=[0])
    b = PanopticEvaluator(4, seen=[2, 3], unseen=[0, 1], thing_classes=[0])
    a.merge(state)
    b.merge(state)
    ra, rb = a.evaluate(), b.evaluate()
    assert ra["hpq"] == pytest.approx(rb["hpq"])
    s, u = ra["seen_pq"], ra["unseen_pq"]
    assert ra["hpq"] == pytest.approx(0.0 if s == 0 or u == 0 else 2 * s * u / (s + u))
    assert min(s, u) - 1e-9 <= ra["hpq"] <= max(s, u) + 1e-9
    # Unseen classes with no true positive: PQ(U) = 0, so hPQ = 0 whatever PQ(S) is.
    dead = {k: v.copy() for k, v in state.items()}
    dead["tp"][2:] = 0
    dead["iou"][2:] = 0
    c = PanopticEvaluator(4, seen=[0, 1], unseen=[2, 3], thing_classes=[0])
    c.merge(dead)
    assert c.evaluate()["unseen_pq"] == 0.0 and c.evaluate()["hpq"] == 0.0
