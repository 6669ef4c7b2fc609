"""The shared calibration rule (calibrated stacking, gamma chosen by hIoU) and AUSUC."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from zeroseg.methods.base import Method, calibrate, own_calibration_off
from zeroseg.metrics.calibration import (
    GAMMAS,
    CalibrationSweep,
    ausuc,
    choose_gamma,
    class_probabilities,
    stacked_labels,
)
from zeroseg.metrics.semantic import confusion_matrix


def test_grid_runs_from_all_seen_to_all_unseen():
    assert GAMMAS[0] == -1.0 and GAMMAS[-1] == 1.0 and len(GAMMAS) == 101 and 0.0 in GAMMAS
    probs = torch.rand(2, 5, 4, 4).softmax(1)
    seen = torch.tensor([True, True, True, False, False])
    assert (stacked_labels(probs, seen, -1.0) < 3).all()
    assert (stacked_labels(probs, seen, 1.0) >= 3).all()


def test_hand_worked_sweep_curve_and_area():
    # classes 0, 1 seen; 2 unseen. Three pixels with p_seen* - p_unseen* of 0.4, -0.2 and 0.0:
    #   pixel a: p = (0.6, 0.2, 0.2), truth 0   -> seen 0 while gamma < 0.4, then unseen 2
    #   pixel b: p = (0.3, 0.2, 0.5), truth 2   -> seen 0 while gamma < -0.2, then 2
    #   pixel c: p = (0.1, 0.45, 0.45), truth 1 -> seen 1 while gamma < 0, then 2
    probs = torch.tensor([[0.6, 0.2, 0.2], [0.3, 0.2, 0.5], [0.1, 0.45, 0.45]]).T
    probs = probs.reshape(1, 3, 1, 3)
    target = torch.tensor([[[0, 2, 1]]])
    sweep = CalibrationSweep(3, [0, 1], [2], gammas=(-0.5, -0.1, 0.2, 0.6))
    sweep.process(probs, target)
    curve = sweep.curve()
    # gamma -0.5: labels (0, 0, 1): IoU0 1/2, IoU1 1, IoU2 0 -> S 75, U 0
    # gamma -0.1: labels (0, 2, 1): every pixel right -> S 100, U 100
    # gamma  0.2: labels (0, 2, 2): IoU0 1, IoU1 0, IoU2 1/2 -> S 50, U 50
    # gamma  0.6: labels (2, 2, 2): IoU0 0, IoU1 0, IoU2 1/3 -> S 0, U 33.3
    assert curve["seen_miou"] == pytest.approx([75, 100, 50, 0])
    assert curve["unseen_miou"] == pytest.approx([0, 100, 50, 100 / 3])
    assert choose_gamma(curve) == -0.1
    # points by mIoU(U): (0, .75), (1/3, 0), (.5, .5), (1, 1) -> trapezoids
    # 1/3 * .375 + 1/6 * .25 + .5 * .75 = .125 + .041667 + .375
    assert ausuc(curve) == pytest.approx((0.125 + 0.25 / 6 + 0.375) * 100)


@pytest.mark.parametrize("seed", range(3))
def test_sweep_equals_evaluating_every_gamma_directly(seed):
    g = torch.Generator().manual_seed(seed)
    k, seen_idx = 7, [0, 2, 3, 5]
    seen = torch.zeros(k, dtype=torch.bool)
    seen[seen_idx] = True
    probs = torch.randn(3, k, 9, 11, generator=g).mul(2).softmax(1)
    target = torch.randint(0, k, (3, 9, 11), generator=g)
    target[0, :2] = 255  # void pixels are left out
    sweep = CalibrationSweep(k, seen_idx, [1, 4, 6])
    sweep.process(probs[:2], target[:2])
    sweep.process(probs[2:], target[2:])  # batches add up
    confs = sweep.confusions()
    for i, gamma in enumerate(GAMMAS):
        direct = confusion_matrix(stacked_labels(probs, seen, gamma), target, k)
        assert torch.equal(confs[i], direct), gamma
        if gamma == 0.0:  # uncalibrated: the plain argmax
            assert torch.equal(direct, confusion_matrix(probs.argmax(1), target, k))


def test_ties_go_to_the_smallest_gamma_and_a_flat_curve_keeps_zero():
    curve = {"gamma": [-0.2, -0.1, 0.0, 0.1], "hiou": [5.0, 7.0, 3.0, 7.0]}
    assert choose_gamma(curve) == -0.1  # |-0.1| == |0.1|: the smaller gamma
    flat = {"gamma": [-0.5, 0.0, 0.5], "hiou": [2.0, 2.0, 2.0]}
    assert choose_gamma(flat) == 0.0


def test_ausuc_of_simple_curves():
    square = {"unseen_miou": [0.0, 100.0, 100.0], "seen_miou": [100.0, 100.0, 0.0]}
    triangle = {"unseen_miou": [0.0, 100.0], "seen_miou": [100.0, 0.0]}
    assert ausuc(square) == pytest.approx(100.0)
    assert ausuc(triangle) == pytest.approx(50.0)


def test_class_probabilities_by_kind():
    logits = torch.tensor([[1.0, 2.0, 3.0]]).reshape(1, 3, 1, 1)
    assert torch.allclose(class_probabilities(logits, "logits"), logits.softmax(1))
    evidence = torch.tensor([[1.0, 3.0, 0.0]]).reshape(1, 3, 1, 1)
    assert class_probabilities(evidence, "evidence").flatten().tolist() == [0.25, 0.75, 0.0]
    sig = torch.tensor([[0.9, 0.8, 0.1]]).reshape(1, 3, 1, 1)
    assert torch.equal(class_probabilities(sig, "probabilities"), sig)
    with pytest.raises(ValueError, match="non-negative"):
        class_probabilities(-evidence, "evidence")
    with pytest.raises(ValueError, match="unknown score kind 'softmax'"):
        class_probabilities(logits, "softmax")


def test_sweep_rejects_bad_input():
    with pytest.raises(ValueError, match="both seen and unseen"):
        CalibrationSweep(3, [0, 1, 2], [])
    with pytest.raises(ValueError, match="increasing"):
        CalibrationSweep(3, [0], [1, 2], gammas=(0.1, 0.0))
    sweep = CalibrationSweep(3, [0], [1, 2])
    with pytest.raises(ValueError, match="do not match"):
        sweep.process(torch.rand(1, 3, 4, 4), torch.zeros(1, 4, 5, dtype=torch.long))


@dataclass
class _Cfg:
    calibration: float = 0.0


class _Logits(Method):
    """A method whose scores are fixed logits, calibrated by its own config like ZS3Net's."""

    name = "fixed"
    Config = _Cfg

    def __init__(self, cfg, logits):
        super().__init__(cfg, split=None, embed_dim=1)
        self.logits = logits

    def scores(self, images, class_embeddings, seen_mask):
        return calibrate(self.logits, seen_mask, self.cfg.calibration)


def test_the_shared_rule_replaces_a_methods_own_constant():
    logits = torch.randn(2, 4, 3, 3)
    seen = torch.tensor([True, True, False, False])
    method = _Logits(_Cfg(calibration=0.5), logits)
    images = torch.zeros(2, 3, 3, 3, dtype=torch.uint8)
    probs = method.calibration_scores(images, None, seen)
    assert torch.allclose(probs, logits.softmax(1))  # the preset's 0.5 is not applied
    assert method.cfg.calibration == 0.5  # and the config is restored afterwards
    for gamma in (-0.3, 0.0, 0.5):
        got = method.calibrated_scores(images, None, seen, gamma).argmax(1)
        assert torch.equal(got, stacked_labels(logits.softmax(1), seen, gamma))
    # at the method's own gamma the shared rule gives the method's own answer
    assert torch.equal(
        method.calibrated_scores(images, None, seen, 0.5).argmax(1),
        method.scores(images, None, seen).argmax(1),
    )
    with own_calibration_off(method):
        assert method.cfg.calibration == 0.0
    assert method.cfg.calibration == 0.5
