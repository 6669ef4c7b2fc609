"""Spectral decomposition: two flat regions must be split by the first non-trivial eigenvector.

A graph whose affinities are strong inside each half and (next to) nothing across the boundary is
(almost) two components, so the normalised cut's Fiedler vector is (almost) the indicator of one
half minus a constant: one sign on the left, the other on the right.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from zeroseg.shape.spectral import (
    Eigen,
    EigenCache,
    SpectralConfig,
    config_hash,
    graph_size_for,
    precompute,
    spectral_decomposition,
)

LEFT, RIGHT = (30, 60, 200), (200, 80, 40)


def two_regions(h: int = 40, w: int = 40, noise: float = 0.0, seed: int = 0) -> np.ndarray:
    img = np.empty((h, w, 3), dtype=np.float64)
    img[:, : w // 2] = LEFT
    img[:, w // 2 :] = RIGHT
    img += np.random.default_rng(seed).normal(0.0, noise, img.shape)
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


def halves_separated(vec: np.ndarray) -> float:
    """Fraction of pixels on the majority sign of their half, the halves' signs being opposite."""
    w = vec.shape[1]
    left_pos, right_pos = (vec[:, : w // 2] > 0).mean(), (vec[:, w // 2 :] > 0).mean()
    # Either orientation: (+ left, - right) or (- left, + right).
    return max((left_pos + 1 - right_pos) / 2, (1 - left_pos + right_pos) / 2)


@pytest.mark.parametrize("noise", [0.0, 12.0])
@pytest.mark.parametrize("solver", ["eigsh", "lobpcg"])
def test_fiedler_vector_separates_two_flat_regions(noise: float, solver: str) -> None:
    eigen = spectral_decomposition(two_regions(noise=noise), None, SpectralConfig(solver=solver))
    assert eigen.eigenvectors.shape == (8, 40, 40)
    assert eigen.eigenvectors.dtype == np.float32
    assert halves_separated(eigen.eigenvectors[0]) > 0.95
    # The split is nearly free (only the weak connecting grid crosses it); the next mode is not.
    assert eigen.eigenvalues[0] < 0.1 * eigen.eigenvalues[1]


def test_eigenvalues_ascending_in_range_and_vectors_nontrivial() -> None:
    eigen = spectral_decomposition(two_regions(noise=8.0), None, SpectralConfig())
    lam = eigen.eigenvalues
    assert np.all(np.diff(lam) >= -1e-6) and lam.min() >= 0 and lam.max() <= 2
    g = eigen.graph_eigenvectors
    # Unit RMS on the graph; none is the (deflated) constant vector.
    np.testing.assert_allclose(np.sqrt((g**2).mean(axis=(1, 2))), 1.0, rtol=1e-4)
    assert np.all(g.reshape(len(g), -1).std(axis=1) > 0.5)


def test_solvers_agree() -> None:
    img = two_regions(noise=8.0)
    a = spectral_decomposition(img, None, SpectralConfig(num_eigenvectors=4, solver="eigsh"))
    b = spectral_decomposition(img, None, SpectralConfig(num_eigenvectors=4, solver="lobpcg"))
    np.testing.assert_allclose(a.eigenvalues, b.eigenvalues, rtol=1e-3, atol=1e-6)
    # The well-separated Fiedler vector is unique up to sign, which both fix the same way.
    np.testing.assert_allclose(a.graph_eigenvectors[0], b.graph_eigenvectors[0], atol=1e-3)


def test_deterministic() -> None:
    img = two_regions(noise=12.0)
    a = spectral_decomposition(img, None, SpectralConfig())
    b = spectral_decomposition(img, None, SpectralConfig())
    np.testing.assert_array_equal(a.eigenvectors, b.eigenvectors)
    np.testing.assert_array_equal(a.eigenvalues, b.eigenvalues)


def test_sign_convention_positive_side_is_smaller() -> None:
    # A 10-column strip on the left of a 40-wide image: the smaller side must be positive.
    img = np.empty((40, 40, 3), dtype=np.uint8)
    img[:] = RIGHT
    img[:, :10] = LEFT
    vec = spectral_decomposition(img, None, SpectralConfig()).eigenvectors[0]
    assert (vec[:, :10] > 0).mean() > 0.95 and (vec[:, 12:] < 0).mean() > 0.95


def test_features_alone_separate_regions() -> None:
    # A uniform grey image: only the semantic term can see the two halves. Patch features on an
    # 8x8 grid are two orthogonal directions plus noise; relu(F F^T) is ~1 within a half, ~0 across.
    gen = torch.Generator().manual_seed(0)
    feats = 0.1 * torch.randn(8, 8, 16, generator=gen)
    feats[:, :4, 0] += 1.0
    feats[:, 4:, 1] += 1.0
    img = np.full((40, 40, 3), 128, dtype=np.uint8)
    eigen = spectral_decomposition(img, feats, SpectralConfig(color_weight=0.0))
    assert halves_separated(eigen.eigenvectors[0]) > 0.95


def test_disconnected_graph_without_connecting_grid() -> None:
    # With connect_weight=0 the kNN graph of two flat colours has two components: a doubly
    # degenerate zero eigenvalue, of which only the constant vector is trivial.
    eigen = spectral_decomposition(two_regions(), None, SpectralConfig(connect_weight=0.0))
    assert eigen.eigenvalues[0] < 1e-6
    assert halves_separated(eigen.eigenvectors[0]) > 0.95


def test_downsampling_and_non_square_upsampling() -> None:
    img = two_regions(h=50, w=90)
    eigen = spectral_decomposition(img, None, SpectralConfig(max_side=30, num_eigenvectors=3))
    assert graph_size_for((50, 90), 30) == (17, 30)
    assert eigen.graph_size == (17, 30) and eigen.graph_eigenvectors.shape == (3, 17, 30)
    assert eigen.eigenvectors.shape == (3, 50, 90) and eigen.image_size == (50, 90)
    assert halves_separated(eigen.eigenvectors[0]) > 0.95
    assert graph_size_for((20, 30), 64) == (20, 30)  # never upsampled


def test_small_graph_uses_dense_path() -> None:
    eigen = spectral_decomposition(two_regions(h=12, w=12), None, SpectralConfig())
    assert eigen.graph_size == (12, 12)
    assert halves_separated(eigen.eigenvectors[0]) > 0.95


def test_input_errors() -> None:
    with pytest.raises(ValueError, match="uint8"):
        spectral_decomposition(np.zeros((8, 8, 3), np.float32), None, SpectralConfig())
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        spectral_decomposition(np.zeros((8, 8), np.uint8), None, SpectralConfig())
    with pytest.raises(ValueError, match="no affinity term"):
        spectral_decomposition(two_regions(), None, SpectralConfig(color_weight=0.0))
    with pytest.raises(ValueError, match="num_eigenvectors"):
        spectral_decomposition(two_regions(h=3, w=3), None, SpectralConfig())
    with pytest.raises(ValueError, match="solver"):
        SpectralConfig(solver="arpack")  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------- cache


def test_config_hash_is_stable_and_sensitive() -> None:
    base = config_hash(SpectralConfig())
    assert base == config_hash(SpectralConfig())
    assert base != config_hash(SpectralConfig(knn=11))
    assert base != config_hash(SpectralConfig(max_side=32))
    assert base != config_hash(SpectralConfig(), feature_key="dino_vits16/k")


def test_cache_round_trip(tmp_path) -> None:
    cfg = SpectralConfig(num_eigenvectors=4)
    eigen = spectral_decomposition(two_regions(h=30, w=50, noise=5.0), None, cfg)
    cache = EigenCache.for_config(tmp_path, cfg)
    image_id = "train2017/000000000139"  # ids may hold path separators
    assert cache.get(image_id) is None and image_id not in cache
    path = cache.put(image_id, eigen)
    assert path.parent == tmp_path / config_hash(cfg) and image_id in cache
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left
    got = cache.get(image_id)
    assert isinstance(got, Eigen)
    np.testing.assert_array_equal(got.eigenvalues, eigen.eigenvalues)
    assert got.graph_size == eigen.graph_size and got.eigenvectors.shape == (4, 30, 50)
    # fp16 storage of unit-RMS vectors: absolute error well under 1e-2.
    np.testing.assert_allclose(got.eigenvectors, eigen.eigenvectors, atol=1e-2)
    # float32 storage is exact.
    exact = EigenCache(tmp_path, "exact", dtype="float32")
    exact.put("a", eigen)
    np.testing.assert_array_equal(exact.get("a").eigenvectors, eigen.eigenvectors)


def test_cache_keys_separate_configs(tmp_path) -> None:
    eigen = spectral_decomposition(two_regions(), None, SpectralConfig(num_eigenvectors=2))
    a = EigenCache.for_config(tmp_path, SpectralConfig(num_eigenvectors=2))
    b = EigenCache.for_config(tmp_path, SpectralConfig(num_eigenvectors=2, knn=5))
    a.put("img", eigen)
    assert b.get("img") is None


def test_cache_rejects_a_file_of_another_key(tmp_path) -> None:
    eigen = spectral_decomposition(two_regions(), None, SpectralConfig(num_eigenvectors=2))
    a, b = EigenCache(tmp_path, "keya"), EigenCache(tmp_path, "keyb")
    path = a.put("img", eigen)
    b.directory.mkdir(parents=True)
    os.replace(path, b.path("img"))
    with pytest.raises(ValueError, match="keya"):
        b.get("img")


def test_precompute_writes_missing_only(tmp_path) -> None:
    cfg = SpectralConfig(num_eigenvectors=2)
    cache = EigenCache.for_config(tmp_path, cfg)
    items = [(f"im{i}", two_regions(h=20, w=20, noise=4.0, seed=i), None) for i in range(3)]
    assert precompute(items, cache, cfg, progress=False) == 3
    assert precompute(items, cache, cfg, progress=False) == 0
    assert all(f"im{i}" in cache for i in range(3))
    with pytest.raises(ValueError, match="made for"):
        precompute(items, cache, SpectralConfig(num_eigenvectors=3), progress=False)
