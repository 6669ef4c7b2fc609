"""benchmarks/pseudo_label_quality.py: the figures of ZegCLIP-ST's pseudo-labels on val."""

from __future__ import annotations

import math

import torch


def test_summary_splits_unseen_pseudo_labels_by_their_true_class(benchmark_script):
    # classes 0, 1 seen; 2, 3 unseen; rows: pseudo-label, columns: true class
    counts = torch.zeros(4, 4, dtype=torch.long)
    # pseudo-label 2: 60 pixels right, 30 of a seen class, 10 of the other unseen class
    counts[2, 2], counts[2, 0], counts[2, 3] = 60, 30, 10
    counts[0, 0], counts[0, 2] = 90, 10  # pseudo "0" (seen): 90 right
    labelled = torch.tensor([200, 50, 120, 30])
    figures = benchmark_script("pseudo_label_quality").summary(counts, labelled, [2, 3])
    assert figures == {
        "unseen_precision": 60.0,
        "unseen_wrong_seen": 30.0,
        "unseen_wrong_unseen": 10.0,
        "unseen_recall": 40.0,  # 60 of the 150 unseen pixels got their own class
        "seen_precision": 90.0,
    }


def test_summary_without_unseen_pseudo_labels_is_nan_not_zero(benchmark_script):
    counts = torch.zeros(3, 3, dtype=torch.long)
    counts[0, 0] = 5
    figures = benchmark_script("pseudo_label_quality").summary(counts, torch.tensor([5, 5, 5]), [2])
    assert math.isnan(figures["unseen_precision"])
    assert figures["unseen_recall"] == 0.0
    assert figures["seen_precision"] == 100.0
