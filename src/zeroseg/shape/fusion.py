"""SAZS inference fusion: eigen-segments vote on a dense prediction, never looking at labels.

SAZS (Liu et al., CVPR 2023) fuses the shape-aware segments given by the Laplacian
eigenvectors (``zeroseg.shape.spectral``) with the class prediction of a zero-shot segmenter. The
released code (``test_sp`` in Liuxinyv/SAZS ``pascal_vit.py``) chooses, per image, between the
prediction and five binarised eigenvectors by their IoU with the *ground truth*, which no
test-time method may do. Here the fusion uses the
prediction alone:

1. ``eigen_segments``: each pixel is embedded by its first non-trivial eigenvectors and the
   embedding is clustered with k-means (Shi & Malik / Ng et al. spectral clustering, as Deep
   Spectral Methods' multi-region segmentation does); the number of clusters, unless given, is
   Deep Spectral's eigengap choice ``argmax_{i >= 1} (lambda_{i+1} - lambda_i) + 1`` with
   ``lambda_0 = 0``. Clusters are split into 4-connected components so each segment is one
   spatially connected region, and components below a minimum size join their neighbour.
2. ``fuse``: per segment ``s`` with pixels ``P_s`` and argmax prediction ``y``,

       c*_s = argmax_c |{p in P_s : y_p = c}|,  a_s = |{p in P_s : y_p = c*_s}| / |P_s|,

   and every pixel of ``s`` takes ``c*_s`` when the agreement ``a_s >= threshold``; otherwise the
   pixels keep their own argmax. The vote is the majority of argmax labels (not the mean
   probability), so the agreement is exactly the fraction of the segment already voting for the
   class it would receive.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
from scipy import ndimage

from zeroseg.shape.spectral import Eigen, SpectralConfig, spectral_decomposition


@dataclass
class RefineConfig:
    """Settings of the one-call shape-aware refinement ``refine``."""

    spectral: SpectralConfig = field(default_factory=SpectralConfig)  # graph and eigensolver
    num_segments: int | None = None  # k-means clusters; None = Deep Spectral's eigengap choice
    method: Literal["kmeans", "threshold"] = "kmeans"  # how eigenvectors become segments
    min_segment_fraction: float = 5e-4  # components smaller than this share of pixels are merged
    agreement_threshold: float = 0.5  # a segment is relabelled when this share of it agrees
    seed: int = 0  # k-means initialisation seed


def eigen_segments(
    eigen: Eigen,
    *,
    num_segments: int | None,
    method: Literal["kmeans", "threshold"] = "kmeans",
    min_size: int = 0,
    num_eigenvectors: int | None = None,
    seed: int = 0,
) -> np.ndarray:
    """Spatially connected segments from the eigenvectors.

    Args:
        eigen: the decomposition of the image.
        num_segments: clusters before the connected-component split; None picks it from the
            largest eigengap (at least 2, at most ``k``).
        method: "kmeans" clusters the embedding of the first ``num_eigenvectors`` eigenvectors
            (default ``min(k, num_segments - 1)``: the trivial one is constant, carries nothing);
            "threshold" splits by the signs of the first ``ceil(log2(num_segments))``
            eigenvectors (each one bisects at zero, as Deep Spectral's single-region masks do),
            giving up to ``2 ** ceil(log2(num_segments))`` clusters.
        min_size: connected components with fewer pixels join the neighbouring segment they
            share the longest border with.
        num_eigenvectors: embedding dimension for "kmeans"; ignored by "threshold".
        seed: k-means initialisation seed.

    Returns:
        (H, W) int64 segment ids ``0 .. S-1``, each id one 4-connected region.
    """
    vecs = np.asarray(eigen.eigenvectors, dtype=np.float32)  # (k, H, W)
    k, H, W = vecs.shape
    if num_segments is None:
        num_segments = eigengap_num_segments(eigen.eigenvalues)
    if num_segments < 1:
        raise ValueError(f"eigen_segments: num_segments must be >= 1, got {num_segments}")
    if method == "kmeans":
        dims = min(k, max(1, num_segments - 1)) if num_eigenvectors is None else num_eigenvectors
        if not 1 <= dims <= k:
            raise ValueError(
                f"eigen_segments: num_eigenvectors={dims} must be in [1, {k}] (the eigenvectors "
                f"available)"
            )
        # Fit on the graph nodes (the upsampled pixels are their bilinear blends, so they add no
        # structure, only cost), then give every pixel its nearest centre.
        graph = np.asarray(eigen.graph_eigenvectors, dtype=np.float64)[:dims]
        centres = _kmeans(graph.reshape(dims, -1).T, num_segments, seed=seed)
        emb = vecs[:dims].reshape(dims, H * W).T.astype(np.float64)
        clusters = _assign(emb, centres)[0].reshape(H, W)
    elif method == "threshold":
        bits = max(1, int(np.ceil(np.log2(max(num_segments, 2)))))
        if bits > k:
            raise ValueError(
                f"eigen_segments: num_segments={num_segments} needs {bits} eigenvectors to "
                f"threshold, only {k} available"
            )
        signs = (vecs[:bits] > 0).astype(np.int64)
        clusters = np.tensordot(1 << np.arange(bits), signs, axes=1)
    else:
        raise ValueError(f"eigen_segments: method must be 'kmeans' or 'threshold', got {method!r}")
    segments = connected_segments(clusters)
    if min_size > 1:
        segments = merge_small_segments(segments, min_size)
    return segments


def eigengap_num_segments(eigenvalues: np.ndarray) -> int:
    """Deep Spectral's adaptive cluster count from the non-trivial eigenvalues (ascending)."""
    lam = np.concatenate([[0.0], np.asarray(eigenvalues, dtype=np.float64)])
    gaps = np.diff(lam)  # gaps[i] = lambda_{i+1} - lambda_i
    if gaps.size < 2:
        return 2
    # i = 0 would mean a single cluster; a gap after lambda_i means i + 1 clusters.
    return int(np.argmax(gaps[1:])) + 2


def connected_segments(clusters: np.ndarray) -> np.ndarray:
    """Split each cluster id into 4-connected components, numbered ``0 .. S-1`` in raster order."""
    clusters = np.asarray(clusters)
    out = np.zeros(clusters.shape, dtype=np.int64)
    offset = 0
    for c in np.unique(clusters):
        comp, count = ndimage.label(clusters == c)
        mask = comp > 0
        out[mask] = comp[mask] + offset - 1
        offset += count
    return _renumber(out)


def merge_small_segments(segments: np.ndarray, min_size: int) -> np.ndarray:
    """Merge segments smaller than ``min_size`` pixels into the neighbour sharing most border."""
    seg = _renumber(np.asarray(segments, dtype=np.int64))
    # Every pass merges at least the smallest small segment (its chosen neighbour is never
    # smaller than it), so this terminates; in practice one or two passes do it.
    while True:
        sizes = np.bincount(seg.ravel())
        small = sizes < min_size
        if not small.any() or sizes.size == 1:
            break
        n = sizes.size
        # Count shared border pixels between every pair of 4-adjacent, different segments.
        a = np.concatenate([seg[:, :-1].ravel(), seg[:-1, :].ravel()])
        b = np.concatenate([seg[:, 1:].ravel(), seg[1:, :].ravel()])
        diff = a != b
        a, b = a[diff], b[diff]
        pairs = np.concatenate([a * n + b, b * n + a])
        keys, counts = np.unique(pairs, return_counts=True)
        src, dst = keys // n, keys % n
        # Per small source segment: the neighbour with the longest shared border, ties to the
        # larger neighbour, then the lower id (np.lexsort sorts by the last key first).
        order = np.lexsort((dst, -sizes[dst], -counts, src))
        src, dst = src[order], dst[order]
        first = np.ones(src.size, dtype=bool)
        first[1:] = src[1:] != src[:-1]
        target = np.arange(n)
        chosen = first & small[src]
        # Merge only into segments that are not themselves being merged this pass, or, when a
        # small segment borders only small ones, into the larger of them; avoids 2-cycles.
        for s, d in zip(src[chosen], dst[chosen]):
            if small[d] and (sizes[d], -d) < (sizes[s], -s):
                continue
            target[s] = d
        if np.array_equal(target, np.arange(n)):
            break
        # Resolve chains (a -> b -> c) so every pixel lands on a final segment.
        for _ in range(n):
            nxt = target[target]
            if np.array_equal(nxt, target):
                break
            target = nxt
        seg = _renumber(target[seg])
    return seg


def fuse(
    probs: torch.Tensor,
    segments: np.ndarray | torch.Tensor,
    *,
    agreement_threshold: float = 0.5,
    ignore_mask: np.ndarray | torch.Tensor | None = None,
) -> torch.Tensor:
    """Relabel each segment to its majority class when enough of it agrees.

    Args:
        probs: (K, H, W) class scores (probabilities or logits: only their argmax is used).
        segments: (H, W) non-negative integer segment ids.
        agreement_threshold: a segment takes its majority class when at least this fraction of
            its (voting) pixels already predict it.
        ignore_mask: (H, W) bool, True for pixels that neither vote nor change (they keep their
            own argmax), e.g. padding.

    Returns:
        (H, W) int64 labels.
    """
    if probs.ndim != 3:
        raise ValueError(f"fuse: probs must be (K, H, W), got shape {tuple(probs.shape)}")
    if not 0.0 <= agreement_threshold <= 1.0:
        raise ValueError(f"fuse: agreement_threshold must be in [0, 1], got {agreement_threshold}")
    K, H, W = probs.shape
    seg = _as_tensor(segments).to(device=probs.device, dtype=torch.long)
    if tuple(seg.shape) != (H, W):
        raise ValueError(f"fuse: segments have shape {tuple(seg.shape)}, probs are {H}x{W}")
    if seg.numel() and int(seg.min()) < 0:
        raise ValueError("fuse: segment ids must be non-negative")
    pred = probs.argmax(dim=0)
    if ignore_mask is None:
        valid = torch.ones_like(pred, dtype=torch.bool)
    else:
        valid = ~_as_tensor(ignore_mask).to(device=probs.device, dtype=torch.bool)
        if tuple(valid.shape) != (H, W):
            raise ValueError(f"fuse: ignore_mask has shape {tuple(valid.shape)}, expected {H}x{W}")
    S = int(seg.max()) + 1 if seg.numel() else 0
    votes = torch.bincount(seg[valid] * K + pred[valid], minlength=S * K).view(S, K)
    total = votes.sum(dim=1)
    best = votes.argmax(dim=1)  # ties: the lowest class index
    agreement = votes.gather(1, best[:, None])[:, 0].double() / total.clamp(min=1).double()
    accept = (total > 0) & (agreement >= agreement_threshold)
    return torch.where(accept[seg] & valid, best[seg], pred)


def refine(
    probs: torch.Tensor,
    image: np.ndarray,
    features: torch.Tensor | None,
    cfg: RefineConfig,
    *,
    eigen: Eigen | None = None,
    ignore_mask: np.ndarray | torch.Tensor | None = None,
) -> torch.Tensor:
    """Shape-aware refinement of any method's prediction (decompose, segment, fuse).

    Args:
        probs: (K, H, W) class scores at image resolution.
        image: (H, W, 3) uint8 RGB.
        features: (h_f, w_f, C) self-supervised patch features, or None (colour graph only).
        cfg: refinement settings.
        eigen: a precomputed decomposition (e.g. from ``EigenCache``) to skip the eigensolver.
            Without it the segments of an image already refined with the same features and
            settings come from ``SEGMENT_MEMO`` (the same array, not recomputed).
        ignore_mask: (H, W) bool pixels that neither vote nor change.

    Returns:
        (H, W) int64 labels.
    """
    H, W = image.shape[:2]
    if tuple(probs.shape[1:]) != (H, W):
        raise ValueError(
            f"refine: probs are {tuple(probs.shape[1:])} but the image is {(H, W)}; resize the "
            f"prediction to image size first"
        )
    if eigen is None:
        key = _segments_key(image, features, cfg)
        segments = SEGMENT_MEMO.get(key)
        if segments is None:
            segments = refine_segments(spectral_decomposition(image, features, cfg.spectral), cfg)
            SEGMENT_MEMO.put(key, segments)
    elif eigen.image_size != (H, W):
        raise ValueError(f"refine: eigen is for a {eigen.image_size} image, not {(H, W)}")
    else:
        segments = refine_segments(eigen, cfg)
    return fuse(
        probs,
        segments,
        agreement_threshold=cfg.agreement_threshold,
        ignore_mask=ignore_mask,
    )


def refine_segments(eigen: Eigen, cfg: RefineConfig) -> np.ndarray:
    """The (H, W) eigen-segments :func:`refine` fuses with under ``cfg`` (its cluster count,
    method, seed and minimum segment share of the image)."""
    H, W = eigen.image_size
    return eigen_segments(
        eigen,
        num_segments=cfg.num_segments,
        method=cfg.method,
        min_size=int(round(cfg.min_segment_fraction * H * W)),
        seed=cfg.seed,
    )


class SegmentMemo:
    """The eigen-segments of the images refined last, so rows that refine the same images with
    the same settings (SAZS, ``projection+spectral`` and ``zs3net+spectral`` on one test split)
    decompose and cluster each image once.

    An entry is keyed by a digest of the image's bytes, its graph features and every setting the
    segments depend on, so a hit returns exactly what :func:`refine_segments` would compute.
    Least recently used entries go first once the stored segments pass ``max_bytes``.
    """

    def __init__(self, max_bytes: int = 64 << 20) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[bytes, np.ndarray] = OrderedDict()
        self._bytes = 0
        self.hits = 0

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: bytes) -> np.ndarray | None:
        segments = self._items.get(key)
        if segments is None:
            return None
        self._items.move_to_end(key)
        self.hits += 1
        return segments.copy()  # a caller's change never reaches the stored entry

    def put(self, key: bytes, segments: np.ndarray) -> None:
        if key in self._items or segments.nbytes > self.max_bytes:
            return
        segments = segments.copy()
        self._items[key] = segments
        self._bytes += segments.nbytes
        while self._bytes > self.max_bytes:
            _, old = self._items.popitem(last=False)
            self._bytes -= old.nbytes


