"""The contract every registered method keeps, checked on each one from its ShapeWorld preset:

- a two-step fit of every stage on the tiny world, through the production path (``runner.train``,
  the protocol guard on);
- ``scores`` of shape (B, K, H, W) over a vocabulary holding unseen names and a name no split has;
- a save/load round trip that gives the same scores;
- the guard stopping training when an unseen label is injected into a batch (every method but the
  oracle, which is supervised by definition).
"""

from __future__ import annotations

import pytest
import torch
import yaml

from zeroseg import runner
from zeroseg.config import PRESET_DIR, load_config
from zeroseg.data.loader import StepLoader, iterate_eval
from zeroseg.data.protocol import ProtocolError
from zeroseg.methods import METHODS

pytestmark = pytest.mark.slow


def shapeworld_preset(name: str) -> str:
    """The method's ShapeWorld preset: its demo row's when it has several."""
    found = []
    for path in sorted(PRESET_DIR.glob("*.yaml")):
        raw = yaml.safe_load(path.read_text()) or {}
        if raw.get("method") == name and (raw.get("data") or {}).get("dataset") == "shapeworld":
            found.append((not (raw.get("demo") or {}).get("row"), path.stem))
    assert found, f"method {name!r} has no ShapeWorld preset"
    return min(found)[1]


def smoke_config(name: str, world):
    cls = METHODS[name]
    sets = [
        f"data.world={world}",
        "train.iters=2",
        "train.batch_size=2",
        "train.amp=none",
        "train.ckpt_every=0",
        "eval.batch_size=4",
        "device=cpu",
        *[f"model.{path}.iters=2" for path in cls.stage_schedules],
        *[f"model.{path}.batch_size=2" for path in cls.stage_schedules],
    ]
    return load_config(shapeworld_preset(name), sets)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    # one parent directory: the rows that share a stage (ablations, zs3net/zs5net) train it once
    return tmp_path_factory.mktemp("contract")


@pytest.mark.parametrize("name", sorted(METHODS))
def test_method_contract(name, tiny_world, runs):
    cfg = smoke_config(name, tiny_world)
    result = runner.train(cfg, runs / name, progress=False)
    method, split = result.method, result.data.split
    assert isinstance(method, METHODS[name])
    batch = next(iterate_eval(result.data.val, 2))
    images = batch["image"]

    # a vocabulary with the unseen names and one name of no split
    names = [*split.names, "violet spiral"]
    seen = torch.tensor([k in split.seen for k in range(split.num_classes)] + [False])
    method.eval()
    with torch.no_grad():
        out = method.scores(images, result.embed(names), seen)
    assert out.shape == (2, len(names), *images.shape[-2:])
    assert torch.isfinite(out.float()).all()

    # save/load round trip: the reloaded model scores the split's vocabulary identically
    emb = result.embed(split.names)
    seen_k = torch.tensor([k in split.seen for k in range(split.num_classes)])
    loaded, *_ = runner.load_model(runs / name / "model.safetensors")
    loaded.eval()
    with torch.no_grad():
        assert torch.equal(method.scores(images, emb, seen_k), loaded.scores(images, emb, seen_k))


@pytest.mark.parametrize("name", sorted(METHODS))
def test_guard_stops_an_unseen_label(name, tiny_world, tmp_path, monkeypatch):
    cfg = smoke_config(name, tiny_world)
    split = runner.build_data(cfg, progress=False).split
    unseen = split.unseen[0]
    original = StepLoader.batch

    def leaky(self, step):
        out = original(self, step)
        if "label" in out:
            out["label"][..., 0, 0] = unseen  # one pixel of an unseen class
        return out

    monkeypatch.setattr(StepLoader, "batch", leaky)
    if METHODS[name].protocol == "supervised":  # the oracle sees every label by definition
        runner.train(cfg, tmp_path / "run", progress=False)
        return
    with pytest.raises(ProtocolError, match=split.names[unseen]):
        runner.train(cfg, tmp_path / "run", progress=False)
