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

    @property
    def embedding_rank_bound(self) -> int:
        """C + 1: no more dimensions than this hold the pixel embeddings (see
        :meth:`embedding_basis`); known without the weights, so a model built on the ``meta``
        device can be checked against it."""
        return self.proj[-1].in_channels + 1

    @torch.no_grad()
    def embedding_basis(self) -> torch.Tensor:
        """(D, r) orthonormal columns whose span holds every pixel embedding
        (r <= :attr:`embedding_rank_bound`).

        An embedding is W g + b (the last 1x1 layer on the C-dim hidden map), normalised: it lies
        in the span of W's columns and b, whatever the image. Pooled or averaged embeddings do too.
        """
        last = self.proj[-1]
        cols = torch.cat([last.weight.flatten(1), last.bias[:, None]], dim=1).double()  # (D, C+1)
        q, r = torch.linalg.qr(cols)
        keep = r.diagonal().abs() > 1e-8 * r.diagonal().abs().max()  # drop dependent columns
        return q[:, keep].float()

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
        with torch.autocast(hidden.device.type, enabled=False):
            text = self.text_side(class_embeddings)  # fp32 parameters, outside autocast
        return cosine_scores(hidden, self.proj[-1], text, self.log_scale)


def cosine_scores(
    hidden: torch.Tensor, last: nn.Conv2d, text: torch.Tensor, log_scale
) -> torch.Tensor:
    """``scale * cos(last(hidden), text)`` per pixel and class, without the D-dim pixel embedding.

    Args:
        hidden: (B, C, h, w) the hidden map g that the 1x1 conv ``last`` (C -> D) embeds.
        last: the 1x1 embedding conv, z = W g + b.
        text: (K, D) unit class vectors.
        log_scale: the logit scale's log (clamped to [1, 100] after exp).

    Returns:
        (B, K, h, w) fp32 logits, computed in fp32 outside autocast.
    """
    with torch.autocast(hidden.device.type, enabled=False):
        g = hidden.float()
        w = last.weight.float().flatten(1)  # (D, C)
        b = last.bias.float()
        text = text.float()
        dot = F.conv2d(g, (text @ w)[..., None, None], text @ b)  # (B, K, h, w)
        gram = F.conv2d(g, (w.T @ w)[..., None, None], 2.0 * (w.T @ b))  # (B, C, h, w)
        sq_norm = (g * gram).sum(1, keepdim=True) + b @ b
        norm = sq_norm.clamp_min(0.0).sqrt().clamp_min(1e-12)  # F.normalize's eps
        scale = log_scale.float().exp().clamp(1.0, 100.0)
        return scale * dot / norm


class CosineClassifier(nn.Module):
    """A projection head's scoring part with its own learnable class vectors: the classifier over
    the head's hidden map g (``ProjectionHead.proj[:-1]``'s output) that ZS3Net retrains.

    ``scale * cos(W g + b, v_k / |v_k|)``; built from a trained head with the class vectors set to
    the head's text side of the given class embeddings, it scores exactly as the head does.

    Args:
        head: the trained projection head (its last 1x1 conv and scale are copied).
        class_embeddings: (K, D) the classes the vectors start from.
        train_shared: whether the copied last conv and logit scale (shared by every class) are
            trained too; False trains the class vectors only.
    """

    def __init__(
        self, head: ProjectionHead, class_embeddings: torch.Tensor, *, train_shared: bool = True
    ):
        super().__init__()
        last: nn.Conv2d = head.proj[-1]
        self.last = nn.Conv2d(last.in_channels, last.out_channels, 1)
        self.last.load_state_dict(last.state_dict())
        with torch.no_grad():
            vectors = head.text_side(class_embeddings.to(last.weight.device)).detach().clone()
        self.weight = nn.Parameter(vectors)  # (K, D): the class vectors
        self.log_scale = nn.Parameter(head.log_scale.detach().clone())
        if not train_shared:
            self.last.requires_grad_(False)
            self.log_scale.requires_grad_(False)
        self.to(device=last.weight.device)

    @property
    def in_channels(self) -> int:
        return self.last.in_channels

    def forward(self, hidden: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """(B, C, h, w) hidden map -> (B, K, h, w) fp32 logits (of classes ``rows`` if given)."""
        vectors = self.weight if rows is None else self.weight[rows]
        with torch.autocast(hidden.device.type, enabled=False):
            text = F.normalize(vectors.float(), dim=-1)
        return cosine_scores(hidden, self.last, text, self.log_scale)
