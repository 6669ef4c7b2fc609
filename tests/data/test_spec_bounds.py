"""Spec values are bounded before any work; names cannot leave the cache; doubtful specs warn."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import time

import pytest
import yaml

from zeroseg.data.shapeworld import load_spec, parse_spec, world_dir
from zeroseg.data.shapeworld.spec import SpecError, SpecWarning, max_objects, spec_warnings
from zeroseg.metrics.semantic import SemanticEvaluator
from zeroseg.paths import cache_dir

BASE = {
    "name": "w",
    "image_size": 64,
    "train_images": 10,
    "val_images": 4,
    "things": [
        {"name": "red circle", "color": [220, 40, 40], "shape": "circle"},
        {"name": "blue square", "color": [50, 90, 220], "shape": "square"},
        {"name": "red square", "color": [220, 40, 40], "shape": "square"},
    ],
    "stuff": [{"name": "gray ground", "color": [130, 130, 130], "texture": "flat"}],
    "unseen": ["red square"],
}


def _spec(**changes):
    return parse_spec({**BASE, **changes}, source="w.yaml")


@pytest.mark.parametrize(
    "changes, message",
    [
        (
            {"objects_per_image": [1000000, 1000000]},
            "w.yaml: objects_per_image [1000000, 1000000] exceeds what a 64x64 image holds with "
            "objects of at least 0.25 of its side each keeping 0.35 of its area visible: at most 64",
        ),
        ({"image_size": 100000}, "w.yaml: image_size must be 16-1024, got 100000"),
        (
            {"train_images": 10**12},
            "w.yaml: train_images must be at most 131072 at image_size 64 (a split is held in "
            "memory, 4 GiB at most), got 1000000000000",
        ),
        (
            {"variation": {"size": [0.5, 3.0]}},
            "w.yaml: variation.size must lie in [0.02, 1.0] (a fraction of the image side), "
            "got [0.5, 3.0]",
        ),
        ({"variation": {"min_visible": 2}}, "w.yaml: variation.min_visible must be 0-1, got 2.0"),
    ],
)
def test_out_of_bounds_values_fail_at_once_naming_file_and_key(changes, message):
    t = time.perf_counter()
    with pytest.raises(SpecError) as e:
        _spec(**changes)
    assert str(e.value) == message
    assert time.perf_counter() - t < 1.0


def test_objects_bound_follows_image_area():
    assert max_objects(_spec()) == 64  # 1 / (0.5 * 0.25**2 * 0.35) = 91 fits, capped at 64
    big = _spec(variation={"size": [0.5, 0.9], "min_visible": 0.5})
    assert max_objects(big) == 16  # 1 / (0.5 * 0.5**2 * 0.5)
    with pytest.raises(SpecError, match="at most 16"):
        _spec(variation={"size": [0.5, 0.9], "min_visible": 0.5}, objects_per_image=[1, 17])


@pytest.mark.parametrize("name", ["../../outside", "a/b", "..", ".hidden", "x" * 65, "a b"])
def test_world_names_that_could_leave_the_cache_are_refused(name):
    with pytest.raises(SpecError, match=f"name {name!r} must be 1-64 letters"):
        _spec(name=name)


def test_world_dir_refuses_a_spec_built_around_validation():
    spec = dataclasses.replace(_spec(), name="../../outside")
    with pytest.raises(SpecError, match="would place its files outside"):
        world_dir(spec)
    assert world_dir(_spec()).parent == cache_dir() / "shapeworld"


def test_yaml_exponent_numbers_are_numbers(tmp_path):
    path = tmp_path / "w.yaml"
    path.write_text(
        yaml.safe_dump({**BASE, "variation": {"min_visible": "X"}}).replace("X", "5e-1")
    )
    assert load_spec(path).variation.min_visible == 0.5
    path.write_text(yaml.safe_dump({**BASE, "train_images": "X"}).replace("X", "4e3"))
    assert load_spec(path).train_images == 4000


def test_warnings_for_unexplained_unseen_attributes_identical_classes_and_no_unseen(tmp_path):
    odd = {
        **BASE,
        "things": BASE["things"]
        + [
            {"name": "green star", "color": [50, 170, 60], "shape": "star"},
            {"name": "crimson circle", "color": [225, 45, 40], "shape": "circle"},
        ],
        "unseen": ["green star"],
    }
    messages = spec_warnings(parse_spec(odd))
    assert messages == [
        "unseen class 'green star' has a colour [50, 170, 60] and a shape 'star' that no seen "
        "class shows",
        "classes 'red circle' and 'crimson circle' look the same (same shape, colours "
        "[220, 40, 40] and [225, 45, 40] within the colour jitter 18)",
    ]
    assert spec_warnings(parse_spec({**BASE, "unseen": []})) == [
        "no class is unseen: unseen mIoU and hIoU will be reported as not applicable"
    ]
    assert spec_warnings(load_spec()) == []  # the default world is clean
    path = tmp_path / "odd.yaml"
    path.write_text(yaml.safe_dump(odd))
    with pytest.warns(SpecWarning) as record:
        load_spec(path)
    assert [str(w.message) for w in record] == [f"{path}: {m}" for m in messages]
    # The CLI shows each as one line (pytest would capture warnings raised in this process).
    done = subprocess.run(
        [sys.executable, "-m", "zeroseg.cli", "world", str(path)], capture_output=True, text=True
    )
    assert done.returncode == 0
    assert done.stderr.splitlines() == [f"zeroseg: warning: {path}: {m}" for m in messages]


def test_no_unseen_class_reports_hiou_not_applicable():
    import torch

    ev = SemanticEvaluator(2, seen=[0, 1], unseen=[])
    ev.process(torch.tensor([[0, 1]]), torch.tensor([[0, 1]]))
    m = ev.evaluate()
    assert m["seen_miou"] == 100.0 and m["unseen_miou"] is None and m["hiou"] is None
