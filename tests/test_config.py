import pytest

from zeroseg.config import ConfigError, load_config
from zeroseg.data.classes import ClassSplit
from zeroseg.runner import build_method


def test_presets_load_and_overrides_apply():
    cfg = load_config(
        "projection_unet-small_2k_shapeworld", ["train.iters=7", "model.calibration=0.3"]
    )
    assert cfg.train.iters == 7 and cfg.model["calibration"] == 0.3
    m = build_method(cfg, ClassSplit(("a", "b"), unseen=(1,)), 16)
    assert m.cfg.calibration == 0.3 and m.cfg.backbone.widths == (16, 32, 64, 128)


@pytest.mark.parametrize(
    "overrides, match",
    [
        (["train.iterz=3"], r"config.train: unknown keys \['iterz'\]"),
        (["train.iters=many"], "config.train.iters: expected an integer"),
        (["bogus=1"], "unknown keys"),
        (["noequals"], "must look like"),
    ],
)
def test_bad_keys_and_values_fail_clearly(overrides, match):
    with pytest.raises(ConfigError, match=match):
        load_config("projection_unet-small_2k_shapeworld", overrides)


def test_unknown_model_option_fails_at_build():
    cfg = load_config("projection_unet-small_2k_shapeworld", ["model.depth=3"])
    with pytest.raises(ConfigError, match=r"model: unknown keys \['depth'\]"):
        build_method(cfg, ClassSplit(("a", "b"), unseen=(1,)), 16)


def test_unknown_preset_lists_presets():
    with pytest.raises(ConfigError, match="presets:"):
        load_config("nonexistent_preset")
