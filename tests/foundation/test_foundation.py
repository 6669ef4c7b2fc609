"""The ShapeWorld foundation: captions as its only supervision, the shipped file, and loading it."""

from __future__ import annotations

import dataclasses
import json
import shutil

import pytest
import torch

from zeroseg.config import ConfigError
from zeroseg.data.shapeworld import ShapeWorldDataset, load_spec
from zeroseg.engine.checkpoint import CheckpointError
from zeroseg.foundation import (
    SHIPPED,
    Foundation,
    file_sha256,
    load_foundation,
    read_sidecar,
    write_foundation,
)
from zeroseg.foundation.build import pretrain_foundation
from zeroseg.foundation.train import FoundationConfig, caption_tables, excluded_classes
from zeroseg.foundation.web import check_world_in_range, web_spec
from zeroseg.models.backbones.small import SmallUNetConfig
from zeroseg.report import cpu_info

TINY_WEB = """\
name: tiny-web
seed: 3
image_size: 32
caption_images: 64
objects_per_image: [1, 2]
variation: {size: [0.4, 0.7], stuff_regions: [1, 2]}
colors:
  red: [220, 40, 40]
  blue: [50, 90, 220]
  yellow: [225, 205, 40]
  gray: [130, 130, 130]
  brown: [120, 80, 45]
"""


@pytest.fixture(scope="module")
def tiny_web(tmp_path_factory):
    path = tmp_path_factory.mktemp("web") / "web.yaml"
    path.write_text(TINY_WEB)
    return path


def test_every_shipped_world_name_is_in_the_web_vocabulary():
    web = set(web_spec().class_names)
    shipped = sorted((SHIPPED.parents[1] / "data/shapeworld/worlds").glob("*.yaml"))
    assert {p.stem for p in shipped} >= {"second", "dev", "third"}
    for world in (load_spec(None), *(load_spec(p) for p in shipped)):
        missing = [n for n in world.class_names if n not in web]
        assert missing == [], f"{world.name}: names the foundation's captions never say: {missing}"


def test_presence_is_exactly_what_each_caption_names(tiny_web):
    web = web_spec(tiny_web)
    data = ShapeWorldDataset(web, "caption", progress=False)
    presence, captions = caption_tables(web, data.data.segments, len(data), set())
    assert captions == list(data.data.captions)  # nothing excluded: the rendered captions
    for i, caption in enumerate(captions):
        named = {k for k, n in enumerate(web.class_names) if n in caption}
        assert set(presence[i].nonzero().flatten().tolist()) == named, caption


def test_excluded_names_leave_captions_and_targets(tiny_web, tiny_world):
    web = web_spec(tiny_web)
    world = load_spec(tiny_world)  # unseen: blue square
    excluded = excluded_classes(web, world)
    assert [web.class_names[k] for k in excluded] == ["blue square"]
    data = ShapeWorldDataset(web, "caption", progress=False)
    presence, captions = caption_tables(web, data.data.segments, len(data), excluded)
    k = next(iter(excluded))
    shown = [i for i in range(len(data)) if (data.data.semantic[i] == k).any()]
    assert shown, "the fixture should show a blue square somewhere"
    assert presence[:, k].sum() == 0
    assert not any("blue square" in c for c in captions)
    # the images that show it stay in, and their other names are still said
    assert all(presence[i].sum() > 0 for i in shown)


def test_captions_with_every_ground_or_every_name_excluded(tiny_web):
    # A default-world exclusion can remove all of an image's grounds (its unseen classes include
    # textures): the caption then names the things alone, or says "a scene." when nothing is left.
    web = web_spec(tiny_web)
    data = ShapeWorldDataset(web, "caption", progress=False)
    grounds = set(range(len(web.things), web.num_classes))
    presence, captions = caption_tables(web, data.data.segments, len(data), grounds)
    assert presence[:, sorted(grounds)].sum() == 0
    for i, caption in enumerate(captions):
        things = presence[i].nonzero().flatten().tolist()
        assert " on " not in caption and "scene of" not in caption, caption
        assert {k for k, n in enumerate(web.class_names) if n in caption} == set(things), caption
    everything = set(range(web.num_classes))
    _, captions = caption_tables(web, data.data.segments, len(data), everything)
    assert set(captions) == {"a scene."}


