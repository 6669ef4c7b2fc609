"""PADing: primitive generator, disentanglement and alignment losses, and a strict-protocol fit."""

from __future__ import annotations

import dataclasses
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from zeroseg import runner
from zeroseg.config import load_config
from zeroseg.data.classes import ClassSplit
from zeroseg.data.protocol import assert_seen_only as production_guard
from zeroseg.engine import trainer
from zeroseg.generators.disentangle import Disentangler, alignment_loss, gaussian_kl, relation_kl
from zeroseg.generators.mmd import mmd_loss
from zeroseg.generators.primitive import GeneratorConfig, GMMNGenerator, PrimitiveGenerator
from zeroseg.methods import pading
from zeroseg.metrics.semantic import harmonic_mean

sys.path.insert(0, str(Path(__file__).parent))
from _tiny_mask import FIT_MASK  # noqa: E402

SMALL_GEN = GeneratorConfig(primitives=20, dim=16, layers=2, heads=2, ffn_dim=32, noise_std=1.0)


def test_primitive_generator_shapes_and_noise():
    g = PrimitiveGenerator(SMALL_GEN, embed_dim=6, feature_dim=10)
    sem = torch.randn(4, 6)
    a, b = g(sem), g(sem)
    assert a.shape == (4, 10)
    assert torch.allclose(a.norm(dim=1), torch.ones(4), atol=1e-5)  # unit-norm query embeddings
    assert not torch.allclose(a, b)  # a new noise draw each call
    assert g.primitives.shape == (20, 16)
    gm = GMMNGenerator(SMALL_GEN, embed_dim=6, feature_dim=10)
    assert gm(sem).shape == (4, 10)


