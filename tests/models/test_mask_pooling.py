"""The mask family's pooled classifier: mask pooling, the geometric ensemble by hand, and the
frozen foundation that holds no weights in a run's state dict."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from zeroseg.config import ConfigError
from zeroseg.data.classes import ClassSplit
from zeroseg.foundation import load_foundation
from zeroseg.methods import METHODS
from zeroseg.models.heads.mask_decoder import MaskModelConfig
from zeroseg.models.heads.mask_pooling import (
    PooledClassifier,
    PooledConfig,
    geometric_ensemble,
    mask_pool,
)

sys.path.insert(0, str(Path(__file__).parents[1] / "methods"))
from _tiny_mask import TINY_MASK  # noqa: E402


def test_mask_pool_averages_inside_the_binary_mask_and_flags_empty_masks():
    pixels = torch.zeros(1, 2, 2, 2)
    pixels[0, 0] = torch.tensor([[1.0, 0.0], [0.0, 0.0]])  # channel 0: top-left only
    pixels[0, 1] = torch.tensor([[0.0, 1.0], [1.0, 0.0]])  # channel 1: two pixels
    logits = torch.full((1, 3, 2, 2), -5.0)
    logits[0, 0, 0, :] = 3.0  # the top row
    logits[0, 1] = 0.5  # everything
    pooled, valid = mask_pool(pixels, logits)
    # top row: mean (0.5, 0.5) -> unit (1, 1)/sqrt 2; everything: mean (0.25, 0.5)
    assert torch.allclose(pooled[0, 0], torch.tensor([1.0, 1.0]) / 2**0.5)
    assert torch.allclose(pooled[0, 1], F.normalize(torch.tensor([0.25, 0.5]), dim=0))
    assert torch.equal(pooled[0, 2], torch.zeros(2))  # empty: nothing pooled
    assert valid.tolist() == [[True, True, False]]


def test_geometric_ensemble_by_hand():
    probs = torch.tensor([[[0.2, 0.4, 0.2, 0.2]]])  # K = 3, no-object 0.2
    out = torch.log(torch.tensor([[[0.5, 0.25, 0.25]]]))  # softmax = (0.5, 0.25, 0.25)
    seen = torch.tensor([True, True, False])
    valid = torch.tensor([[True]])
    got = geometric_ensemble(probs, out, valid, seen, alpha=0.5, beta=1.0)
    p_in = torch.tensor([0.25, 0.5, 0.25])
    raw = torch.stack(
        [(p_in[0] * 0.5) ** 0.5, (p_in[1] * 0.25) ** 0.5, torch.tensor(0.25)]
    )  # seen: sqrt(p_in p_out); unseen: p_out alone
    want = torch.cat([raw / raw.sum() * 0.8, torch.tensor([0.2])])
    assert torch.allclose(got[0, 0], want, atol=1e-6)
    # weights 0: the query classifier's probabilities unchanged; an empty mask keeps them too
    same = geometric_ensemble(probs, out, valid, seen, alpha=0.0, beta=0.0)
    assert torch.allclose(same, probs, atol=1e-6)
    kept = geometric_ensemble(probs, out, torch.tensor([[False]]), seen, alpha=0.5, beta=1.0)
    assert torch.allclose(kept, probs, atol=1e-6)


def test_pooled_config_bounds():
    with pytest.raises(ValueError, match=r"model.pooled.beta must be in \[0, 1\]"):
        PooledConfig(enabled=True, beta=1.5)


def test_pooled_classifier_is_the_frozen_foundation_and_saves_nothing():
    pooled = PooledClassifier("shipped")
    assert pooled.state_dict() == {} and list(pooled.parameters()) == []
    pooled.train()
    assert not pooled.encoder.training  # batch-norm statistics stay the foundation's
    found = load_foundation("shipped").eval()
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (2, 3, 32, 32), generator=g, dtype=torch.uint8)
    classes = torch.randn(5, 384, generator=g)
    masks = torch.full((2, 1, 16, 16), 4.0)  # one mask covering the whole image
    logits, valid = pooled(images, masks, classes)
    with torch.no_grad():  # the foundation's own pixels, averaged over the image, scored by it
        pixels = found.pixel_embeddings(images)
        mean = F.normalize(pixels.float().mean((2, 3)), dim=-1)[:, None, :, None, None]
        want = found.pixel_logits(mean.squeeze(1), classes)[:, :, 0, 0]
    assert valid.all()
    assert torch.allclose(logits[:, 0], want, atol=1e-4)


SPLIT = ClassSplit(names=("a", "b", "c"), unseen=(2,))


def _method(name: str, **pooled):
    cls = METHODS[name]
    extra = {"clip_fusion": True, "clip_encoder": "foundation"} if name == "alignzeg" else {}
    cfg = cls.Config(
        mask=MaskModelConfig(**{k: v for k, v in TINY_MASK.items() if k != "unet"}),
        foundation="shipped",
        pooled=PooledConfig(**pooled),
        **extra,
    )
    return cls(cfg, split=SPLIT, embed_dim=384)


@pytest.mark.parametrize("name", ["mask-projection", "alignzeg"])
def test_switching_pooled_on_changes_no_saved_weights_and_weights_zero_change_nothing(name):
    torch.manual_seed(0)
    off = _method(name)
    on = _method(name, enabled=True, alpha=0.0, beta=0.0)
    assert set(on.state_dict()) == set(off.state_dict())  # a trained run loads either way
    on.load_state_dict(off.state_dict(), strict=True)
    if name == "alignzeg":  # it pools the foundation it fuses, not a copy
        assert on.pooled.encoder is on.model.clip and not on.pooled.owns_encoder
    on.eval(), off.eval()
    g = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (2, 3, 32, 32), generator=g, dtype=torch.uint8)
    classes = torch.randn(3, 384, generator=g)
    p_off, m_off = off.predict(images, classes)
    p_on, m_on = on.predict(images, classes)
    assert torch.allclose(p_on, p_off, atol=1e-5) and torch.equal(m_on, m_off)
    on.cfg.pooled = PooledConfig(enabled=True, alpha=0.4, beta=0.8)
    moved, _ = on.predict(images, classes)
    assert not torch.allclose(moved, p_off, atol=1e-3)  # the ensemble does act


def test_pooled_needs_a_foundation_and_a_vocabulary_seen_mask():
    cls = METHODS["mask-projection"]
    with pytest.raises(ConfigError, match="model.pooled.enabled needs the ShapeWorld foundation"):
        cls(cls.Config(pooled=PooledConfig(enabled=True)), split=SPLIT, embed_dim=384)
    bad = METHODS["alignzeg"].Config(clip_fusion=False, pooled=PooledConfig(enabled=True))
    with pytest.raises(ConfigError, match="needs model.clip_fusion with clip_encoder"):
        METHODS["alignzeg"](bad, split=SPLIT, embed_dim=384)
    method = _method("mask-projection", enabled=True).eval()
    images = torch.zeros(1, 3, 32, 32, dtype=torch.uint8)
    with pytest.raises(ValueError, match="a vocabulary of 4 classes needs seen_mask"):
        method.predict(images, torch.randn(4, 384))
    probs, _ = method.predict(images, torch.randn(4, 384), torch.tensor([1, 1, 0, 0]).bool())
    assert probs.shape == (1, TINY_MASK["num_queries"], 5)


@pytest.mark.parametrize("name", ["mask-projection", "alignzeg"])
def test_pooled_is_left_out_of_the_trained_stage_key(name):
    """The pooled rows share their row's training (mask-projection's stage 1, AlignZeg's stage):
    ``pooled`` is an inference setting, so it must not reach the key."""
    from types import SimpleNamespace

    ctx = SimpleNamespace(cfg=SimpleNamespace(train="train", text="text"))
    parts = "mask_stage_parts" if name == "mask-projection" else "stage_parts"
    off = getattr(_method(name), parts)(ctx)
    on = getattr(_method(name, enabled=True, alpha=0.3), parts)(ctx)
    assert on == off


def test_pooled_off_keeps_the_run_identities_recorded_before_it_existed(neutral_default):
    for preset in ("mask-projection_unet-small_1k_shapeworld", "alignzeg_unet-small_1k_shapeworld"):
        neutral_default(preset, "model.pooled", "model.pooled.enabled=true")  # pooled: session 39


def test_alignzeg_pools_the_pixels_its_fused_foundation_already_computed():
    on = _method("alignzeg", enabled=True).eval()
    calls = []
    on.model.clip.backbone.register_forward_hook(lambda *_: calls.append(1))
    g = torch.Generator().manual_seed(2)
    images = torch.randint(0, 256, (2, 3, 32, 32), generator=g, dtype=torch.uint8)
    classes = torch.randn(3, 384, generator=g)
    probs, _ = on.predict(images, classes)
    assert len(calls) == 1  # the fusion's forward, reused by the pooled classifier
    # the same figures as the pooled classifier running the encoder itself
    out = on.model(images)
    assert out.frozen_pixels is not None
    own, valid = on.pooled(images, out.masks, classes)
    reused, _ = on.pooled(images, out.masks, classes, out.frozen_pixels)
    assert torch.allclose(own, reused, atol=1e-5) and valid.any()
