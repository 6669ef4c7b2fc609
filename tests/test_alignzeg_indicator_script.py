"""benchmarks/alignzeg_indicator.py: the AUC docs/methods.md quotes for AlignZeg's indicator."""

import numpy as np
import pytest


def test_auc_is_the_share_of_positive_negative_pairs_ranked_right_ties_half(benchmark_script):
    auc = benchmark_script("alignzeg_indicator").auc
    score = np.array([0.9, 0.5, 0.5, 0.1])
    positive = np.array([True, True, False, False])
    # pairs (pos, neg): (0.9, 0.5) 1, (0.9, 0.1) 1, (0.5, 0.5) 1/2, (0.5, 0.1) 1 -> 3.5 / 4
    assert auc(score, positive) == pytest.approx(0.875)
    assert auc(score, ~positive) == pytest.approx(0.125)  # the other direction: 1 - AUC
    assert auc(np.full(4, 0.3), positive) == pytest.approx(0.5)  # one score for all: chance