def test_primitive_generator_learns_class_conditional_targets():
    # Two classes whose real features sit around two orthogonal unit directions; 100 MMD steps
    # must bring each class's samples to its own cluster (and away from the other).
    torch.set_num_threads(1)
    g = PrimitiveGenerator(SMALL_GEN, embed_dim=4, feature_dim=8)
    sem = torch.eye(4)[:2]
    centres = torch.eye(8)[:2]
    real = [torch.nn.functional.normalize(c + 0.1 * torch.randn(64, 8), dim=1) for c in centres]
    opt = torch.optim.Adam(g.parameters(), lr=3e-3)
    for _ in range(100):
        fake = g(sem.repeat_interleave(32, 0))
        loss = sum(
            mmd_loss(fake[i * 32 : (i + 1) * 32], real[i], pading.UNIT_BANDWIDTHS, root=True)
            for i in range(2)
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        fake = g(sem.repeat_interleave(64, 0)).view(2, 64, 8).mean(1)
    cos = torch.nn.functional.normalize(fake, dim=1) @ centres.T
    assert cos[0, 0] > 0.9 and cos[1, 1] > 0.9
    assert cos[0, 1] < 0.3 and cos[1, 0] < 0.3


def test_relation_kl_hand_case():
    # tau = 1: feature similarities [1, 0] vs semantic [0, 1] -> softmaxes p_f = [e, 1]/(e+1) and
    # p_s = [1, e]/(e+1); KL(p_s || p_f) = (e - 1)/(e + 1) = tanh(1/2).
    fa = torch.tensor([[1.0, 0.0]])
    fb = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    sa = torch.tensor([[1.0, 0.0]])
    sb = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    kl = relation_kl(fa, fb, sa, sb, 1.0, same=False)
    assert kl.item() == pytest.approx(math.tanh(0.5), rel=1e-5)
    # Identical relations give 0; within a group the diagonal is left out (2 classes: a point mass).
    assert relation_kl(fb, fb, fb, fb, 0.1, same=True).item() == pytest.approx(0.0, abs=1e-6)
    assert alignment_loss(fb, fa, fb, fa, 0.1).item() == pytest.approx(0.0, abs=1e-6)


def test_gaussian_kl_and_disentangler():
    u = torch.tensor([[0.0, 2.0], [2.0, 0.0]])  # per dimension mean 1, variance 1
    assert gaussian_kl(u).item() == pytest.approx(0.5, rel=1e-4)  # 0.5 (1 + 1 - 1 - log 1)
    d = Disentangler(8)
    x = torch.randn(6, 8, requires_grad=True)
    out = d.losses(x, torch.tensor([0, 1, 2, 0, 1, 2]), torch.randn(3, 8), 0.1)
    total = out["l_r"] + out["l_u"] + out["l_rec"]
    assert torch.isfinite(total) and out["related"].shape == (6, 8)
    total.backward()
    assert x.grad is not None


def test_ablation_rows_are_checked():
    cfg = pading.PADingConfig()
    split = ClassSplit(names=("a", "b", "c"), unseen=(2,), things=(0,))
    with pytest.raises(ValueError, match="pading-g.*generator.kind=gmmn"):
        pading.PADingG(cfg, split=split, embed_dim=8)


# -- tiny end-to-end fit under the strict protocol ----------------------------------------------------


def _tiny_cfg(world, method: str):
    cfg = load_config(
        {
            "method": method,
            "device": "cpu",
            "data": {
                "dataset": "shapeworld",
                "world": str(world),
                "protocol": "strict",
                "val_limit": 48,
            },
            "text": {"encoder": "attributes", "templates": "none"},
            "train": {"iters": 80, "batch_size": 8, "lr": 0.003, "warmup_iters": 10, "amp": "bf16"},
            "eval": {"batch_size": 48},
            "model": {
                "mask": FIT_MASK,
                "object_threshold": 0.5,
                "generator": {"primitives": 32, "dim": 32, "layers": 2, "heads": 2, "ffn_dim": 32},
                "real_per_class": 16,
                "fake_per_class": 16,
                "generator_train": {
                    "iters": 30,
                    "batch_size": 1,
                    "lr": 0.002,
                    "scheduler": "constant",
                },
                "classifier_train": {
                    "iters": 30,
                    "batch_size": 128,
                    "lr": 0.005,
                    "scheduler": "cosine",
                },
            },
        }
    )
    if method == "mask-projection":  # the baseline has no stage-2/3 options
        cfg.model = {k: cfg.model[k] for k in ("mask", "object_threshold")}
    return cfg


def test_tiny_fit_strict_protocol_no_unseen_reaches_training(tiny_world, tmp_path, monkeypatch):
    torch.set_num_threads(1)
    seen_by_stage: dict[str, int] = {}
    unseen: list[int] = []

    def spy(batch, split, *, stage):
        # Every training batch of stages 1-3: no unseen label, no unseen segment, and (strict)
        # no ignored pixel either: images with unseen pixels were dropped, not masked.
        production_guard(batch, split, stage=stage)  # the real guard runs, then more checks
        unseen[:] = list(split.unseen)
        seen_by_stage[stage] = seen_by_stage.get(stage, 0) + 1
        label = batch["label"]
        assert not np.isin(label.numpy(), split.unseen).any()
        if stage in ("mask-model", "pading-queries"):
            assert not (label == split.ignore_index).any()
            for s in batch["segments"]:
                assert not np.isin(s[:, 1].numpy(), split.unseen).any()

    monkeypatch.setattr(trainer, "assert_seen_only", spy)
    monkeypatch.setattr(pading, "assert_seen_only", spy)

    cfg = _tiny_cfg(tiny_world, "pading")
    data = runner.build_data(cfg, progress=False)
    result = runner.train(cfg, tmp_path / "pading", progress=False, data=data)
    assert set(seen_by_stage) == {"mask-model", "pading-queries", "generator", "classifier"}
    assert any("strict protocol dropped" in n for n in result.notes)
    assert any("unseen class names" in n for n in result.notes)
    detail = result.protocol_detail
    assert detail["unseen_names"] == ["2-3"] and "strict" in detail["training_labels"]
    assert not detail["clip_like"] and not detail["unlabelled_images"]
    # The real query embeddings carry seen classes or no-object only.
    from safetensors.torch import load_file

    [queries] = list((tmp_path / "_shared").glob("mask-model-*/queries.safetensors"))
    labels = load_file(str(queries))["labels"]
    assert not np.isin(labels.numpy(), unseen).any()

    metrics, _, _ = runner.evaluate(
        result.method, cfg, data.val, data.split, result.embed, progress=False
    )
    extra = result.method.extra_metrics(cfg, data, result.embed, progress=False)
    for key in (
        "seen_pq",
        "unseen_pq",
        "hpq",
        "seen_ap50",
        "unseen_ap50",
        "pq",
        "sq",
        "rq",
        "h_ap50",
    ):
        assert key in extra and 0.0 <= extra[key] <= 100.0
    # the headline figures are the harmonic means of their seen and unseen sides
    assert extra["hpq"] == pytest.approx(harmonic_mean(extra["seen_pq"], extra["unseen_pq"]))
    assert extra["h_ap50"] == pytest.approx(harmonic_mean(extra["seen_ap50"], extra["unseen_ap50"]))
    # eval_split: the same figures over val (a --split val demo), test left unread
    on_val = result.method.extra_metrics(cfg, data, result.embed, progress=False, eval_split="val")
    swapped = dataclasses.replace(data, test=data.val)
    assert on_val == result.method.extra_metrics(cfg, swapped, result.embed, progress=False)
    with pytest.raises(ValueError, match="test split was not loaded"):
        result.method.extra_metrics(
            cfg, dataclasses.replace(data, test=None), result.embed, progress=False
        )
    # Learning check: 80 steps on the tiny world already segment the seen classes.
    assert metrics["seen_miou"] > 25.0
    assert extra["seen_pq"] > 15.0

    # The baseline row reuses the shared mask model (no second stage-1 training).
    seen_by_stage.clear()
    base = runner.train(
        _tiny_cfg(tiny_world, "mask-projection"), tmp_path / "mp", progress=False, data=data
    )
    assert "mask-model" not in seen_by_stage
    assert torch.equal(base.method.model.query_feat.weight, result.method.model.query_feat.weight)


@pytest.mark.parametrize(
    "preset, classes, unseen",
    [
        ("pading_r50_50k_coco-panoptic-119+14", 133, 14),
        ("pading_r50_60k_coco-stuff-156+15", 171, 15),
    ],
)
def test_paper_presets_parse_and_build(preset, classes, unseen):
    from zeroseg.data.classes import ClassSplit

    cfg = load_config(preset)
    assert cfg.data.protocol == "strict" and cfg.method == "pading"
    split = ClassSplit(
        names=tuple(f"class {i}" for i in range(classes)),
        unseen=tuple(range(classes - unseen, classes)),
        things=tuple(range(80)),
    )
    method = runner.build_method(cfg, split, 512)
    assert method.cfg.mask.num_queries == 100 and method.cfg.mask.layers == 9
    assert method.generator.primitives.shape == (400, 256)


@pytest.mark.parametrize("name", ["mask-projection", "pading", "pading-g", "pading-p", "pading-pa"])
def test_shapeworld_presets_share_stage_one(name):
    from zeroseg.demo import DEMO_PRESETS

    base = load_config(DEMO_PRESETS["mask-projection"])
    cfg = load_config(DEMO_PRESETS[name])
    assert cfg.method == name and cfg.data.protocol == "strict"
    # Stage 1 is shared only if everything that decides it is identical.
    assert (cfg.data, cfg.text, cfg.train) == (base.data, base.text, base.train)
    assert cfg.model["mask"] == base.model["mask"] and cfg.model.get("match") == base.model.get(
        "match"
    )
