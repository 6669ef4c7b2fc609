"""The Mask2Former-style mask model, Hungarian matching, the set loss and the inference rules."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from zeroseg.models.backbones.small import SmallUNetConfig
from zeroseg.models.heads.mask_decoder import (
    MaskClassifier,
    MaskModelConfig,
    instance_inference,
    panoptic_inference,
    semantic_inference,
)
from zeroseg.models.matching import (
    MatchWeights,
    Target,
    hungarian_match,
    set_loss,
    targets_from_panoptic,
)

TINY = MaskModelConfig(
    unet=SmallUNetConfig(widths=(8, 8, 16, 16), out_dim=16),
    hidden_dim=16,
    mask_dim=16,
    num_queries=5,
    layers=4,
    heads=2,
    ffn_dim=32,
)


def test_forward_shapes_and_deep_supervision():
    model = MaskClassifier(TINY, embed_dim=12)
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    out = model(images)
    assert out.masks.shape == (2, 5, 16, 16)  # stride-2 masks
    assert out.embeddings.shape == (2, 5, 12)
    assert len(out.aux) == 4  # the input queries' prediction + 3 of the 4 layers
    assert all(m.shape == (2, 5, 16, 16) and e.shape == (2, 5, 12) for m, e in out.aux)
    logits = model.classify(out.embeddings, torch.randn(7, 12))
    assert logits.shape == (2, 5, 8)  # 7 classes + no-object
    loss = out.masks.sum() + logits.sum()
    loss.backward()
    assert model.query_feat.weight.grad is not None


def test_classifier_is_scaled_cosine():
    model = MaskClassifier(TINY, embed_dim=3)
    text = torch.tensor([[2.0, 0, 0], [0, 1.0, 0]])
    logits = model.classify(torch.tensor([[5.0, 0, 0]]), text)
    s = 1 / 0.07  # the initial scale
    assert logits[0, 0].item() == pytest.approx(s, rel=1e-5)  # cos = 1
    assert logits[0, 1].item() == pytest.approx(0.0, abs=1e-5)  # orthogonal


def test_resnet_backbone_builds_and_runs():
    cfg = MaskModelConfig(
        backbone="resnet18",
        hidden_dim=16,
        mask_dim=16,
        num_queries=3,
        layers=3,
        heads=2,
        ffn_dim=16,
    )
    out = MaskClassifier(cfg, embed_dim=8)(torch.randint(0, 256, (1, 3, 64, 64), dtype=torch.uint8))
    assert out.masks.shape == (1, 3, 16, 16)  # stride-4 masks
    with pytest.raises(ValueError, match="unknown mask-model backbone 'vit'"):
        MaskClassifier(MaskModelConfig(backbone="vit"), embed_dim=8)


# -- matching and the set loss ------------------------------------------------------------------


def _logits_from_probs(p: list[list[float]]) -> torch.Tensor:
    """(N, 2) class probabilities -> (1, N, 3) logits with the rest of the mass on no-object."""
    probs = torch.tensor(p)
    probs = torch.cat([probs, 1 - probs.sum(1, keepdim=True)], 1)
    return probs.log()[None]


def test_hungarian_beats_greedy_on_a_hand_case():
    # Class costs -p(q, c_j): greedy gives q0 -> A (0.9) then B to a 0.05 query (total 0.95);
    # the optimum is q1 -> A (0.85), q0 -> B (0.8), total 1.65.
    logits = _logits_from_probs([[0.9, 0.08], [0.85, 0.05], [0.05, 0.05]])
    logits[0, 0, 1] = math.log(0.8)  # q0: A 0.9, B 0.8 (as logits, the softmax renormalises)
    masks = torch.zeros(1, 3, 2, 2)
    target = Target(labels=torch.tensor([0, 1]), masks=torch.ones(2, 2, 2))
    w = MatchWeights(class_weight=1.0, mask_weight=0.0, dice_weight=0.0)
    [(qi, ti)] = hungarian_match(logits, masks, [target], w)
    assert dict(zip(ti.tolist(), qi.tolist())) == {0: 1, 1: 0}


def test_matching_follows_masks_when_classes_tie():
    m0 = torch.tensor([[1.0, 1.0], [0.0, 0.0]])  # top row
    m1 = 1 - m0  # bottom row
    # Query 0 predicts the bottom row, query 1 the top row.
    masks = torch.stack([m1, m0])[None] * 20 - 10
    target = Target(labels=torch.tensor([0, 0]), masks=torch.stack([m0, m1]))
    logits = torch.zeros(1, 2, 2)
    [(qi, ti)] = hungarian_match(logits, masks, [target])
    assert dict(zip(ti.tolist(), qi.tolist())) == {0: 1, 1: 0}


def test_set_loss_hand_values_and_finite():
    # One query, one target, perfect mask: BCE ~ 0, dice ~ 0; CE of uniform 3-way logits = log 3.
    mask = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    target = Target(labels=torch.tensor([1]), masks=mask[None])
    logits = torch.zeros(1, 1, 3, requires_grad=True)
    masks = (mask * 40 - 20)[None, None].requires_grad_(True)
    out = set_loss(logits, masks, [target], [(torch.tensor([0]), torch.tensor([0]))])
    assert out["ce"].item() == pytest.approx(math.log(3), rel=1e-5)
    assert out["bce"].item() < 1e-6 and out["dice"].item() < 1e-6
    assert out["loss"].item() == pytest.approx(2 * math.log(3), rel=1e-4)
    out["loss"].backward()
    assert torch.isfinite(logits.grad).all()
    # An unmatched query is pushed to no-object with weight 0.1: CE = log 3 on its own as well
    # (weighted mean over one element), and an image with no target gives finite mask terms.
    empty = Target(labels=torch.zeros(0, dtype=torch.int64), masks=torch.zeros(0, 2, 2))
    out = set_loss(
        torch.zeros(1, 2, 3),
        torch.zeros(1, 2, 2, 2),
        [empty],
        [(torch.zeros(0, dtype=torch.int64),) * 2],
    )
    assert out["ce"].item() == pytest.approx(math.log(3), rel=1e-5)
    assert out["bce"].item() == 0.0 and torch.isfinite(out["loss"])


def test_targets_from_panoptic_drops_ignored_classes():
    pan = torch.tensor([[[1, 1, 2, 2], [1, 1, 2, 2], [3, 3, 0, 0], [3, 3, 0, 0]]])
    segs = [torch.tensor([[1, 4, 1], [2, 7, 0], [3, 9, 1]])]
    lookup = torch.full((256,), 255, dtype=torch.int64)
    lookup[4], lookup[7] = 0, 1  # class 9 is not in the training vocabulary
    [t] = targets_from_panoptic(pan, segs, lookup, (2, 2))
    assert t.labels.tolist() == [0, 1]
    assert t.masks.tolist() == [[[1, 0], [0, 0]], [[0, 1], [0, 0]]]


# -- inference rules ----------------------------------------------------------------------------


def test_semantic_inference_is_the_einsum():
    probs = torch.tensor([[[0.6, 0.4], [0.1, 0.9]]])  # (1, 2 queries, 2 classes)
    masks = torch.tensor([[[[1.0, 0.0]], [[0.5, 1.0]]]])  # (1, 2, 1, 2)
    out = semantic_inference(probs, masks)
    # pixel 0: class 0 = 0.6*1 + 0.1*0.5 = 0.65, class 1 = 0.4 + 0.45 = 0.85; pixel 1: 0.1, 0.9
    assert torch.allclose(out[0, :, 0], torch.tensor([[0.65, 0.1], [0.85, 0.9]]))


def test_panoptic_inference_rules():
    # 4x4 image, classes: 0 thing, 1 thing, 2 stuff; column 3 of probs is no-object.
    h = w = 4
    m = torch.zeros(6, h, w)
    m[0, :, :2] = 0.9  # q0: thing 0, left half
    m[1, :, :] = 0.9  # q1: no-object everywhere
    m[2, :2, 2:] = 0.9  # q2: stuff 2, top right
    m[3, 2:, 2:] = 0.9  # q3: stuff 2, bottom right -> merged with q2
    m[4, :, 3:] = 0.9  # q4: thing 1, but score 0.6 < 0.8 -> dropped
    m[5, :, :2] = 0.9  # q5: thing 1 on q0's pixels; it wins only (0, 0): 1/8 < 0.8 -> dropped
    m[5, 0, 0] = 1.0
    probs = torch.tensor(
        [
            [0.95, 0.0, 0.0, 0.05],
            [0.0, 0.0, 0.0, 1.0],
            [0.0, 0.0, 0.9, 0.1],
            [0.0, 0.0, 0.85, 0.15],
            [0.0, 0.6, 0.0, 0.4],
            [0.0, 0.9, 0.0, 0.1],
        ]
    )
    is_thing = torch.tensor([True, True, False])
    pan, rows = panoptic_inference(probs, m, is_thing)
    assert rows.tolist() == [[1, 0, 1], [2, 2, 0]]
    # q5 wins (0, 0) (0.9 * 1.0 > 0.95 * 0.9) but is dropped, so that pixel stays void; q0 keeps
    # 7 of its 8 pixels (0.875 >= 0.8); q4 is below the object threshold; q2 and q3 merge.
    expected = torch.tensor([[0, 1, 2, 2], [1, 1, 2, 2], [1, 1, 2, 2], [1, 1, 2, 2]])
    assert torch.equal(pan, expected)


def test_panoptic_inference_nothing_kept():
    probs = torch.tensor([[0.1, 0.9]])  # one class + no-object
    pan, rows = panoptic_inference(probs, torch.ones(1, 2, 2), torch.tensor([True]))
    assert pan.eq(0).all() and rows.shape == (0, 3)


def test_instance_inference_topk_things_only():
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.6, 0.3]])  # classes: 0 thing, 1 stuff
    logits = torch.tensor([[[4.0, -4.0]], [[4.0, 4.0]]])  # (2, 1, 2)
    masks, scores, labels = instance_inference(probs, logits, torch.tensor([True, False]), topk=3)
    # Stuff class 1 is never an instance; (q0, 0) and (q1, 0) remain, scored by prob x mask score.
    assert labels.tolist() == [0, 0]
    s = torch.sigmoid(torch.tensor(4.0)).item()
    assert scores.tolist() == pytest.approx([0.7 * s, 0.1 * s], rel=1e-5)
    assert masks.tolist() == [[[True, False]], [[True, True]]]


def _adamw_step(model: MaskClassifier, lr: float = 1e-3):
    """One AdamW step of the stage's optimiser on a loss that reaches every part of the model;
    returns each parameter's and batch-norm buffer's value before it, by name."""
    from zeroseg.config import TrainConfig
    from zeroseg.engine.trainer import build_optimizer

    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    groups = model.param_groups(model.parameters(), lr)
    opt = build_optimizer(groups if groups is not None else model.parameters(), TrainConfig(lr=lr))
    model.train()
    out = model(torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8))
    (out.masks.square().mean() + out.embeddings.square().mean()).backward()
    opt.step()
    return before


def _moved(model, before, prefix: str, *, inside: bool) -> float:
    """The largest change of the model's float weights (not buffers) inside / outside ``prefix``."""
    names = {n for n, _ in model.named_parameters()}
    state = model.state_dict()
    return max(
        (state[k] - before[k]).abs().max().item() for k in names if k.startswith(prefix) == inside
    )


