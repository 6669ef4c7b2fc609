"""Large images are labelled tile by tile: the same labels as a whole-image pass for a model
whose receptive field fits in the margin, and peak memory bounded by a tile, not the image."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from zeroseg.engine.inference import InferenceConfig, evaluate_semantic, tiled_labels
from zeroseg.metrics.semantic import SemanticEvaluator


def _local_brightness(x: torch.Tensor) -> torch.Tensor:
    """2 classes: is the 7 x 7 mean brightness (zero-padded at the border) above mid-grey?"""
    mean = torch.nn.functional.avg_pool2d(x.float().mean(1, keepdim=True), 7, 1, padding=3)
    return torch.cat([mean, torch.full_like(mean, 127.5)], 1)


@torch.no_grad()
def test_tiles_give_the_whole_image_labels():
    image = torch.randint(0, 256, (1, 3, 300, 410), dtype=torch.uint8)
    whole = _local_brightness(image)[0].argmax(0).numpy()
    tiled = tiled_labels(_local_brightness, image, tile=128, margin=16, dtype=np.dtype(np.uint8))
    assert tiled.dtype == np.uint8 and tiled.shape == (300, 410)
    assert np.array_equal(tiled, whole)
    # Without a margin, cells see zero padding at their seams: the labels there change.
    assert not np.array_equal(tiled_labels(_local_brightness, image, tile=128, margin=0), whole)


@torch.no_grad()
def test_evaluation_tiles_large_images():
    image = torch.randint(0, 256, (3, 200, 1030), dtype=torch.uint8)  # wider than WHOLE_MAX
    label = _local_brightness(image[None])[0].argmax(0)
    ev = SemanticEvaluator(2, seen=[0], unseen=[1])
    metrics, _, kept = evaluate_semantic(
        _local_brightness,
        [{"image": image, "label": label}],
        ev,
        InferenceConfig(),
        progress=False,
        keep=1,
    )
    assert torch.equal(kept[0], label) and metrics["miou"] == 100.0


def test_a_4000_pixel_image_stays_within_2_gib(tmp_path):
    # Every forward pass sees at most one window; peak RSS is measured in a fresh process.
    script = textwrap.dedent(
        """
        import resource, numpy as np, torch
        from zeroseg.config import ExperimentConfig
        from zeroseg.data.classes import ClassSplit
        from zeroseg.predict import Predictor

        windows = []

        class Brightness(torch.nn.Module):  # 2 classes: mean brightness below / above 127.5
            def scores(self, images, emb, seen_mask):
                windows.append(images.shape[-2] * images.shape[-1])
                mean = images.float().mean(1, keepdim=True)
                return torch.cat([127.5 - mean, mean - 127.5], 1)

        p = Predictor(Brightness(), ExperimentConfig(), ClassSplit(("dark", "light"), unseen=(1,)))
        p.embed = lambda n: torch.zeros(len(n), 4)
        rng = np.random.default_rng(0)
        image = rng.integers(0, 256, (4000, 4000, 3), dtype=np.uint8)
        label = p.predict(image, ["dark", "light"])
        assert label.dtype == np.uint8
        assert np.array_equal(label, image.astype(np.uint16).sum(2) > 382)  # no ties: 3 x 127.5
        assert len(windows) == 64 and max(windows) == 640 * 640, (len(windows), max(windows))
        print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    peak_kib = int(done.stdout.split()[-1])
    assert peak_kib < 2 * 2**20, f"peak RSS {peak_kib / 2**20:.2f} GiB"


def test_only_datasets_known_to_fit_are_scored_whole():
    # evaluate_protocol rides the AUSUC sweep on the evaluation's passes only where no image would
    # be labelled tile by tile: a dataset must state its longest side, and it must fit
    from types import SimpleNamespace

    from zeroseg.engine.inference import WHOLE_MAX, scored_whole

    assert scored_whole(SimpleNamespace(max_image_side=64))
    assert scored_whole(SimpleNamespace(max_image_side=WHOLE_MAX))
    assert not scored_whole(SimpleNamespace(max_image_side=WHOLE_MAX + 1))
    assert not scored_whole(SimpleNamespace())  # real data: sizes unknown up front


def test_eval_amp_runs_the_forward_under_bf16_autocast_and_returns_fp32():
    from zeroseg.engine.inference import infer_scores

    seen: list[bool] = []

    def fn(images):
        seen.append(torch.is_autocast_enabled("cpu"))
        x = images.float().mean(1, keepdim=True).repeat(1, 3, 1, 1)
        return torch.nn.functional.linear(x.movedim(1, -1), torch.eye(3)).movedim(-1, 1)

    images = torch.randint(0, 255, (2, 3, 12, 10), dtype=torch.uint8)
    plain = infer_scores(fn, images, InferenceConfig())
    for mode in ("whole", "slide"):
        cfg = InferenceConfig(mode=mode, crop=8, stride=6, amp="bf16")
        got = infer_scores(fn, images, cfg)
        assert seen[-1] is True and got.dtype == torch.float32
        # bf16 rounds the linear's inputs and outputs (8 bits of mantissa), nothing else
        torch.testing.assert_close(got, plain, rtol=2**-7, atol=0)
    assert seen[0] is False  # the default: no autocast
    with pytest.raises(ValueError, match="eval.amp"):
        infer_scores(fn, images, InferenceConfig(amp="fp16"))


def test_eval_amp_is_checked_in_configs():
    from zeroseg.config import load_config
    from zeroseg.errors import ConfigError

    assert load_config("projection_unet-small_2k_shapeworld", ["eval.amp=bf16"]).eval.amp == "bf16"
    with pytest.raises(ConfigError, match=r"eval\.amp.*none or bf16"):
        load_config("projection_unet-small_2k_shapeworld", ["eval.amp=fp16"])
