"""ZegCLIP's text-query decoder (Zhou et al., "ZegCLIP: Towards Adapting CLIP for Zero-shot
Semantic Segmentation", CVPR 2023, Sec. 3.2-3.3, Fig. 2).

Relationship descriptor (Sec. 3.3, eq. 3): the query of class k for image b is

    r_k^b = W_q [ t_k ⊙ g^b ; t_k ]        (t_k the class text embedding, g^b the image CLS
                                            embedding, both unit vectors in CLIP's joint space)

(without it, the ablation "w/o RD", r_k = W_q t_k). A light transformer decoder lets the class
queries attend to the projected patch tokens F = LN(W_in P); each layer is cross-attention then an
MLP, post-norm (no self-attention among queries, as the released code). The segmentation mask of
class k is the attention logit map of the layer's cross-attention averaged over heads (Sec. 3.2):

    M_k^b = mean_heads( (W_Q q_k)(W_K F)^T / sqrt(d_head) )   (before the softmax)

so each layer gives (B, K, h, w) mask logits; the last one is the prediction and the earlier
ones are deeply supervised. ``ZegCLIPDecoderConfig.mask_scale`` multiplies M (not the attention's
softmax, so the queries are the paper's); 1 is the paper's mask.

Inference (``ZegCLIPDecoder.predict``) computes the same last-layer masks with less work per
class: the vocabulary-only half of eq. 3, W_q^t t_k + b, and the normalised text are computed
once per vocabulary and cached (``TextSideCache``); the last layer's attended values and MLP,
which no mask depends on, are skipped; its head-averaged logits are one matmul,
mean_h(Q_h K_h^T) / sqrt(d_head) = (Q K^T) / (h sqrt(d_head)) over the full width, so no
(B, heads, K, N) tensor exists; and earlier layers' attention runs fused
(``scaled_dot_product_attention``), without their unused masks.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zeroseg._checks import check_minimum
from zeroseg.models.attention import attention
from zeroseg.models.dropout import Dropout

__all__ = ["TextSideCache", "ZegCLIPDecoder", "ZegCLIPDecoderConfig", "relationship_descriptor"]


@dataclass
class ZegCLIPDecoderConfig:
    """The light decoder (paper: 3 layers, 8 heads, width 512)."""

    width: int = 512  # token dimension of the decoder
    layers: int = 3  # cross-attention layers (each gives a mask map)
    heads: int = 8  # attention heads (width must divide evenly)
    mlp_ratio: float = 4.0  # hidden width of each layer's MLP relative to width
    # dropout on attention weights and residual branches (as the release); its CPU mask is
    # zeroseg.models.dropout's, not bernoulli_'s (the same distribution, cheaper)
    dropout: float = 0.1
    input_proj: bool = (
        True  # Linear + LayerNorm on the patch tokens (release presets: off, width = 512)
    )
    # A fixed factor on the head-averaged logits that are the masks (not on the attention's own
    # softmax): 1 is the paper's mask. The ShapeWorld presets use 4, chosen on val: at 1 the
    # sigmoid masks of the 128-wide decoder stay too flat to fit the small classes in the demo's
    # budget (docs/methods.md, "ZegCLIP and the ShapeWorld CLIP-style encoder").
    mask_scale: float = 1.0
    # Start the decoder as the encoder's own pixel-name match (False: the paper's random start).
    # With tokens already aligned with the class names (the ShapeWorld foundation's; CLIP's patch
    # tokens are not), every layer's masks begin as ``aligned_scale * cos(t_k, p)``, the zero-shot
    # labelling a projection head on the same tokens starts from (``ZegCLIPDecoder.align``).
    aligned_init: bool = False
    aligned_scale: float = 20.0  # aligned_init: the masks' logit scale at the start

    def __post_init__(self) -> None:
        check_minimum(self, ("aligned_scale",), 0, strict=True)


def relationship_descriptor(text: Tensor, cls: Tensor) -> Tensor:
    """ZegCLIP eq. 3 before its projection: [t_k ⊙ g^b ; t_k].

    Args:
        text: (K, D) class embeddings.
        cls: (B, D) image (CLS) embeddings.

    Returns:
        (B, K, 2D).
    """
    if text.shape[-1] != cls.shape[-1]:
        raise ValueError(
            f"relationship descriptor: text dim {text.shape[-1]} != image CLS dim {cls.shape[-1]}"
        )
    t = text.unsqueeze(0).expand(cls.shape[0], -1, -1)  # (B, K, D)
    return torch.cat([t * cls[:, None, :], t], dim=-1)


class _CrossAttention(nn.Module):
    """Multi-head cross-attention that also returns its head-averaged logits (the masks)."""

    def __init__(self, width: int, heads: int, dropout: float, mask_scale: float = 1.0) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(
                f"ZegCLIPDecoderConfig: width {width} is not divisible by heads {heads}"
            )
        if not mask_scale > 0:
            raise ValueError(f"ZegCLIPDecoderConfig: mask_scale must be > 0, got {mask_scale}")
        self.heads, self.mask_scale = heads, mask_scale
        self.q = nn.Linear(width, width)
        self.k = nn.Linear(width, width)
        self.v = nn.Linear(width, width)
        self.proj = nn.Linear(width, width)
        self.drop = Dropout(dropout)

    def forward(self, query: Tensor, memory: Tensor) -> tuple[Tensor, Tensor]:
        """Args:
            query: (B, K, C) class queries.
            memory: (B, N, C) patch tokens.

        Returns:
            (B, K, C) attended values and (B, K, N) logits averaged over heads, times
            ``mask_scale`` (the masks).
        """
        b, k, c = query.shape
        n, hs = memory.shape[1], c // self.heads
        q = self.q(query).view(b, k, self.heads, hs).transpose(1, 2)  # (B, nh, K, hs)
        key = self.k(memory).view(b, n, self.heads, hs).transpose(1, 2)  # (B, nh, N, hs)
        v = self.v(memory).view(b, n, self.heads, hs).transpose(1, 2)
        logits = (q @ key.transpose(-2, -1)) * hs**-0.5  # (B, nh, K, N)
        attn = self.drop(logits.softmax(-1))
        out = (attn @ v).transpose(1, 2).reshape(b, k, c)
        masks = logits.mean(1)
        return self.proj(out), masks * self.mask_scale if self.mask_scale != 1 else masks

    def attend(self, query: Tensor, memory: Tensor) -> Tensor:
        """Inference only: the attended values of :meth:`forward`, without the masks.

        Args:
            query: (B, K, C); memory: (B, N, C).

        Returns:
            (B, K, C), through the fused attention kernel (no (B, heads, K, N) logits kept).
        """
        b, k, c = query.shape
        n, hs = memory.shape[1], c // self.heads
        q = self.q(query).view(b, k, self.heads, hs).transpose(1, 2)  # (B, nh, K, hs)
        key = self.k(memory).view(b, n, self.heads, hs).transpose(1, 2)  # (B, nh, N, hs)
        v = self.v(memory).view(b, n, self.heads, hs).transpose(1, 2)
        out = attention(q, key, v)  # (B, nh, K, hs)
        return self.proj(out.transpose(1, 2).reshape(b, k, c))

    def mean_logits(self, query: Tensor, memory: Tensor) -> Tensor:
        """Inference only: the masks of :meth:`forward`, (B, K, N).

        The mean over heads of Q_h K_h^T is the full-width Q K^T divided by the head count, so
        one (K, C) x (C, N) matmul gives it.
        """
        hs = query.shape[-1] // self.heads
        # scale the (K, C) side, not the (K, N) one
        q = self.q(query) * (hs**-0.5 / self.heads * self.mask_scale)
        return q @ self.k(memory).transpose(-2, -1)


class _DecoderLayer(nn.Module):
    """Cross-attention and MLP, each residual then LayerNorm (post-norm)."""

    def __init__(
        self, width: int, heads: int, mlp_ratio: float, dropout: float, mask_scale: float = 1.0
    ) -> None:
        super().__init__()
        self.attn = _CrossAttention(width, heads, dropout, mask_scale)
        self.norm1 = nn.LayerNorm(width)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(
            nn.Linear(width, hidden), nn.ReLU(), Dropout(dropout), nn.Linear(hidden, width)
        )
        self.norm2 = nn.LayerNorm(width)
        self.drop = Dropout(dropout)

    def forward(self, query: Tensor, memory: Tensor) -> tuple[Tensor, Tensor]:
        out, logits = self.attn(query, memory)
        query = self.norm1(query + self.drop(out))
        query = self.norm2(query + self.drop(self.mlp(query)))
        return query, logits

    def advance(self, query: Tensor, memory: Tensor) -> Tensor:
        """Inference only: the next queries of :meth:`forward` (dropout off), without the masks."""
        query = self.norm1(query + self.attn.attend(query, memory))
        return self.norm2(query + self.mlp(query))


class TextSideCache:
    """What inference computes from the vocabulary alone, kept across images.

    An entry is valid while the class embeddings are equal (compared by value, so a new tensor
    holding the same vocabulary still hits), the parameters it was computed from are unchanged
    (their version counters move with every in-place update: optimiser steps,
    ``load_state_dict``), and the device, dtype and autocast / inference-mode state match. Not
    model state: never saved. One vocabulary is kept (a new one replaces it); nothing is stored
    while autograd records (training computes it afresh, with gradients).
    """

    def __init__(self) -> None:
        self._key: tuple[Any, ...] | None = None
        self._text: Tensor | None = None
        self._value: Any = None
        self.misses = 0  # computations, for tests and benchmarks

    def clear(self) -> None:
        self._key = self._text = self._value = None

    def get(self, text: Tensor, compute: Callable[[Tensor], Any], params: Iterable[Tensor]) -> Any:
        """``compute(text)``, from the cache when ``text`` and ``params`` are as last time.

        Args:
            text: (K, D) class embeddings, the vocabulary.
            compute: the vocabulary-only work.
            params: every parameter ``compute`` reads.
        """
        device = text.device.type
        key = (
            tuple(text.shape),
            text.dtype,
            text.device,
            tuple((p._version, p.data_ptr(), p.dtype, p.device) for p in params),
            torch.is_autocast_enabled(device),
            torch.get_autocast_dtype(device),
            torch.is_inference_mode_enabled(),
        )
        if self._key == key and self._text is not None and torch.equal(self._text, text):
            return self._value
        self.misses += 1
        value = compute(text)
        if torch.is_grad_enabled():
            self.clear()
        else:
            self._key, self._text, self._value = key, text.detach().clone(), value
        return value


class ZegCLIPDecoder(nn.Module):
    """Class queries (relationship descriptors) -> per-layer mask logits over the patch grid.

    Args:
        config: decoder sizes.
        visual_dim: dimension of the patch and CLS embeddings (CLIP's joint space).
        text_dim: dimension of the class embeddings; equals ``visual_dim`` when ``relationship``.
        relationship: build queries with the relationship descriptor (False: from text alone).
    """

    def __init__(
        self,
        config: ZegCLIPDecoderConfig,
        *,
        visual_dim: int,
        text_dim: int,
        relationship: bool = True,
    ):
        super().__init__()
        if relationship and visual_dim != text_dim:
            raise ValueError(
                f"the relationship descriptor multiplies text ({text_dim}-d) and image CLS "
                f"({visual_dim}-d) embeddings: the two dimensions must match"
            )
        self.config, self.relationship = config, relationship
        if config.input_proj:
            self.input_proj, self.input_norm = (
                nn.Linear(visual_dim, config.width),
                nn.LayerNorm(config.width),
            )
        elif visual_dim != config.width:
            raise ValueError(
                f"ZegCLIPDecoderConfig.input_proj is off, so the decoder width ({config.width}) must "
                f"equal the patch embedding dimension ({visual_dim})"
            )
        else:
            self.input_proj, self.input_norm = nn.Identity(), nn.Identity()
        self.q_proj = nn.Linear(2 * text_dim if relationship else text_dim, config.width)
        self.layers = nn.ModuleList(
            _DecoderLayer(
                config.width, config.heads, config.mlp_ratio, config.dropout, config.mask_scale
            )
            for _ in range(config.layers)
        )
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def check_aligned(self, rank: int) -> None:
        """Raises unless :meth:`align` can start this decoder on tokens spanning ``rank`` dims."""
        cfg = self.config
        if not cfg.input_proj:
            raise ValueError(
                "ZegCLIPDecoderConfig.aligned_init maps the tokens through the input projection: "
                "set input_proj: true"
            )
        if rank >= cfg.width:
            raise ValueError(
                f"ZegCLIPDecoderConfig.aligned_init: the tokens span up to {rank} dimensions; the "
                f"decoder width ({cfg.width}) must exceed that"
            )

    @torch.no_grad()
    def align(self, basis: Tensor) -> None:
        """Starts every layer's masks as ``aligned_scale * (t_k . p)`` for unit tokens p in the
        span of ``basis`` and unit text t_k: the encoder's own pixel-name match
        (``ZegCLIPDecoderConfig.aligned_init``; the paper starts at random).

        The input projection maps the token subspace isometrically onto ``width`` directions that
        sum to zero, so its LayerNorm only rescales a token (to norm sqrt(width)); the queries'
        text half maps t_k the same way, plus its part outside that subspace onto the remaining
        directions (random, norm-preserving on average), which no key reaches: the LayerNorm of
        the later layers then divides each query by about |t_k| = 1, for every class alike. The
        cross-attention's query and key maps are scaled identities, the residual branches (the
        attention's output map and the MLP's last layer) start at zero, and the image half of the
        relationship descriptor at zero; everything trains from there.

        Args:
            basis: (D, r) orthonormal columns spanning every patch embedding, r < width.
        """
        cfg, width = self.config, self.config.width
        d, r = basis.shape
        self.check_aligned(r)
        like = {"device": self.input_proj.weight.device, "dtype": self.input_proj.weight.dtype}
        basis = basis.to(**like)
        # (width, width - 1) orthonormal columns orthogonal to the all-ones vector
        ones = torch.full((width, 1), width**-0.5, **like)
        g = torch.randn(width, width - 1, **like)
        frame, _ = torch.linalg.qr(g - ones @ (ones.T @ g))
        inside, outside = frame[:, :r], frame[:, r:]
        to_width = inside @ basis.T  # (width, D): isometric on the span of basis
        rest = torch.eye(d, **like) - basis @ basis.T  # the part of t outside the span
        spread = torch.randn(outside.shape[1], d, **like) / max(outside.shape[1], 1) ** 0.5
        self.input_proj.weight.copy_(to_width)
        self.input_proj.bias.zero_()
        self.q_proj.weight.zero_()
        self.q_proj.bias.zero_()
        self.q_proj.weight[:, -d:] = to_width + outside @ spread @ rest
        # mean_heads(Q_h . K_h) / sqrt(d_head) * mask_scale = a (q . k) / (heads sqrt(d_head))
        #   * mask_scale, with |k| = sqrt(width) |p|, |q| about 1 (layer 1) or sqrt(width)
        unit = cfg.heads * (width // cfg.heads) ** 0.5 / cfg.mask_scale * cfg.aligned_scale
        for i, layer in enumerate(self.layers):
            gain = unit / width ** (0.5 if i == 0 else 1.0)
            layer.attn.q.weight.copy_(torch.eye(width, **like) * gain)
            layer.attn.k.weight.copy_(torch.eye(width, **like))
            for lin in (layer.attn.q, layer.attn.k, layer.attn.proj, layer.mlp[-1]):
                lin.bias.zero_()
            layer.attn.proj.weight.zero_()
            layer.mlp[-1].weight.zero_()

    def queries(self, text: Tensor, cls: Tensor) -> Tensor:
        """(K, D) text, (B, D) CLS -> (B, K, width) class queries."""
        if self.relationship:
            return self.q_proj(relationship_descriptor(text, cls))
        return self.q_proj(text).unsqueeze(0).expand(cls.shape[0], -1, -1)

    def forward(self, patches: Tensor, cls: Tensor, text: Tensor) -> list[Tensor]:
        """Mask logits of every decoder layer.

        Args:
            patches: (B, h, w, Dv) patch embeddings.
            cls: (B, Dv) image embeddings.
            text: (K, Dt) class embeddings.

        Returns:
            ``layers`` tensors of shape (B, K, h, w); the last is the prediction.
        """
        b, h, w, _ = patches.shape
        memory = self.input_norm(self.input_proj(patches.reshape(b, h * w, -1)))  # (B, N, C)
        q = self.queries(text.to(memory.dtype), cls.to(memory.dtype))
        masks = []
        for layer in self.layers:
            q, logits = layer(q, memory)
            masks.append(logits.reshape(b, -1, h, w))
        return masks

    def text_side(self, text: Tensor) -> tuple[Tensor, Tensor]:
        """The vocabulary-only part of the queries, for :meth:`predict` (cache it per vocabulary).

        With the relationship descriptor, eq. 3's W_q [t ⊙ g ; t] + b splits into
        W_q^g (t ⊙ g), which needs the image, and W_q^t t + b, which does not.

        Args:
            text: (K, Dt) unit class embeddings (as :meth:`forward` receives them).

        Returns:
            ``text`` and its query term (K, width).
        """
        if not self.relationship:
            return text, self.q_proj(text)
        d = text.shape[-1]
        return text, F.linear(text, self.q_proj.weight[:, d:], self.q_proj.bias)

    @torch.no_grad()
    def predict(self, patches: Tensor, cls: Tensor, text_side: tuple[Tensor, Tensor]) -> Tensor:
        """Inference: the last layer's mask logits of :meth:`forward`, computed for less.

        Equal to ``forward(patches, cls, text)[-1]`` in eval mode up to float rounding (fp32:
        within 1e-5, tested).

        Args:
            patches: (B, h, w, Dv) patch embeddings.
            cls: (B, Dv) image embeddings.
            text_side: :meth:`text_side` of the (K, Dt) class embeddings.

        Returns:
            (B, K, h, w) mask logits.
        """
        if self.training:
            raise RuntimeError("ZegCLIPDecoder.predict is for eval mode (dropout off)")
        b, h, w, _ = patches.shape
        memory = self.input_norm(self.input_proj(patches.reshape(b, h * w, -1)))  # (B, N, C)
        text, text_term = text_side
        if self.relationship:
            d = text.shape[-1]
            # W_q^g (t ⊙ g) = t (g ⊙ W_q^g)^T: scale the (C, D) weight per image, not (B, K, D).
            wg = self.q_proj.weight[:, :d] * cls.to(memory.dtype)[:, None, :]  # (B, C, D)
            q = (text.to(memory.dtype) @ wg.transpose(1, 2)) + text_term  # (B, K, C)
        else:
            q = text_term.expand(b, -1, -1)
        for layer in self.layers[:-1]:
            q = layer.advance(q, memory)
        return self.layers[-1].attn.mean_logits(q, memory).reshape(b, -1, h, w)