def test_a_world_outside_the_foundations_range_is_named(tmp_path, tiny_web):
    web = web_spec(tiny_web)
    narrow = dataclasses.replace(web, things=tuple(t for t in web.things if t.shape != "ring"))
    world = load_spec(None)  # has rings
    with pytest.raises(ConfigError, match=r"'ring'.*zeroseg pretrain foundation"):
        check_world_in_range(world, narrow)
    check_world_in_range(world, web)  # the full web covers it


def _tiny_overrides(tiny_web) -> list[str]:
    return [
        f"web={tiny_web}",
        "train.iters=4",
        "train.batch_size=16",
        "train.warmup_iters=1",
        "train.ckpt_every=2",
        "scales=[32, 40]",
    ]


def test_pretraining_is_deterministic_and_writes_a_checked_sidecar(tmp_path, tiny_web, tiny_world):
    kw = dict(report_worlds=[str(tiny_world)], probe_images=32, probe_steps=30, progress=False)
    a = pretrain_foundation(overrides=_tiny_overrides(tiny_web), out=tmp_path / "a", **kw)
    b = pretrain_foundation(overrides=_tiny_overrides(tiny_web), out=tmp_path / "b", **kw)
    assert a["sha256"] == b["sha256"]
    path = tmp_path / "a" / SHIPPED.name
    assert file_sha256(path) == a["sha256"] == read_sidecar(path)["sha256"]
    for key in ("command", "config", "config_hash", "quality", "architecture", "train_seconds"):
        assert key in a
    assert a["cpu"] == cpu_info()  # the CPU type the weights were made on
    quality = a["quality"][str(tiny_world)]
    assert (quality["eval_split"], quality["eval_images"]) == ("test", 96)
    model = load_foundation(path)
    assert isinstance(model, Foundation)
    # the loaded weights are the trained ones, not a fresh initialisation
    fresh = Foundation(model.cfg)
    assert not torch.equal(fresh.head.proj[-1].weight, model.head.proj[-1].weight)


def test_a_damaged_foundation_file_is_refused(tmp_path):
    model = Foundation()
    path = tmp_path / "f.safetensors"
    write_foundation(model, path, {"name": "test"})
    load_foundation(path)
    raw = bytearray(path.read_bytes())
    raw[-100] ^= 0xFF  # a byte inside a tensor
    path.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="sha256"):
        load_foundation(path)


def test_the_shipped_foundation_loads_and_matches_its_sidecar_and_the_code():
    side = read_sidecar(SHIPPED)
    assert file_sha256(SHIPPED) == side["sha256"]
    assert SHIPPED.stat().st_size <= 16 * 2**20
    # the code's default config is the one the shipped weights were made with
    assert FoundationConfig().key() == side["config_hash"]
    assert side["command"].startswith("zeroseg pretrain foundation")
    model = load_foundation("shipped")
    assert json.loads(json.dumps(dataclasses.asdict(model.cfg))) == side["architecture"]
    assert set(side["quality"]) == {"default", "second"}
    json.dumps(side)


EXCLUDED = "shapeworld-foundation-exclude-default"


