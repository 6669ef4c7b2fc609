"""PADing's primitive generator (He et al., "Primitive Generation and Semantic-related Alignment
for Universal Zero-Shot Segmentation", CVPR 2023, Sec. 3.2) and its GMMN ablation ("G").

A class's semantic embedding, with Gaussian noise added in each layer, cross-attends to a learned
bank of primitives; the output is a synthetic (unit-norm) query embedding of that class.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from zeroseg.generators.gmmn import GMMN, GMMNConfig


@dataclass
class GeneratorConfig:
    """The feature generator of stage 2."""

    kind: str = "primitive"  # primitive (PADing) | gmmn (the plain GMMN of ZS3Net, ablation "G")
    primitives: int = 400  # size of the primitive bank (paper: 400)
    dim: int = 128  # width of the primitive / attention space (paper: 256)
    layers: int = 3  # generator layers (paper: 3)
    heads: int = 4  # attention heads (paper: 8)
    ffn_dim: int = 256  # FFN width (paper: 1024)
    noise_std: float = 1.0  # std of the Gaussian noise added to the class query in each layer
    gmmn_hidden: int = 256  # hidden width of the GMMN ablation
    gmmn_noise_dim: int = 300  # noise dimension of the GMMN ablation (ZS3: 300)


class PrimitiveLayer(nn.Module):
    """Self-attention among primitives, noisy class-query cross-attention to them, FFN."""

    def __init__(self, dim: int, heads: int, ffn_dim: int):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.cross = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.ffn = nn.Sequential(
            nn.Linear(dim, ffn_dim), nn.ReLU(inplace=True), nn.Linear(ffn_dim, dim)
        )
        self.norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(3))

    def forward(
        self, q: torch.Tensor, prims: torch.Tensor, noise_std: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """q (1,n,d) class queries, prims (1,P,d) -> updated (q, prims).

        The n queries sit in one sequence: cross-attention treats each query independently and
        the primitives are projected to keys/values once, not once per query.
        """
        prims = self.norms[0](prims + self.self_attn(prims, prims, prims, need_weights=False)[0])
        q = q + noise_std * torch.randn_like(q)
        q = self.norms[1](q + self.cross(q, prims, prims, need_weights=False)[0])
        return self.norms[2](q + self.ffn(q)), prims


class PrimitiveGenerator(nn.Module):
    """Class semantic embedding (+ noise) -> a synthetic query embedding, through a primitive bank.

    Args:
        cfg: sizes, see :class:`GeneratorConfig`.
        embed_dim: dimension of the class (text) embeddings.
        feature_dim: dimension of the generated query embeddings.
    """

    def __init__(self, cfg: GeneratorConfig, *, embed_dim: int, feature_dim: int):
        super().__init__()
        self.cfg = cfg
        self.proj = nn.Linear(embed_dim, cfg.dim)
        self.primitives = nn.Parameter(torch.randn(cfg.primitives, cfg.dim) * 0.5)
        self.layers = nn.ModuleList(
            PrimitiveLayer(cfg.dim, cfg.heads, cfg.ffn_dim) for _ in range(cfg.layers)
        )
        self.out = nn.Linear(cfg.dim, feature_dim)

    def forward(self, semantic: torch.Tensor) -> torch.Tensor:
        """(n, embed_dim) class embeddings -> (n, feature_dim) unit-norm features (a new noise draw)."""
        q = self.proj(semantic)[None]  # (1, n, d)
        prims = self.primitives[None]
        for layer in self.layers:
            q, prims = layer(q, prims, self.cfg.noise_std)
        return F.normalize(self.out(q[0]), dim=-1)


class GMMNGenerator(nn.Module):
    """The ablation "G": ZS3Net's GMMN (embedding ⊕ noise -> MLP), unit-norm output."""

    def __init__(self, cfg: GeneratorConfig, *, embed_dim: int, feature_dim: int):
        super().__init__()
        self.gmmn = GMMN(
            GMMNConfig(
                embed_dim=embed_dim,
                feature_dim=feature_dim,
                noise_dim=cfg.gmmn_noise_dim,
                hidden=cfg.gmmn_hidden,
            )
        )

    def forward(self, semantic: torch.Tensor) -> torch.Tensor:
        noise = self.gmmn.sample_noise(len(semantic), device=semantic.device)
        return F.normalize(self.gmmn(semantic, noise), dim=-1)
