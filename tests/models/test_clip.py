"""zeroseg's CLIP against transformers.CLIPModel on random weights, in every checkpoint format.

A tiny CLIPModel (width 128, 2 heads of 64, so OpenAI's heads = width // 64 rule holds; vocab
49408 so real BPE ids are valid) is saved with save_pretrained, converted by this test to
OpenAI's key layout (state dict and TorchScript archive), and loaded by zeroseg each way.
"""

from __future__ import annotations

import math
import pickle
import threading
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from zeroseg.models.backbones.clip import (
    CLIP,
    CLIP_PRESETS,
    CLIPConfig,
    CLIPTextConfig,
    CLIPVisionConfig,
    VisionTransformer,
    Workspace,
    resample_position_embedding,
)
from zeroseg.models.pretrained import (
    CheckpointError,
    load_clip,
    read_torchscript_tensors,
    save_clip_safetensors,
)
from zeroseg.text.clip_tokenizer import CLIPTokenizer

transformers = pytest.importorskip("transformers")

TOL = 1e-4
PROMPTS = ["a photo of a cat.", "a red triangle", "striped green ground", "sky"]


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    tower = dict(hidden_size=128, intermediate_size=512, num_hidden_layers=2, num_attention_heads=2)
    config = transformers.CLIPConfig(
        text_config=dict(tower, vocab_size=49408, max_position_embeddings=77),
        vision_config=dict(tower, image_size=64, patch_size=16),
        projection_dim=64,
    )
    model = transformers.CLIPModel(config).eval()
    # Non-trivial LayerNorm parameters and logit scale, so a swapped weight/bias shows up.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or "layrnorm" in name:
                p.add_(0.1 * torch.randn_like(p))
        model.logit_scale.fill_(3.0)
    path = tmp_path_factory.mktemp("hf") / "clip"
    model.save_pretrained(str(path))
    return path


@pytest.fixture(scope="module")
def hf_model(hf_dir: Path) -> nn.Module:
    return transformers.CLIPModel.from_pretrained(str(hf_dir)).eval()


@pytest.fixture(scope="module")
def tokens() -> torch.Tensor:
    return CLIPTokenizer()(PROMPTS)


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))


