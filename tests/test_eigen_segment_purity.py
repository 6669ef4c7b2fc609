"""benchmarks/eigen_segment_purity.py: the segment figures docs/methods.md quotes."""

import numpy as np


def test_mixed_share_counts_the_pixels_of_segments_without_a_dominant_label(benchmark_script):
    script = benchmark_script("eigen_segment_purity")
    segments = np.array([[0, 0, 1, 1], [0, 0, 1, 1]])
    labels = np.array([[3, 3, 3, 5], [3, 3, 5, 5]])  # segment 0 pure, segment 1 half and half
    assert script.mixed_share(segments, labels, 0.9) == 0.5
    assert script.mixed_share(segments, labels, 0.5) == 0.0  # 2 of 4 is not below half


def test_the_settings_are_the_old_fusion_and_the_preset(benchmark_script):
    from zeroseg.shape.refine import default_refine_config

    s = benchmark_script("eigen_segment_purity").settings()
    assert s["preset"] == default_refine_config()
    assert s["eigengap-8"].num_segments is None and s["eigengap-8"].spectral.num_eigenvectors == 8
    assert s["eigengap-8"].spectral.max_side == s["preset"].spectral.max_side == 32
