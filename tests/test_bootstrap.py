"""The paired image bootstrap: per-image confusion matrices and the gap's interval over images."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from zeroseg.cli import main
from zeroseg.metrics.bootstrap import (
    ImageConfusions,
    group_scores,
    load_image_confusions,
    paired_gap_interval,
)
from zeroseg.metrics.semantic import SemanticEvaluator, summarize

SEEN, UNSEEN = [0, 1, 2, 3], [4, 5]


def _random_confusions(n: int, k: int = 6, *, seed: int = 0, absent: int | None = None):
    g = torch.Generator().manual_seed(seed)
    conf = torch.randint(0, 40, (n, k, k), generator=g, dtype=torch.int32)
    if absent is not None:  # a class nobody labels or predicts: its IoU is undefined
        conf[:, absent, :] = 0
        conf[:, :, absent] = 0
    return conf


@pytest.mark.parametrize("absent", [None, 1, 5])
def test_group_scores_are_summarizes_figures(absent):
    confs = _random_confusions(7, absent=absent)
    batched = group_scores(confs, SEEN, UNSEEN)
    for i, conf in enumerate(confs):
        ref = summarize(conf.long(), SEEN, UNSEEN)
        for m in ("seen_miou", "unseen_miou", "hiou"):
            assert batched[m][i].item() == pytest.approx(ref[m], abs=1e-9), (i, m)


def test_the_image_confusions_add_up_to_the_evaluators_matrix():
    g = torch.Generator().manual_seed(1)
    preds = torch.randint(0, 6, (5, 8, 8), generator=g)
    labels = torch.randint(0, 6, (5, 8, 8), generator=g)
    labels[0, :2] = 255  # void pixels count nowhere
    kept, whole = ImageConfusions(6), SemanticEvaluator(6, SEEN, UNSEEN)
    for batch in (slice(0, 2), slice(2, 5)):
        kept.process(preds[batch], labels[batch])
        whole.process(preds[batch], labels[batch])
    assert kept.stacked().shape == (5, 6, 6)
    assert torch.equal(kept.stacked().sum(0).long(), whole.conf)
    assert kept.stacked()[0].sum() == 64 - 16
    with pytest.raises(RuntimeError, match="one process only"):
        kept.state()


def test_the_gap_is_the_difference_of_the_seed_means_on_the_images_as_scored():
    a = [_random_confusions(20, seed=s) for s in (0, 1)]
    b = [_random_confusions(20, seed=s) for s in (2, 3)]
    out = paired_gap_interval(a, b, SEEN, UNSEEN, reps=200)

    def mean(row, m):
        return np.mean([summarize(c.sum(0).long(), SEEN, UNSEEN)[m] for c in row])

    for m in ("seen_miou", "unseen_miou", "hiou"):
        assert out[m]["gap"] == pytest.approx(mean(a, m) - mean(b, m), abs=1e-9)
        assert out[m]["low"] < out[m]["gap"] < out[m]["high"]
    assert paired_gap_interval(a, b, SEEN, UNSEEN, reps=200) == out  # a function of its seed
    same = paired_gap_interval(a, a, SEEN, UNSEEN, reps=50)
    assert all(v == {"gap": 0.0, "low": 0.0, "high": 0.0} for v in same.values())


def test_the_resampling_is_paired_across_rows():
    # Images differ widely in difficulty; row A gets 5 more right pixels of class 4 on every
    # image than row B. Drawn apart, the rows' image-to-image spread would swamp the gap; drawn
    # together (the same images for both), the gap is positive in every resample.
    g = torch.Generator().manual_seed(3)
    n, k = 40, 6
    b = torch.zeros(n, k, k, dtype=torch.int32)
    for i in range(n):
        right = int(torch.randint(10, 200, (1,), generator=g))
        b[i] += torch.diag(torch.full((k,), right, dtype=torch.int32))
        b[i, 4, 0] = 30  # class 4 mistaken for class 0
    a = b.clone()
    a[:, 4, 4] += 5
    a[:, 4, 0] -= 5
    out = paired_gap_interval([a], [b], SEEN, UNSEEN, reps=500)
    assert out["unseen_miou"]["low"] > 0
    assert out["seen_miou"]["gap"] > 0  # class 0 loses false positives too


def test_the_rows_must_hold_the_same_images():
    a = [_random_confusions(20)]
    with pytest.raises(ValueError, match="the same \\(N, K, K\\) images"):
        paired_gap_interval(a, [_random_confusions(19)], SEEN, UNSEEN)
    with pytest.raises(ValueError, match="has no seeds. confusions"):
        paired_gap_interval(a, [], SEEN, UNSEEN)


def test_cli_eval_writes_each_scored_images_confusions(demo_run, tmp_path, capsys):
    run = next((demo_run / "runs").glob("projection-*"))
    path = tmp_path / "images.npz"
    capsys.readouterr()
    assert main(["eval", str(run), "--no-progress", "--image-confusions", str(path)]) == 0
    printed = json.loads(capsys.readouterr().out)
    found = load_image_confusions(path)
    conf, seen, unseen = found["rows"]["projection"], found["seen"], found["unseen"]
    assert found["split"] == "test" and len(found["names"]) == conf.shape[1]
    # the matrices are the printed figures' (at the chosen gamma), image by image
    again = summarize(conf.sum(0).long(), seen, unseen)
    for m in ("seen_miou", "unseen_miou", "hiou"):
        assert again[m] == pytest.approx(printed[m], abs=1e-9)
    assert not list(tmp_path.glob("*.part"))
    # an existing file is never overwritten
    assert main(["eval", str(run), "--no-progress", "--image-confusions", str(path)]) == 2
    assert "exists; name a new file" in capsys.readouterr().err
