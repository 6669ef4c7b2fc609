"""``model.mask.backbone_lr_mult`` reaches the optimiser of the mask family's main stage:
mask-projection's (and so PADing's) stage 1 and AlignZeg's, with the pretrained U-Net in a
group of its own at the multiplied learning rate."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from zeroseg import runner
from zeroseg.config import load_config

sys.path.insert(0, str(Path(__file__).parent))
from _optimisers import spy_optimisers  # noqa: E402
from _tiny_mask import TINY_MASK  # noqa: E402


def _cfg(world, method: str, mult: float):
    model = {"mask": {**TINY_MASK, "backbone_lr_mult": mult}}
    if method == "alignzeg":
        model |= {"clip_fusion": False, "background_prototypes": 2, "virtual_per_batch": 8}
    return load_config(
        {
            "method": method,
            "device": "cpu",
            "data": {"dataset": "shapeworld", "world": str(world), "protocol": "strict"},
            "text": {"encoder": "attributes", "templates": "none"},
            "train": {"iters": 2, "batch_size": 4, "lr": 0.002, "log_every": 1},
            "eval": {"batch_size": 48},
            "model": model,
        }
    )


@pytest.mark.parametrize("method", ["mask-projection", "alignzeg"])
def test_the_main_stage_trains_the_backbone_at_its_multiplied_rate(
    tiny_world, tmp_path, monkeypatch, method
):
    torch.set_num_threads(1)
    made = spy_optimisers(monkeypatch)
    result = runner.train(_cfg(tiny_world, method, 0.25), tmp_path / method, progress=False)
    ((groups, lrs),) = made  # the one stage
    unet = {id(p) for p in result.method.model.backbone.unet.parameters()}
    assert groups[1] == unet and not groups[0] & unet and len(groups) == 2
    assert lrs == [0.002, pytest.approx(0.0005)]
