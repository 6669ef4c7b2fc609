"""Shared fixtures: an isolated cache, and a tiny ShapeWorld that trains in seconds."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

TINY_WORLD = """\
name: tiny
seed: 1
image_size: 32
train_images: 640
val_images: 96
caption_images: 64
objects_per_image: [1, 2]
things:
  - {name: red circle, color: [220, 40, 40], shape: circle}
  - {name: blue circle, color: [50, 90, 220], shape: circle}
  - {name: red square, color: [220, 40, 40], shape: square}
  - {name: blue square, color: [50, 90, 220], shape: square}
  - {name: yellow triangle, color: [225, 205, 40], shape: triangle}
stuff:
  - {name: flat gray ground, color: [130, 130, 130], texture: flat}
  - {name: striped brown ground, color: [120, 80, 45], texture: stripes}
unseen: [blue square]
variation: {size: [0.4, 0.7], stuff_regions: [1, 2]}
"""


@pytest.fixture(scope="session", autouse=True)
def isolated_cache(tmp_path_factory):
    """Worlds and embeddings are cached under a session temp dir, never in the user's cache."""
    root = tmp_path_factory.mktemp("zeroseg-cache")
    old = os.environ.get("ZEROSEG_CACHE")
    os.environ["ZEROSEG_CACHE"] = str(root)
    yield root
    if old is None:
        os.environ.pop("ZEROSEG_CACHE", None)
    else:
        os.environ["ZEROSEG_CACHE"] = old


@pytest.fixture(scope="session")
def benchmark_script():
    """Loads ``benchmarks/<name>.py`` as a module (the scripts are not a package)."""
    import importlib.util

    def load(name: str):
        path = Path(__file__).resolve().parent.parent / "benchmarks" / f"{name}.py"
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("worlds") / "tiny.yaml"
    path.write_text(TINY_WORLD)
    return path


@pytest.fixture
def test_split_forbidden(monkeypatch):
    """A context manager within which loading any ShapeWorld ``test`` split fails the test: for
    code that must never read the reported split (``demo --split val``, val-only scripts)."""
    import contextlib

    from zeroseg.data.shapeworld import world as world_module

    load = world_module.load_split

    def no_test(spec, split, **kwargs):
        assert split != "test", f"the test split of {spec.name!r} was loaded"
        return load(spec, split, **kwargs)

    @contextlib.contextmanager
    def forbidden():
        with monkeypatch.context() as m:
            m.setattr(world_module, "load_split", no_test)
            yield

    return forbidden


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def demo_run(tiny_world, tmp_path_factory) -> Path:
    """``zeroseg demo`` on the tiny world (projection and oracle, 300 steps), shared by the
    end-to-end tests and ``zeroseg serve``'s (its ``runs/`` is laid out as ``make demo``'s)."""
    from zeroseg.cli import main

    out = tmp_path_factory.mktemp("demo")
    args = ["demo", "--world", str(tiny_world), "--methods", "projection", "oracle"]
    args += ["--out", str(out), "--no-progress"]
    assert main([*args, "--set", "train.iters=300", "--set", "eval.batch_size=32"]) == 0
    return out


def _reference_semantic_metrics(preds, labels, seen, unseen, ignore_index: int = 255) -> dict:
    """mIoU / seen / unseen / hIoU (percent) computed class by class from boolean masks, apart
    from zeroseg.metrics: the reference a run's reported figures are compared against.

    A class's IoU counts where it occurs in the ground truth or the prediction (void pixels left
    out); the harmonic mean is 0 when either side is 0."""
    pred = np.concatenate([np.asarray(p).reshape(-1) for p in preds])
    label = np.concatenate([np.asarray(t).reshape(-1) for t in labels])
    assert pred.shape == label.shape
    valid = label != ignore_index
    pred, label = pred[valid], label[valid]
    iou = {}
    for c in set(seen) | set(unseen):
        inter = np.sum((pred == c) & (label == c))
        union = np.sum((pred == c) | (label == c))
        if union:
            iou[c] = inter / union * 100

    def mean(classes) -> float:
        vals = [iou[c] for c in classes if c in iou]
        return float(np.mean(vals)) if vals else 0.0

    s, u = mean(seen), mean(unseen)
    return {
        "miou": mean(iou),
        "seen_miou": s,
        "unseen_miou": u,
        "hiou": 0.0 if s <= 0 or u <= 0 else 2 * s * u / (s + u),
    }


@pytest.fixture(scope="session")
def reference_semantic_metrics():
    """The function :func:`_reference_semantic_metrics`."""
    return _reference_semantic_metrics


def _check_neutral_default(
    preset: str, key: str, changed: str, overrides: tuple[str, ...] = ()
) -> None:
    """An option at its neutral default keeps the run identities recorded before it existed:
    ``preset``'s resolved config (every default filled in, as run.json; with ``overrides``, e.g.
    the option set back to its neutral default where the preset now sets it) hashes the same with
    the option's ``key`` (a dotted path, e.g. ``model.pooled``) deleted, and the override
    ``changed`` (``key=value``) gives another hash."""
    import json

    from zeroseg.config import load_config
    from zeroseg.engine.rundir import config_hash
    from zeroseg.runner import check_config

    resolved = check_config(load_config(preset, list(overrides)))
    before = json.loads(json.dumps(resolved, default=str))
    *path, last = key.split(".")
    node = before
    for part in path:
        node = node[part]
    del node[last]  # as recorded before the option existed
    assert config_hash(resolved) == config_hash(before), preset
    changed_cfg = load_config(preset, [*overrides, changed])
    assert config_hash(check_config(changed_cfg)) != config_hash(resolved), preset


@pytest.fixture
def neutral_default():
    """:func:`_check_neutral_default`, for tests of options that must not change old runs."""
    return _check_neutral_default
