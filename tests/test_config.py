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


def test_a_partial_nested_override_keeps_the_fields_own_defaults():
    # PretrainConfig.train's default (a batch-128 bf16 cosine schedule) is not TrainConfig()'s;
    # overriding one key of it must keep the rest (it used to fall back to TrainConfig()).
    from zeroseg.config import from_dict
    from zeroseg.methods.zegclip import ZegCLIPConfig
    from zeroseg.pretrain import PretrainConfig

    cfg = load_config("zegclip_vit-tiny_shapeworld", ["model.pretrain.train.iters=500"])
    model = from_dict(ZegCLIPConfig, cfg.model, where="model")
    default = PretrainConfig().train
    assert model.pretrain.train.iters == 500
    assert model.pretrain.patch_size == 4  # the preset's value survives the override
    assert (model.pretrain.train.batch_size, model.pretrain.train.amp) == (
        default.batch_size,
        default.amp,
    )
    with pytest.raises(ConfigError, match=r"model.pretrain.train: unknown keys \['iterz'\]"):
        from_dict(ZegCLIPConfig, {"pretrain": {"train": {"iterz": 1}}}, where="model")
