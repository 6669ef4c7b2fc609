"""CLIP image and text encoders (Radford et al., "Learning Transferable Visual Models From
Natural Language Supervision", ICML 2021), with the deep visual prompt tuning of ZegCLIP
(Zhou et al., CVPR 2023).

The image tower is a pre-norm ViT (Dosovitskiy et al., ICLR 2021):
    z_0 = LN_pre([x_cls; x_p^1 E; ...; x_p^N E] + E_pos)
    z'_l = z_{l-1} + MSA(LN(z_{l-1})),  z_l = z'_l + MLP(LN(z'_l))
    image embedding = LN_post(z_L^0) W_proj                        (CLIP Fig. 3, "I_e")
and the text tower a causal pre-norm transformer pooled at the end-of-text token ("T_e").
With visual prompt tuning (Jia et al., ECCV 2022, VPT-deep, as ZegCLIP uses it), layer l < depth
sees [z_cls; P_l; z_patches]: P_l replaces the prompt tokens the previous layer produced.

Parameter names follow OpenAI's released state dict (``visual.conv1.weight``,
``transformer.resblocks.0.attn.in_proj_weight``, ...), with the text tower under ``text.``, so
loading OpenAI weights is a rename of the text keys only (see ``zeroseg.models.pretrained``).
"""

from __future__ import annotations

import math
import threading
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zeroseg.models.attention import attention

__all__ = [
    "CLIP",
    "CLIP_MEAN",
    "CLIP_STD",
    "CLIPConfig",
    "CLIPTextConfig",
    "CLIPVisionConfig",
    "CLIP_PRESETS",
    "TextTransformer",
    "Transformer",
    "VisionTransformer",
    "Workspace",
    "resample_position_embedding",
]

ACTIVATIONS = ("quick_gelu", "gelu")
# Per-channel RGB normalisation CLIP was trained with (inputs in [0, 1], then (x - mean) / std).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass
class CLIPVisionConfig:
    image_size: int = (
        224  # side of the square training input; position grid = image_size // patch_size
    )
    patch_size: int = 16  # side of a square patch (stride of the patch-embedding convolution)
    width: int = 768  # token dimension of the transformer
    layers: int = 12  # number of residual attention blocks
    heads: int = 12  # attention heads (width must divide evenly)
    mlp_ratio: float = 4.0  # hidden width of the MLP relative to width
    output_dim: int = 512  # dimension of the joint image-text embedding space
    act: str = "quick_gelu"  # MLP activation: "quick_gelu" (all OpenAI models) or "gelu"
    layer_norm_eps: float = 1e-5  # epsilon of every LayerNorm

    def __post_init__(self) -> None:
        _check_tower("CLIPVisionConfig", self.width, self.heads, self.act)
        if self.image_size % self.patch_size:
            raise ValueError(
                f"CLIPVisionConfig: image_size {self.image_size} is not a multiple of "
                f"patch_size {self.patch_size}"
            )

    @property
    def grid_size(self) -> int:
        """Side of the stored position-embedding grid."""
        return self.image_size // self.patch_size


@dataclass
class CLIPTextConfig:
    context_length: int = 77  # maximum number of tokens, including start and end of text
    vocab_size: int = 49408  # BPE vocabulary size; the end-of-text token has the largest id
    width: int = 512  # token dimension of the transformer
    layers: int = 12  # number of residual attention blocks
    heads: int = 8  # attention heads (width must divide evenly)
    output_dim: int = 512  # dimension of the joint image-text embedding space
    mlp_ratio: float = 4.0  # hidden width of the MLP relative to width
    act: str = "quick_gelu"  # MLP activation: "quick_gelu" (all OpenAI models) or "gelu"
    layer_norm_eps: float = 1e-5  # epsilon of every LayerNorm

    def __post_init__(self) -> None:
        _check_tower("CLIPTextConfig", self.width, self.heads, self.act)


@dataclass
class CLIPConfig:
    vision: CLIPVisionConfig = field(default_factory=CLIPVisionConfig)  # image tower
    text: CLIPTextConfig = field(default_factory=CLIPTextConfig)  # text tower

    def __post_init__(self) -> None:
        if self.vision.output_dim != self.text.output_dim:
            raise ValueError(
                f"CLIPConfig: the image embedding ({self.vision.output_dim}) and text embedding "
                f"({self.text.output_dim}) must share one dimension"
            )

    @property
    def embed_dim(self) -> int:
        """Dimension of the joint embedding space."""
        return self.vision.output_dim


