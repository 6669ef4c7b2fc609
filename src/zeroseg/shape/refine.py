"""Shape-aware refinement of any method's scores (SAZS's eigen-segment fusion on a colour +
position graph, Liu et al. CVPR 2023) and the precomputation of its eigenvectors for a dataset
(``zeroseg data spectral``). Methods' own fusion (SAZS with backbone features) lives with them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import torch

from zeroseg.shape.fusion import RefineConfig, refine
from zeroseg.shape.spectral import EigenCache, SpectralConfig, precompute


def default_refine_config() -> RefineConfig:
    """The refinement SAZS fuses with and the demo's ``--refine spectral`` applies."""
    # A 32-pixel graph: on 64-pixel ShapeWorld images it measured ~4x faster than a 64-pixel one
    # and the fusion's segments are upsampled to image size anyway. 16 eigenvectors clustered into
    # 24 segments, chosen on ShapeWorld's val (session 30; docs/methods.md, "SAZS"): the eigengap's
    # count of 8 eigenvectors left segments spanning several objects, and the fusion lowered hIoU.
    return RefineConfig(spectral=SpectralConfig(max_side=32, num_eigenvectors=16), num_segments=24)


PostFn = Callable[[torch.Tensor, dict], torch.Tensor]


def spectral_post(cfg: RefineConfig | None = None, *, cache: EigenCache | None = None) -> PostFn:
    """Shape-aware refinement of any method, as ``evaluate(..., post=spectral_post(cfg))``.

    The graph is colour + position only (any method's features are unknown here), so a cache
    made by :func:`precompute_dataset` with the same ``cfg.spectral`` serves it.

    Args:
        cfg: refinement settings (default: ``RefineConfig`` with a 32-pixel graph).
        cache: optional eigenvector cache looked up by ``batch["id"]``; images not in it are
            decomposed on the fly (and not written: evaluation stays read-only).

    Returns:
        ``post(scores (B,K,H,W), batch) -> labels (B,H,W) int64``. It reads only
        ``batch["image"]`` and ``batch["id"]``, never the labels.
    """
    cfg = cfg or default_refine_config()
    if cache is not None and cache.config is not None and cache.config != cfg.spectral:
        raise ValueError(
            f"spectral_post: cache {cache.directory} was made for {cache.config}, "
            f"not for {cfg.spectral}"
        )

    def post(scores: torch.Tensor, batch: dict) -> torch.Tensor:
        images = batch["image"]
        ids = batch.get("id")
        out = []
        for i in range(scores.shape[0]):
            eigen = None
            if cache is not None and ids is not None:
                eigen = cache.get(str(ids[i]))
            image = images[i].permute(1, 2, 0).cpu().numpy()
            out.append(refine(scores[i].detach().float().cpu(), image, None, cfg, eigen=eigen))
        return torch.stack(out).to(scores.device)

    return post


def precompute_dataset(
    dataset, cache_root: str | Path, cfg: SpectralConfig | RefineConfig, *, progress: bool = True
) -> dict:
    """``zeroseg data spectral``: colour-graph eigenvectors of every image of a dataset.

    Args:
        dataset: samples with ``image`` (3, H, W) uint8 and ``id`` (e.g. ``build_data(cfg).val``).
        cache_root: cache root; files go to ``<root>/<config hash>/<quoted id>.safetensors``.
        cfg: the spectral settings (a ``RefineConfig`` contributes its ``spectral``).

    Returns:
        ``{"directory", "images", "written", "skipped", "seconds", "ms_per_image"}``.
    """
    spectral = cfg.spectral if isinstance(cfg, RefineConfig) else cfg
    cache = EigenCache.for_config(cache_root, spectral)

    class _Items:
        def __len__(self) -> int:
            return len(dataset)

        def __iter__(self):
            for i in range(len(dataset)):
                s = dataset[i]
                yield str(s["id"]), s["image"].permute(1, 2, 0).numpy(), None

    t = time.perf_counter()
    written = precompute(_Items(), cache, spectral, progress=progress)
    seconds = time.perf_counter() - t
    return {
        "directory": str(cache.directory),
        "images": len(dataset),
        "written": written,
        "skipped": len(dataset) - written,
        "seconds": seconds,
        "ms_per_image": seconds / max(1, written) * 1000,
    }