def test_the_shipped_exclude_foundation_never_named_the_default_worlds_unseen_classes():
    # The ablation foundation (zeroseg pretrain foundation --exclude default --ship): the same
    # config as the shipped one but for `exclude`, its captions without the default world's
    # unseen names; a run that starts from it reports that its captions did not name them.
    from zeroseg.methods.base import RunContext

    path = SHIPPED.with_name(f"{EXCLUDED}.safetensors")
    side = read_sidecar(EXCLUDED)
    assert file_sha256(path) == side["sha256"] and path.stat().st_size <= 16 * 2**20
    assert side["command"] == "zeroseg pretrain foundation --exclude default"
    default = load_spec(None)
    assert sorted(side["excluded"]) == sorted(default.class_split().unseen_names)
    cfg = dataclasses.replace(FoundationConfig(), exclude="default")
    assert cfg.key() == side["config_hash"]
    assert side["config_hash"] != read_sidecar(SHIPPED)["config_hash"]
    model = load_foundation(EXCLUDED)
    shipped = load_foundation("shipped")
    assert not torch.equal(model.head.proj[-1].weight, shipped.head.proj[-1].weight)
    second = load_spec(SHIPPED.parents[1] / "data/shapeworld/worlds/second.yaml")
    for world, names_unseen in ((default, False), (second, True)):
        ctx = RunContext(
            cfg=None,
            directory=None,
            split=world.class_split(),
            train_set=None,
            train_images=None,
            embed=None,
            device=torch.device("cpu"),
            world=world,
        )
        ctx.uses_foundation(EXCLUDED)
        assert ctx.encoders[0]["captions_name_unseen"] is names_unseen, world.name
        assert ctx.foundation["excluded"] == side["excluded"]


def test_methods_load_the_foundation_strictly(tmp_path):
    from zeroseg.data.classes import ClassSplit
    from zeroseg.methods.base import RunContext
    from zeroseg.methods.projection import Projection, ProjectionConfig

    model = Foundation()
    torch.nn.init.normal_(model.head.proj[-1].weight)
    path = tmp_path / "f.safetensors"
    write_foundation(model, path, {"name": "test"})
    split = ClassSplit.from_names(["a", "b", "c"], ["c"])
    method = Projection(ProjectionConfig(foundation=str(path)), split=split, embed_dim=384)
    ctx = RunContext(
        cfg=None,
        directory=tmp_path,
        split=split,
        train_set=None,
        train_images=None,
        embed=None,
        device=torch.device("cpu"),
    )
    ctx.start_from_foundation(str(path), method.backbone, method.head)
    assert torch.equal(method.head.proj[-1].weight, model.head.proj[-1].weight)
    assert ctx.foundation["sha256"] == file_sha256(path)
    assert "unseen classes" in ctx.notes[-1]
    narrow = Projection(
        ProjectionConfig(backbone=SmallUNetConfig(widths=(8, 16, 32, 64))),
        split=split,
        embed_dim=384,
    )
    with pytest.raises(ConfigError, match="does not match the foundation"):
        ctx.start_from_foundation(str(path), narrow.backbone, narrow.head)


def test_the_shipped_file_is_found_when_copied_elsewhere(tmp_path):
    # a user can keep a foundation anywhere: the sidecar travels beside it
    dst = tmp_path / "mine.safetensors"
    shutil.copy(SHIPPED, dst)
    shutil.copy(SHIPPED.with_suffix(".json"), dst.with_suffix(".json"))
    assert load_foundation(dst) is not None


def test_a_frozen_backbone_keeps_the_foundations_weights_and_statistics(tiny_world, tmp_path):
    from zeroseg.config import load_config
    from zeroseg.foundation import load_foundation
    from zeroseg.runner import train

    cfg = load_config(
        "projection-frozen_unet-small_2k_shapeworld", [f"data.world={tiny_world}", "train.iters=5"]
    )
    method = train(cfg, tmp_path / "run", progress=False).method
    found = load_foundation("shipped")
    for name, value in found.backbone.state_dict().items():
        assert torch.equal(method.backbone.state_dict()[name], value), name
    assert not torch.equal(method.head.proj[-1].weight, found.head.proj[-1].weight)  # trained


