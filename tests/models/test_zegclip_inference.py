"""ZegCLIP's inference path: equal to the training-time path, text side cached per vocabulary."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from zeroseg.data.classes import ClassSplit
from zeroseg.methods.zegclip import ZegCLIP, ZegCLIPConfig, reduce_seen
from zeroseg.models.heads.mask_scores import candidate_classes, sigmoid_labels, sigmoid_scores
from zeroseg.models.heads.zegclip_decoder import ZegCLIPDecoder, ZegCLIPDecoderConfig


def _reference_scores(logits, size, shift):
    up = F.interpolate(logits.float(), size=size, mode="bilinear", align_corners=False)
    return up.sigmoid() - shift.view(1, -1, 1, 1) if shift is not None else up.sigmoid()


@pytest.mark.parametrize("block_bytes", [1, 3 * 64 * 64 * 4, 1 << 30])
def test_sigmoid_scores_equal_the_whole_tensor_passes(block_bytes):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 7, 5, 6, generator=g) * 4
    shift = 0.1 * (torch.arange(7) % 2 == 0).float()
    for s in (shift, None):
        # a plane of whole SIMD vectors (as 512 x 512): the same kernels on the same values
        got = sigmoid_scores(logits, (64, 64), s, block_bytes=block_bytes)
        assert got.dtype == torch.float32 and got.shape == (2, 7, 64, 64)
        assert torch.equal(got, _reference_scores(logits, (64, 64), s))
        # otherwise the sigmoid's scalar tail falls elsewhere: within an fp32 rounding
        got = sigmoid_scores(logits, (23, 17), s, block_bytes=block_bytes)
        torch.testing.assert_close(got, _reference_scores(logits, (23, 17), s), atol=1e-7, rtol=0)
    half = sigmoid_scores(logits.bfloat16(), (16, 16), shift)
    assert torch.equal(half, _reference_scores(logits.bfloat16(), (16, 16), shift))
    with pytest.raises(ValueError, match=r"shift must be \(7,\)"):
        sigmoid_scores(logits, (9, 9), shift[:3])
    with pytest.raises(ValueError, match=r"logits must be \(B, K, h, w\)"):
        sigmoid_scores(logits[0], (9, 9))


def _smooth_logits(k: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    """(2, K, h, w) logits of a trained model's kind: each class high in a few regions."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randn(2, k, 3, 3, generator=g) * 4
    up = F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)
    return up + 0.3 * torch.randn(2, k, h, w, generator=g)


@pytest.mark.parametrize(
    ("k", "low", "size"),
    [
        (40, (16, 16), (64, 64)),
        (30, (16, 12), (50, 37)),
        (9, (10, 10), (7, 7)),
        (1, (4, 4), (9, 9)),
    ],
)
def test_sigmoid_labels_equal_the_argmax_of_the_scores(k, low, size):
    logits = _smooth_logits(k, *low)
    shift = 0.1 * (torch.arange(k) % 3 == 0).float()
    for s in (shift, None):
        expected = sigmoid_scores(logits, size, s).argmax(1)
        for block_bytes in (1, 1 << 30):  # one class per block, and all at once
            got = sigmoid_labels(logits, size, s, block_bytes=block_bytes)
            assert got.dtype == torch.long and torch.equal(got, expected)
    # ties go to the lowest class, as argmax: two identical classes, the first always wins
    twins = torch.cat([logits[:, :1], logits[:, :1], logits[:, 1:]], 1)
    got = sigmoid_labels(twins, size)
    assert torch.equal(got, sigmoid_scores(twins, size).argmax(1)) and not (got == 1).any()
    with pytest.raises(ValueError, match=rf"shift must be \({k},\)"):
        sigmoid_labels(logits, size, torch.zeros(k + 1))
    with pytest.raises(ValueError, match=r"logits must be \(B, K, h, w\)"):
        sigmoid_labels(logits[0], size)


