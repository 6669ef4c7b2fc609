"""Every config value is bounded and checked before work starts; errors name file and key."""

from __future__ import annotations

import pytest
import torch

from zeroseg.config import PRESET_DIR, ConfigError, load_config
from zeroseg.models.pretrained import CheckpointError, read_clip_checkpoint
from zeroseg.runner import check_config, resolve_device

PRESET = "projection_unet-small_2k_shapeworld"
FILE = PRESET_DIR / f"{PRESET}.yaml"


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.batch_size=0", "train.batch_size must be an integer 1-65536, got 0"),
        ("train.iters=0", "train.iters must be an integer 1-100000000, got 0"),
        ("train.iters=-5", "train.iters must be an integer 1-100000000, got -5"),
        ("train.amp=fp8", "train.amp must be none, bf16, fp16 or auto, got 'fp8'"),
        ("train.lr=.nan", "train.lr must be a finite number > 0, got nan"),
        ("eval.stride=600", "eval.stride must be an integer 1-512 (at most the crop), got 600"),
        ("data.protocol=loose", "data.protocol must be ignore or strict, got 'loose'"),
        ("device=tpu", "device must be auto, cpu, cuda or cuda:N, got 'tpu'"),
    ],
)
def test_out_of_bounds_values_name_the_file_and_key(override, message):
    with pytest.raises(ConfigError) as e:
        load_config(PRESET, [override])
    assert str(e.value) == f"{FILE} with --set overrides: {message}"


def test_method_schedules_are_checked_too():
    cfg = load_config("zs3net_unet-small_shapeworld", ["model.generator_train.iters=0"])
    with pytest.raises(ConfigError, match=r"^x\.yaml: model\.generator_train\.iters must be"):
        check_config(cfg, where="x.yaml")


def test_exponent_numbers_load_as_numbers_from_yaml_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("method: projection\ntrain: {lr: 1e-4, weight_decay: 3E-2}\n")
    cfg = load_config(path, ["train.momentum=5e-1"])
    assert (cfg.train.lr, cfg.train.weight_decay, cfg.train.momentum) == (1e-4, 0.03, 0.5)
    assert load_config(PRESET, ["train.lr=3e-4"]).train.lr == 3e-4
    iters = load_config(PRESET, ["train.iters=2e4"]).train.iters
    assert iters == 20000 and isinstance(iters, int)
    with pytest.raises(ConfigError, match="expected an integer, got 2.5"):
        load_config(PRESET, ["train.iters=2.5"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_a_missing_gpu_is_a_one_line_error():
    with pytest.raises(ConfigError) as e:
        resolve_device("cuda")
    assert str(e.value) == (
        "device 'cuda' was requested but this machine has no CUDA devices; "
        "use --device cpu (or device: auto)"
    )


def test_a_garbage_encoder_file_is_a_one_line_error(tmp_path):
    path = tmp_path / "garbage.pt"
    path.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(CheckpointError) as e:
        read_clip_checkpoint(path)
    assert "\n" not in str(e.value)
    assert str(e.value).startswith(f"{path}: not a CLIP checkpoint zeroseg can read")


def test_model_sizes_are_checked_on_the_meta_device_before_any_allocation():
    from zeroseg.data.classes import ClassSplit
    from zeroseg.runner import build_method, check_model

    split = ClassSplit(("a", "b", "c"), unseen=(2,))
    huge = load_config(PRESET, ["model.backbone.out_dim=15296318"])
    with pytest.raises(ConfigError) as e:
        check_model(huge, split, 8, where="c.yaml")
    assert str(e.value).startswith("c.yaml: the model settings give ")
    assert str(e.value).endswith("beyond the 8 GiB bound; check model.* sizes")
    negative = load_config(PRESET, ["model.backbone.out_dim=-3"])
    with pytest.raises(ConfigError, match=r"^c\.yaml: the model settings cannot be built: "):
        check_model(negative, split, 8, where="c.yaml")
    empty = load_config(PRESET, ["model.backbone.out_dim=0"])
    with pytest.raises(ConfigError, match=r"^c\.yaml: the model settings give empty layers \("):
        check_model(empty, split, 8, where="c.yaml")
    real = build_method(load_config(PRESET), split, 8)
    assert check_model(load_config(PRESET), split, 8) == sum(
        t.numel() for t in [*real.parameters(), *real.buffers()]
    )