def _check_tower(name: str, width: int, heads: int, act: str) -> None:
    if width % heads:
        raise ValueError(f"{name}: width {width} is not divisible by heads {heads}")
    if act not in ACTIVATIONS:
        raise ValueError(f"{name}: act must be one of {ACTIVATIONS}, got {act!r}")


# The OpenAI architectures; heads = width // 64 in all of them.
CLIP_PRESETS: dict[str, CLIPConfig] = {
    "ViT-B/16": CLIPConfig(
        vision=CLIPVisionConfig(
            image_size=224, patch_size=16, width=768, layers=12, heads=12, output_dim=512
        ),
        text=CLIPTextConfig(width=512, layers=12, heads=8, output_dim=512),
    ),
    "ViT-L/14": CLIPConfig(
        vision=CLIPVisionConfig(
            image_size=224, patch_size=14, width=1024, layers=24, heads=16, output_dim=768
        ),
        text=CLIPTextConfig(width=768, layers=12, heads=12, output_dim=768),
    ),
    # Small enough for unit tests; vocab kept at 49408 so real BPE ids are valid.
    "tiny": CLIPConfig(
        vision=CLIPVisionConfig(
            image_size=64, patch_size=16, width=64, layers=2, heads=2, output_dim=32
        ),
        text=CLIPTextConfig(width=64, layers=2, heads=2, output_dim=32),
    ),
}


class QuickGELU(nn.Module):
    """x * sigmoid(1.702 x): the GELU approximation CLIP was trained with."""

    def forward(self, x: Tensor) -> Tensor:
        if torch.is_grad_enabled() and x.requires_grad:
            return x * torch.sigmoid(1.702 * x)
        # Same arithmetic, one (B, N, 4C) temporary instead of three: these element-wise
        # passes cost as much as a matmul on CPU at 1025 tokens.
        return (x * 1.702).sigmoid_().mul_(x)

    @staticmethod
    def apply_(x: Tensor, scratch: Tensor) -> Tensor:
        """``forward`` written into ``x``, its one temporary into ``scratch`` (x's shape): the
        same bits (x * s equals s * x), no allocation."""
        return x.mul_(torch.mul(x, 1.702, out=scratch).sigmoid_())


def _onednn_linear() -> Any:
    """torch's oneDNN linear kernel (``mkldnn::_linear_pointwise``), or None without oneDNN."""
    if not torch.backends.mkldnn.is_available():
        return None
    try:
        return torch.ops.mkldnn._linear_pointwise.default
    except (AttributeError, RuntimeError):
        return None