def test_only_classes_that_can_win_are_upsampled():
    # class 0 high on the left half, class 1 on the right, class 5 a little above classes 2-4
    x = torch.full((6, 8, 8), -6.0)
    x[0], x[1], x[5] = -8.0, -8.0, -3.0
    x[0, :, :4], x[1, :, 4:] = 5.0, 5.0
    # 2-4 are below class 5 everywhere: never upsampled; 5 may win where the halves meet
    assert candidate_classes(x, torch.zeros(6)).tolist() == [0, 1, 5]
    expected = sigmoid_scores(x[None], (32, 32)).argmax(1)
    assert torch.equal(sigmoid_labels(x[None], (32, 32)), expected)
    assert set(expected.unique().tolist()) == {0, 1}
    # a shift that sinks class 1 below class 5 hands the right half to class 5
    shift = torch.tensor([0.0, 1.0, 0, 0, 0, 0])
    assert candidate_classes(x, shift).tolist() == [0, 5]
    expected = sigmoid_scores(x[None], (32, 32), shift).argmax(1)
    assert torch.equal(sigmoid_labels(x[None], (32, 32), shift), expected)
    assert set(expected.unique().tolist()) == {0, 5}


def _trained_scale(decoder: torch.nn.Module) -> None:
    """Linear weights of a trained model's scale (the 0.02 init gives near-zero masks)."""
    for m in decoder.modules():
        if isinstance(m, torch.nn.Linear):
            torch.nn.init.normal_(m.weight, std=0.3)
            torch.nn.init.normal_(m.bias, std=0.1)


@pytest.mark.parametrize("relationship", [True, False])
@pytest.mark.parametrize("input_proj", [True, False])
@pytest.mark.parametrize("mask_scale", [1.0, 4.0])
def test_decoder_predict_equals_the_last_layer_of_forward(relationship, input_proj, mask_scale):
    torch.manual_seed(0)
    cfg = ZegCLIPDecoderConfig(
        width=32, layers=3, heads=4, input_proj=input_proj, mask_scale=mask_scale
    )
    dec = ZegCLIPDecoder(cfg, visual_dim=32, text_dim=32, relationship=relationship).eval()
    _trained_scale(dec)
    patches = 5 * F.normalize(torch.randn(2, 4, 5, 32), dim=-1)  # logits of order 1
    cls = F.normalize(torch.randn(2, 32), dim=-1)
    text = F.normalize(torch.randn(9, 32), dim=-1)
    with torch.no_grad():
        expected = dec(patches, cls, text)[-1]
    got = dec.predict(patches, cls, dec.text_side(text))
    assert got.shape == expected.shape == (2, 9, 4, 5)
    assert expected.abs().max() > 0.5 * mask_scale  # masks of a real scale: a tight bound
    torch.testing.assert_close(got, expected, atol=1e-5 * mask_scale, rtol=0)
    with pytest.raises(RuntimeError, match="eval mode"):
        dec.train().predict(patches, cls, dec.text_side(text))


def test_mask_scale_multiplies_every_layers_masks_and_nothing_else():
    """mask_scale scales the masks only: the attention (so the queries each layer passes on) is
    the paper's, so every layer's masks are exactly the factor times the unscaled decoder's."""
    torch.manual_seed(0)
    plain = ZegCLIPDecoder(
        ZegCLIPDecoderConfig(width=32, layers=3, heads=4), visual_dim=32, text_dim=32
    ).eval()
    _trained_scale(plain)
    scaled = ZegCLIPDecoder(
        ZegCLIPDecoderConfig(width=32, layers=3, heads=4, mask_scale=4.0),
        visual_dim=32,
        text_dim=32,
    ).eval()
    scaled.load_state_dict(plain.state_dict())  # no new parameter: the same weights load
    patches = 5 * F.normalize(torch.randn(2, 4, 5, 32), dim=-1)
    cls = F.normalize(torch.randn(2, 32), dim=-1)
    text = F.normalize(torch.randn(9, 32), dim=-1)
    with torch.no_grad():
        for a, b in zip(plain(patches, cls, text), scaled(patches, cls, text), strict=True):
            assert a.abs().max() > 0.5
            torch.testing.assert_close(b, 4.0 * a, atol=1e-5, rtol=1e-6)
    with pytest.raises(ValueError, match="mask_scale"):
        ZegCLIPDecoder(ZegCLIPDecoderConfig(mask_scale=0.0), visual_dim=512, text_dim=512)


