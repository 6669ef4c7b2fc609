"""Proposals classified by a frozen image-text encoder as well: mask pooling and the geometric
ensemble of the mask family's two classifiers.

A mask model's query classifier is trained on the seen classes only; the frozen encoder (CLIP in
the papers, the shipped ShapeWorld foundation here) was aligned with class names before any
segmentation training and never saw the seen/unseen split. ZegFormer (Ding et al., CVPR 2022)
classifies each proposal with both, and FC-CLIP (Yu et al., NeurIPS 2023) does it without a second
pass over crops: the frozen encoder's dense embeddings are averaged inside each proposal's binary
mask (``mask logit > 0``) and scored against the class names (the "out-of-vocabulary"
classifier). The two class distributions are combined per class by a weighted geometric mean,
weighted towards the frozen encoder for the classes training never saw:

    p(k) ∝ p_in(k)^(1-α) · p_out(k)^α   for seen k,
    p(k) ∝ p_in(k)^(1-β) · p_out(k)^β   for unseen k,

with ``p_in`` the query classifier's distribution over the K classes (its no-object column
removed and the rest renormalised) and ``p_out`` the frozen encoder's; FC-CLIP's defaults are
α = 0.4, β = 0.8 (ZegFormer weights its two classifiers the same way with one λ: α = 1 - λ,
β = λ). The no-object probability is the query classifier's, kept as it was: the K class
probabilities are scaled to ``1 - p_void``. A proposal whose binary mask is empty has nothing to
pool and keeps ``p_in`` (FC-CLIP's ``ENSEMBLE_ON_VALID_MASK`` option, off in its default config,
where an empty mask pools to zero logits, a uniform ``p_out``).

Public API::

    pooled = PooledClassifier("shipped")             # the frozen foundation, loaded
    logits, valid = pooled(images, mask_logits, T)   # (B,N,K) out-of-vocabulary logits, (B,N)
    probs = geometric_ensemble(probs, logits, valid, seen_mask, alpha=0.4, beta=0.8)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from zeroseg.config import ConfigError
from zeroseg.foundation.model import FoundationEncoder
from zeroseg.models.upsample import bilinear

__all__ = ["PooledClassifier", "PooledConfig", "geometric_ensemble", "mask_pool"]


@dataclass
class PooledConfig:
    """The frozen foundation's mask-pooled classification of proposals, and its ensemble weights."""

    enabled: bool = False  # classify proposals by the frozen foundation's pooled embeddings too
    alpha: float = 0.4  # the frozen classifier's weight for seen classes (FC-CLIP: 0.4)
    beta: float = 0.8  # its weight for unseen classes (FC-CLIP: 0.8)

    def __post_init__(self) -> None:
        for key in ("alpha", "beta"):
            value = getattr(self, key)
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"model.pooled.{key} must be in [0, 1], got {value}")


def mask_pool(pixels: Tensor, mask_logits: Tensor) -> tuple[Tensor, Tensor]:
    """Mean of ``pixels`` (B, D, h, w) inside each binary mask ``mask_logits > 0`` (B, N, h', w',
    resized bilinearly to (h, w) first) -> (B, N, D) unit vectors and (B, N) bool, True where the
    mask is not empty (an empty mask pools to the zero vector)."""
    if mask_logits.shape[-2:] != pixels.shape[-2:]:
        mask_logits = bilinear(mask_logits.float(), pixels.shape[-2:])
    binary = (mask_logits > 0).float()
    area = binary.sum((-2, -1))  # (B, N)
    summed = torch.einsum("bdhw,bnhw->bnd", pixels.float(), binary)
    return F.normalize(summed / area.clamp(min=1.0)[..., None], dim=-1), area > 0


class PooledClassifier(nn.Module):
    """The frozen ShapeWorld foundation scoring each proposal by its mask-pooled pixel embeddings.

    It never trains and holds no weights of its own in a state dict: the encoder is held, not
    registered, so switching ``model.pooled`` on or off never changes what a run saves or loads
    (``zeroseg eval RUN --set model.pooled.enabled=true`` evaluates any trained mask model with
    it). Its own encoder is loaded here from the foundation (identified by its sha256 in the
    report) and kept in eval mode (batch-norm statistics stay the foundation's).

    Args:
        foundation: the foundation to load ("shipped" or a path) when ``encoder`` is None.
        encoder: a frozen encoder the model already holds and saves (AlignZeg's fused
            foundation), pooled as it is, without a copy.
    """

    def __init__(self, foundation: str | None = None, *, encoder: FoundationEncoder | None = None):
        super().__init__()
        self.owns_encoder = encoder is None
        if encoder is None:
            if not foundation:
                raise ValueError("PooledClassifier needs a foundation or an encoder")
            from zeroseg.foundation import load_into

            encoder = FoundationEncoder()
            load_into(encoder.backbone, encoder.head, foundation)
            encoder.requires_grad_(False).eval()
        self.__dict__["encoder"] = encoder  # not a submodule: never in this model's state dict

    def _apply(self, fn, recurse: bool = True):
        # .to(device) / .float() reach the held encoder too (a shared one moves with its owner)
        if self.owns_encoder:
            self.encoder._apply(fn, recurse)
        return super()._apply(fn, recurse)

    @torch.no_grad()
    def forward(
        self,
        images: Tensor,
        mask_logits: Tensor,
        class_embeddings: Tensor,
        pixels: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """(B,3,H,W) uint8 images, (B,N,h,w) mask logits, (K,D) text embeddings -> (B,N,K)
        logits ``s · cos(pooled, text_side(t_k))`` (the foundation's own scale and class-side
        map) and the (B,N) non-empty masks. ``pixels``: the encoder's (B, D, H/2, W/2) pixel
        embeddings of ``images`` when the caller already has them (AlignZeg's fused encoder)."""
        enc = self.encoder
        if pixels is None:
            pixels = enc.head.embed(enc.backbone(images))  # (B, D, H/2, W/2) unit
        pooled, valid = mask_pool(pixels, mask_logits)
        text = enc.text_side(class_embeddings.to(pooled.device)).float()
        scale = enc.head.log_scale.float().exp().clamp(1.0, 100.0)
        return scale * pooled @ text.T, valid


def geometric_ensemble(
    probs: Tensor,
    out_logits: Tensor,
    valid: Tensor,
    seen_mask: Tensor,
    *,
    alpha: float,
    beta: float,
) -> Tensor:
    """The two classifiers' per-class weighted geometric mean (see the module docstring).

    Args:
        probs: (B, N, K+1) the query classifier's probabilities, the last column no-object.
        out_logits: (B, N, K) the frozen classifier's logits.
        valid: (B, N) bool, proposals with a non-empty mask (the others keep ``probs``).
        seen_mask: (K,) bool, the classes training saw.
        alpha: the frozen classifier's weight for seen classes.
        beta: its weight for unseen classes.

    Returns:
        (B, N, K+1) probabilities with the same no-object column.
    """
    probs = probs.float()
    void = probs[..., -1:]
    p_in = probs[..., :-1]
    p_in = p_in / p_in.sum(-1, keepdim=True).clamp(min=1e-12)
    log_out = out_logits.float().log_softmax(-1)
    weight = torch.where(seen_mask.to(probs.device), alpha, beta).to(probs.dtype)  # (K,)
    weight = weight * valid[..., None].to(probs.dtype)  # (B, N, K)
    mixed = (1 - weight) * p_in.clamp(min=1e-12).log() + weight * log_out
    return torch.cat([mixed.softmax(-1) * (1 - void), void], -1)
