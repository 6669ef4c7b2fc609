"""Boundary F-measure on hand-derived cases."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from zeroseg.metrics.boundary import (
    BoundaryFScore,
    boundary_map,
    boundary_scores,
    default_tolerance,
)

H, W = 10, 40  # diagonal 41.2 px: the default tolerance is ceil(0.412) = 1 px


def halves(split: int = 20, top_split: int | None = None) -> np.ndarray:
    """Class 0 left of column ``split``, class 1 right of it (rows 0-4 may split elsewhere)."""
    m = np.ones((H, W), np.int64)
    m[:, :split] = 0
    if top_split is not None:
        m[:5] = 1
        m[:5, :top_split] = 0
    return m


def test_default_tolerance_is_one_percent_of_diagonal_at_least_one():
    assert default_tolerance(10, 40) == 1
    assert default_tolerance(300, 400) == 5  # diagonal 500
    assert default_tolerance(1000, 1000) == 15  # ceil(14.14)
    assert default_tolerance(3, 3) == 1


def test_boundary_map_marks_both_sides_of_an_edge():
    b = boundary_map(halves(), np.ones((H, W), bool))
    assert b.sum() == 20 and b[:, 19].all() and b[:, 20].all()


def test_perfect_prediction_scores_100():
    ev = BoundaryFScore()
    ev.process(halves(), halves())
    assert ev.evaluate() == {
        "boundary_f": 100.0,
        "boundary_precision": 100.0,
        "boundary_recall": 100.0,
    }


@pytest.mark.parametrize(
    "shift, tolerance, expected",
    [
        (1, None, 1.0),  # boundary pixels 1 px away, tolerance 1 px: all matched
        (2, None, 0.0),  # 2 px away: none
        (2, 2, 1.0),
        (3, 2, 0.0),
    ],
)
def test_shifted_boundary(shift, tolerance, expected):
    p, r, f = boundary_scores(halves(20 + shift), halves(), tolerance=tolerance)
    assert (p, r, f) == (expected, expected, expected)


def test_half_shifted_boundary_hand_count():
    # Prediction: rows 0-4 split at column 22 (2 px right), rows 5-9 at column 20.
    # Predicted boundary pixels: class 0 at (0..4, 21), (5..9, 19) and (4, 20) [above class 1];
    # class 1 at (0..4, 22), (5..9, 20) and (5, 21) [below class 0]: 11 + 11 = 22.
    # Ground truth: class 0 at (*, 19), class 1 at (*, 20): 20.
    # Within 1 px of a same-class gt boundary pixel: (5..9, 19), (4, 20) and (5..9, 20), (5, 21):
    # 12 of 22. Gt pixels within 1 px of a same-class predicted one: (5..9, 19), (4, 19) and
    # (5..9, 20), (4, 20): 12 of 20.
    p, r, f = boundary_scores(halves(top_split=22), halves())
    assert p == pytest.approx(12 / 22) and r == pytest.approx(12 / 20)
    assert f == pytest.approx(4 / 7)  # 2 · (6/11) · (3/5) / (6/11 + 3/5)


def test_boundaries_are_matched_per_class():
    gt = halves()
    swapped = 1 - gt  # same edge, classes swapped: class 0's boundary is now at column 20
    assert boundary_scores(swapped, gt, tolerance=0) == (0.0, 0.0, 0.0)
    assert boundary_scores(gt, gt, tolerance=0) == (1.0, 1.0, 1.0)


def test_ignore_pixels_are_excluded():
    gt = halves()
    gt[2:5, 5:10] = 255  # a void hole inside class 0
    pred = halves()
    pred[2:5, 5:10] = 1  # whatever is predicted on void does not count
    assert boundary_scores(pred, gt) == (1.0, 1.0, 1.0)
    # A void band on the edge hides it: no gt boundary there, and the prediction's edge inside
    # the band is not read, wherever it is.
    band = halves()
    band[:, 18:22] = 255
    assert boundary_scores(halves(21), band) == (1.0, 1.0, 1.0)
    assert boundary_map(band, band != 255).sum() == 0


def test_empty_boundary_conventions():
    flat = np.zeros((H, W), np.int64)
    assert boundary_scores(flat, flat) == (1.0, 1.0, 1.0)
    assert boundary_scores(flat, halves()) == (1.0, 0.0, 0.0)  # no predicted boundary
    assert boundary_scores(halves(), flat) == (0.0, 1.0, 0.0)  # no gt boundary


def test_mean_over_images_batches_and_merge():
    ev = BoundaryFScore()
    # One perfect image (F 1) and one 2 px off (F 0), given as a (2, H, W) torch batch.
    ev.process(
        torch.from_numpy(np.stack([halves(), halves(22)])),
        torch.from_numpy(np.stack([halves()] * 2)),
    )
    assert ev.evaluate()["boundary_f"] == pytest.approx(50.0)
    other = BoundaryFScore()
    other.process(halves(top_split=22), halves())
    ev.merge(other.state())
    assert ev.evaluate()["boundary_f"] == pytest.approx(100 * (1 + 0 + 4 / 7) / 3)
    assert ev.evaluate()["boundary_recall"] == pytest.approx(100 * (1 + 0 + 0.6) / 3)
    ev.reset()
    assert ev.evaluate()["boundary_f"] == 0.0


def test_shape_mismatch_raises():
    with pytest.raises(ValueError, match="prediction"):
        BoundaryFScore().process(np.zeros((4, 5)), np.zeros((5, 4)))


@settings(max_examples=30, deadline=None, derandomize=True)
@given(
    gt=arrays(np.int64, (8, 9), elements=st.sampled_from([0, 1, 2, 255])),
    pred=arrays(np.int64, (8, 9), elements=st.integers(0, 2)),
)
def test_scores_in_range_and_perfect_on_valid_pixels(gt, pred):
    p, r, f = boundary_scores(pred, gt)
    assert 0 <= p <= 1 and 0 <= r <= 1 and 0 <= f <= 1
    assert min(p, r) - 1e-12 <= f <= max(p, r) + 1e-12
    # Copying the ground truth on labelled pixels is perfect, whatever is on void.
    perfect = np.where(gt == 255, pred, gt)
    assert boundary_scores(perfect, gt) == (1.0, 1.0, 1.0)