class Workspace:
    """Output buffers a no-grad fp32 forward through a stack of blocks reuses in every block.

    The MLP's (B·N, 4C) hidden activations and the attention's (B·N, 3C) q/k/v projection are
    written into the same buffers layer after layer instead of fresh tensors: on CPU every fresh
    buffer of this size is new pages from the allocator, zero-filled by the kernel on first
    touch (page faults). Measured on the ViT-B/16 encoder at 512 px (docs/benchmarks.md, "fp32:
    the encoder's workspace"). A buffer is reused only once its previous contents have been
    consumed, and no buffer is ever returned: a layer's output never aliases one. The block
    projections go through oneDNN's fp32 matmul where torch has it (``use_onednn``, ``linear``).

    ``for_input(x, owner)`` keeps one workspace per module and thread across calls (buffers made
    per call were freed after each forward and handed back to the kernel, so the next forward
    faulted them in again); a thread's workspaces go with the thread, a module's with the
    module. ``release`` frees the calling thread's buffers of one module.
    """

    _kept = threading.local()  # per thread: WeakKeyDictionary[module, Workspace]
    # The block projections through oneDNN's fp32 matmul instead of addmm (torch's BLAS, MKL):
    # 0.87 of addmm's time per block on the project's AMD EPYC VM (benchmarks/bench_linear.py),
    # equal to it within fp32 rounding (not bit for bit: tested to 1e-5). False: addmm, into the
    # buffers, the same bits as the graded forward.
    use_onednn: bool = True
    _onednn = _onednn_linear()

    def __init__(self) -> None:
        self._buffers: dict[str, Tensor] = {}

    def get(self, name: str, shape: tuple[int, ...], like: Tensor) -> Tensor:
        """The buffer ``name`` of ``shape`` (made with ``like``'s dtype, fp32, and device on first
        use, and again when the shape or device changes: ZegCLIP's prompts leave after their last
        layer, the next image may have another size, the module may have moved)."""
        buf = self._buffers.get(name)
        if buf is None or buf.shape != shape or buf.device != like.device:
            buf = self._buffers[name] = torch.empty(shape, dtype=like.dtype, device=like.device)
        return buf

    def linear(self, x: Tensor, layer: nn.Linear | tuple[Tensor, Tensor], name: str = "") -> Tensor:
        """``x`` (2-D) times ``layer``'s weight transposed plus its bias: through oneDNN on CPU
        (``use_onednn``, a fresh output), else ``addmm`` into the buffer ``name`` (fresh, as
        ``F.linear``, without a name: the output may outlive the call)."""
        weight, bias = (layer.weight, layer.bias) if isinstance(layer, nn.Linear) else layer
        if self.use_onednn and self._onednn is not None and x.device.type == "cpu":
            return self._onednn(x, weight, bias, "none", [], "")
        if not name:
            return F.linear(x, weight, bias)
        out = self.get(name, (x.shape[0], weight.shape[0]), x)
        return torch.addmm(bias, x, weight.t(), out=out)

    @staticmethod
    def for_input(x: Tensor, owner: nn.Module | None = None) -> Workspace | None:
        """A workspace if ``x``'s forward may reuse buffers (no autograd, fp32, autocast off):
        ``owner``'s for this thread, kept across calls, or a fresh one without an owner."""
        if (
            torch.is_grad_enabled()
            or x.dtype != torch.float32
            or torch.is_autocast_enabled(x.device.type)
        ):
            return None
        if owner is None:
            return Workspace()
        kept = Workspace._kept.__dict__.setdefault("by_module", weakref.WeakKeyDictionary())
        workspace = kept.get(owner)
        if workspace is None:
            workspace = kept[owner] = Workspace()
        return workspace

    @staticmethod
    def release(owner: nn.Module) -> None:
        """Free the buffers ``owner`` keeps for the calling thread (they are remade on demand)."""
        Workspace._kept.__dict__.get("by_module", {}).pop(owner, None)


def _activation(name: str) -> nn.Module:
    return QuickGELU() if name == "quick_gelu" else nn.GELU()


class Attention(nn.Module):
    """Multi-head self-attention with one fused q/k/v projection (OpenAI's ``in_proj`` layout).

    Args:
        width: token dimension C.
        heads: number of heads; head dimension is C // heads.
    """

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))  # rows: q, k, v
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * width))
        self.out_proj = nn.Linear(width, width)

    def forward(
        self, x: Tensor, *, causal: bool = False, workspace: Workspace | None = None
    ) -> Tensor:
        """Args:
            x: (B, N, C) tokens.
            causal: if True, token n attends to tokens <= n only.
            workspace: where a no-grad fp32 forward writes its q/k/v projection.

        Returns:
            (B, N, C).
        """
        b, n, c = x.shape
        if workspace is None:
            qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)  # (B, N, 3C)
        else:
            qkv = workspace.linear(
                x.reshape(b * n, c), (self.in_proj_weight, self.in_proj_bias), "qkv"
            )
        q, k, v = qkv.view(b, n, 3, self.heads, c // self.heads).permute(
            2, 0, 3, 1, 4
        )  # (B, nh, N, hs)
        y = attention(q, k, v, is_causal=causal).transpose(1, 2)  # (B, N, nh, hs)
        if workspace is None:
            return self.out_proj(y.reshape(b, n, c))
        return workspace.linear(y.reshape(b * n, c), self.out_proj).view(b, n, c)


class MLP(nn.Module):
    """Two-layer MLP of a transformer block (``c_fc`` -> activation -> ``c_proj``)."""

    def __init__(self, width: int, hidden: int, act: str) -> None:
        super().__init__()
        self.c_fc = nn.Linear(width, hidden)
        self.act = _activation(act)
        self.c_proj = nn.Linear(hidden, width)

    def forward(self, x: Tensor, *, workspace: Workspace | None = None) -> Tensor:
        """(B, N, C) -> (B, N, C); ``workspace``: where a no-grad fp32 forward writes its hidden
        activations (QuickGELU's in place)."""
        if workspace is None or not isinstance(self.act, QuickGELU):
            return self.c_proj(self.act(self.c_fc(x)))
        b, n, c = x.shape
        hidden = workspace.linear(x.reshape(b * n, c), self.c_fc, "mlp")
        QuickGELU.apply_(hidden, workspace.get("mlp_scratch", hidden.shape, x))
        return workspace.linear(hidden, self.c_proj).view(b, n, c)


