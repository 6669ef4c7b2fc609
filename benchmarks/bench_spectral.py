"""Time the SAZS spectral decomposition per image on this machine's CPU.

Cases: a 64x64 image (ShapeWorld size, graph at full resolution) and a 512x512 image (graph
downsampled to the default ``max_side``), each colour-only and with a semantic feature term
(synthetic patch features shaped like a ViT's: 8x8x384 for 64x64 with patch 8, 32x32x384 for
512x512 with patch 16). Also times segments + fusion at 512x512.

Usage: python benchmarks/bench_spectral.py [--repeats N] [--solver eigsh|lobpcg]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch

from zeroseg.shape.fusion import RefineConfig, eigen_segments, fuse
from zeroseg.shape.spectral import SpectralConfig, spectral_decomposition


def scene(size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A noisy scene: two background regions, a disc, a square and a triangle; and its regions."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    regions = np.where(yy < 0.62, 0, 1)
    regions[(yy - 0.3) ** 2 + (xx - 0.3) ** 2 < 0.16**2] = 2
    regions[(yy > 0.47) & (yy < 0.78) & (xx > 0.55) & (xx < 0.86)] = 3
    regions[(yy > 0.08) & (yy < 0.4) & (np.abs(xx - 0.74) < (yy - 0.08) / 2)] = 4
    palette = np.array([(90, 140, 60), (60, 90, 180), (220, 40, 40), (230, 220, 50), (40, 40, 40)])
    image = palette[regions] + rng.normal(0.0, 10.0, (size, size, 3))
    return np.clip(image, 0, 255).astype(np.uint8), regions


def patch_features(regions: np.ndarray, grid: int, dim: int, seed: int) -> torch.Tensor:
    """(grid, grid, dim) features: one random direction per region (majority in a patch) + noise."""
    gen = torch.Generator().manual_seed(seed)
    protos = torch.randn(int(regions.max()) + 1, dim, generator=gen)
    step = regions.shape[0] // grid
    patches = regions[: grid * step, : grid * step].reshape(grid, step, grid, step)
    majority = np.apply_along_axis(
        lambda v: np.bincount(v).argmax(), 1, patches.transpose(0, 2, 1, 3).reshape(-1, step * step)
    )
    feats = protos[torch.from_numpy(majority)] + 0.5 * torch.randn(grid * grid, dim, generator=gen)
    return feats.reshape(grid, grid, dim)


def time_ms(fn: Callable[[], object], repeats: int) -> tuple[float, float]:
    fn()  # warm-up: first-call imports and allocations
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(1000.0 * (time.perf_counter() - start))
    return statistics.median(times), min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--solver", choices=["eigsh", "lobpcg"], default="eigsh")
    args = parser.parse_args()
    cfg = SpectralConfig(solver=args.solver)
    print(
        f"SpectralConfig: k={cfg.num_eigenvectors} knn={cfg.knn} max_side={cfg.max_side} "
        f"solver={cfg.solver}; torch threads={torch.get_num_threads()}; repeats={args.repeats}"
    )
    print(f"{'case':<44} {'graph':>7} {'median ms/img':>14} {'min ms/img':>11}")
    for size, grid in ((64, 8), (512, 32)):
        image, regions = scene(size, seed=0)
        feats = patch_features(regions, grid, 384, seed=0)
        for name, f in (("colour only", None), (f"+ features {grid}x{grid}x384", feats)):
            eigen = spectral_decomposition(image, f, cfg)
            med, best = time_ms(
                lambda image=image, f=f: spectral_decomposition(image, f, cfg), args.repeats
            )
            graph = f"{eigen.graph_size[0]}x{eigen.graph_size[1]}"
            case = f"{size}x{size} decomposition, {name}"
            print(f"{case:<44} {graph:>7} {med:>14.1f} {best:>11.1f}")
    image, regions = scene(512, seed=0)
    eigen = spectral_decomposition(image, None, cfg)
    probs = torch.nn.functional.one_hot(torch.from_numpy(regions), 5).permute(2, 0, 1).float()
    rcfg = RefineConfig()
    min_size = int(round(rcfg.min_segment_fraction * 512 * 512))

    def segments_and_fuse() -> object:
        segments = eigen_segments(eigen, num_segments=None, min_size=min_size)
        return fuse(probs, segments)

    med, best = time_ms(segments_and_fuse, args.repeats)
    print(f"{'512x512 eigen_segments + fuse':<44} {'':>7} {med:>14.1f} {best:>11.1f}")


if __name__ == "__main__":
    main()
