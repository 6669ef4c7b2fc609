import dataclasses
import shutil

import numpy as np
import pytest
import yaml

from zeroseg.data.shapeworld import (
    ShapeWorldDataset,
    SpecError,
    load_spec,
    load_split,
    parse_spec,
    world_dir,
)
from zeroseg.data.shapeworld.render import render, shape_mask
from zeroseg.data.shapeworld.spec import SHAPES, TEXTURES


def base_spec(**changes):
    d = {
        "name": "t",
        "seed": 0,
        "image_size": 32,
        "train_images": 10,
        "val_images": 5,
        "objects_per_image": [1, 3],
        "things": [
            {"name": "red circle", "color": [220, 40, 40], "shape": "circle"},
            {"name": "blue star", "color": [40, 40, 220], "shape": "star"},
        ],
        "stuff": [{"name": "green grass", "color": [60, 160, 60], "texture": "noise"}],
        "unseen": ["red circle"],
    }
    d.update(changes)
    return d


def test_the_issue_schema_is_accepted():
    spec = parse_spec(base_spec())
    assert spec.class_names == ("red circle", "blue star", "green grass")
    assert spec.class_split().unseen_names == ("red circle",)
    assert spec.class_split().things == (0, 1)


@pytest.mark.parametrize(
    "change, match",
    [
        (
            {"things": [{"name": "x", "color": [1, 2, 3], "shape": "blob"}]},
            "thing 'x': unknown shape 'blob'",
        ),
        (
            {"stuff": [{"name": "y", "color": [1, 2, 3], "texture": "fur"}]},
            "stuff 'y': unknown texture 'fur'",
        ),
        ({"unseen": ["purple cow"]}, "unseen name 'purple cow' is not a class"),
        (
            {"things": [{"name": "z", "color": [1, 2, 300], "shape": "circle"}]},
            r"thing 'z': color \[1, 2, 300\] has 300",
        ),
        (
            {
                "things": [
                    {"name": "dup", "color": [1, 2, 3], "shape": "circle"},
                    {"name": "dup", "color": [1, 2, 3], "shape": "star"},
                ],
                "unseen": [],
            },
            "duplicate class name 'dup'",
        ),
        ({"colour_space": "lab"}, "unknown keys"),
    ],
)
def test_invalid_specs_name_the_entry(change, match):
    with pytest.raises(SpecError, match=match):
        parse_spec(base_spec(**change))


def test_default_world_is_about_a_quarter_unseen_and_compositional():
    spec = load_spec()
    assert len(spec.things) == 36 and len(spec.stuff) == 8
    split = spec.class_split()
    assert 0.2 <= len(split.unseen) / spec.num_classes <= 0.3
    unseen = set(spec.unseen)
    assert any(s.name in unseen for s in spec.stuff) and any(t.name in unseen for t in spec.things)
    seen_things = [t for t in spec.things if t.name not in unseen]
    seen_stuff = [s for s in spec.stuff if s.name not in unseen]
    for t in spec.things:
        if t.name in unseen:  # a new combination of a seen colour and a seen shape
            assert any(s.color == t.color for s in seen_things) and any(
                s.shape == t.shape for s in seen_things
            )
    for st in spec.stuff:
        if st.name in unseen:
            assert any(s.color == st.color for s in seen_stuff) and any(
                s.texture == st.texture for s in seen_stuff
            )


def test_every_builtin_shape_and_texture_renders():
    things = [{"name": f"red {s}", "color": [200, 30, 30], "shape": s} for s in SHAPES]
    stuff = [{"name": f"{t} ground", "color": [100, 100, 100], "texture": t} for t in TEXTURES]
    spec = parse_spec(base_spec(things=things, stuff=stuff, unseen=[], image_size=48))
    for i in range(20):
        render(spec, "train", i)
    for s in SHAPES:
        assert shape_mask(s, 48, 24, 24, 15, 0.3).sum() > 100


def test_rendering_is_deterministic_and_consistent():
    spec = parse_spec(base_spec())
    a, b = render(spec, "train", 3), render(spec, "train", 3)
    assert np.array_equal(a.image, b.image) and a.caption == b.caption
    assert not np.array_equal(render(spec, "val", 3).image, a.image)  # splits differ
    for i in range(30):
        r = render(spec, "train", i)
        # Panoptic segments cover every pixel and agree with the semantic map.
        assert (r.panoptic > 0).all()
        for seg_id, cls, is_thing in r.segments:
            m = r.panoptic == seg_id
            assert m.any() and (r.semantic[m] == cls).all()
            assert bool(is_thing) == (cls < len(spec.things))
        # The caption names every class present.
        for c in np.unique(r.semantic):
            assert spec.class_names[c] in r.caption


