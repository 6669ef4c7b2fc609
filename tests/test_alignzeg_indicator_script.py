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


def test_the_indicator_figures_are_of_val_and_never_load_test(
    tiny_world, tmp_path, benchmark_script, test_split_forbidden
):
    import sys
    from pathlib import Path

    import torch

    from zeroseg import runner

    sys.path.insert(0, str(Path(__file__).parent / "methods"))
    from test_alignzeg import _tiny_cfg

    torch.set_num_threads(1)
    cfg = _tiny_cfg(tiny_world, "alignzeg")
    cfg.train.iters = 2
    runner.train(cfg, tmp_path / "run", progress=False)
    with test_split_forbidden():
        props, indicator, threshold = benchmark_script("alignzeg_indicator").collect(
            str(tmp_path / "run"), 1
        )
    method, *_ = runner.load_model(tmp_path / "run")
    assert (indicator, threshold) == (method.cfg.indicator, method.cfg.bias_threshold)
    assert len(props.is_unseen) == len(props.indicator) == len(props.flag_score)
