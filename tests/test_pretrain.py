"""Stage-0 CLIP-style pretraining on ShapeWorld: reads only the caption split, and learns."""

from __future__ import annotations

import dataclasses

import torch

from zeroseg import pretrain as P
from zeroseg.data.shapeworld import ShapeWorldDataset, load_spec
from zeroseg.data.shapeworld import world as world_module
from zeroseg.engine.trainer import TrainConfig


def small_cfg(iters: int = 60) -> P.PretrainConfig:
    return P.PretrainConfig(
        image_size=32,
        patch_size=8,
        width=64,
        layers=2,
        heads=2,
        train=TrainConfig(
            iters=iters,
            batch_size=32,
            lr=3e-3,
            weight_decay=0.05,
            scheduler="cosine",
            warmup_iters=5,
            amp="bf16",
            log_every=20,
        ),
    )


def test_reads_only_the_caption_split(tiny_world, tmp_path, monkeypatch):
    splits = []
    real = world_module.load_split

    def spy(spec, split, **kw):
        splits.append(split)
        return real(spec, split, **kw)

    monkeypatch.setattr(world_module, "load_split", spy)
    spec = load_spec(tiny_world)
    P.train_contrastive(spec, small_cfg(iters=2), tmp_path / "stage0", progress=False)
    assert splits == ["caption"]


def test_cache_key_changes_with_config(tiny_world):
    spec = load_spec(tiny_world)
    a = P.pretrain_dir(spec, small_cfg(10))
    b = P.pretrain_dir(spec, small_cfg(11))
    assert a != b and a.parent == b.parent and a.name.startswith(f"tiny-{spec.content_key()}-")


def test_load_or_train_returns_a_frozen_encoder_and_reuses_it(tiny_world):
    spec = load_spec(tiny_world)
    cfg = small_cfg(iters=2)
    enc = P.load_or_train(spec, cfg, progress=False)
    assert not enc.training and not any(p.requires_grad for p in enc.parameters())
    again = P.load_or_train(spec, cfg, progress=False)  # from the cache, same weights
    for (k, v), (_, w) in zip(enc.state_dict().items(), again.state_dict().items()):
        assert torch.equal(v, w), k


def test_retrieval_beats_chance_after_a_short_run(tiny_world, tmp_path):
    torch.manual_seed(0)
    spec = load_spec(tiny_world)
    model = P.train_contrastive(spec, small_cfg(iters=80), tmp_path / "stage0", progress=False)
    data = ShapeWorldDataset(spec, "caption", progress=False)
    text, rows = P.caption_embeddings(list(data.data.captions))
    images = torch.from_numpy(data.data.images).permute(0, 3, 1, 2).contiguous()
    acc = P.retrieval_top_k(model, images, torch.tensor(rows), text, k=5)
    chance = 5 / len(text)  # one right caption among the distinct ones
    assert acc >= 2 * chance and acc >= chance + 0.2, (acc, chance, len(text))


def test_untrained_model_is_near_chance(tiny_world):
    # The same measurement on an untrained encoder: the margin above comes from training.
    spec = load_spec(tiny_world)
    cfg = small_cfg()
    model = P.CaptionContrastive(
        visual=P.VisionTransformer(cfg.vision_config()), logit_scale_init=2.0, logit_scale_max=4.6
    )
    data = ShapeWorldDataset(spec, "caption", progress=False)
    text, rows = P.caption_embeddings(list(data.data.captions))
    images = torch.from_numpy(data.data.images).permute(0, 3, 1, 2).contiguous()
    acc = P.retrieval_top_k(model, images, torch.tensor(rows), text, k=5)
    assert acc < 0.5


def test_config_is_data():
    cfg = P.PretrainConfig()
    assert cfg.vision_config().output_dim == 384 and cfg.vision_config().grid_size == 8
    assert dataclasses.replace(cfg).key() == cfg.key()


def test_encoder_report_never_reads_unseen_training_labels(tiny_world, tmp_path, monkeypatch):
    spec = load_spec(tiny_world)
    visual = P.train_contrastive(spec, small_cfg(iters=20), tmp_path / "s0", progress=False).visual
    classes = torch.nn.functional.normalize(torch.randn(spec.num_classes, 384), dim=-1)

    def report():
        return P.encoder_report(
            visual, spec, classes, train_images=40, val_images=20, probe_steps=30
        )

    first = report()
    assert 0 <= first["retrieval_top5"] <= 100 and 0 <= first["linear_probe_seen_mIoU"] <= 100
    assert set(first["zero_shot"]) == {"seen_miou", "unseen_miou", "hiou"}
    assert (first["eval_split"], first["probe"]["steps"]) == ("test", 30)
    unseen = torch.tensor(spec.class_split().unseen)
    real = ShapeWorldDataset.__getitem__

    def voided(self, i):  # the training split's unseen pixels turned into void
        item = real(self, i)
        if self.split_name == "train":
            item["label"] = torch.where(torch.isin(item["label"], unseen), 255, item["label"])
        return item

    monkeypatch.setattr(ShapeWorldDataset, "__getitem__", voided)
    assert report() == first


def test_cli_pretrain_reports_and_rejects_methods_without_stage0(tiny_world, tmp_path, capsys):
    import json

    import pytest

    from zeroseg.cli import main

    sets = [f"data.world={tiny_world}", "model.pretrain.image_size=32", "model.pretrain.width=64"]
    sets += ["model.pretrain.layers=2", "model.pretrain.heads=2", "model.pretrain.train.iters=5"]
    args = ["pretrain", "--no-progress", "--probe-images", "20", "--out", str(tmp_path / "r.json")]
    assert main(args + [a for s in sets for a in ("--set", s)]) == 0
    out = capsys.readouterr().out
    assert "caption retrieval top-5" in out and "linear probe" in out
    assert "linear_probe_seen_mIoU" in json.loads((tmp_path / "r.json").read_text())
    assert main(["pretrain", "projection_unet-small_2k_shapeworld"]) == 2
    assert "does not start from stage 0" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["pretrain", "--bogus"])
