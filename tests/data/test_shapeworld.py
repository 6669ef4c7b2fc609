import numpy as np
import pytest
import yaml

from zeroseg.data.shapeworld import ShapeWorldDataset, SpecError, load_spec, parse_spec
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
