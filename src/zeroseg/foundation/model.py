"""The ShapeWorld foundation: a dense image encoder aligned with the MiniLM text space.

It plays the part CLIP and ImageNet weights play for the papers: every ShapeWorld preset starts
from it, frozen or fine-tuned as its paper treats its pretrained backbone. The network is the
projection baseline's own backbone and head (:class:`~zeroseg.models.backbones.small.SmallUNet`,
stride-2 features, and :class:`~zeroseg.models.heads.projection.ProjectionHead` into the 384-d
MiniLM space), so "fine-tune the foundation" means loading these tensors into that model.

Two small extras serve pretraining only: a presence bias (image-level multi-label logits) and a
global projection with its own temperature (CLIP's image-caption contrastive term).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from zeroseg.models.backbones.small import SmallUNet, SmallUNetConfig
from zeroseg.models.heads.projection import ProjectionHead


@dataclass
class FoundationModelConfig:
    """The foundation's architecture."""

    backbone: SmallUNetConfig = field(default_factory=SmallUNetConfig)  # the dense CNN
    embed_dim: int = 384  # the joint space = the MiniLM text dimension


class Foundation(nn.Module):
    """Backbone + projection head (what methods load) + pretraining-only extras.

    Args:
        cfg: the architecture.
    """

    def __init__(self, cfg: FoundationModelConfig | None = None):
        super().__init__()
        cfg = cfg or FoundationModelConfig()
        self.cfg = cfg
        self.backbone = SmallUNet(cfg.backbone)
        self.head = ProjectionHead(self.backbone.out_dim, cfg.embed_dim)
        self.presence_bias = nn.Parameter(torch.tensor(-4.0))  # most classes are absent
        self.global_proj = nn.Linear(cfg.embed_dim, cfg.embed_dim, bias=False)
        nn.init.eye_(self.global_proj.weight)
        self.global_log_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def pixel_embeddings(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) uint8 -> (B, D, H/2, W/2) unit pixel embeddings."""
        return self.head.embed(self.backbone(images))

    def class_side(self, class_embeddings: torch.Tensor) -> torch.Tensor:
        """(K, D) text embeddings -> (K, D) unit class vectors the pixels are matched against."""
        return self.head.text_side(class_embeddings)

    def pixel_logits(self, pixels: torch.Tensor, class_embeddings: torch.Tensor) -> torch.Tensor:
        """(B, D, h, w) unit pixels, (K, D) -> (B, K, h, w) ``scale * cos``."""
        text = self.class_side(class_embeddings).to(pixels.dtype)
        scale = self.head.log_scale.exp().clamp(1.0, 100.0)
        return scale * torch.einsum("bdhw,kd->bkhw", pixels, text)

    def logits(self, images: torch.Tensor, class_embeddings: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) uint8, (K, D) -> (B, K, H/2, W/2): zero-shot dense labelling scores."""
        return self.pixel_logits(self.pixel_embeddings(images), class_embeddings)

    def global_embedding(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, D, h, w) unit pixels -> (B, D) unit image embeddings (mean pool, then a map)."""
        return F.normalize(self.global_proj(pixels.float().mean((2, 3))), dim=-1)

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) uint8 -> (B, D) unit image embeddings (for caption retrieval)."""
        return self.global_embedding(self.pixel_embeddings(images))

    def transfer_state(self) -> dict[str, torch.Tensor]:
        """The tensors a method loads: ``backbone.*`` and ``head.*`` (no pretraining extras)."""
        return {k: v for k, v in self.state_dict().items() if k.startswith(("backbone.", "head."))}


class FoundationEncoder(nn.Module):
    """The foundation as a frozen CLIP-like two-tower: dense tokens, a global embedding and the
    class-side map (ZegCLIP and AlignZeg keep their CLIP encoder frozen; on ShapeWorld this is it).

    Args:
        cfg: the foundation's architecture.
        token_pool: average-pool the stride-2 pixel embeddings by this into tokens (1: none).
    """

    def __init__(self, cfg: FoundationModelConfig | None = None, *, token_pool: int = 1):
        super().__init__()
        cfg = cfg or FoundationModelConfig()
        self.backbone = SmallUNet(cfg.backbone)
        self.head = ProjectionHead(self.backbone.out_dim, cfg.embed_dim)
        self.output_dim = cfg.embed_dim
        self.token_pool = token_pool

    def text_side(self, class_embeddings: torch.Tensor) -> torch.Tensor:
        """(K, D) text embeddings -> (K, D) unit vectors in the image tokens' space."""
        return self.head.text_side(class_embeddings)

    def forward_features(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """(B, 3, H, W) 0-255 -> ``patch_proj`` (B, h, w, D) unit tokens, ``cls_proj`` (B, D)."""
        return self.tokens(self.backbone(images))

    def tokens(self, hidden: torch.Tensor) -> dict[str, torch.Tensor]:
        """``forward_features`` from the backbone's (B, C, H/2, W/2) output: the head's part."""
        pixels = self.head.embed(hidden)  # (B, D, H/2, W/2)
        if self.token_pool > 1:
            pixels = F.normalize(F.avg_pool2d(pixels, self.token_pool), dim=1)
        return {
            "patch_proj": pixels.permute(0, 2, 3, 1),
            "cls_proj": F.normalize(pixels.float().mean((2, 3)), dim=-1),
        }
