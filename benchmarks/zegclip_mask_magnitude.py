"""The magnitude of ZegCLIP's masks at initialisation, per decoder layer (docs/methods.md, "The
masks' scale").

The masks are the head-averaged cross-attention logits; at the ShapeWorld preset's width (128, 4
heads) they start smaller than at the paper's (512, 8 heads). Prints the mean |mask| of each layer
for a freshly initialised decoder on random unit tokens (16x16 grid, 384-d as the foundation's)
and 33 random unit class embeddings, at each width and mask scale given.

Usage: python benchmarks/zegclip_mask_magnitude.py [--scales 1 64] [--seed 0]
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from zeroseg.models.heads.zegclip_decoder import ZegCLIPDecoder, ZegCLIPDecoderConfig


def mean_abs_masks(width: int, heads: int, mask_scale: float, seed: int) -> list[float]:
    """Mean |mask| of each layer of a fresh 3-layer decoder on random unit inputs."""
    torch.manual_seed(seed)
    cfg = ZegCLIPDecoderConfig(width=width, layers=3, heads=heads, mask_scale=mask_scale)
    decoder = ZegCLIPDecoder(cfg, visual_dim=384, text_dim=384).eval()
    patches = F.normalize(torch.randn(4, 16, 16, 384), dim=-1)
    cls = F.normalize(torch.randn(4, 384), dim=-1)
    text = F.normalize(torch.randn(33, 384), dim=-1)
    with torch.no_grad():
        return [m.abs().mean().item() for m in decoder(patches, cls, text)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scales", type=float, nargs="+", default=[1.0, 64.0])
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    print("| width | heads | mask scale | mean abs mask, layers 1 / 2 / 3 |")
    print("|---:|---:|---:|---|")
    for width, heads in ((128, 4), (512, 8)):
        for scale in args.scales:
            values = mean_abs_masks(width, heads, scale, args.seed)
            print(f"| {width} | {heads} | {scale:g} | {' / '.join(f'{v:.4f}' for v in values)} |")


if __name__ == "__main__":
    main()
