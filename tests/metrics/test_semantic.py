import numpy as np
import pytest
import torch
from torchmetrics.classification import MulticlassJaccardIndex

from zeroseg.metrics.semantic import SemanticEvaluator, confusion_matrix, harmonic_mean, summarize


def test_hand_computed_case():
    # 3 classes; class 2 is unseen. Ground truth / prediction over 8 pixels (+ 1 ignored).
    gt = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 255])
    pr = torch.tensor([0, 0, 1, 1, 1, 2, 0, 1, 2])
    conf = confusion_matrix(pr, gt, 3)
    assert conf.tolist() == [[2, 1, 0], [0, 2, 0], [1, 1, 1]]
    m = summarize(conf, seen=[0, 1], unseen=[2], names=["a", "b", "c"])
    # IoU a = 2/(3+3-2)=0.5, b = 2/(2+4-2)=0.5, c = 1/(3+1-1)=1/3
    assert m["per_class_iou"] == pytest.approx({"a": 50.0, "b": 50.0, "c": 100 / 3})
    assert m["seen_miou"] == pytest.approx(50.0)
    assert m["unseen_miou"] == pytest.approx(100 / 3)
    assert m["hiou"] == pytest.approx(2 * 50 * (100 / 3) / (50 + 100 / 3))
    assert m["pixel_acc"] == pytest.approx(5 / 8 * 100)


def test_harmonic_mean_is_zero_when_a_side_is_zero():
    assert harmonic_mean(80.0, 0.0) == 0.0 and harmonic_mean(0.0, 80.0) == 0.0
    assert harmonic_mean(40.0, 40.0) == pytest.approx(40.0)


def test_absent_classes_are_left_out_of_the_means():
    gt = torch.tensor([0, 0, 1])
    conf = confusion_matrix(gt, gt, 4)
    m = summarize(conf, seen=[0, 1, 2], unseen=[3])
    assert m["seen_miou"] == 100.0 and m["unseen_miou"] == 0.0 and m["per_class_iou"]["2"] is None


def test_a_class_predicted_but_absent_from_the_ground_truth_scores_zero():
    # class 2 (unseen) never occurs in the ground truth but is predicted once: IoU 0/1 = 0, and
    # it enters the unseen mean (a model that hallucinates a class pays for it)
    gt = torch.tensor([0, 0, 1, 1])
    pr = torch.tensor([0, 0, 1, 2])
    m = summarize(confusion_matrix(pr, gt, 3), seen=[0, 1], unseen=[2])
    assert m["per_class_iou"]["2"] == 0.0
    assert m["per_class_iou"]["1"] == pytest.approx(50.0)
    assert m["unseen_miou"] == 0.0 and m["miou"] == pytest.approx(50.0)


def test_out_of_range_labels_are_an_error():
    with pytest.raises(ValueError, match=r"\[7\] are outside \[0, 3\)"):
        confusion_matrix(torch.tensor([0]), torch.tensor([7]), 3)


def test_matches_torchmetrics_on_random_maps():
    g = torch.Generator().manual_seed(0)
    k = 6
    ev = SemanticEvaluator(k, seen=[0, 1, 2, 3], unseen=[4, 5])
    tm = MulticlassJaccardIndex(num_classes=k, average="none", ignore_index=255)
    for _ in range(4):
        gt = torch.randint(0, k, (2, 16, 16), generator=g)
        gt[gt == 5] = torch.where(torch.rand(gt[gt == 5].shape, generator=g) < 0.3, 255, 5)
        pr = torch.randint(0, k, (2, 16, 16), generator=g)
        ev.process(pr, gt)
        tm.update(pr, gt)
    ours = np.array(list(ev.evaluate()["per_class_iou"].values())) / 100
    assert np.allclose(ours, tm.compute().numpy(), atol=1e-6)


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=40, deadline=None)
@given(a=st.floats(0, 100), b=st.floats(0, 100))
def test_harmonic_mean_is_symmetric_and_bounded(a, b):
    h = harmonic_mean(a, b)
    assert h == pytest.approx(harmonic_mean(b, a))
    assert min(a, b) - 1e-9 <= h <= max(a, b) + 1e-9 or h == 0.0
    if a == 0 or b == 0:
        assert h == 0.0


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), k=st.integers(2, 8))
def test_a_perfect_prediction_scores_100(seed, k):
    g = torch.Generator().manual_seed(seed)
    gt = torch.randint(0, k, (3, 9, 9), generator=g)
    m = summarize(confusion_matrix(gt, gt, k), seen=list(range(k - 1)), unseen=[k - 1])
    assert m["miou"] == pytest.approx(100.0) and m["pixel_acc"] == pytest.approx(100.0)
    if (gt == k - 1).any():
        assert m["hiou"] == pytest.approx(100.0)