def test_backbone_lr_mult_puts_the_pretrained_backbone_in_its_own_group():
    torch.manual_seed(0)
    assert (
        MaskClassifier(TINY, embed_dim=12).param_groups([], 1e-3) is None
    )  # 1: one group, as before
    model = MaskClassifier(dataclasses.replace(TINY, backbone_lr_mult=0.1), embed_dim=12)
    groups = model.param_groups(model.parameters(), 1e-3)
    unet = {id(p) for p in model.backbone.unet.parameters()}
    assert [g["lr"] for g in groups] == [1e-3, pytest.approx(1e-4)]
    assert {id(p) for p in groups[1]["params"]} == unet
    assert not unet & {id(p) for p in groups[0]["params"]}
    assert {id(p) for g in groups for p in g["params"]} == {id(p) for p in model.parameters()}
    # AdamW's first step moves each weight by about its group's lr: the U-Net by a tenth
    before = _adamw_step(model)
    assert _moved(model, before, "backbone.unet.", inside=True) == pytest.approx(1e-4, rel=0.02)
    assert _moved(model, before, "backbone.unet.", inside=False) == pytest.approx(1e-3, rel=0.02)


def test_backbone_lr_mult_zero_freezes_weights_and_batch_norm_statistics():
    torch.manual_seed(0)
    model = MaskClassifier(dataclasses.replace(TINY, backbone_lr_mult=0.0), embed_dim=12)
    groups = model.param_groups(model.parameters(), 1e-3)
    assert len(groups) == 1 and not {id(p) for p in model.backbone.unet.parameters()} & {
        id(p) for p in groups[0]["params"]
    }
    before = _adamw_step(model)
    assert not model.backbone.unet.training and model.mask_features.training
    unet = {k for k in before if k.startswith("backbone.unet.")}
    assert any("running_mean" in k for k in unet)
    assert all(torch.equal(model.state_dict()[k], before[k]) for k in unet)  # weights and BN stats
    assert _moved(model, before, "backbone.unet.", inside=False) == pytest.approx(1e-3, rel=0.02)
    with pytest.raises(ValueError, match="backbone_lr_mult must be >= 0"):
        MaskClassifier(dataclasses.replace(TINY, backbone_lr_mult=-1.0), embed_dim=12)
