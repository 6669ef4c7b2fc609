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


def test_a_base_preset_is_resolved_with_the_files_keys_on_top(tmp_path):
    base = load_config("zegclip_foundation_shapeworld")
    f = tmp_path / "nord.yaml"
    f.write_text("base: zegclip_foundation_shapeworld\nmethod: zegclip-nord\nmodel: {rd: false}\n")
    cfg = load_config(f)
    assert cfg.method == "zegclip-nord" and cfg.model["rd"] is False
    # every other key is the base's, nested mappings merged key by key
    assert cfg.train == base.train and cfg.model["decoder"] == base.model["decoder"]
    assert cfg.demo.row == ""  # the demo row is the file's own, never inherited
    assert base.demo.row == "default"


def test_a_base_chain_and_a_bad_base_fail_clearly(tmp_path):
    chain = tmp_path / "chain.yaml"
    chain.write_text("base: zegclip-nord_foundation_shapeworld\n")
    with pytest.raises(ConfigError, match=r"has a base of its own .*one level only"):
        load_config(chain)
    bad = tmp_path / "bad.yaml"
    bad.write_text("base: [1, 2]\n")
    with pytest.raises(ConfigError, match="base must be a preset name"):
        load_config(bad)
    with pytest.raises(ConfigError, match="demo.row"):
        load_config("projection_unet-small_2k_shapeworld", ["demo.row=sometimes"])


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        out |= _flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v}
    return out


def _changes(name: str, base: str) -> dict:
    import dataclasses

    a = _flat(dataclasses.asdict(load_config(base)))
    b = _flat(dataclasses.asdict(load_config(name)))
    return {k: b.get(k) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}


def test_the_frozen_projection_presets_are_the_projection_preset_plus_a_few_keys():
    # projection-frozen is written as `base: projection` + its changes; the -excl ablation cannot
    # chain on it (one level only), so it repeats those changes: both must stay in step.
    frozen = {
        "train.iters": 4000,
        "train.lr": 0.001,
        "train.weight_decay": 0.01,
        "model.freeze_backbone": True,
    }
    base = "projection_unet-small_2k_shapeworld"
    assert _changes("projection-frozen_unet-small_2k_shapeworld", base) == frozen | {
        "demo.order": 5,
        "demo.cost": 97.0,
    }
    assert _changes(
        "projection-frozen-excl_unet-small_2k_shapeworld",
        "projection-frozen_unet-small_2k_shapeworld",
    ) == {
        "model.foundation": "shapeworld-foundation-exclude-default",
        "demo.row": "ablation",
        "demo.order": 11,
        "demo.baselines": ["projection-frozen"],
        "demo.cost": 100.0,  # not stated: the default
    }
    assert _changes(
        "projection-probe_unet-small_2k_shapeworld",
        "projection-frozen_unet-small_2k_shapeworld",
    ) == {
        "model.freeze_head_hidden": True,
        "demo.row": "ablation",
        "demo.order": 25,
        "demo.baselines": ["projection-frozen"],
        "demo.cost": 100.0,  # not stated: the default
    }
