"""RunContext's records of what a row used (report.json's protocol_detail)."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from zeroseg.data.shapeworld import ShapeWorldDataset, load_spec
from zeroseg.data.shapeworld.world import caption_images_with_unseen
from zeroseg.methods.base import RunContext
from zeroseg.runner import protocol_detail


def _ctx(world=None, protocol="ignore") -> RunContext:
    split = load_spec().class_split() if world is None else world.class_split()
    cfg = SimpleNamespace(data=SimpleNamespace(protocol=protocol))
    return RunContext(
        cfg=cfg,
        directory=None,
        split=split,
        train_set=None,
        train_images=None,
        embed=lambda names: torch.zeros(len(names), 2),
        device=torch.device("cpu"),
        world=world,
    )


def test_unseen_names_are_recorded_once_per_stage_with_a_note():
    ctx = _ctx()
    emb = ctx.all_embeddings(reason="a generator", stage="2-3")
    assert emb.shape == (ctx.split.num_classes, 2)
    ctx.uses_unseen_names(reason="again", stage="2-3")
    ctx.uses_unseen_names(reason="pseudo-labels", stage="5")
    assert ctx.unseen_name_stages == ["2-3", "5"]
    assert ctx.notes == [
        "uses unseen class names in stage 2-3: a generator",
        "uses unseen class names in stage 5: pseudo-labels",
    ]


def test_captioned_encoder_counts_captions_naming_unseen_classes(tiny_world):
    spec = load_spec(tiny_world)
    ctx = _ctx(spec)
    ctx.pretrained_encoder("stage 0")
    ctx.pretrained_encoder("stage 0")  # recorded once
    captions = ShapeWorldDataset(spec, "caption", progress=False)
    unseen_names = spec.class_split().unseen_names
    naming = sum(any(n in c for n in unseen_names) for c in captions.data.captions)
    assert caption_images_with_unseen(spec) == (naming, len(captions)) and naming > 0
    assert ctx.encoders == [
        {
            "encoder": "stage 0",
            "captions_name_unseen": True,
            "caption_images": 64,
            "caption_images_naming_unseen": naming,
        }
    ]
    real = _ctx()
    real.world = None
    real.pretrained_encoder("CLIP ViT-B/16")
    assert real.encoders[0]["captions_name_unseen"] is True


def test_protocol_detail_words():
    method = SimpleNamespace(protocol="transductive")
    ctx = _ctx(protocol="strict")
    ctx.uses_unseen_names(reason="r", stage="5")
    d = protocol_detail(method, ctx)
    assert d == {
        "category": "transductive",
        "training_labels": "seen classes only; images with any unseen pixel dropped (strict)",
        "unseen_names": ["5"],
        "captioned_encoder": [],
        "clip_like": False,
        "unlabelled_images": True,
    }
    oracle = protocol_detail(SimpleNamespace(protocol="supervised"), _ctx())
    assert oracle["training_labels"].startswith("every class") and not oracle["unseen_names"]