def _tiny_zegclip(nel: bool = True) -> ZegCLIP:
    split = ClassSplit(tuple(f"c{i}" for i in range(6)), unseen=(4, 5))
    cfg = ZegCLIPConfig(
        encoder="tiny",
        prompt_tokens=2,
        nel=nel,
        decoder=ZegCLIPDecoderConfig(width=32, layers=2, heads=2, input_proj=False),
    )
    torch.manual_seed(0)
    model = ZegCLIP(cfg, split=split, embed_dim=32).eval()
    _trained_scale(model.decoder)
    return model


def _old_scores(model: ZegCLIP, images, emb, seen):
    """The training-time path: every decoder layer, whole-tensor upsampling and sigmoid."""
    logits = model.mask_logits(images, emb)[-1]
    up = F.interpolate(logits.float(), size=images.shape[-2:], mode="bilinear", align_corners=False)
    return reduce_seen(up, seen, model.reduction(), sigmoid=model.cfg.nel)


def _inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Two images, 6 class embeddings, the first 4 seen."""
    images = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    return images, torch.randn(6, 32), torch.tensor([True, True, True, True, False, False])


@pytest.mark.parametrize("nel", [True, False])
def test_inference_scores_equal_the_training_time_path(nel):
    model = _tiny_zegclip(nel)
    images, emb, seen = _inputs()
    with torch.no_grad():
        expected = _old_scores(model, images, emb, seen)
        got = model.scores(images, emb, seen)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    # bf16 autocast: both paths round differently; agreement within bf16's resolution
    with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16):
        expected = _old_scores(model, images, emb, seen)
        got = model.scores(images, emb, seen)
    torch.testing.assert_close(got, expected, atol=3e-2, rtol=0)


def test_the_text_side_is_computed_once_per_vocabulary_and_follows_the_weights():
    model = _tiny_zegclip()
    images = torch.randint(0, 256, (1, 3, 64, 64), dtype=torch.uint8)
    emb = torch.randn(6, 32)
    seen = torch.tensor([True, True, True, True, False, False])
    cache = model._text_cache
    with torch.no_grad():
        first = model.scores(images, emb, seen)
        assert cache.misses == 1
        # the same vocabulary in a new tensor: no recomputation, the same scores
        assert torch.equal(model.scores(images, emb.clone(), seen), first)
        assert cache.misses == 1
        # another vocabulary: recomputed
        other = torch.randn(6, 32)
        model.scores(images, other, seen)
        assert cache.misses == 2
        # the weights change in place (an optimiser step, load_state_dict): recomputed, and the
        # scores are those of the new weights, not the cached ones
        model.scores(images, emb, seen)
        assert cache.misses == 3
        state = {k: v.clone() for k, v in model.state_dict().items()}
        state["decoder.q_proj.bias"] += torch.randn(state["decoder.q_proj.bias"].shape)
        model.load_state_dict(state)
        after = model.scores(images, emb, seen)
        assert cache.misses == 4
        torch.testing.assert_close(after, _old_scores(model, images, emb, seen), atol=1e-5, rtol=0)
        assert (after - first).abs().max() > 1e-3
        # autocast computes another dtype: its own entry
        with torch.autocast("cpu", torch.bfloat16):
            model.scores(images, emb, seen)
        assert cache.misses == 5
    # with autograd on (training) it is computed with gradients and nothing is kept
    params = list(model.decoder.q_proj.parameters())
    text, term = cache.get(emb, lambda t: model.decoder.text_side(F.normalize(t, dim=-1)), params)
    assert cache.misses == 6 and term.requires_grad and cache._value is None


@pytest.mark.parametrize("nel", [True, False])
def test_labels_equal_the_argmax_of_the_scores(nel):
    model = _tiny_zegclip(nel)
    images, emb, seen = _inputs()
    with torch.no_grad():
        expected = model.scores(images, emb, seen).argmax(1)
        got = model.labels(images, emb, seen)
    assert got.shape == (2, 64, 64) and torch.equal(got, expected)
    assert len(expected.unique()) > 1  # a real decision, not one class everywhere
