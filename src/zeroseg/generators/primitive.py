"""PADing's primitive generator (He et al., "Primitive Generation and Semantic-related Alignment
for Universal Zero-Shot Segmentation", CVPR 2023, Sec. 3.2) and its GMMN ablation ("G").

A class's projected semantic embedding is the query of a post-norm transformer decoder whose
memory is a learned bank of primitives; the output is a synthetic (unit-norm) query embedding of
that class. As in the released code (heshuting555/PADing, ``TransformerDecoderLayer`` with
``noise=True``), each layer is: the class query's self-attention and LayerNorm, its
cross-attention to the primitives, **then** Gaussian noise N(0, noise_std^2) added to the
cross-attention's residual sum, LayerNorm, FFN, LayerNorm; a final LayerNorm closes the stack.
The noise thus meets a LayerNorm-ed class signal (unit per-element spread) rather than the raw
projected embedding, whose spread at initialisation is ~20x smaller than the noise. The
primitives are the decoder's memory, shared by every layer and not updated between layers (the
release repeats the same bank as each layer's memory).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from zeroseg.generators.gmmn import GMMN, GMMNConfig
from zeroseg.models.attention import MultiheadAttention


@dataclass
class GeneratorConfig:
    """The feature generator of stage 2."""

    kind: str = "primitive"  # primitive (PADing) | gmmn (the plain GMMN of ZS3Net, ablation "G")
    primitives: int = 400  # size of the primitive bank (paper: 400)
    dim: int = 128  # width of the primitive / attention space (paper: 256)
    layers: int = 3  # generator layers (paper: 3)
    heads: int = 4  # attention heads (paper: 8)
    ffn_dim: int = 256  # FFN width (paper: 1024)
    noise_std: float = 1.0  # std of the noise added after each cross-attention (release: N(0, 1))
    gmmn_hidden: int = 256  # hidden width of the GMMN ablation
    gmmn_noise_dim: int = 300  # noise dimension of the GMMN ablation (ZS3: 300)


class PrimitiveLayer(nn.Module):
    """The class query's self-attention, its cross-attention to the primitives, noise, FFN."""

    def __init__(self, dim: int, heads: int, ffn_dim: int):
        super().__init__()
        self.self_attn = MultiheadAttention(dim, heads)
        self.cross = MultiheadAttention(dim, heads)
        self.ffn = nn.Sequential(
            nn.Linear(dim, ffn_dim), nn.ReLU(inplace=True), nn.Linear(ffn_dim, dim)
        )
        self.norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(3))

    def forward(self, q: torch.Tensor, prims: torch.Tensor, noise_std: float) -> torch.Tensor:
        """q (1,n,d) class queries, prims (1,P,d) -> updated q (1,n,d).

        In the release every class query is its own sequence of length one, so its
        self-attention sees only itself; here the n queries share a sequence for one
        key/value projection of the primitives in the cross-attention (whose rows are
        independent), and the self-attention runs on (n,1,d) so no query sees another.
        """
        s = q.transpose(0, 1)  # (n, 1, d): one length-1 sequence per query
        q = self.norms[0](q + self.self_attn(s, s, s, need_weights=False)[0].transpose(0, 1))
        q = q + self.cross(q, prims, prims, need_weights=False)[0]
        if noise_std > 0:  # after the cross-attention, before its LayerNorm, as released
            q = q + noise_std * torch.randn_like(q)
        q = self.norms[1](q)
        return self.norms[2](q + self.ffn(q))


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
        self.norm = nn.LayerNorm(cfg.dim)
        self.out = nn.Linear(cfg.dim, feature_dim)

    def forward(self, semantic: torch.Tensor) -> torch.Tensor:
        """(n, embed_dim) class embeddings -> (n, feature_dim) unit-norm features (a new noise draw)."""
        q = self.proj(semantic)[None]  # (1, n, d)
        prims = self.primitives[None]  # (1, P, d)
        for layer in self.layers:
            q = layer(q, prims, self.cfg.noise_std)
        return F.normalize(self.out(self.norm(q[0])), dim=-1)


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