def test_stuff_regions_and_objects_vary():
    spec = load_spec()
    stuff_counts, object_counts = set(), set()
    for i in range(60):
        r = render(spec, "train", i)
        stuff_counts.add(int((r.segments[:, 2] == 0).sum()))
        object_counts.add(int((r.segments[:, 2] == 1).sum()))
    assert stuff_counts == {1, 2, 3}
    assert {1, 2, 3, 4} <= object_counts | {0} and len(object_counts) >= 3


def test_cache_key_follows_content(tmp_path, tiny_world):
    spec = load_spec(tiny_world)
    changed = yaml.safe_load(tiny_world.read_text())
    changed["seed"] = 2
    assert parse_spec(changed).content_key() != spec.content_key()
    ds = ShapeWorldDataset(spec, "val", root=tmp_path, progress=False)
    again = ShapeWorldDataset(spec, "val", root=tmp_path, progress=False)  # from the cache
    assert np.array_equal(ds.data.images, again.data.images)
    s = ds[0]
    assert s["image"].shape == (3, 32, 32) and s["label"].shape == (32, 32)
    assert len(ds) == spec.val_images


# Hashes of images 0, 1 and 499 of each split of the default world, recorded with the code before
# the test split existed (commit 6cf5b13): adding a split must not change any existing image.
BEFORE_TEST_SPLIT = {
    "train": "16e8cddedf6280b8",
    "val": "24df7985cda46c34",
    "caption": "a6915b1d5fb632b6",
}


def _split_digest(spec, split: str) -> str:
    import hashlib

    h = hashlib.sha256()
    for i in (0, 1, 499):
        r = render(spec, split, i)
        for part in (r.image, r.semantic, r.panoptic):
            h.update(part.tobytes())
        h.update(r.caption.encode())
    return h.hexdigest()[:16]


def test_train_val_caption_images_are_unchanged_by_the_test_split():
    spec = load_spec()
    assert spec.test_images == 500
    assert {s: _split_digest(spec, s) for s in BEFORE_TEST_SPLIT} == BEFORE_TEST_SPLIT
    # the default world's cache key is the one it had before (cached worlds stay valid)
    assert spec.content_key() == "fc7492da81ed677f"


def test_test_split_is_its_own_seed_stream(tmp_path):
    spec = parse_spec(base_spec(test_images=4))
    for i in range(4):
        t = render(spec, "test", i).image
        assert not any(np.array_equal(t, render(spec, s, i).image) for s in ("train", "val"))
    ds = ShapeWorldDataset(spec, "test", root=tmp_path, progress=False)
    assert len(ds) == 4 and ds[2]["id"] == "t/test/000002"
    assert np.array_equal(ds[2]["image"].permute(1, 2, 0).numpy(), render(spec, "test", 2).image)


def test_test_split_size_is_in_the_file_name_not_the_world_key(tmp_path):
    small, large = parse_spec(base_spec(test_images=3)), parse_spec(base_spec(test_images=6))
    assert small.content_key() == large.content_key()
    a = ShapeWorldDataset(small, "test", root=tmp_path, progress=False)
    b = ShapeWorldDataset(large, "test", root=tmp_path, progress=False)
    # both files live side by side; the first 3 images agree (an image depends on its index only)
    names = sorted(p.name for p in world_dir(small, tmp_path).iterdir())
    assert names == ["test-3.npz", "test-6.npz"]
    assert len(a) == 3 and len(b) == 6
    assert np.array_equal(a.data.images, b.data.images[:3])


def test_spec_without_test_images_gets_as_many_as_val():
    assert parse_spec(base_spec()).test_images == 5
    with pytest.raises(SpecError, match="'test_images' must be an integer >= 1"):
        parse_spec(base_spec(test_images=0))


def test_a_cached_split_of_the_wrong_size_is_refused(tmp_path):
    spec = parse_spec(base_spec())
    load_split(spec, "val", root=tmp_path, progress=False)
    # a foreign file where a 7-image val split is expected (e.g. copied from another world)
    bigger = dataclasses.replace(spec, val_images=7)
    target = world_dir(bigger, tmp_path) / "val.npz"
    target.parent.mkdir(parents=True)
    shutil.copy(world_dir(spec, tmp_path) / "val.npz", target)
    with pytest.raises(RuntimeError, match="holds 5 images, the spec asks for 7"):
        load_split(bigger, "val", root=tmp_path, progress=False)
