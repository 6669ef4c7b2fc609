"""The mask family under the ``ignore`` protocol: the production guard runs on every training
batch, unseen pixels arrive as ignore (255) and the set loss treats them as unknown."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from zeroseg import runner
from zeroseg.config import load_config
from zeroseg.data import protocol
from zeroseg.engine import trainer
from zeroseg.models import matching

sys.path.insert(0, str(Path(__file__).parent))
from _tiny_mask import TINY_MASK  # noqa: E402


def _cfg(world, method: str):
    model = {
        "mask": TINY_MASK,
        "object_threshold": 0.5,
    }
    if method == "pading":
        model |= {
            "generator": {"primitives": 8, "dim": 16, "layers": 1, "heads": 2, "ffn_dim": 16},
            "real_per_class": 4,
            "fake_per_class": 4,
            "generator_train": {"iters": 4, "batch_size": 1, "log_every": 2},
            "classifier_train": {"iters": 4, "batch_size": 32, "log_every": 2},
        }
    return load_config(
        {
            "method": method,
            "device": "cpu",
            "data": {"dataset": "shapeworld", "world": str(world), "protocol": "ignore"},
            "text": {"encoder": "attributes", "templates": "none"},
            "train": {"iters": 6, "batch_size": 8, "lr": 0.003, "log_every": 3},
            "eval": {"batch_size": 48},
            "model": model,
        }
    )


def test_ignore_protocol_fit_runs_the_production_guard(tiny_world, tmp_path, monkeypatch):
    torch.set_num_threads(1)
    guarded: dict[str, int] = {}
    unknown_targets: list[int] = []
    real_guard = protocol.assert_seen_only

    def counting_guard(batch, split, *, stage):
        real_guard(batch, split, stage=stage)  # the production guard itself, unchanged
        guarded[stage] = guarded.get(stage, 0) + 1

    real_targets = matching.batch_targets

    def watch_targets(batch, lookup, size, device):
        out = real_targets(batch, lookup, size, device)
        unknown_targets.extend(int(t.valid is not None) for t in out)
        return out

    monkeypatch.setattr(trainer, "assert_seen_only", counting_guard)
    monkeypatch.setattr("zeroseg.methods.mask_model.batch_targets", watch_targets)
    cfg = _cfg(tiny_world, "pading")
    data = runner.build_data(cfg, progress=False)
    result = runner.train(cfg, tmp_path / "pading", progress=False, data=data)
    assert guarded.get("mask-model") == 6 and "classifier" in guarded
    # Some training images held unseen objects, now ignore pixels: their targets carry the
    # unknown-pixel map; the others none (so they are trained exactly as under strict).
    assert 0 < sum(unknown_targets) < len(unknown_targets)
    assert any("'ignore' protocol" in n for n in result.notes)
    assert "ignore" in result.protocol_detail["training_labels"]
    # Both stages' loss curves are read for a plateau and reported.
    assert sum("loss" in n and "over 4 steps" in n for n in result.notes) == 2
    for stage in ("generator", "classifier"):
        [report] = list((tmp_path / "pading").rglob(f"{stage}/plateau.json"))
        assert json.loads(report.read_text())["steps"] == [2, 4]
    # Run again into the same directory, every stage is loaded (the generator's not even that: the
    # finished classifier holds it); both curves are still reported, so the notes are the same.
    again = runner.train(cfg, tmp_path / "pading", progress=False, data=data)
    assert [n for n in again.notes if "loss" in n] == [n for n in result.notes if "loss" in n]


def test_ignore_presets_share_their_stage_one_and_differ_from_strict_only_in_protocol():
    from zeroseg.demo import DEMO_PRESETS, baselines_of

    base = load_config(DEMO_PRESETS["mask-projection-ignore"])
    cfg = load_config(DEMO_PRESETS["pading-ignore"])
    strict = load_config(DEMO_PRESETS["pading"])
    assert (base.method, cfg.method) == ("mask-projection", "pading")
    assert base.data.protocol == cfg.data.protocol == "ignore"
    assert (cfg.data, cfg.text, cfg.train) == (base.data, base.text, base.train)
    assert cfg.model["mask"] == base.model["mask"] and cfg.model["match"] == base.model["match"]
    assert baselines_of("pading-ignore") == ("pading", "mask-projection-ignore")
    strict.data.protocol = "ignore"
    assert (strict.data, strict.model) == (cfg.data, cfg.model)