SEGMENT_MEMO = SegmentMemo()


def _segments_key(image: np.ndarray, features: torch.Tensor | None, cfg: RefineConfig) -> bytes:
    """Digest of everything :func:`refine`'s segments depend on (not the scores they vote on)."""
    h = hashlib.blake2b(digest_size=20)
    settings = dataclasses.replace(cfg, agreement_threshold=0.0)  # the vote is not the segments
    h.update(repr(settings).encode())
    image = np.ascontiguousarray(image)
    h.update(f"{image.shape}{image.dtype}".encode())
    h.update(image.tobytes())
    if features is not None:
        f = features.detach().cpu().contiguous()
        h.update(f"{tuple(f.shape)}{f.dtype}".encode())
        h.update(f.view(torch.uint8).numpy().tobytes() if f.numel() else b"")
    return h.digest()


# ------------------------------------------------------------------------------------- helpers


def _as_tensor(x: np.ndarray | torch.Tensor) -> torch.Tensor:
    return x if torch.is_tensor(x) else torch.from_numpy(np.ascontiguousarray(x))


def _renumber(seg: np.ndarray) -> np.ndarray:
    """Consecutive ids in order of first appearance (raster order), so output is canonical."""
    flat = seg.ravel()
    _, first, inverse = np.unique(flat, return_index=True, return_inverse=True)
    rank = np.empty(first.size, dtype=np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(first.size)
    return rank[inverse].reshape(seg.shape)


def _kmeans(x: np.ndarray, n: int, *, seed: int, iters: int = 100, n_init: int = 4) -> np.ndarray:
    """Lloyd's k-means with k-means++ seeding; returns the centres (<= n, d). Deterministic."""
    rng = np.random.default_rng(seed)
    x = np.asarray(x, dtype=np.float64)
    x_sq = (x**2).sum(axis=1)
    best_centres, best_inertia = None, np.inf
    for _ in range(n_init):
        centres = _kmeans_pp(x, n, rng)
        for _ in range(iters):
            labels, _ = _assign(x, centres, x_sq)
            new = centres.copy()
            # Each cluster's rows are one slice of the stably sorted points, in their original
            # order, so a slice's sum / count is exactly the mean of the cluster's members.
            order = np.argsort(labels, kind="stable")
            counts = np.bincount(labels, minlength=len(centres))
            ends = np.cumsum(counts)
            grouped = x[order]
            for c in np.flatnonzero(counts):  # an emptied cluster keeps its centre
                new[c] = grouped[ends[c] - counts[c] : ends[c]].sum(axis=0) / counts[c]
            if np.allclose(new, centres, rtol=0, atol=1e-10):
                break
            centres = new
        _, d2 = _assign(x, centres, x_sq)
        inertia = float(d2.sum())
        if inertia < best_inertia - 1e-12:
            best_centres, best_inertia = centres, inertia
    return best_centres


def _kmeans_pp(x: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    centres = [x[rng.integers(len(x))]]
    d2 = ((x - centres[0]) ** 2).sum(axis=1)
    for _ in range(1, n):
        total = d2.sum()
        if total <= 0:  # fewer distinct points than clusters: stop with what we have
            break
        centres.append(x[rng.choice(len(x), p=d2 / total)])
        d2 = np.minimum(d2, ((x - centres[-1]) ** 2).sum(axis=1))
    return np.stack(centres)


def _assign(
    x: np.ndarray, centres: np.ndarray, x_sq: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Nearest centre of each row of ``x`` and the squared distance to it."""
    if x_sq is None:
        x_sq = (x**2).sum(axis=1)
    # ||x - c||^2 expanded: one (N, n) matrix product instead of an (N, n, d) difference.
    # einsum, not BLAS: these thin products gain nothing from threads (see spectral.py).
    cross = np.einsum("nd,kd->nk", x, centres)
    d2 = x_sq[:, None] - 2.0 * cross + (centres**2).sum(axis=1)[None, :]
    labels = d2.argmin(axis=1)
    return labels, np.maximum(d2[np.arange(len(x)), labels], 0.0)