def test_the_probe_trains_the_heads_last_layer_and_text_map_only(
    tiny_world, tmp_path, neutral_default
):
    import pytest

    from zeroseg.config import load_config
    from zeroseg.foundation import load_foundation
    from zeroseg.methods.pixel_projection import ProjectionConfig
    from zeroseg.runner import train

    cfg = load_config(
        "projection-probe_unet-small_2k_shapeworld", [f"data.world={tiny_world}", "train.iters=5"]
    )
    method = train(cfg, tmp_path / "run", progress=False).method
    found = load_foundation("shipped")
    start = {
        **found.backbone.state_dict(),
        **{f"head.{k}": v for k, v in found.head.state_dict().items()},
    }
    state = {
        **method.backbone.state_dict(),
        **{f"head.{k}": v for k, v in method.head.state_dict().items()},
    }
    moved = {name for name, value in start.items() if not torch.equal(state[name], value)}
    # the last 1x1 layer and the text-side map train; the 3x3 layer and its batch-norm
    # statistics stay the foundation's (projection-frozen trains them)
    assert moved == {
        "head.proj.3.weight",
        "head.proj.3.bias",
        "head.text_proj.weight",
        "head.log_scale",
    }
    method.train()
    assert not method.head.proj[1].training and not method.backbone.training
    neutral_default(
        "projection-frozen_unet-small_2k_shapeworld",
        "model.freeze_head_hidden",
        "model.freeze_head_hidden=true",
    )
    with pytest.raises(ValueError, match="freeze_head_hidden"):
        ProjectionConfig(foundation="shipped", freeze_head_hidden=True)  # backbone not frozen


@pytest.mark.parametrize("preset", ["mask-projection", "alignzeg"])
def test_the_mask_familys_text_map_starts_as_the_foundations_text_side(
    preset, tiny_world, tmp_path, neutral_default
):
    from zeroseg.config import load_config
    from zeroseg.runner import train

    name = f"{preset}_unet-small_1k_shapeworld"
    tiny = ["model.mask.hidden_dim=32", "model.mask.num_queries=8", "model.mask.layers=2"]
    common = [f"data.world={tiny_world}", "train.iters=3", "train.batch_size=4", *tiny]
    found = load_foundation("shipped")
    t = torch.randn(5, found.head.text_proj.in_features)
    frozen = train(
        load_config(name, [*common, "model.mask.text_map=frozen"]),
        tmp_path / "frozen",
        progress=False,
    ).method
    # the queries are matched against the foundation's own class side, which stays as loaded
    assert torch.equal(frozen.model.text_map.weight, found.head.text_proj.weight)
    side = torch.nn.functional.normalize(frozen.model.class_vectors(t), dim=-1)
    assert torch.allclose(side, found.head.text_side(t), atol=1e-6)
    learned = train(
        load_config(name, [*common, "model.mask.text_map=learned"]),
        tmp_path / "learned",
        progress=False,
    ).method
    assert not torch.equal(learned.model.text_map.weight, found.head.text_proj.weight)
    # the option off ("none", the presets' value before session 50) keeps the older runs' identities
    none = ("model.mask.text_map=none",)
    neutral_default(name, "model.mask.text_map", "model.mask.text_map=frozen", none)


def test_the_mask_familys_text_map_needs_the_foundation_and_a_known_value():
    from zeroseg.methods.mask_model import MaskModelMethod, MaskProjectionConfig
    from zeroseg.models.heads.mask_decoder import MaskClassifier, MaskModelConfig

    # off, the class side is the embeddings themselves, not a re-normalised copy: a copy differs
    # in the last bits, and one seed's AlignZeg then trained to 56.4 hIoU instead of 64.1
    t = torch.randn(5, 16)
    assert (
        MaskClassifier(MaskModelConfig(hidden_dim=8, mask_dim=8), embed_dim=16).class_vectors(t)
        is t
    )

    with pytest.raises(ValueError, match="text_map must be one of"):
        MaskModelConfig(text_map="foundation")
    cfg = MaskProjectionConfig(mask=MaskModelConfig(text_map="frozen"), foundation=None)
    with pytest.raises(ConfigError, match="text_map 'frozen' needs the ShapeWorld foundation"):
        MaskModelMethod(cfg, split=None, embed_dim=384)
