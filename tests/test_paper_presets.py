"""Every paper preset runs two training iterations and one evaluation on a fixture in its dataset's
real layout, on CPU, through the same code path a GPU run takes (only sizes are overridden)."""

from __future__ import annotations

import pytest
import yaml

from zeroseg import runner
from zeroseg.config import PRESET_DIR, load_config
from zeroseg.data.real.fixtures import WRITERS  # noqa: E402

pytestmark = pytest.mark.slow

# Tiny model sizes per method (the architecture family stays the preset's).
TINY: dict[str, list[str]] = {}

# Dataset a preset's data.dataset is read from (few-shot style settings reuse VOC / COCO layouts).
FIXTURE_OF = {"voc": "voc", "coco_stuff": "coco_stuff", "context": "context", "coco_panoptic": "coco_panoptic"}


def paper_presets() -> list[str]:
    out = []
    for p in sorted(PRESET_DIR.glob("*.yaml")):
        data = yaml.safe_load(p.read_text()) or {}
        if (data.get("data") or {}).get("dataset", "shapeworld") != "shapeworld":
            out.append(p.stem)
    return out


def test_every_method_has_paper_presets():
    methods = {yaml.safe_load((PRESET_DIR / f"{p}.yaml").read_text())["method"] for p in paper_presets()}
    assert methods, "no paper presets found"


@pytest.mark.parametrize("preset", paper_presets())
def test_paper_preset_trains_two_iterations_and_evaluates(preset, tmp_path):
    raw = yaml.safe_load((PRESET_DIR / f"{preset}.yaml").read_text())
    dataset = raw["data"]["dataset"]
    root = WRITERS[FIXTURE_OF[dataset]](tmp_path / dataset)
    method = raw["method"]
    overrides = [
        f"data.root={root}",
        "data.crop_size=32",
        "train.iters=2",
        "train.batch_size=2",
        "train.amp=none",
        "train.ckpt_every=0",
        "eval.crop=32",
        "eval.stride=24",
        "eval.batch_size=1",
        "device=cpu",
    ] + TINY.get(method, [])
    cfg = load_config(preset, overrides)
    result = runner.train(cfg, tmp_path / "run", progress=False)
    metrics, _, _ = runner.evaluate(result.method, cfg, result.data.val, result.data.split, result.embed, progress=False)
    assert 0.0 <= metrics["miou"] <= 100.0
    assert (tmp_path / "run" / "model.safetensors").is_file()
