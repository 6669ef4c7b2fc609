"""zeroseg.models.bf16_weights: a frozen module's matmul weights cast once, the same bits."""

import pytest
import torch
from torch import nn

from zeroseg.models.backbones.clip import CLIPVisionConfig, VisionTransformer
from zeroseg.models.bf16_weights import Bf16Weights, autocast_bf16_inference, matmul_weight_names

LEAVES = ("in_proj_weight", "in_proj_bias", "proj")


def _vit() -> VisionTransformer:
    torch.manual_seed(0)
    cfg = CLIPVisionConfig(image_size=32, patch_size=8, width=32, layers=2, heads=2, output_dim=16)
    return VisionTransformer(cfg).eval().requires_grad_(False)


def test_exactly_the_weights_autocast_casts_are_copied():
    vit = _vit()
    names = matmul_weight_names(vit, LEAVES)
    assert "conv1.weight" in names and "proj" in names
    assert "transformer.resblocks.1.attn.in_proj_weight" in names
    assert "transformer.resblocks.0.mlp.c_fc.bias" in names
    # run in fp32 by autocast (layer norms) or used outside bf16 ops (embeddings): left alone
    assert not any("ln_" in n for n in names)
    assert "class_embedding" not in names and "positional_embedding" not in names
    with pytest.raises(ValueError, match="no parameter named 'qkv'"):
        matmul_weight_names(vit, ("qkv",))


def test_the_same_bits_as_autocast_and_the_cast_made_once():
    vit = _vit()
    cache = Bf16Weights(LEAVES)
    x = torch.randn(2, 3, 32, 32)
    prompts = torch.randn(2, 3, 32)
    with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16):
        assert autocast_bf16_inference()
        want = vit.forward_features(x, prompts=prompts)
        got = cache.call(vit, "forward_features", x, prompts=prompts)
        again = cache.call(vit, "forward_features", x, prompts=prompts)
    for key in ("cls", "patch_tokens", "cls_proj", "patch_proj"):
        assert torch.equal(got[key], want[key]) and torch.equal(again[key], want[key])
    assert cache.builds == 1
    assert all(p.dtype == torch.float32 for p in vit.parameters())  # the module is unchanged
    # without autocast, or with autograd on, the module runs as it is and nothing is built
    fresh = Bf16Weights(LEAVES)
    with torch.no_grad():
        assert not autocast_bf16_inference()
        plain = fresh.call(vit, "forward_features", x)["patch_proj"]
    assert torch.equal(plain, vit.forward_features(x)["patch_proj"]) and fresh.builds == 0


def test_a_weight_change_rebuilds_the_copies():
    vit = _vit()
    cache = Bf16Weights(LEAVES)
    x = torch.randn(1, 3, 32, 32)

    def run():
        with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16):
            return cache.call(vit, "forward", x), vit(x)

    first, _ = run()
    state = {k: v.clone() for k, v in vit.state_dict().items()}
    state["transformer.resblocks.0.mlp.c_fc.weight"] += 0.5
    vit.load_state_dict(state)
    got, want = run()
    assert cache.builds == 2 and torch.equal(got, want) and not torch.equal(got, first)


def test_not_module_state():
    from zeroseg.data.classes import ClassSplit
    from zeroseg.methods.zegclip import ZegCLIP, ZegCLIPConfig
    from zeroseg.models.heads.zegclip_decoder import ZegCLIPDecoderConfig

    split = ClassSplit(tuple(f"c{i}" for i in range(4)), unseen=(3,))
    cfg = ZegCLIPConfig(
        encoder="tiny",
        prompt_tokens=2,
        decoder=ZegCLIPDecoderConfig(width=32, layers=2, heads=2, input_proj=False),
    )
    torch.manual_seed(0)
    model = ZegCLIP(cfg, split=split, embed_dim=32).eval()
    keys = set(model.state_dict())
    images = torch.randint(0, 256, (1, 3, 64, 64), dtype=torch.uint8)
    emb, seen = torch.randn(4, 32), torch.tensor([True, True, True, False])
    with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16):
        model.labels(images, emb, seen)
    assert model._bf16_weights.builds == 1 and set(model.state_dict()) == keys
    assert not isinstance(model._bf16_weights, nn.Module)
