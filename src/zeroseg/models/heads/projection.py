"""Projection head: pixel embeddings matched to class text embeddings by cosine similarity.

SPNet (Xian et al., CVPR 2019) and ZegFormer-seg style: a 1x1 projection maps each pixel feature
into the semantic space of the (frozen) class embeddings, and the score of class k at a pixel is
``s · cos(W f(x), t_k)`` with a learned temperature ``s``. Because the class side is the text
embedding itself, the head classifies among any vocabulary given at test time.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


class ProjectionHead(nn.Module):
    """Scores (B, K, h, w) = scale · cos(proj(features), text).

    Args:
        in_dim: channels of the pixel features.
        embed_dim: dimension of the class embeddings.
        init_scale: initial logit scale (a learnable log-parameter, clamped to [1, 100]).
    """

    def __init__(
        self, in_dim: int, embed_dim: int, init_scale: float = 20.0, text_proj: bool = True
    ):
        super().__init__()
        # A shared linear map of the class embeddings (identity at init), learned on the seen
        # classes: it spreads apart names the text encoder puts close together ("red square",
        # "red star") and applies unchanged to unseen names.
        self.text_proj = nn.Linear(embed_dim, embed_dim, bias=False) if text_proj else None
        if self.text_proj is not None:
            nn.init.eye_(self.text_proj.weight)
        self.proj = nn.Sequential(
            nn.Conv2d(in_dim, in_dim, 3, padding=1, bias=False),
            nn.BatchNorm2d(in_dim),
            nn.ReLU(inplace=True),
            nn.Conv2d(in_dim, embed_dim, 1),
        )
        self.log_scale = nn.Parameter(torch.tensor(math.log(init_scale)))

    def embed(self, features: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) -> (B, D, h, w) unit pixel embeddings."""
        return F.normalize(self.proj(features), dim=1)

    def text_side(self, class_embeddings: torch.Tensor) -> torch.Tensor:
        """(K, D) class embeddings -> (K, D) unit vectors the pixel embeddings are matched against
        (through the shared text map when there is one)."""
        text = class_embeddings.float()
        if self.text_proj is not None:
            text = self.text_proj(text)
        return F.normalize(text, dim=-1)

    def forward(self, features: torch.Tensor, class_embeddings: torch.Tensor) -> torch.Tensor:
        """Args: features (B, C, h, w); class_embeddings (K, D). Returns (B, K, h, w) fp32 logits.

        The same scores as ``scale * cos(embed(features), text)``, computed without the D-dim
        pixel embedding: with z = W g + b the last 1x1 layer applied to the C-dim hidden map g,
        ``z . t = g . (W^T t) + b . t`` and ``|z|^2 = g . (W^T W g + 2 W^T b) + |b|^2``, two 1x1
        convolutions to K and C channels instead of one to D (384 against C = 64 in the
        ShapeWorld presets, where this made the projection training step 1.58x faster:
        docs/benchmarks.md). Computed in fp32 outside autocast, so the norm's cross terms keep
        their precision.
        """
        hidden = self.proj[:-1](features)
        last: nn.Conv2d = self.proj[-1]
        with torch.autocast(hidden.device.type, enabled=False):
            g = hidden.float()
            w = last.weight.float().flatten(1)  # (D, C)
            b = last.bias.float()
            text = self.text_side(class_embeddings)  # fp32 parameters, outside autocast
            dot = F.conv2d(g, (text @ w)[..., None, None], text @ b)  # (B, K, h, w)
            gram = F.conv2d(g, (w.T @ w)[..., None, None], 2.0 * (w.T @ b))  # (B, C, h, w)
            sq_norm = (g * gram).sum(1, keepdim=True) + b @ b
            norm = sq_norm.clamp_min(0.0).sqrt().clamp_min(1e-12)  # F.normalize's eps
            scale = self.log_scale.float().exp().clamp(1.0, 100.0)
            return scale * dot / norm
