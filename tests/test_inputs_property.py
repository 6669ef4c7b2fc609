"""Property: every generated world spec and config override either works or fails with a
one-line ``zeroseg.errors`` error, within bounded time; never a traceback, never a hang.

"Works" means what the first minutes of a run do with it: a spec validates and its first
training image renders; a config validates (the method's own section too) and its method builds
(on the meta device, as every run does first).
"""

from __future__ import annotations

import time

import hypothesis.strategies as st
from hypothesis import HealthCheck, given, settings

from zeroseg.config import ConfigError, load_config
from zeroseg.data.classes import ClassSplit
from zeroseg.data.shapeworld.render import render
from zeroseg.data.shapeworld.spec import SHAPES, TEXTURES, SpecError, parse_spec
from zeroseg.errors import USER_ERRORS
from zeroseg.runner import check_config, check_model

SECONDS = 3.0  # per example: generous for one 1024-px render, far below any hang

junk = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**13), 10**13),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=6),
    st.lists(st.integers(-5, 10**7), max_size=3),
)
small_int = st.one_of(st.integers(-3, 300), st.sampled_from([10**6, 10**12]), junk)
color = st.one_of(st.lists(st.integers(-5, 300), min_size=3, max_size=3), junk)
names = st.sampled_from(["red circle", "blue square", "gray ground", "green star", "x", ""])
thing = st.fixed_dictionaries(
    {
        "name": names,
        "color": color,
        "shape": st.one_of(st.sampled_from(SHAPES), st.text(max_size=4)),
    }
)
stuff = st.fixed_dictionaries(
    {
        "name": names,
        "color": color,
        "texture": st.one_of(st.sampled_from(TEXTURES), st.text(max_size=4)),
    }
)
variation = st.dictionaries(
    st.sampled_from(["size", "color_jitter", "pixel_noise", "min_visible", "stuff_regions"]),
    st.one_of(
        st.lists(st.floats(-1, 3, allow_nan=False), min_size=2, max_size=2),
        st.lists(st.integers(-2, 100), min_size=2, max_size=2),
        st.floats(-1, 300, allow_nan=False),
        junk,
    ),
    max_size=3,
)
spec = st.fixed_dictionaries(
    {
        "name": st.one_of(
            st.sampled_from(["w", "../../outside", "a/b", ".."]), st.text(max_size=8)
        ),
        "seed": small_int,
        "image_size": st.one_of(st.integers(8, 300), st.sampled_from([1024, 100000]), junk),
        "train_images": small_int,
        "val_images": small_int,
        "objects_per_image": st.one_of(
            st.lists(st.integers(-2, 10**6), min_size=2, max_size=2), junk
        ),
        "things": st.lists(thing, max_size=4),
        "stuff": st.lists(stuff, max_size=3),
        "unseen": st.one_of(st.lists(names, max_size=3), junk),
    },
    optional={"variation": variation, "caption_images": small_int},
)


def _one_line(e: BaseException) -> None:
    assert isinstance(e, USER_ERRORS), f"{type(e).__name__}: {e}"
    assert str(e) and "\n" not in str(e), repr(str(e))


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec)
def test_any_spec_renders_or_fails_in_one_line(data):
    t = time.perf_counter()
    try:
        world = parse_spec(data, source="w.yaml")
    except SpecError as e:
        _one_line(e)
    else:
        image = render(world, "train", 0).image
        assert image.shape == (world.image_size, world.image_size, 3)
    assert time.perf_counter() - t < SECONDS


KEYS = [
    "seed",
    "device",
    "method",
    "train.iters",
    "train.batch_size",
    "train.lr",
    "train.amp",
    "train.optimizer",
    "train.scheduler",
    "train.warmup_iters",
    "train.grad_clip",
    "train.ckpt_every",
    "train.ckpt_minutes",
    "train.keep_ckpts",
    "eval.mode",
    "eval.crop",
    "eval.stride",
    "eval.batch_size",
    "data.protocol",
    "data.train_limit",
    "data.crop_size",
    "data.scale_range",
    "model.calibration",
    "model.backbone.widths",
    "model.backbone.out_dim",
    "nonsense.key",
]
raw_values = st.one_of(
    st.sampled_from(
        [
            "0",
            "-1",
            "1",
            "1e-4",
            "3E+2",
            "1e12",
            ".nan",
            ".inf",
            "fp8",
            "bf16",
            "cuda",
            "cpu",
            "slide",
            "whole",
            "[0.5, 2.0]",
            "[]",
            "{}",
            "null",
            "true",
            "'x'",
            "[16, 32, 64, 128]",
        ]
    ),
    st.integers(-(10**9), 10**13).map(str),
    st.floats(allow_nan=False).map(repr),
    st.text(max_size=6),
)
overrides = st.lists(st.tuples(st.sampled_from(KEYS), raw_values), max_size=4)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(overrides)
def test_any_override_builds_or_fails_in_one_line(pairs):
    t = time.perf_counter()
    sets = [f"{k}={v}" for k, v in pairs]
    try:
        cfg = load_config("projection_unet-small_2k_shapeworld", sets)
        check_config(cfg)
        if cfg.device.startswith("cuda"):
            from zeroseg.runner import resolve_device

            resolve_device(cfg.device)
        # The dry build (meta device) that runs before any real one: no memory, bounded time.
        assert check_model(cfg, ClassSplit(("a", "b", "c"), unseen=(2,)), 8) > 0
    except ConfigError as e:
        _one_line(e)
    assert time.perf_counter() - t < SECONDS