def _hf_to_openai_layout(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Written independently of zeroseg's remapping: HF names -> OpenAI's released names."""
    out = {"logit_scale": sd["logit_scale"]}
    for tower, dst in (("vision_model", "visual.transformer"), ("text_model", "transformer")):
        n = 1 + max(int(k.split(".")[3]) for k in sd if k.startswith(f"{tower}.encoder.layers."))
        for i in range(n):
            s, d = f"{tower}.encoder.layers.{i}.", f"{dst}.resblocks.{i}."
            for kind in ("weight", "bias"):
                out[d + f"attn.in_proj_{kind}"] = torch.cat(
                    [sd[s + f"self_attn.{p}_proj.{kind}"] for p in "qkv"]
                )
                out[d + f"attn.out_proj.{kind}"] = sd[s + f"self_attn.out_proj.{kind}"]
                out[d + f"ln_1.{kind}"] = sd[s + f"layer_norm1.{kind}"]
                out[d + f"ln_2.{kind}"] = sd[s + f"layer_norm2.{kind}"]
                out[d + f"mlp.c_fc.{kind}"] = sd[s + f"mlp.fc1.{kind}"]
                out[d + f"mlp.c_proj.{kind}"] = sd[s + f"mlp.fc2.{kind}"]
    v, t = "vision_model.", "text_model."
    out["visual.class_embedding"] = sd[v + "embeddings.class_embedding"]
    out["visual.conv1.weight"] = sd[v + "embeddings.patch_embedding.weight"]
    out["visual.positional_embedding"] = sd[v + "embeddings.position_embedding.weight"]
    out["visual.proj"] = sd["visual_projection.weight"].t().contiguous()
    out["token_embedding.weight"] = sd[t + "embeddings.token_embedding.weight"]
    out["positional_embedding"] = sd[t + "embeddings.position_embedding.weight"]
    out["text_projection"] = sd["text_projection.weight"].t().contiguous()
    for kind in ("weight", "bias"):
        out[f"visual.ln_pre.{kind}"] = sd[v + f"pre_layrnorm.{kind}"]
        out[f"visual.ln_post.{kind}"] = sd[v + f"post_layernorm.{kind}"]
        out[f"ln_final.{kind}"] = sd[t + f"final_layer_norm.{kind}"]
    return out


@pytest.fixture(scope="module")
def openai_sd(hf_dir: Path) -> dict[str, torch.Tensor]:
    return _hf_to_openai_layout(load_file(str(hf_dir / "model.safetensors")))


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a - b).abs().max().item()


@pytest.fixture(scope="module")
def reference(
    hf_model: nn.Module, images: torch.Tensor, tokens: torch.Tensor
) -> dict[str, torch.Tensor]:
    """transformers' outputs, computed once."""
    with torch.no_grad():
        return {
            "image": hf_model.get_image_features(pixel_values=images).pooler_output,
            "text": hf_model.get_text_features(input_ids=tokens).pooler_output,
        }


def _assert_matches_hf(
    model: CLIP, reference: dict[str, torch.Tensor], images: torch.Tensor, tokens: torch.Tensor
) -> None:
    with torch.no_grad():
        assert _max_diff(model.encode_image(images), reference["image"]) <= TOL
        assert _max_diff(model.encode_text(tokens), reference["text"]) <= TOL
    assert model.logit_scale.item() == pytest.approx(3.0)


def test_hf_directory_parity(
    hf_dir: Path, reference: dict, images: torch.Tensor, tokens: torch.Tensor
) -> None:
    model = load_clip(hf_dir)
    assert model.config.vision.width == 128 and model.config.vision.heads == 2
    assert model.config.vision.image_size == 64 and model.config.text.output_dim == 64
    _assert_matches_hf(model, reference, images, tokens)


def test_intermediate_and_patch_tokens_match_hf(
    hf_dir: Path, hf_model: nn.Module, images: torch.Tensor
) -> None:
    model = load_clip(hf_dir)
    with torch.no_grad():
        ref = hf_model.vision_model(pixel_values=images, output_hidden_states=True)
        ours = model.visual.forward_features(images, return_layers=[0, -1])
        assert ours["grid"] == (4, 4)
        # hidden_states[0] is the encoder input; [i + 1] the output of block i.
        assert _max_diff(ours["layers"][0], ref.hidden_states[1]) <= TOL
        assert _max_diff(ours["layers"][1], ref.hidden_states[2]) <= TOL
        post = hf_model.vision_model.post_layernorm(ref.last_hidden_state)
        assert _max_diff(ours["cls"], ref.pooler_output) <= TOL
        assert _max_diff(ours["patch_tokens"], post[:, 1:].reshape(2, 4, 4, 128)) <= TOL
        patch_proj = hf_model.visual_projection(post[:, 1:]).reshape(2, 4, 4, 64)
        assert _max_diff(ours["patch_proj"], patch_proj) <= TOL
        assert _max_diff(ours["cls_proj"], model.encode_image(images)) <= TOL


def test_resampled_positions_match_hf_interpolation(hf_dir: Path, hf_model: nn.Module) -> None:
    model = load_clip(hf_dir)
    images = torch.randn(1, 3, 96, 64, generator=torch.Generator().manual_seed(2))  # 6x4 grid
    with torch.no_grad():
        ref = hf_model.vision_model(pixel_values=images, interpolate_pos_encoding=True)
        ours = model.visual.forward_features(images)
    assert ours["grid"] == (6, 4) and ours["patch_tokens"].shape == (1, 6, 4, 128)
    assert _max_diff(ours["cls"], ref.pooler_output) <= TOL


def test_openai_state_dict_parity(
    openai_sd: dict[str, torch.Tensor],
    reference: dict,
    images: torch.Tensor,
    tokens: torch.Tensor,
    tmp_path: Path,
) -> None:
    path = tmp_path / "openai.pt"
    torch.save(openai_sd, path)
    _assert_matches_hf(load_clip(path), reference, images, tokens)
    # The same dict as safetensors, and wrapped like a training checkpoint under DDP.
    save_file(openai_sd, str(tmp_path / "openai.safetensors"))
    _assert_matches_hf(load_clip(tmp_path / "openai.safetensors"), reference, images, tokens)
    torch.save({"state_dict": {f"module.{k}": v for k, v in openai_sd.items()}}, path)
    _assert_matches_hf(load_clip(path), reference, images, tokens)


class _OpenAIArchive(nn.Module):
    """OpenAI's module tree: visual tower, text tower at the top, causal masks as buffers."""

    def __init__(self, clip: CLIP) -> None:
        super().__init__()
        self.visual = clip.visual
        self.token_embedding = clip.text.token_embedding
        self.positional_embedding = clip.text.positional_embedding
        self.transformer = clip.text.transformer
        self.ln_final = clip.text.ln_final
        self.text_projection = clip.text.text_projection
        self.logit_scale = clip.logit_scale
        mask = torch.full((77, 77), float("-inf")).triu(1)
        for block in self.transformer.resblocks:
            block.register_buffer("attn_mask", mask.clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.logit_scale


def test_openai_torchscript_archive(
    hf_dir: Path, openai_sd: dict[str, torch.Tensor], tmp_path: Path
) -> None:
    reference = load_clip(hf_dir)
    source = load_clip(hf_dir)
    # OpenAI ships fp16 archives; tracing records the module tree with its parameters.
    archive = torch.jit.trace(_OpenAIArchive(source), torch.ones(1)).half()
    path = tmp_path / "ViT-tiny.pt"
    archive.save(str(path))
    raw = read_torchscript_tensors(path)
    assert set(raw) == set(openai_sd) | {f"transformer.resblocks.{i}.attn_mask" for i in (0, 1)}
    assert raw["visual.conv1.weight"].dtype == torch.float16
    model = load_clip(path)
    assert next(model.parameters()).dtype == torch.float32
    for key, value in reference.state_dict().items():
        assert torch.equal(model.state_dict()[key], value.half().float()), key


def test_torchscript_reader_runs_no_code(tmp_path: Path) -> None:
    class Payload:
        def __reduce__(self):  # what a malicious archive would pickle
            import os

            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    path = tmp_path / "evil.pt"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("evil/data.pkl", pickle.dumps(Payload(), protocol=2))
        archive.writestr("evil/constants.pkl", pickle.dumps((), protocol=2))
    with pytest.raises(CheckpointError, match=r"refusing to load the global (posix|os)\.system"):
        load_clip(path)
    assert not (tmp_path / "pwned").exists()


def test_missing_key_is_named(hf_dir: Path, tmp_path: Path) -> None:
    sd = load_file(str(hf_dir / "model.safetensors"))
    del sd["vision_model.post_layernorm.bias"]
    directory = tmp_path / "broken"
    directory.mkdir()
    save_file(sd, str(directory / "model.safetensors"))
    (directory / "config.json").write_text((hf_dir / "config.json").read_text())
    with pytest.raises(CheckpointError) as err:
        load_clip(directory)
    assert "missing: vision_model.post_layernorm.bias (zeroseg: visual.ln_post.bias)" in str(
        err.value
    )
    assert "expected shape (128,)" in str(err.value)


def test_misshaped_and_unexpected_keys_are_named(
    openai_sd: dict[str, torch.Tensor], tmp_path: Path
) -> None:
    sd = dict(openai_sd)
    sd["transformer.resblocks.1.mlp.c_fc.bias"] = torch.zeros(500)
    sd["visual.extra_head.weight"] = torch.zeros(3, 2)
    path = tmp_path / "bad.pt"
    torch.save(sd, path)
    with pytest.raises(CheckpointError) as err:
        load_clip(path)
    message = str(err.value)
    assert (
        "wrong shape: transformer.resblocks.1.mlp.c_fc.bias (zeroseg: "
        "text.transformer.resblocks.1.mlp.c_fc.bias): file (500,), model expects (512,)"
    ) in message
    assert "unexpected: visual.extra_head.weight, shape (3, 2)" in message


def test_incomplete_qkv_in_hf_layout_is_named(hf_dir: Path, tmp_path: Path) -> None:
    sd = load_file(str(hf_dir / "model.safetensors"))
    del sd["text_model.encoder.layers.1.self_attn.k_proj.weight"]
    save_file(sd, str(tmp_path / "clip.safetensors"))
    with pytest.raises(
        CheckpointError, match=r"text_model\.encoder\.layers\.1\.self_attn\.k_proj\.weight"
    ):
        load_clip(tmp_path / "clip.safetensors")


def test_config_json_must_agree_with_weights(hf_dir: Path, tmp_path: Path) -> None:
    directory = tmp_path / "liar"
    directory.mkdir()
    (directory / "model.safetensors").write_bytes((hf_dir / "model.safetensors").read_bytes())
    config = (
        (hf_dir / "config.json")
        .read_text()
        .replace('"num_hidden_layers": 2', '"num_hidden_layers": 3')
    )
    (directory / "config.json").write_text(config)
    with pytest.raises(CheckpointError, match=r"vision\.layers: declared 3, weights give 2"):
        load_clip(directory)


def test_explicit_config_sets_heads(openai_sd: dict[str, torch.Tensor], tmp_path: Path) -> None:
    path = tmp_path / "openai.pt"
    torch.save(openai_sd, path)
    assert load_clip(path).config.vision.heads == 2  # 128 // 64
    one_head = CLIPConfig(
        vision=CLIPVisionConfig(
            image_size=64, patch_size=16, width=128, layers=2, heads=1, mlp_ratio=4, output_dim=64
        ),
        text=CLIPTextConfig(width=128, layers=2, heads=1, output_dim=64),
    )
    assert load_clip(path, config=one_head).config.text.heads == 1
    wrong = CLIPConfig(
        vision=one_head.vision, text=CLIPTextConfig(width=128, layers=3, output_dim=64, heads=1)
    )
    with pytest.raises(CheckpointError, match=r"text\.layers: declared 3, weights give 2"):
        load_clip(path, config=wrong)


def test_safetensors_round_trip_keeps_config(tmp_path: Path, images: torch.Tensor) -> None:
    torch.manual_seed(3)
    config = CLIPConfig(
        vision=CLIPVisionConfig(
            image_size=32, patch_size=16, width=64, layers=1, heads=4, output_dim=16, act="gelu"
        ),
        text=CLIPTextConfig(
            width=32, layers=1, heads=4, output_dim=16, vocab_size=500, context_length=16
        ),
    )
    model = CLIP.from_config(config).eval()
    save_clip_safetensors(model, tmp_path / "m.safetensors")
    loaded = load_clip(tmp_path / "m.safetensors")
    assert loaded.config == config  # heads 4 and GELU are not the shape-inference defaults
    tokens = torch.randint(1, 499, (3, 16))
    with torch.no_grad():
        assert torch.equal(
            loaded.encode_image(images[:, :, :32, :32]), model.encode_image(images[:, :, :32, :32])
        )
        assert torch.equal(loaded.encode_text(tokens), model.encode_text(tokens))


# ---- the encoder itself ------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_vit() -> VisionTransformer:
    torch.manual_seed(0)
    return VisionTransformer(CLIP_PRESETS["tiny"].vision).eval()


def test_resample_same_grid_is_identity() -> None:
    pos = torch.randn(1 + 3 * 5, 8)
    assert resample_position_embedding(pos, (3, 5), (3, 5)) is pos


def test_resample_constant_stays_constant_and_keeps_cls() -> None:
    # Bicubic weights sum to one, so a constant grid resamples to the same constant.
    pos = torch.cat([torch.full((1, 4), -2.0), torch.full((4, 4), 0.5)])
    out = resample_position_embedding(pos, (2, 2), (5, 3))
    assert out.shape == (1 + 15, 4)
    assert torch.equal(out[0], pos[0])
    assert torch.allclose(out[1:], torch.full((15, 4), 0.5), atol=1e-6)


def test_any_input_size_runs(tiny_vit: VisionTransformer) -> None:
    with torch.no_grad():
        for h, w in [(64, 64), (32, 96), (80, 48)]:
            out = tiny_vit.forward_features(torch.randn(2, 3, h, w))
            assert out["grid"] == (h // 16, w // 16)
            assert out["patch_tokens"].shape == (2, h // 16, w // 16, 64)
            assert out["patch_proj"].shape == (2, h // 16, w // 16, 32)
            assert out["cls"].shape == (2, 64) and out["cls_proj"].shape == (2, 32)
    with pytest.raises(ValueError, match="multiple of the patch size 16"):
        tiny_vit(torch.randn(1, 3, 64, 40))


def test_native_size_uses_the_stored_embedding(tiny_vit: VisionTransformer) -> None:
    assert tiny_vit.resampled_position_embedding((4, 4)) is tiny_vit.positional_embedding


def test_resampled_embedding_is_cached_and_invalidated(tiny_vit: VisionTransformer) -> None:
    vit = VisionTransformer(CLIP_PRESETS["tiny"].vision)
    with torch.no_grad():
        first = vit.resampled_position_embedding((6, 2))
        assert vit.resampled_position_embedding((6, 2)) is first
        vit.positional_embedding.mul_(2.0)  # e.g. an optimiser step or load_state_dict
        second = vit.resampled_position_embedding((6, 2))
    assert second is not first
    assert torch.allclose(second, 2 * first)
    # With a gradient wanted, the resampling is recomputed so the gradient reaches the parameter.
    vit.resampled_position_embedding((6, 2)).sum().backward()
    assert vit.positional_embedding.grad is not None


def test_forward_is_the_projected_cls(tiny_vit: VisionTransformer) -> None:
    x = torch.randn(2, 3, 48, 80)
    with torch.no_grad():
        assert torch.allclose(tiny_vit(x), tiny_vit.forward_features(x)["cls_proj"], atol=1e-6)


def test_return_layers_last_equals_final_tokens_before_ln_post(tiny_vit: VisionTransformer) -> None:
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        out = tiny_vit.forward_features(x, return_layers=[-1, 0])
        assert [t.shape for t in out["layers"]] == [(1, 17, 64)] * 2
        last = tiny_vit.ln_post(out["layers"][0])
        assert torch.allclose(last[:, 1:].reshape(1, 4, 4, 64), out["patch_tokens"], atol=1e-6)
    with pytest.raises(IndexError):
        tiny_vit.forward_features(x, return_layers=[2])


def test_deep_prompts_follow_vpt_deep(
    tiny_vit: VisionTransformer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Block 0 sees [cls, P0, patches]; block 1 sees [cls, P1, patches] (P0's outputs replaced)."""
    monkeypatch.setattr(Workspace, "use_onednn", False)  # bit for bit against the graded forward
    x = torch.randn(2, 3, 64, 64)
    prompts = torch.randn(2, 3, 64)  # depth 2 = all blocks, 3 tokens each
    seen: list[tuple[int, ...]] = []
    hooks = [
        b.register_forward_pre_hook(lambda m, a: seen.append(tuple(a[0].shape)))
        for b in tiny_vit.transformer.resblocks
    ]
    try:
        with torch.no_grad():
            out = tiny_vit.forward_features(x, prompts=prompts, return_layers=[0])
    finally:
        for h in hooks:
            h.remove()
    assert seen == [(2, 1 + 3 + 16, 64)] * 2
    assert out["layers"][0].shape == (2, 17, 64) and out["patch_tokens"].shape == (2, 4, 4, 64)
    # The same computation spelled out.
    with torch.no_grad():
        z, _ = tiny_vit._embed(x)
        b0, b1 = tiny_vit.transformer.resblocks
        p = [prompts[i].expand(2, -1, -1) for i in range(2)]
        z = b0(torch.cat([z[:, :1], p[0], z[:, 1:]], 1))
        z = b1(torch.cat([z[:, :1], p[1], z[:, 4:]], 1))
        z = tiny_vit.ln_post(torch.cat([z[:, :1], z[:, 4:]], 1))
    assert torch.allclose(out["patch_tokens"], z[:, 1:].reshape(2, 4, 4, 64), atol=1e-5)
    assert torch.allclose(out["cls"], z[:, 0], atol=1e-5)
    # without autograd the prompt slots are overwritten in place: the same bits as the copies
    graded = tiny_vit.forward_features(x, prompts=prompts, return_layers=[0])
    for key in ("patch_tokens", "cls"):
        assert torch.equal(out[key], graded[key].detach())
    assert torch.equal(out["layers"][0], graded["layers"][0].detach())


def test_inference_workspace_gives_the_same_bits(
    tiny_vit: VisionTransformer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A no-grad fp32 forward writes the MLP's hidden activations and the q/k/v projection into
    buffers reused block after block: the same bits as the graded forward, kept layers intact."""
    monkeypatch.setattr(Workspace, "use_onednn", False)  # addmm, as the graded forward
    x = torch.randn(2, 3, 64, 64)
    made: list[str] = []
    get = Workspace.get

    def counting_get(self, name, shape, like):  # noqa: ANN001, ANN202
        if name not in self._buffers:
            made.append(name)
        return get(self, name, shape, like)

    monkeypatch.setattr(Workspace, "get", counting_get)
    Workspace.release(tiny_vit.transformer)  # the module-scoped fixture's earlier forwards
    with torch.no_grad():
        out = tiny_vit.forward_features(x, return_layers=[0, 1])
    assert sorted(made) == ["mlp", "mlp_scratch", "qkv"]  # once each, for both blocks
    graded = tiny_vit.forward_features(x, return_layers=[0, 1])  # autograd on: no workspace
    for key in ("patch_tokens", "cls", "patch_proj"):
        assert torch.equal(out[key], graded[key].detach()), key
    for kept, ref in zip(out["layers"], graded["layers"], strict=True):
        assert torch.equal(kept, ref.detach())
    model = CLIP.from_config("tiny").eval()  # the causal text tower through Transformer.forward
    tokens = CLIPTokenizer()(["a photo of a cat."])
    with torch.no_grad():
        text = model.encode_text(tokens)
    assert torch.equal(text, model.encode_text(tokens).detach())


def test_inference_workspace_is_kept_per_module_and_thread(
    tiny_vit: VisionTransformer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The buffers outlive the call (the next forward faults no fresh pages in), but no output
    aliases them: a later forward leaves an earlier one's results as they were."""
    made: list[str] = []
    get = Workspace.get

    def counting_get(self, name, shape, like):  # noqa: ANN001, ANN202
        if name not in self._buffers or self._buffers[name].shape != shape:
            made.append(name)
        return get(self, name, shape, like)

    monkeypatch.setattr(Workspace, "get", counting_get)
    monkeypatch.setattr(Workspace, "use_onednn", False)  # every buffer in use
    Workspace.release(tiny_vit.transformer)
    x, y = torch.randn(2, 3, 64, 64), torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        first = tiny_vit.forward_features(x, return_layers=[0])
        kept = {k: v.clone() for k, v in first.items() if isinstance(v, Tensor)}
        kept_layer = first["layers"][0].clone()
        assert len(made) == 3
        second = tiny_vit.forward_features(y, return_layers=[0])
        assert len(made) == 3  # the same buffers again
        for key, value in kept.items():
            assert torch.equal(first[key], value), key
        assert torch.equal(first["layers"][0], kept_layer)
        assert not torch.equal(second["patch_tokens"], first["patch_tokens"])
        ours = Workspace.for_input(x, tiny_vit.transformer)
        assert Workspace.for_input(x, tiny_vit.transformer) is ours
        other: list[Workspace | None] = []

        def in_thread() -> None:
            with torch.no_grad():  # grad mode is per thread
                other.append(Workspace.for_input(x, tiny_vit.transformer))

        thread = threading.Thread(target=in_thread)
        thread.start()
        thread.join()
        assert other[0] is not None and other[0] is not ours  # each thread its own buffers
        Workspace.release(tiny_vit.transformer)
        assert Workspace.for_input(x, tiny_vit.transformer) is not ours


@pytest.mark.skipif(Workspace._onednn is None, reason="torch built without oneDNN")
def test_inference_block_projections_through_onednn(
    tiny_vit: VisionTransformer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With ``use_onednn`` (the default) every block projection of a no-grad fp32 forward runs
    oneDNN's matmul: equal to the graded forward within fp32 rounding, kept layers too."""
    calls: list[tuple[int, ...]] = []
    real = Workspace._onednn

    def spy(x, weight, bias, *args):  # noqa: ANN001, ANN202
        calls.append(tuple(weight.shape))
        return real(x, weight, bias, *args)

    monkeypatch.setattr(Workspace, "_onednn", staticmethod(spy))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        out = tiny_vit.forward_features(x, return_layers=[0])
    c = tiny_vit.config.width
    hidden = int(c * tiny_vit.config.mlp_ratio)
    per_block = [(3 * c, c), (c, c), (hidden, c), (c, hidden)]
    assert calls == per_block * tiny_vit.config.layers
    graded = tiny_vit.forward_features(x, return_layers=[0])
    for key in ("patch_tokens", "cls", "patch_proj"):
        assert torch.allclose(out[key], graded[key].detach(), atol=1e-5), key
    assert torch.allclose(out["layers"][0], graded["layers"][0].detach(), atol=1e-5)


def test_onednn_projections_only_on_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """oneDNN's kernel is a CPU kernel: other devices (here ``meta``) keep torch's linear."""
    calls: list[int] = []
    monkeypatch.setattr(Workspace, "_onednn", staticmethod(lambda *a: calls.append(1)))
    layer = nn.Linear(8, 3).to("meta")
    out = Workspace().linear(torch.empty(4, 8, device="meta"), layer)
    assert out.shape == (4, 3) and out.device.type == "meta" and not calls
    Workspace().linear(torch.randn(4, 8), nn.Linear(8, 3))
    assert calls == [1]


def test_inference_workspace_only_without_autograd_in_fp32() -> None:
    x = torch.randn(1, 4, 8)
    with torch.no_grad():
        assert isinstance(Workspace.for_input(x), Workspace)
        assert Workspace.for_input(x.bfloat16()) is None
        with torch.autocast("cpu", torch.bfloat16):
            assert Workspace.for_input(x) is None
    assert Workspace.for_input(x) is None  # autograd records


def test_shallower_prompts_are_dropped_after_depth(tiny_vit: VisionTransformer) -> None:
    x = torch.randn(1, 3, 64, 64)
    seen: list[int] = []
    hooks = [
        b.register_forward_pre_hook(lambda m, a: seen.append(a[0].shape[1]))
        for b in tiny_vit.transformer.resblocks
    ]
    try:
        with torch.no_grad():
            tiny_vit.forward_features(x, prompts=[torch.randn(5, 64)])
    finally:
        for h in hooks:
            h.remove()
    assert seen == [1 + 5 + 16, 1 + 16]  # ZegCLIP: layers past the prompted depth see none


def test_prompts_receive_gradients(tiny_vit: VisionTransformer) -> None:
    prompts = torch.zeros(2, 4, 64, requires_grad=True)
    out = tiny_vit.forward_features(torch.randn(1, 3, 64, 64), prompts=prompts)
    out["patch_proj"].square().sum().backward()
    assert prompts.grad is not None and prompts.grad.abs().sum() > 0
    assert all(prompts.grad[i].abs().sum() > 0 for i in range(2))


def test_prompt_shape_errors(tiny_vit: VisionTransformer) -> None:
    x = torch.randn(1, 3, 64, 64)
    with pytest.raises(ValueError, match="prompts for 3 layers"):
        tiny_vit.forward_features(x, prompts=torch.zeros(3, 2, 64))
    with pytest.raises(ValueError, match=r"prompt of layer 0 must be \(P, 64\)"):
        tiny_vit.forward_features(x, prompts=[torch.zeros(2, 32)])


def test_text_pools_at_eot_and_is_causal() -> None:
    torch.manual_seed(0)
    model = CLIP.from_config("tiny").eval()
    tokens = CLIPTokenizer()(["a photo of a cat.", "a photo of a cat."])
    tokens[1, 9:] = 1234  # changes after the end-of-text token (index 7) cannot matter
    with torch.no_grad():
        emb = model.encode_text(tokens)
        assert torch.allclose(emb[0], emb[1], atol=1e-6)
        # A shorter context (no padding) gives the same embedding.
        assert torch.allclose(model.encode_text(tokens[:1, :8]), emb[:1], atol=1e-5)


def test_clip_logits_and_bf16_autocast() -> None:
    torch.manual_seed(0)
    model = CLIP.from_config("tiny").eval()
    images = torch.randn(2, 3, 64, 64)
    tokens = CLIPTokenizer()(PROMPTS)
    with torch.no_grad():
        per_image, per_text = model(images, tokens)
        assert per_image.shape == (2, 4) and torch.equal(per_text, per_image.t())
        assert per_image.abs().max() <= math.exp(model.logit_scale.item()) + 1e-4
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model.visual.forward_features(images)
        full = model.visual.forward_features(images)
    assert torch.allclose(low["cls_proj"].float(), full["cls_proj"], atol=0.1, rtol=0.1)


def test_unknown_preset_lists_valid_ones() -> None:
    with pytest.raises(KeyError, match="ViT-B/16"):
        CLIP.from_config("ViT-H/14")


def test_unknown_hf_key_resnet_and_missing_path_errors(hf_dir: Path, tmp_path: Path) -> None:
    sd = load_file(str(hf_dir / "model.safetensors"))
    sd["vision_model.encoder.layers.0.self_attn.rotary.weight"] = torch.zeros(2)
    save_file(sd, str(tmp_path / "extra.safetensors"))
    with pytest.raises(CheckpointError, match=r"layers\.0\.self_attn\.rotary\.weight \(2,\)"):
        load_clip(tmp_path / "extra.safetensors")
    torch.save({"visual.layer1.0.conv1.weight": torch.zeros(1)}, tmp_path / "rn50.pt")
    with pytest.raises(CheckpointError, match="ResNet CLIP"):
        load_clip(tmp_path / "rn50.pt")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_clip(tmp_path / "absent.pt")


def test_pickled_objects_in_a_state_dict_are_refused(tmp_path: Path) -> None:
    import argparse

    torch.save({"args": argparse.Namespace(lr=1.0), "w": torch.zeros(1)}, tmp_path / "ckpt.pt")
    with pytest.raises(CheckpointError, match=r"weights_only=True"):
        load_clip(tmp_path / "ckpt.pt")


def test_clip_text_encoder_embeds_class_names_like_hf(hf_dir: Path, hf_model: nn.Module) -> None:
    from zeroseg.text.clip_text import CLIPTextEncoder
    from zeroseg.text.clip_tokenizer import CLIPTokenizer

    enc = CLIPTextEncoder(hf_dir)
    emb = enc.encode(["red circle", "blue square"], ["a photo of a {}."])
    # Token ids from our tokenizer (its parity with transformers' is tested on its own).
    ids = CLIPTokenizer()(["a photo of a red circle.", "a photo of a blue square."])
    eot = ids.argmax(-1)
    mask = (torch.arange(77)[None] <= eot[:, None]).long()
    with torch.no_grad():
        ref = hf_model.get_text_features(input_ids=ids, attention_mask=mask)
    if not isinstance(ref, torch.Tensor):  # newer transformers return an output object
        ref = ref.text_embeds if hasattr(ref, "text_embeds") else ref.pooler_output
    ref = torch.nn.functional.normalize(ref, dim=-1)
    assert emb.shape == ref.shape
    assert _max_diff(emb, ref) < 1e-4
    with pytest.raises(FileNotFoundError, match="does not exist"):
        CLIPTextEncoder(hf_dir / "missing")
