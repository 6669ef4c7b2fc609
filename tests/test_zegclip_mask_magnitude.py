"""benchmarks/zegclip_mask_magnitude.py: the figures docs/methods.md quotes come from the decoder."""

import pytest


def test_the_masks_start_small_and_scale_with_mask_scale(benchmark_script):
    script = benchmark_script("zegclip_mask_magnitude")
    plain = script.mean_abs_masks(128, 4, 1.0, seed=0)
    scaled = script.mean_abs_masks(128, 4, 64.0, seed=0)
    assert len(plain) == 3
    # the first layer's queries have not passed a LayerNorm: smaller masks than the later layers'
    assert plain[0] < plain[1] / 10
    for a, b in zip(plain, scaled, strict=True):
        assert b == pytest.approx(64.0 * a, rel=1e-5)
    # the paper's width gives larger masks at initialisation
    assert script.mean_abs_masks(512, 8, 1.0, seed=0)[1] > 2 * plain[1]
