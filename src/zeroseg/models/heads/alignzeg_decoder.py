"""AlignZeg's proposal model: mutually-refined proposal extraction and background prototypes.

Ge et al., "AlignZeg: Mitigating Objective Misalignment for Zero-shot Semantic Segmentation",
ECCV 2024 (arXiv 2404.05667, no public code), Sec. 3.2 (Mutually-Refined Proposal Extraction)
and the background prototypes of Sec. 3.3, on top of the Mask2Former-style model of
:mod:`zeroseg.models.heads.mask_decoder` (whose backbone, pixel decoder, decoder layers and
inference rules are reused unchanged).

- **Feature fusion.** The paper fuses a learnable encoder's features ``Z_enc`` with the frozen
  CLIP image encoder's ``Z_clip``. Here the learnable encoder is the mask model's pyramid and the
  frozen one is any CLIP-style ViT (on ShapeWorld, the stage-0 encoder of
  :func:`zeroseg.pretrain.load_or_train`): its patch tokens are projected (1x1, per level),
  resized to each attention level and added, ``Z_l = Z_enc,l + P_l(Z_clip)``. Optional
  (``clip_encoder=None`` runs without it).
- **Mutual refinement.** Each decoder layer first updates the queries from the visual features
  (Mask2Former's masked cross-attention, self-attention, FFN) and then updates the visual
  features from the queries: the tokens of the level just attended, and the per-pixel mask
  features, each do cross-attention to the refined queries, ``Z <- LN(Z + Attn(Z, Q, Q))``.
  Masks of layer l are ``sigmoid(mlp(q_l) · E_l)`` with the mask features ``E_l`` refined so
  far, so every deep-supervised prediction uses features that have seen the queries.
- **Class embedding.** ``e_q = W2 relu(W1 q)``: a two-layer map from the decoder's hidden state
  to the text space (Mask2Former has one linear layer). The extra non-linearity is what makes a
  mixup of hidden states (the virtual features of :mod:`zeroseg.methods.alignzeg`) land
  anywhere other than on the segment between two real class embeddings.
- **Background prototypes.** Instead of one learned no-object embedding, ``M`` learned
  prototypes ``b_m``; the no-object logit is ``logsumexp_m(s · cos(e_q, b_m))``, so the
  softmax over K classes + M prototypes, with the M background probabilities summed, is exactly
  the softmax over the K + 1 returned logits (Hungarian matching, the set loss and inference are
  the mask model's, unchanged). With ``M = 1`` this is :class:`TextClassifier`.
- **Class indicator.** A small MLP on the (final) query hidden state giving the logit that a
  proposal belongs to a potential unseen class; it is trained and used by the method.

Public API::

    model = AlignZegModel(MaskModelConfig(), embed_dim=D, refine=True, background_prototypes=4)
    out = model(images)                          # AlignZegOutputs (+ hidden (B,N,C))
    logits = model.classify(out.embeddings, T)   # (B,N,K+1), last column: background
    u = model.indicator(out.hidden)              # (B,N) unseen-proposal logits
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from zeroseg.foundation.model import FoundationEncoder
from zeroseg.models.attention import MultiheadAttention
from zeroseg.models.heads.mask_decoder import (
    MaskClassifier,
    MaskModelConfig,
    MaskOutputs,
    sine_position,
)

__all__ = [
    "AlignZegModel",
    "AlignZegOutputs",
    "FeatureRefiner",
    "PrototypeClassifier",
]


@dataclass
class AlignZegOutputs(MaskOutputs):
    """:class:`MaskOutputs` plus ``hidden`` (B, N, C): the last layer's normalised query states,
    and ``frozen_pixels`` (B, D, h, w): the fused frozen foundation's unit pixel embeddings (None
    for another fused encoder or none), which the pooled classifier reuses instead of running the
    encoder again."""

    hidden: Tensor
    frozen_pixels: Tensor | None = None


class FeatureRefiner(nn.Module):
    """Visual tokens attend to the queries: the feature side of the mutual refinement.

    Args:
        dim: channels of the visual tokens.
        query_dim: channels of the queries.
        heads: attention heads (must divide ``dim``).
    """

    def __init__(self, dim: int, query_dim: int, heads: int):
        super().__init__()
        self.attn = MultiheadAttention(dim, heads, kdim=query_dim, vdim=query_dim)
        self.norm = nn.LayerNorm(dim)

    def forward(self, feats: Tensor, feats_pos: Tensor, q: Tensor, q_pos: Tensor) -> Tensor:
        """feats (B, L, dim) and positions, queries (B, N, query_dim) -> refined feats (B, L, dim)."""
        a = self.attn(feats + feats_pos, q + q_pos, q, need_weights=False)[0]
        return self.norm(feats + a)


class PrototypeClassifier(nn.Module):
    """Cosine classification against K text embeddings and M learned background prototypes.

    Args:
        embed_dim: D.
        num_background: M >= 1.
        init_temperature: 1/s at initialisation (CLIP's 0.07).
    """

    def __init__(self, embed_dim: int, num_background: int, init_temperature: float = 0.07):
        super().__init__()
        if num_background < 1:
            raise ValueError(f"num_background must be >= 1, got {num_background}")
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / init_temperature)))
        self.background = nn.Parameter(
            torch.randn(num_background, embed_dim) / math.sqrt(embed_dim)
        )

    def scale(self) -> Tensor:
        return self.logit_scale.clamp(max=math.log(100.0)).exp()

    def forward(self, embeddings: Tensor, class_embeddings: Tensor) -> Tensor:
        """(..., D) embeddings, (K, D) text embeddings -> (..., K+1) logits; last = background.

        The background column is ``logsumexp`` over the prototypes' logits: its softmax
        probability is the summed probability of the M prototypes.
        """
        e = F.normalize(embeddings.float(), dim=-1)
        t = F.normalize(class_embeddings.float().to(e.device), dim=-1)
        b = F.normalize(self.background.float(), dim=-1)
        s = self.scale()
        cls = s * e @ t.T
        bg = (s * e @ b.T).logsumexp(-1, keepdim=True)
        return torch.cat([cls, bg], -1)


class AlignZegModel(MaskClassifier):
    """The mask model with mutual refinement, optional frozen-encoder fusion, prototypes, indicator.

    Args:
        cfg: sizes, see :class:`MaskModelConfig`.
        embed_dim: D, the text-embedding dimension.
        refine: update the visual features by attention to the queries in every layer.
        background_prototypes: M, learned background prototypes (1 = a single no-object class).
        clip_encoder: a frozen CLIP-style ``VisionTransformer`` whose patch tokens are fused
            into the three attention levels, or None.
        clip_mean, clip_std: the frozen encoder's input normalisation (RGB, 0-1 scale).
    """

    def __init__(
        self,
        cfg: MaskModelConfig,
        *,
        embed_dim: int,
        refine: bool = True,
        background_prototypes: int = 1,
        clip_encoder: nn.Module | None = None,
        clip_mean: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073),
        clip_std: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711),
    ):
        super().__init__(cfg, embed_dim=embed_dim)
        c = cfg.hidden_dim
        self.refine = refine
        self.classifier = PrototypeClassifier(
            embed_dim, background_prototypes, cfg.init_temperature
        )
        self.class_embed = nn.Sequential(
            nn.Linear(c, c), nn.ReLU(inplace=True), nn.Linear(c, embed_dim)
        )
        self.indicator_head = nn.Sequential(nn.Linear(c, c), nn.ReLU(inplace=True), nn.Linear(c, 1))
        if refine:
            self.level_refiners = nn.ModuleList(
                FeatureRefiner(c, c, cfg.heads) for _ in range(cfg.layers)
            )
            self.mask_refiners = nn.ModuleList(
                FeatureRefiner(cfg.mask_dim, c, cfg.heads) for _ in range(cfg.layers)
            )
        self.clip = clip_encoder
        if clip_encoder is not None:
            clip_encoder.requires_grad_(False)
            # The foundation's embedding size, or a ViT's token width.
            if isinstance(clip_encoder, FoundationEncoder):
                width = clip_encoder.output_dim
            else:
                width = clip_encoder.config.width
            self.clip_proj = nn.ModuleList(nn.Conv2d(width, c, 1) for _ in range(3))
            for proj in self.clip_proj:  # start as the plain mask model; the fusion is learned
                nn.init.zeros_(proj.weight)
                nn.init.zeros_(proj.bias)
            self.register_buffer(
                "clip_mean", torch.tensor(clip_mean).view(1, 3, 1, 1) * 255, persistent=False
            )
            self.register_buffer(
                "clip_std", torch.tensor(clip_std).view(1, 3, 1, 1) * 255, persistent=False
            )

    def train(self, mode: bool = True):
        super().train(mode)
        if self.clip is not None:
            self.clip.eval()  # frozen: no dropout / statistics updates
        return self

    def indicator(self, hidden: Tensor) -> Tensor:
        """(..., C) query hidden states -> (...,) logits of "a potential unseen-class proposal"."""
        return self.indicator_head(hidden.float())[..., 0]

    def _clip_tokens(self, images: Tensor) -> Tensor:
        """(B, 3, H, W) uint8 -> (B, width, h, w) frozen patch tokens."""
        with torch.no_grad():
            if isinstance(self.clip, FoundationEncoder):  # takes raw images, normalises itself
                tokens = self.clip.forward_features(images.float())["patch_proj"]
            else:
                x = (images.float() - self.clip_mean) / self.clip_std
                tokens = self.clip.forward_features(x)["patch_tokens"]  # (B, h, w, width)
        return tokens.permute(0, 3, 1, 2)  # a view, in the encoder's layout

    def forward(self, images: Tensor) -> AlignZegOutputs:
        """(B, 3, H, W) uint8 images -> :class:`AlignZegOutputs`."""
        x = (images.float() - self.pixel_mean) / self.pixel_std
        feats = self.backbone(x)
        mask_feats = self.mask_features(feats[-1])  # (B, Cm, h, w)
        clip = self._clip_tokens(images) if self.clip is not None else None
        frozen_pixels = clip if isinstance(self.clip, FoundationEncoder) else None
        levels = []
        for i in range(3):
            f = self.input_proj[i](feats[i])
            if clip is not None:  # Z = Z_enc + P(Z_clip), resized to this level
                # one copy into the levels' dtype (a no-op from the second level), in the
                # encoder's own layout: channels-last when the stage trains so (the layout of
                # the levels' convolutions, which would otherwise convert it at every level,
                # forward and backward), else the usual one
                clip = clip.to(f.dtype)
                z = F.interpolate(clip, size=f.shape[-2:], mode="bilinear", align_corners=False)
                f = f + self.clip_proj[i](z)
            levels.append(self._level(i, f))
        sizes, poss, mems = (list(x) for x in zip(*levels))
        b, cm, mh, mw = mask_feats.shape
        mask_tokens = mask_feats.flatten(2).transpose(1, 2)  # (B, h*w, Cm)
        mask_pos = sine_position(mask_feats, cm) if self.refine else None
        q, q_pos = self._queries(b)
        preds = []
        masks, emb, h, attn = self._predict(q, mask_feats, sizes[0])
        preds.append((masks, emb))
        for i, layer in enumerate(self.layers):
            lvl = i % 3
            q = layer(
                q, q_pos, mems[lvl], poss[lvl], attn.to(q.device) if attn is not None else None
            )
            if self.refine:  # the reverse direction: features updated by the refined queries
                mems[lvl] = self.level_refiners[i](mems[lvl], poss[lvl], q, q_pos)
                mask_tokens = self.mask_refiners[i](mask_tokens, mask_pos, q, q_pos)
                mask_feats = mask_tokens.transpose(1, 2).reshape(b, cm, mh, mw)
            masks, emb, h, attn = self._predict(q, mask_feats, sizes[(i + 1) % 3])
            preds.append((masks, emb))
        return AlignZegOutputs(
            masks=preds[-1][0],
            embeddings=preds[-1][1],
            aux=preds[:-1],
            hidden=h,
            frozen_pixels=frozen_pixels,
        )
