"""The contract every registered method keeps, checked on each one from its ShapeWorld preset:

- a two-step fit of every stage on the tiny world, through the production path (``runner.train``,
  the protocol guard on);
- ``scores`` of shape (B, K, H, W) over the split's vocabulary (unseen names included), and over
  one with a name no split has (or a one-line refusal naming the method);
- a save/load round trip that gives the same scores;
- the guard stopping training when an unseen label is injected into a batch (every method but the
  oracle, which is supervised by definition).
"""

from __future__ import annotations

import functools

import pytest
import torch

from zeroseg import runner
from zeroseg.config import PRESET_DIR, load_config
from zeroseg.data.loader import StepLoader, iterate_eval
from zeroseg.data.protocol import ProtocolError
from zeroseg.methods import METHODS

pytestmark = pytest.mark.slow


@functools.cache
def shapeworld_presets() -> dict[str, list[tuple[bool, bool, str]]]:
    """Method name -> its ShapeWorld presets (resolved, ``base:`` included), demo rows first."""
    found: dict[str, list[tuple[bool, bool, str]]] = {}
    for path in sorted(PRESET_DIR.glob("*.yaml")):
        cfg = load_config(path.stem)
        if cfg.data.dataset == "shapeworld":
            # demo rows first; a protocol variant (mask-projection-ignore runs the
            # mask-projection method too) only when the method has nothing else
            rank = (not cfg.demo.row, path.stem.split("_")[0].endswith("-ignore"))
            found.setdefault(cfg.method, []).append((*rank, path.stem))
    return found


def shapeworld_preset(name: str) -> str:
    """The method's ShapeWorld preset: its demo row's when it has several."""
    found = shapeworld_presets().get(name)
    assert found, f"method {name!r} has no ShapeWorld preset"
    return min(found)[-1]


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
        *[f"model.{path}.iters=2" for path in cls.model_schedules()],
        *[f"model.{path}.batch_size=2" for path in cls.model_schedules()],
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

    # the split's vocabulary, unseen names included
    emb = result.embed(split.names)
    seen_k = torch.tensor([k in split.seen for k in range(split.num_classes)])
    method.eval()
    with torch.no_grad():
        out = method.scores(images, emb, seen_k)
    assert out.shape == (2, split.num_classes, *images.shape[-2:])
    assert torch.isfinite(out.float()).all()
    # the labels (what predict returns; ZegCLIP's own path upsamples only classes that can win)
    with torch.no_grad():
        assert torch.equal(method.labels(images, emb, seen_k), out.argmax(1))

    # a name of no split: scored, or refused with an error that names the method (PADing's
    # retrained classifier covers its split's classes only)
    names = [*split.names, "violet spiral"]
    try:
        with torch.no_grad():
            out = method.scores(
                images, result.embed(names), torch.cat([seen_k, torch.tensor([False])])
            )
    except ValueError as e:
        assert name in str(e)
    else:
        assert out.shape == (2, len(names), *images.shape[-2:])
        assert torch.isfinite(out.float()).all()

    # save/load round trip: the same weights, and the same scores to float rounding (PADing
    # trains with its mask model frozen, requires_grad off, which may select other attention
    # kernels than the reloaded model's)
    loaded, *_ = runner.load_model(runs / name / "model.safetensors")
    ours, theirs = method.state_dict(), loaded.state_dict()
    assert ours.keys() == theirs.keys()
    for key, value in ours.items():
        assert torch.equal(value.cpu(), theirs[key].cpu()), key
    # both evaluate with the preset's weight layout (eval.channels_last), saved in the usual one
    fmt = torch.channels_last if cfg.eval.channels_last else torch.contiguous_format
    for model in (method, loaded):
        for key, p in model.named_parameters():
            assert p.dim() != 4 or p.is_contiguous(memory_format=fmt), key
    loaded.eval()
    with torch.no_grad():
        torch.testing.assert_close(
            method.scores(images, emb, seen_k),
            loaded.scores(images, emb, seen_k),
            rtol=1e-5,
            atol=1e-6,
        )


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
