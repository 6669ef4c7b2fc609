"""The projection model's training loss: at the labels' full resolution (revision 2)."""

from types import SimpleNamespace

import torch
import torch.nn.functional as F

from zeroseg.engine.trainer import TrainConfig
from zeroseg.methods.pixel_projection import full_resolution_cross_entropy, segmenter_plan
from zeroseg.models.backbones.small import SmallUNet, SmallUNetConfig
from zeroseg.models.heads.projection import ProjectionHead


def _lookup() -> torch.Tensor:
    """Labels 0-2 are the classes (positions 0-2); every other label maps to ignore (255)."""
    lookup = torch.full((256,), 255, dtype=torch.long)
    lookup[:3] = torch.arange(3)
    return lookup


def _labels(k: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, k, (2, 8, 8), generator=torch.Generator().manual_seed(seed))


def test_every_labelled_pixel_counts_not_only_the_stride_2_grid():
    """A label off the stride-2 grid (odd row and column) moves the loss: a loss on
    nearest-subsampled labels would not see it."""
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 4, 4)
    lookup = _lookup()
    labels = _labels(3)
    moved = labels.clone()
    moved[0, 1, 1] = (labels[0, 1, 1] + 1) % 3
    a = full_resolution_cross_entropy(logits, labels, lookup, 255)
    b = full_resolution_cross_entropy(logits, moved, lookup, 255)
    assert not torch.isclose(a, b)
    up = F.interpolate(logits, size=(8, 8), mode="bilinear", align_corners=False)
    assert torch.equal(a, F.cross_entropy(up, labels, ignore_index=255))


def test_ignored_and_unmapped_pixels_carry_no_loss():
    """Pixels labelled ignore, or with a label outside the lookup, leave the mean: the loss is
    the visible pixels' alone."""
    torch.manual_seed(1)
    logits = torch.randn(2, 3, 4, 4)
    lookup = _lookup()  # label 3 is outside the classes: mapped to ignore
    labels = _labels(3, seed=1)
    up = F.interpolate(logits, size=(8, 8), mode="bilinear", align_corners=False)
    visible = F.cross_entropy(up[..., 4:], labels[..., 4:])
    for fill in (255, 3):
        hidden = labels.clone()
        hidden[:, :, :4] = fill
        got = full_resolution_cross_entropy(logits, hidden, lookup, 255)
        assert torch.allclose(got, visible, rtol=1e-6, atol=0)
        assert not torch.isclose(got, full_resolution_cross_entropy(logits, labels, lookup, 255))


def test_the_projection_models_stage_trains_on_full_resolution_labels():
    """The baseline's, the oracle's and ZS3Net's stage 1 step (segmenter_plan): moving one label
    off the stride-2 grid changes its loss."""
    torch.manual_seed(0)
    backbone = SmallUNet(SmallUNetConfig(widths=(4, 4, 4, 4), out_dim=4))
    head = ProjectionHead(4, 6)
    ctx = SimpleNamespace(
        device=torch.device("cpu"),
        cfg=SimpleNamespace(train=TrainConfig(iters=1)),
        loader=lambda cfg: None,
    )
    lookup = _lookup()
    plan = segmenter_plan(ctx, backbone, head, None, torch.randn(3, 6), lookup, 255)
    images = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    labels = _labels(3)
    moved = labels.clone()
    moved[1, 3, 5] = (labels[1, 3, 5] + 1) % 3
    model = torch.nn.ModuleDict({"backbone": backbone, "head": head})
    a = plan.step_fn(model, {"image": images, "label": labels})["loss"]
    b = plan.step_fn(model, {"image": images, "label": moved})["loss"]
    assert not torch.isclose(a, b)


def test_foundation_head_false_loads_the_foundations_backbone_only(neutral_default):

    import pytest

    from zeroseg.engine.rundir import without_neutral
    from zeroseg.methods.pixel_projection import ProjectionConfig, segmenter_stage_parts

    backbone = SmallUNet(SmallUNetConfig(widths=(4, 4, 4, 4), out_dim=4))
    head = ProjectionHead(4, 6)
    loaded = []
    ctx = SimpleNamespace(
        device=torch.device("cpu"),
        cfg=SimpleNamespace(train=TrainConfig(iters=1), text="text"),
        loader=lambda cfg: None,
        start_from_foundation=lambda name, b, h: loaded.append((name, b, h)),
    )
    for foundation_head, expected in ((True, head), (False, None)):
        loaded.clear()
        segmenter_plan(
            ctx, backbone, head, "shipped", torch.randn(3, 6), _lookup(), 255,
            foundation_head=foundation_head,
        )  # fmt: skip
        assert loaded == [("shipped", backbone, expected)]
    # its own shared stage: never the baseline's weights; True keeps the keys and run identities
    # recorded before the option existed (a neutral default)
    parts = dict(classes="seen", frozen=True)
    on = segmenter_stage_parts(ctx, SmallUNetConfig(), "shipped", **parts)
    off = segmenter_stage_parts(ctx, SmallUNetConfig(), "shipped", **parts, foundation_head=False)
    assert on != off
    older = {k: v for k, v in on.items() if k != "foundation_head"}  # the parts before it existed
    assert without_neutral(on) == without_neutral(older) != without_neutral(off)
    neutral_default(
        "projection-frozen_unet-small_2k_shapeworld",
        "model.foundation_head",
        "model.foundation_head=false",
    )
    with pytest.raises(ValueError, match="model.foundation_head: false"):
        ProjectionConfig(foundation=None, foundation_head=False)


def test_freeze_text_map_leaves_the_heads_text_side_out_of_training(neutral_default):

    ctx = SimpleNamespace(
        device=torch.device("cpu"),
        cfg=SimpleNamespace(train=TrainConfig(iters=1)),
        loader=lambda cfg: None,
    )
    for freeze in (False, True):
        backbone = SmallUNet(SmallUNetConfig(widths=(4, 4, 4, 4), out_dim=4))
        head = ProjectionHead(4, 6)
        plan = segmenter_plan(
            ctx, backbone, head, None, torch.randn(3, 6), _lookup(), 255,
            backbone_lr_mult=0.5, freeze_text_map=freeze,
        )  # fmt: skip
        trained = {id(p) for group in plan.params for p in group["params"]}
        text = head.text_proj.weight
        assert (id(text) in trained) is not freeze and text.requires_grad is not freeze
        assert {id(p) for p in head.proj.parameters()} <= trained  # the visual side still trains
    neutral_default(
        "projection_unet-small_2k_shapeworld", "model.freeze_text_map", "model.freeze_text_map=true"
    )