class ResidualAttentionBlock(nn.Module):
    """Pre-norm transformer block: x + MSA(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, width: int, heads: int, mlp_ratio: float, act: str, eps: float) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(width, eps=eps)
        self.attn = Attention(width, heads)
        self.ln_2 = nn.LayerNorm(width, eps=eps)
        self.mlp = MLP(width, int(width * mlp_ratio), act)

    def forward(
        self, x: Tensor, *, causal: bool = False, workspace: Workspace | None = None
    ) -> Tensor:
        x = _residual(x, self.attn(self.ln_1(x), causal=causal, workspace=workspace))
        return _residual(x, self.mlp(self.ln_2(x), workspace=workspace))


def _residual(skip: Tensor, branch: Tensor) -> Tensor:
    """skip + branch. Without autograd, summed into the branch's fresh output buffer (no new
    allocation); under autocast the bf16 branch is added out of place so the stream stays fp32."""
    if torch.is_grad_enabled() or branch.dtype != skip.dtype:
        return skip + branch
    return branch.add_(skip)


class Transformer(nn.Module):
    """A stack of ``layers`` residual attention blocks on batch-first (B, N, C) tokens."""

    def __init__(
        self, width: int, layers: int, heads: int, mlp_ratio: float, act: str, eps: float
    ) -> None:
        super().__init__()
        self.width = width
        self.resblocks = nn.ModuleList(
            ResidualAttentionBlock(width, heads, mlp_ratio, act, eps) for _ in range(layers)
        )

    def forward(self, x: Tensor, *, causal: bool = False) -> Tensor:
        workspace = Workspace.for_input(x, self)
        for block in self.resblocks:
            x = block(x, causal=causal, workspace=workspace)
        return x

    def reset_parameters(self) -> None:
        """OpenAI's initialisation: std shrinks with depth on the projections into the residual."""
        layers = len(self.resblocks)
        proj_std = self.width**-0.5 * (2 * layers) ** -0.5
        attn_std = self.width**-0.5
        fc_std = (2 * self.width) ** -0.5
        for block in self.resblocks:
            nn.init.normal_(block.attn.in_proj_weight, std=attn_std)
            nn.init.zeros_(block.attn.in_proj_bias)
            nn.init.normal_(block.attn.out_proj.weight, std=proj_std)
            nn.init.zeros_(block.attn.out_proj.bias)
            nn.init.normal_(block.mlp.c_fc.weight, std=fc_std)
            nn.init.zeros_(block.mlp.c_fc.bias)
            nn.init.normal_(block.mlp.c_proj.weight, std=proj_std)
            nn.init.zeros_(block.mlp.c_proj.bias)


def resample_position_embedding(
    pos_embed: Tensor, old_grid: tuple[int, int], new_grid: tuple[int, int]
) -> Tensor:
    """Resamples a ViT position embedding to another patch grid by bicubic interpolation.

    The class-token row is kept; the patch rows are read as an (old_h, old_w) image with C
    channels and resized (``align_corners=False``, no antialiasing, as Hugging Face's
    ``interpolate_pos_encoding`` and most ViT segmenters do). The same grid returns the input.

    Args:
        pos_embed: (1 + old_h * old_w, C).
        old_grid: (old_h, old_w), the grid the embedding was trained on.
        new_grid: (new_h, new_w).

    Returns:
        (1 + new_h * new_w, C), in the dtype of ``pos_embed``.
    """
    old_h, old_w = old_grid
    if pos_embed.shape[0] != 1 + old_h * old_w:
        raise ValueError(
            f"position embedding has {pos_embed.shape[0]} rows, expected 1 + {old_h}*{old_w}"
        )
    if tuple(new_grid) == (old_h, old_w):
        return pos_embed
    c = pos_embed.shape[1]
    cls_pos, patch_pos = pos_embed[:1], pos_embed[1:]
    grid = patch_pos.float().reshape(1, old_h, old_w, c).permute(0, 3, 1, 2)  # (1, C, h, w)
    grid = F.interpolate(grid, size=tuple(new_grid), mode="bicubic", align_corners=False)
    patch_pos = grid.permute(0, 2, 3, 1).reshape(-1, c).to(pos_embed.dtype)
    return torch.cat([cls_pos, patch_pos], dim=0)


