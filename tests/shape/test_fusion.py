"""Fusion of eigen-segments with a dense prediction: hand cases and a refinement end to end."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from zeroseg.shape.fusion import (
    RefineConfig,
    connected_segments,
    eigen_segments,
    eigengap_num_segments,
    fuse,
    merge_small_segments,
    refine,
)
from zeroseg.shape.spectral import Eigen, SpectralConfig, spectral_decomposition


def one_hot(labels: np.ndarray, num_classes: int) -> torch.Tensor:
    """(H, W) labels -> (K, H, W) probabilities with all mass on the label."""
    t = torch.from_numpy(labels).long()
    return torch.nn.functional.one_hot(t, num_classes).permute(2, 0, 1).float()


def manual_eigen(vecs: np.ndarray, eigenvalues: list[float]) -> Eigen:
    vecs = vecs.astype(np.float32)
    return Eigen(
        eigenvalues=np.asarray(eigenvalues, dtype=np.float32),
        eigenvectors=vecs,
        graph_size=vecs.shape[1:],
        graph_eigenvectors=vecs,
    )


# ---------------------------------------------------------------------------------------- fuse


def test_segment_with_80_percent_votes_becomes_that_class() -> None:
    # One 1x10 segment: 8 pixels predict class 2, 2 predict class 0. Agreement 0.8 >= 0.5.
    pred = np.array([[2, 2, 0, 2, 2, 2, 0, 2, 2, 2]])
    out = fuse(one_hot(pred, 3), np.zeros((1, 10), int), agreement_threshold=0.5)
    assert out.tolist() == [[2] * 10]


def test_segment_below_threshold_is_left_alone() -> None:
    # Segment 0 (first 5 pixels): votes 2,2,1,0,3 -> best class 2 with agreement 2/5 = 0.4 < 0.5,
    # so it keeps its argmax. Segment 1 (last 5): 4/5 class 1 -> all class 1.
    pred = np.array([[2, 2, 1, 0, 3, 1, 1, 1, 3, 1]])
    segments = np.array([[0] * 5 + [1] * 5])
    out = fuse(one_hot(pred, 4), segments, agreement_threshold=0.5)
    assert out.tolist() == [[2, 2, 1, 0, 3, 1, 1, 1, 1, 1]]


def test_agreement_equal_to_threshold_relabels() -> None:
    # 3 of 4 agree: agreement 0.75 >= 0.75 relabels; at 0.76 nothing changes.
    pred = np.array([[1, 1, 1, 0]])
    seg = np.zeros((1, 4), int)
    assert fuse(one_hot(pred, 2), seg, agreement_threshold=0.75).tolist() == [[1, 1, 1, 1]]
    assert fuse(one_hot(pred, 2), seg, agreement_threshold=0.76).tolist() == [[1, 1, 1, 0]]


def test_vote_uses_argmax_not_mean_probability() -> None:
    # A 1-1 tie of argmax votes goes to the lower class index, with agreement 0.5 >= 0.5.
    probs = torch.tensor([[[0.6, 0.4]], [[0.4, 0.6]]])
    assert fuse(probs, np.zeros((1, 2), int)).tolist() == [[0, 0]]
    # Three pixels where mean probability and majority disagree: argmax votes 0,0,1 -> class 0
    # although the mean of class 1 is larger (0.1+0.45+1.0)/3 = 0.52.
    probs = torch.tensor([[[0.9, 0.55, 0.0]], [[0.1, 0.45, 1.0]]])
    assert fuse(probs, np.zeros((1, 3), int)).tolist() == [[0, 0, 0]]


def test_ignored_pixels_neither_vote_nor_change() -> None:
    # Unmasked votes: class 1 x2, class 0 x1 -> 2/3 agree -> class 1. The masked pixels (both
    # predicting 0) would have made it 3/5 for class 0 had they voted; they keep their argmax.
    pred = np.array([[0, 0, 1, 1, 0]])
    ignore = np.array([[True, True, False, False, False]])
    out = fuse(one_hot(pred, 2), np.zeros((1, 5), int), ignore_mask=ignore)
    assert out.tolist() == [[0, 0, 1, 1, 1]]


def test_fuse_shape_errors() -> None:
    with pytest.raises(ValueError, match="segments have shape"):
        fuse(torch.zeros(2, 3, 3), np.zeros((3, 4), int))
    with pytest.raises(ValueError, match="agreement_threshold"):
        fuse(torch.zeros(2, 3, 3), np.zeros((3, 3), int), agreement_threshold=1.5)


# ------------------------------------------------------------------------------------ segments


def test_kmeans_segments_are_connected() -> None:
    # Eigenvector +1 on two outer strips, -1 in the middle: two clusters, but the +1 cluster is
    # two separate strips, so the result has three connected segments.
    vec = np.full((6, 12), -1.0)
    vec[:, :3] = 1.0
    vec[:, 9:] = 1.0
    eigen = manual_eigen(vec[None], [0.01])
    seg = eigen_segments(eigen, num_segments=2)
    assert seg.tolist() == [[0] * 3 + [1] * 6 + [2] * 3] * 6


def test_threshold_method_uses_signs() -> None:
    # Two eigenvectors split a 4x4 image into quadrants: their sign pairs give 4 segments.
    v1 = np.where(np.arange(4)[None, :] < 2, 1.0, -1.0) * np.ones((4, 1))
    v2 = v1.T
    seg = eigen_segments(
        manual_eigen(np.stack([v1, v2]), [0.1, 0.2]), num_segments=4, method="threshold"
    )
    assert seg.tolist() == [[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 3, 3], [2, 2, 3, 3]]


def test_min_size_merges_islands() -> None:
    # A 2-pixel island (id 1) inside a large segment is absorbed; the two large ones remain.
    seg = np.zeros((6, 6), int)
    seg[:, 3:] = 2
    seg[1, 1:3] = 1
    out = merge_small_segments(seg, min_size=3)
    expected = np.zeros((6, 6), int)
    expected[:, 3:] = 1
    assert out.tolist() == expected.tolist()


def test_min_size_merges_chains_of_small_segments() -> None:
    # 1 x 8 row [0 0 0 0 | 1 | 2 | 3 3], min_size 3: segments 1, 2, 3 are small. Segment 1
    # borders 0 and 2 by one pixel each and takes the larger, 0. Segment 2 borders 1 and 3 and
    # takes the larger, 3. Segment 3 borders only 2, which is smaller than it, so it stays (a
    # small segment never merges into a smaller one, which rules out cycles). Result: 5 + 3.
    seg = np.array([[0, 0, 0, 0, 1, 2, 3, 3]])
    out = merge_small_segments(seg, min_size=3)
    assert out.tolist() == [[0, 0, 0, 0, 0, 1, 1, 1]]


def test_connected_segments_numbering() -> None:
    clusters = np.array([[5, 5, 7, 5], [7, 7, 7, 5]])
    assert connected_segments(clusters).tolist() == [[0, 0, 1, 2], [1, 1, 1, 2]]


def test_eigengap_choice() -> None:
    # lambda = (0), 0.001, 0.002, 0.5, 0.52: largest gap after lambda_2 -> 3 clusters.
    assert eigengap_num_segments(np.array([0.001, 0.002, 0.5, 0.52])) == 3
    assert eigengap_num_segments(np.array([0.001, 0.6, 0.62])) == 2


# -------------------------------------------------------------------------------------- refine


def test_refine_improves_noisy_two_region_prediction() -> None:
    # Image: left half one colour, right half another (mild noise). Ground truth: class 0 left,
    # class 1 right. The prediction flips 30% of pixels at random, so its accuracy is ~0.70; each
    # half is one segment with ~70% agreement for its true class, so refinement restores it.
    rng = np.random.default_rng(0)
    h, w = 40, 40
    img = np.empty((h, w, 3))
    img[:, : w // 2] = (30, 60, 200)
    img[:, w // 2 :] = (200, 80, 40)
    img = np.clip(img + rng.normal(0, 8, img.shape), 0, 255).astype(np.uint8)
    truth = np.zeros((h, w), int)
    truth[:, w // 2 :] = 1
    noisy = np.where(rng.random((h, w)) < 0.3, 1 - truth, truth)
    probs = one_hot(noisy, 2)
    before = (noisy == truth).mean()
    after = (refine(probs, img, None, RefineConfig()).numpy() == truth).mean()
    assert 0.65 < before < 0.75
    assert after > 0.99


def test_refine_accepts_precomputed_eigen_and_checks_sizes() -> None:
    img = np.zeros((20, 20, 3), np.uint8)
    img[:, 10:] = 255
    eigen = spectral_decomposition(img, None, SpectralConfig(num_eigenvectors=2))
    probs = one_hot(np.zeros((20, 20), int), 2)
    out = refine(probs, img, None, RefineConfig(), eigen=eigen)
    assert out.shape == (20, 20)
    with pytest.raises(ValueError, match="probs are"):
        refine(one_hot(np.zeros((10, 20), int), 2), img, None, RefineConfig(), eigen=eigen)


# ------------------------------------------------------------------------------- segment memo


def _two_colour_image(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = np.zeros((24, 24, 3), np.uint8)
    img[:, 12:] = (200, 40, 40)
    return np.clip(img + rng.integers(0, 30, img.shape), 0, 255).astype(np.uint8)


def test_refine_memo_decomposes_each_image_once(monkeypatch) -> None:
    from zeroseg.shape import fusion

    calls = []

    def counted(image, features, cfg):
        calls.append(1)
        return spectral_decomposition(image, features, cfg)

    monkeypatch.setattr(fusion, "spectral_decomposition", counted)
    monkeypatch.setattr(fusion, "SEGMENT_MEMO", fusion.SegmentMemo())
    cfg = RefineConfig(spectral=SpectralConfig(num_eigenvectors=4), num_segments=3)
    img, other = _two_colour_image(0), _two_colour_image(1)
    rng = np.random.default_rng(0)
    probs = [one_hot(rng.integers(0, 2, (24, 24)), 2) for _ in range(2)]

    first = refine(probs[0], img, None, cfg)
    second = refine(probs[1], img, None, cfg)  # another row's scores on the same image
    assert len(calls) == 1 and fusion.SEGMENT_MEMO.hits == 1
    # A hit fuses exactly the segments a fresh decomposition gives.
    fresh = fusion.refine_segments(spectral_decomposition(img, None, cfg.spectral), cfg)
    np.testing.assert_array_equal(second.numpy(), fuse(probs[1], fresh).numpy())
    np.testing.assert_array_equal(first.numpy(), fuse(probs[0], fresh).numpy())

    refine(probs[0], img, None, RefineConfig(cfg.spectral, 3, agreement_threshold=0.9))
    assert len(calls) == 1  # the vote's threshold does not change the segments
    refine(probs[0], other, None, cfg)
    refine(probs[0], img, None, RefineConfig(cfg.spectral, num_segments=4))
    refine(probs[0], img, None, RefineConfig(SpectralConfig(num_eigenvectors=3), 3))
    refine(probs[0], img, torch.ones(6, 6, 2), cfg)
    refine(probs[0], img, torch.zeros(6, 6, 2), cfg)
    assert len(calls) == 6  # each other image, setting or feature map is a new entry
    eigen = spectral_decomposition(img, None, cfg.spectral)
    refine(probs[0], img, None, cfg, eigen=eigen)  # a given decomposition is used, not the memo
    assert fusion.SEGMENT_MEMO.hits == 2


def test_segment_memo_keeps_the_most_recent_within_its_budget() -> None:
    from zeroseg.shape.fusion import SegmentMemo

    seg = np.zeros((10, 10), np.int64)  # 800 bytes
    memo = SegmentMemo(max_bytes=2000)
    memo.put(b"a", seg)
    memo.put(b"b", seg + 1)
    assert memo.get(b"a") is not None  # a is now the most recent
    memo.put(b"c", seg + 2)
    assert memo.get(b"b") is None and len(memo) == 2
    np.testing.assert_array_equal(memo.get(b"c"), seg + 2)
    memo.get(b"c")[0, 0] = 5  # a caller's copy, not the entry
    np.testing.assert_array_equal(memo.get(b"c"), seg + 2)


def test_kmeans_centres_are_exactly_lloyds_member_means() -> None:
    """The grouped centre update equals the textbook one (each centre the mean of its members,
    an emptied cluster kept) bit for bit, so a faster update changes no segment."""
    from zeroseg.shape.fusion import _assign, _kmeans, _kmeans_pp

    def textbook(x, n, seed, iters=100, n_init=4):
        rng = np.random.default_rng(seed)
        best, best_inertia = None, np.inf
        for _ in range(n_init):
            centres = _kmeans_pp(x, n, rng)
            for _ in range(iters):
                labels, _ = _assign(x, centres)
                new = centres.copy()
                for c in range(len(centres)):
                    if (labels == c).any():
                        new[c] = x[labels == c].mean(axis=0)
                if np.allclose(new, centres, rtol=0, atol=1e-10):
                    break
                centres = new
            inertia = float(_assign(x, centres)[1].sum())
            if inertia < best_inertia - 1e-12:
                best, best_inertia = centres, inertia
        return best

    rng = np.random.default_rng(0)
    blobs = rng.normal(size=(12, 5))[rng.integers(12, size=300)] + 0.05 * rng.normal(size=(300, 5))
    few = np.repeat(rng.normal(size=(4, 5)), 30, axis=0)  # 4 distinct points, 6 clusters
    for seed, (x, n) in enumerate([(blobs, 8), (rng.normal(size=(200, 3)), 5), (few, 6)]):
        np.testing.assert_array_equal(_kmeans(x, n, seed=seed), textbook(x, n, seed))
