"""``model.backbone_lr_mult`` of the projection family: the projection baseline's, the oracle's
and SAZS's stage train the U-Net in an optimiser group of its own at the multiplied rate;
ZS3Net's stage 1 is the baseline's stage only when the two multipliers agree, and with the
paper's linear head its own stage 1 takes the multiplier too."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from zeroseg import runner
from zeroseg.config import load_config
from zeroseg.engine import trainer

sys.path.insert(0, str(Path(__file__).parent))
from _optimisers import spy_optimisers  # noqa: E402

TINY = [
    "text.encoder=attributes",
    "text.templates=none",
    "train.iters=2",
    "train.batch_size=4",
    "train.lr=0.002",
    "train.amp=none",
    "data.train_limit=16",
    "data.val_limit=8",
    "model.foundation=null",  # 10-d attribute vectors: not the foundation's text space
]
ZS3 = [
    "model.generator_train.iters=2",
    "model.classifier_train.iters=2",
    "model.generator.bank_images=8",
    "model.generator.bank_per_class=16",
]
PRESETS = {
    "projection": "projection_unet-small_2k_shapeworld",
    "oracle": "oracle_unet-small_2k_shapeworld",
    "sazs": "sazs_unet-small_2k_shapeworld",
}


@pytest.mark.parametrize("method", sorted(PRESETS))
def test_the_unet_trains_at_its_multiplied_rate(tiny_world, tmp_path, monkeypatch, method):
    torch.set_num_threads(1)
    made = spy_optimisers(monkeypatch)
    sets = [f"data.world={tiny_world}", *TINY]
    cfg = load_config(PRESETS[method], [*sets, "model.backbone_lr_mult=0.25"])
    result = runner.train(cfg, tmp_path / "quarter", progress=False)
    ((groups, lrs),) = made  # the one stage
    unet = {id(p) for p in result.method.backbone.parameters()}
    rest = {id(p) for p in result.method.parameters()} - unet
    assert groups == [rest, unet] and lrs == [0.002, pytest.approx(0.0005)]
    made.clear()
    cfg = load_config(PRESETS[method], [*sets, "model.backbone_lr_mult=1"])
    result = runner.train(cfg, tmp_path / "one", progress=False)
    ((groups, lrs),) = made  # at 1: one group, every parameter at the rate
    assert groups == [{id(p) for p in result.method.parameters()}] and lrs == [0.002]


def test_zs3net_shares_the_baselines_stage_1_only_at_the_same_multiplier(
    tiny_world, tmp_path, monkeypatch
):
    torch.set_num_threads(1)
    stages = []
    real = trainer.train_stage

    def spy(**kw):
        stages.append(kw["stage"])
        return real(**kw)

    monkeypatch.setattr(trainer, "train_stage", spy)
    sets = [f"data.world={tiny_world}", *TINY]
    data = runner.build_data(load_config(PRESETS["projection"], sets), progress=False)

    def train(preset, *extra):
        stages.clear()
        run = tmp_path / f"run{len(list(tmp_path.iterdir()))}"  # siblings: one _shared
        runner.train(load_config(preset, [*sets, *extra]), run, progress=False, data=data)
        return list(stages)

    assert train(PRESETS["projection"], "model.backbone_lr_mult=0.25") == ["segmenter"]
    mult = "model.backbone_lr_mult"
    # the same multiplier: stage 1 is loaded, not trained
    assert train("zs3net_unet-small_shapeworld", *ZS3, f"{mult}=0.25") == [
        "generator",
        "classifier",
    ]
    # another one: ZS3Net trains its own stage 1 (it is not the baseline's weights)
    assert train("zs3net_unet-small_shapeworld", *ZS3, f"{mult}=0.5")[0] == "segmenter"


def test_zs3net_linear_head_trains_its_backbone_at_the_multiplied_rate(
    tiny_world, tmp_path, monkeypatch
):
    """The paper's linear head (its own stage 1, not the baseline's) takes the multiplier too."""
    torch.set_num_threads(1)
    made = spy_optimisers(monkeypatch)
    sets = [f"data.world={tiny_world}", *TINY, *ZS3, "model.head=linear"]
    cfg = load_config("zs3net_unet-small_shapeworld", [*sets, "model.backbone_lr_mult=0.25"])
    result = runner.train(cfg, tmp_path / "run", progress=False)
    groups, lrs = made[0]  # stage 1
    seg = result.method.segmenter  # its classifier is stage 3's, a new module: count it only
    unet = {id(p) for p in seg.backbone.parameters()}
    assert groups[1] == unet and not groups[0] & unet and len(groups) == 2
    assert len(groups[0]) == len(list(seg.parameters())) - len(unet)
    assert lrs == [0.002, pytest.approx(0.0005)]


def test_zs5net_self_training_trains_the_unet_at_its_multiplied_rate(
    tiny_world, tmp_path, monkeypatch
):
    torch.set_num_threads(1)
    made = spy_optimisers(monkeypatch)
    sets = [f"data.world={tiny_world}", *TINY, *ZS3, "model.self_train.iters=2"]
    sets += ["model.self_train.lr=0.004", "model.pseudo_images=8"]
    cfg = load_config(
        "zs5net_unet-small_shapeworld", [*sets, "model.self_train_backbone_lr_mult=0.25"]
    )
    result = runner.train(cfg, tmp_path / "run", progress=False)
    groups, lrs = made[-1]  # stage 5
    seg = result.method.segmenter
    unet = {id(p) for p in seg.backbone.parameters()}
    assert groups[1] == unet and groups[0] and not groups[0] & unet and len(groups) == 2
    assert lrs == [0.004, pytest.approx(0.001)]


@pytest.mark.parametrize(
    "preset, key",
    [
        ("projection_unet-small_2k_shapeworld", "ProjectionConfig.backbone_lr_mult"),
        ("sazs_unet-small_2k_shapeworld", "SazsConfig.backbone_lr_mult"),
        ("zs3net_unet-small_shapeworld", "ZS3NetConfig.backbone_lr_mult"),
        ("zs5net_unet-small_shapeworld", "ZS5NetConfig.self_train_backbone_lr_mult"),
    ],
)
def test_a_multiplier_of_zero_or_below_is_refused_before_work_starts(preset, key):
    field = key.split(".")[1]
    for value in (0, -0.5):
        with pytest.raises(ValueError, match=rf"^{key} must be > 0, got {float(value)}$"):
            runner.check_config(load_config(preset, [f"model.{field}={value}"]))