Prompts = list[Tensor] | Tensor


class VisionTransformer(nn.Module):
    """CLIP's ViT image encoder, with deep visual prompts and any input size.

    Args:
        config: the architecture.
    """

    def __init__(self, config: CLIPVisionConfig) -> None:
        super().__init__()
        self.config = config
        width, p = config.width, config.patch_size
        self.conv1 = nn.Conv2d(3, width, kernel_size=p, stride=p, bias=False)
        self.class_embedding = nn.Parameter(torch.empty(width))
        self.positional_embedding = nn.Parameter(torch.empty(config.grid_size**2 + 1, width))
        self.ln_pre = nn.LayerNorm(width, eps=config.layer_norm_eps)
        self.transformer = Transformer(
            width, config.layers, config.heads, config.mlp_ratio, config.act, config.layer_norm_eps
        )
        self.ln_post = nn.LayerNorm(width, eps=config.layer_norm_eps)
        self.proj = nn.Parameter(torch.empty(width, config.output_dim))
        # grid -> (validity key, resampled embedding); not state, so never saved.
        self._pos_cache: dict[tuple[int, int], tuple[tuple[Any, ...], Tensor]] = {}
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self._pos_cache.clear()
        if self.proj.is_meta:  # shape-only skeleton (checkpoint checks): nothing to draw
            return
        scale = self.config.width**-0.5
        nn.init.normal_(self.conv1.weight, std=0.02)
        nn.init.normal_(self.class_embedding, std=scale)
        nn.init.normal_(self.positional_embedding, std=scale)
        nn.init.normal_(self.proj, std=scale)
        self.transformer.reset_parameters()

    @property
    def grid_size(self) -> tuple[int, int]:
        """Grid the stored position embedding was trained on."""
        return (self.config.grid_size, self.config.grid_size)

    def resampled_position_embedding(self, grid: tuple[int, int]) -> Tensor:
        """The position embedding for a (h, w) patch grid, (1 + h * w, width).

        Resampled embeddings are cached per grid while they cannot carry a gradient; the
        cache is keyed by the parameter's version counter, so in-place updates (optimiser
        steps, ``load_state_dict``) invalidate it.
        """
        pos = self.positional_embedding
        if grid == self.grid_size:
            return pos
        if pos.requires_grad and torch.is_grad_enabled():
            return resample_position_embedding(pos, self.grid_size, grid)
        key = (
            pos._version,
            pos.data_ptr(),
            pos.device,
            pos.dtype,
            torch.is_inference_mode_enabled(),
        )
        hit = self._pos_cache.get(grid)
        if hit is not None and hit[0] == key:
            return hit[1]
        with torch.no_grad():
            resampled = resample_position_embedding(pos, self.grid_size, grid)
        self._pos_cache[grid] = (key, resampled)
        return resampled

    def _embed(self, images: Tensor) -> tuple[Tensor, tuple[int, int]]:
        """Patch embedding + class token + positions + ln_pre: (B, 1 + h*w, C), (h, w)."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be (B, 3, H, W), got {tuple(images.shape)}")
        p = self.config.patch_size
        height, width = images.shape[-2:]
        if height % p or width % p:
            raise ValueError(
                f"image size {height}x{width} is not a multiple of the patch size {p}; "
                "pad or resize the input"
            )
        x = self.conv1(images.to(self.conv1.weight.dtype))  # (B, C, h, w)
        grid = (x.shape[-2], x.shape[-1])
        x = x.flatten(2).transpose(1, 2)  # (B, h*w, C)
        cls = self.class_embedding.expand(x.shape[0], 1, -1)
        # Under autocast the conv gives bf16; the sum with the fp32 embeddings stays fp32, as in HF.
        x = torch.cat([cls, x.to(cls.dtype)], dim=1) + self.resampled_position_embedding(grid)
        return self.ln_pre(x), grid

    def forward(self, images: Tensor) -> Tensor:
        """Image embeddings: the projected class token.

        Args:
            images: (B, 3, H, W), H and W multiples of the patch size.

        Returns:
            (B, output_dim), not normalised.
        """
        x, _ = self._embed(images)
        x = self.transformer(x)
        return self.ln_post(x[:, 0]) @ self.proj

    def forward_features(
        self,
        images: Tensor,
        *,
        prompts: Prompts | None = None,
        return_layers: Sequence[int] = (),
    ) -> dict[str, Any]:
        """Dense features for segmentation.

        Args:
            images: (B, 3, H, W), H and W multiples of the patch size (non-square allowed).
            prompts: deep visual prompts, a (depth, P, C) tensor or a list of ``depth`` tensors
                of shape (P_l, C) or (B, P_l, C). Before block l < depth, the prompt tokens
                are inserted after the class token, replacing the previous block's outputs at
                the prompt positions (VPT-deep). Before block ``depth`` they are dropped, as
                ZegCLIP does, so later blocks see class + patch tokens only.
            return_layers: block indices (negative counts from the end) whose outputs to return.

        Returns:
            dict with
            ``cls`` (B, C) and ``patch_tokens`` (B, h, w, C), after ln_post;
            ``cls_proj`` (B, output_dim) and ``patch_proj`` (B, h, w, output_dim), the same
            projected into the joint space;
            ``layers``, a list in ``return_layers`` order of (B, 1 + h*w, C) block outputs
            (before ln_post, prompt tokens removed);
            ``grid`` (h, w).
        """
        x, grid = self._embed(images)
        blocks = self.transformer.resblocks
        wanted = _normalise_layers(return_layers, len(blocks))
        prompt_list = _split_prompts(prompts, len(blocks), self.config.width)
        kept: dict[int, Tensor] = {}
        n_prompt = 0  # prompt tokens currently sitting after the class token
        workspace = Workspace.for_input(x, self.transformer)  # shared with forward()
        for i, block in enumerate(blocks):
            if i < len(prompt_list):
                prompt = prompt_list[i]
                prompt = prompt.expand(x.shape[0], -1, -1) if prompt.ndim == 2 else prompt
                if i and n_prompt == prompt.shape[1] and not torch.is_grad_enabled():
                    # the previous block's fresh output: its prompt slots are overwritten in place
                    x[:, 1 : 1 + n_prompt] = prompt
                else:
                    x = torch.cat([x[:, :1], prompt.to(x.dtype), x[:, 1 + n_prompt :]], dim=1)
                n_prompt = prompt.shape[1]
            elif n_prompt:
                x = torch.cat([x[:, :1], x[:, 1 + n_prompt :]], dim=1)
                n_prompt = 0
            x = block(x, workspace=workspace)
            if i in wanted:
                kept[i] = torch.cat([x[:, :1], x[:, 1 + n_prompt :]], dim=1) if n_prompt else x
        if n_prompt:
            x = torch.cat([x[:, :1], x[:, 1 + n_prompt :]], dim=1)
        x = self.ln_post(x)
        cls, patches = x[:, 0], x[:, 1:].reshape(x.shape[0], grid[0], grid[1], -1)
        return {
            "cls": cls,
            "patch_tokens": patches,
            "cls_proj": cls @ self.proj,
            "patch_proj": patches @ self.proj,
            "layers": [kept[i] for i in wanted],
            "grid": grid,
        }


def _normalise_layers(return_layers: Sequence[int], depth: int) -> list[int]:
    out = []
    for i in return_layers:
        j = i + depth if i < 0 else i
        if not 0 <= j < depth:
            raise IndexError(f"return_layers index {i} is out of range for {depth} blocks")
        out.append(j)
    return out


def _split_prompts(prompts: Prompts | None, depth: int, width: int) -> list[Tensor]:
    if prompts is None:
        return []
    layers = list(prompts.unbind(0)) if isinstance(prompts, Tensor) else list(prompts)
    if isinstance(prompts, Tensor) and prompts.ndim != 3:
        raise ValueError(f"prompts must be (depth, P, C), got {tuple(prompts.shape)}")
    if len(layers) > depth:
        raise ValueError(f"prompts for {len(layers)} layers, but the encoder has {depth} blocks")
    for i, p in enumerate(layers):
        if p.ndim not in (2, 3) or p.shape[-1] != width:
            raise ValueError(
                f"prompt of layer {i} must be (P, {width}) or (B, P, {width}), got {tuple(p.shape)}"
            )
    return layers


class TextTransformer(nn.Module):
    """CLIP's causal text encoder, pooled at the end-of-text token.

    Args:
        config: the architecture.
    """

    def __init__(self, config: CLIPTextConfig) -> None:
        super().__init__()
        self.config = config
        self.token_embedding = nn.Embedding(config.vocab_size, config.width)
        self.positional_embedding = nn.Parameter(torch.empty(config.context_length, config.width))
        self.transformer = Transformer(
            config.width,
            config.layers,
            config.heads,
            config.mlp_ratio,
            config.act,
            config.layer_norm_eps,
        )
        self.ln_final = nn.LayerNorm(config.width, eps=config.layer_norm_eps)
        self.text_projection = nn.Parameter(torch.empty(config.width, config.output_dim))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        if self.text_projection.is_meta:  # shape-only skeleton: nothing to draw
            return
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        nn.init.normal_(self.text_projection, std=self.config.width**-0.5)
        self.transformer.reset_parameters()

    def forward_features(self, token_ids: Tensor) -> Tensor:
        """Per-token features after ln_final.

        Args:
            token_ids: (B, L) int64, L <= context_length.

        Returns:
            (B, L, width).
        """
        if token_ids.ndim != 2 or token_ids.shape[1] > self.config.context_length:
            raise ValueError(
                f"token_ids must be (B, L <= {self.config.context_length}), "
                f"got {tuple(token_ids.shape)}"
            )
        x = self.token_embedding(token_ids) + self.positional_embedding[: token_ids.shape[1]]
        return self.ln_final(self.transformer(x, causal=True))

    def forward(self, token_ids: Tensor) -> Tensor:
        """Text embeddings.

        Args:
            token_ids: (B, L) int64 from ``CLIPTokenizer``; each row holds one end-of-text token.

        Returns:
            (B, output_dim), not normalised.
        """
        x = self.forward_features(token_ids)
        # End-of-text has the largest id, so argmax finds it (first occurrence if padded with it).
        eot = token_ids.argmax(dim=-1)
        return x[torch.arange(x.shape[0], device=x.device), eot] @ self.text_projection


class CLIP(nn.Module):
    """The two CLIP towers and the learned temperature.

    Args:
        visual: the image encoder.
        text: the text encoder.
        logit_scale_init: initial log of the inverse softmax temperature (CLIP: log(1 / 0.07)).
    """

    def __init__(
        self,
        *,
        visual: VisionTransformer,
        text: TextTransformer,
        logit_scale_init: float = math.log(1 / 0.07),
    ) -> None:
        super().__init__()
        if visual.config.output_dim != text.config.output_dim:
            raise ValueError(
                f"visual output_dim {visual.config.output_dim} != text output_dim "
                f"{text.config.output_dim}"
            )
        self.visual = visual
        self.text = text
        self.logit_scale = nn.Parameter(torch.tensor(logit_scale_init))

    @classmethod
    def from_config(cls, config: CLIPConfig | str) -> CLIP:
        """Builds a randomly initialised CLIP from a config or a ``CLIP_PRESETS`` name."""
        if isinstance(config, str):
            if config not in CLIP_PRESETS:
                raise KeyError(f"unknown CLIP preset {config!r}; valid: {sorted(CLIP_PRESETS)}")
            config = CLIP_PRESETS[config]
        return cls(visual=VisionTransformer(config.vision), text=TextTransformer(config.text))

    @property
    def config(self) -> CLIPConfig:
        return CLIPConfig(vision=self.visual.config, text=self.text.config)

    def encode_image(self, images: Tensor, *, normalize: bool = False) -> Tensor:
        """(B, 3, H, W) images -> (B, D) embeddings (unit norm if ``normalize``)."""
        x = self.visual(images)
        return F.normalize(x, dim=-1) if normalize else x

    def encode_text(self, token_ids: Tensor, *, normalize: bool = False) -> Tensor:
        """(B, L) token ids -> (B, D) embeddings (unit norm if ``normalize``)."""
        x = self.text(token_ids)
        return F.normalize(x, dim=-1) if normalize else x

    def forward(self, images: Tensor, token_ids: Tensor) -> tuple[Tensor, Tensor]:
        """CLIP's contrastive logits (Fig. 3): exp(t) * cos(I_e, T_e).

        Returns:
            logits_per_image (B_img, B_txt) and logits_per_text (B_txt, B_img).
        """
        img = self.encode_image(images, normalize=True)
        txt = self.encode_text(token_ids, normalize=True)
        logits = self.logit_scale.exp() * img @ txt.t()
        return logits, logits.t()
