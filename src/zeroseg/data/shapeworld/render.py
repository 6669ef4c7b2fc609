"""Rendering one ShapeWorld image: stuff regions, thing instances, labels, panoptic segments, caption.

Every image is a pure function of ``(spec, split, index)``: its random generator is seeded from
those three, so splits are reproducible, independent of each other and of how many images are made.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from zeroseg.data.shapeworld.spec import WorldSpec

# Each split's seed stream; a new split takes a new id so the existing splits' images never change.
SPLIT_IDS = {"train": 1, "val": 2, "caption": 3, "test": 4}

_NUMBER_WORDS = {2: "two", 3: "three", 4: "four", 5: "five", 6: "six", 7: "seven", 8: "eight"}


@dataclass
class Rendered:
    """One generated sample.

    Attributes:
        image: (S, S, 3) uint8 RGB.
        semantic: (S, S) uint8 class index per pixel (things first, then stuff).
        panoptic: (S, S) int32 segment id per pixel (1-based; one id per thing instance and per
            stuff class present).
        segments: (n, 3) int32 rows ``(segment_id, class_index, is_thing)``.
        caption: a sentence naming every class visible in the image.
    """

    image: np.ndarray
    semantic: np.ndarray
    panoptic: np.ndarray
    segments: np.ndarray
    caption: str


def _polygon(n: int, radius: float = 1.0, phase: float = np.pi / 2) -> np.ndarray:
    t = phase + 2 * np.pi * np.arange(n) / n
    return np.stack([radius * np.cos(t), radius * np.sin(t)], axis=1)


def _star(points: int = 5, inner: float = 0.45) -> np.ndarray:
    t = np.pi / 2 + np.pi * np.arange(2 * points) / points
    r = np.where(np.arange(2 * points) % 2 == 0, 1.0, inner)
    return np.stack([r * np.cos(t), r * np.sin(t)], axis=1)


def _inside_polygon(x: np.ndarray, y: np.ndarray, poly: np.ndarray) -> np.ndarray:
    """Even-odd point-in-polygon test, vectorised over pixels."""
    inside = np.zeros(x.shape, dtype=bool)
    xs, ys = poly[:, 0], poly[:, 1]
    for i in range(len(poly)):
        x0, y0, x1, y1 = xs[i - 1], ys[i - 1], xs[i], ys[i]
        crosses = (y0 > y) != (y1 > y)
        with np.errstate(divide="ignore", invalid="ignore"):
            x_at = x0 + (y - y0) * (x1 - x0) / (y1 - y0)
        inside ^= crosses & (x < x_at)
    return inside


_POLYGONS = {
    "triangle": _polygon(3),
    "hexagon": _polygon(6, phase=0.0),
    "star": _star(),
    "diamond": np.array([[0.0, 1.0], [0.68, 0.0], [0.0, -1.0], [-0.68, 0.0]]),
}


def shape_mask(
    shape: str, size: int, cx: float, cy: float, radius: float, angle: float
) -> np.ndarray:
    """A boolean (size, size) mask of a shape of circumradius ``radius`` pixels, rotated by ``angle``."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5
    dx, dy = (xx - cx) / radius, (yy - cy) / radius
    c, s = np.cos(angle), np.sin(angle)
    x, y = c * dx + s * dy, -s * dx + c * dy
    if shape == "circle":
        return x * x + y * y <= 1.0
    if shape == "ring":
        r2 = x * x + y * y
        return (r2 <= 1.0) & (r2 >= 0.5**2)
    if shape == "square":
        return np.maximum(np.abs(x), np.abs(y)) <= 0.78
    if shape == "cross":
        arm = 0.34
        return ((np.abs(x) <= arm) & (np.abs(y) <= 0.95)) | (
            (np.abs(y) <= arm) & (np.abs(x) <= 0.95)
        )
    return _inside_polygon(x, y, _POLYGONS[shape])


def texture(kind: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """A (size, size) texture modulation in [-1, 1] with random scale, phase and orientation."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    angle = rng.uniform(0, np.pi)
    u = xx * np.cos(angle) + yy * np.sin(angle)
    v = -xx * np.sin(angle) + yy * np.cos(angle)
    if kind == "flat":
        return np.zeros((size, size))
    if kind == "stripes":
        period = rng.uniform(5.0, 9.0)
        return np.sign(np.sin(2 * np.pi * u / period + rng.uniform(0, 2 * np.pi)))
    if kind == "checker":
        cell = rng.uniform(3.5, 6.5)
        return np.where((np.floor(u / cell) + np.floor(v / cell)) % 2 == 0, 1.0, -1.0)
    if kind == "dots":
        spacing = rng.uniform(5.5, 8.0)
        ou, ov = rng.uniform(0, spacing, size=2)
        du = (u + ou) % spacing - spacing / 2
        dv = (v + ov) % spacing - spacing / 2
        return np.where(du * du + dv * dv <= (0.28 * spacing) ** 2, 1.0, -0.4)
    if kind == "noise":
        field = ndimage.gaussian_filter(rng.standard_normal((size, size)), sigma=1.2)
        return np.clip(field / (field.std() + 1e-8) / 2.0, -1.0, 1.0)
    if kind == "waves":
        period = rng.uniform(8.0, 13.0)
        wobble = rng.uniform(1.5, 3.0) * np.sin(2 * np.pi * v / rng.uniform(10.0, 18.0))
        return np.sin(2 * np.pi * (u + wobble) / period)
    raise ValueError(f"unknown texture {kind!r}")


def _jitter(color: tuple[int, int, int], amount: int, rng: np.random.Generator) -> np.ndarray:
    return np.clip(np.asarray(color, dtype=np.float64) + rng.uniform(-amount, amount, 3), 0, 255)


def _stuff_partition(size: int, regions: int, rng: np.random.Generator) -> np.ndarray:
    """Splits the image into ``regions`` connected areas: a Voronoi diagram with wavy borders."""
    if regions == 1:
        return np.zeros((size, size), dtype=np.int64)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    # Wavy borders: displace the coordinates by a smooth random field before the nearest-seed test.
    amp = size * 0.06
    wx = xx + amp * np.sin(2 * np.pi * yy / (size * rng.uniform(0.4, 0.9)) + rng.uniform(0, 6.3))
    wy = yy + amp * np.sin(2 * np.pi * xx / (size * rng.uniform(0.4, 0.9)) + rng.uniform(0, 6.3))
    seeds = rng.uniform(0.1 * size, 0.9 * size, size=(regions, 2))
    d = (wx[None] - seeds[:, 0, None, None]) ** 2 + (wy[None] - seeds[:, 1, None, None]) ** 2
    return np.argmin(d, axis=0)


def _count_phrase(name: str, n: int) -> str:
    if n == 1:
        article = "an" if name[0] in "aeiou" else "a"
        return f"{article} {name}"
    words = name.split()
    words[-1] = words[-1] + ("es" if words[-1].endswith(("s", "x", "sh", "ch")) else "s")
    return f"{_NUMBER_WORDS.get(n, str(n))} {' '.join(words)}"


def _join(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def make_caption(spec: WorldSpec, thing_counts: dict[int, int], stuff_present: list[int]) -> str:
    """A caption naming every class in the image (things with counts, then the grounds).

    Either list may be empty (a caption with some names left out, as the foundation's
    ``--exclude`` writes them); with both empty the caption is "a scene.".
    """
    names = spec.class_names
    things = [_count_phrase(names[c], n) for c, n in sorted(thing_counts.items())]
    stuff = [names[c] for c in stuff_present]
    if not stuff:
        return f"{_join(things)}." if things else "a scene."
    ground = _join(stuff)
    return f"{_join(things)} on {ground}." if things else f"an empty scene of {ground}."


def render(spec: WorldSpec, split: str, index: int) -> Rendered:
    """Renders image ``index`` of ``split`` ("train", "val", "test" or "caption")."""
    rng = np.random.default_rng([spec.seed, SPLIT_IDS[split], index])
    size, var = spec.image_size, spec.variation
    n_things = len(spec.things)
    image = np.zeros((size, size, 3), dtype=np.float64)
    semantic = np.zeros((size, size), dtype=np.uint8)

    # Stuff: 1-3 regions, each a distinct stuff class with its own texture instance.
    lo, hi = var.stuff_regions
    regions = int(rng.integers(lo, min(hi, len(spec.stuff)) + 1)) if lo <= len(spec.stuff) else 1
    regions = max(1, min(regions, len(spec.stuff)))
    stuff_classes = rng.choice(len(spec.stuff), size=regions, replace=False)
    part = _stuff_partition(size, regions, rng)
    for r, k in enumerate(stuff_classes):
        cls = spec.stuff[k]
        region = part == r
        base = _jitter(cls.color, var.color_jitter, rng)
        mod = texture(cls.texture, size, rng)
        shade = 1.0 + 0.38 * mod[..., None]
        image[region] = np.clip(base[None] * shade[region], 0, 255)
        semantic[region] = n_things + k

    # Things: painted in order; a placement that hides too much of an earlier object is re-drawn.
    lo, hi = spec.objects_per_image
    n_objects = int(rng.integers(lo, hi + 1))
    instance = np.zeros((size, size), dtype=np.int32)  # 0 = stuff
    areas: list[int] = []
    classes: list[int] = []
    colors: list[np.ndarray] = []
    for _ in range(n_objects):
        for _attempt in range(12):
            k = int(rng.integers(n_things))
            diameter = rng.uniform(*var.size) * size
            radius = diameter / 2
            cx, cy = rng.uniform(radius * 0.6, size - radius * 0.6, size=2)
            mask = shape_mask(spec.things[k].shape, size, cx, cy, radius, rng.uniform(0, 2 * np.pi))
            if mask.sum() < 12:
                continue
            covered = np.bincount(instance[mask], minlength=len(areas) + 1)[1:]
            visible = np.bincount(instance.ravel(), minlength=len(areas) + 1)[1:] - covered
            if all(v >= var.min_visible * a for v, a in zip(visible, areas)):
                break
        else:
            continue
        instance[mask] = len(areas) + 1
        areas.append(int(mask.sum()))
        classes.append(k)
        colors.append(_jitter(spec.things[k].color, var.color_jitter, rng))
    for i, (k, color) in enumerate(zip(classes, colors)):
        m = instance == i + 1
        image[m] = color
        semantic[m] = k

    if var.pixel_noise > 0:
        image += rng.normal(0.0, var.pixel_noise, image.shape)
    image = np.clip(np.rint(image), 0, 255).astype(np.uint8)

    # Panoptic segments: one per visible thing instance, one per stuff class present.
    panoptic = np.zeros((size, size), dtype=np.int32)
    rows = []
    thing_counts: dict[int, int] = {}
    next_id = 1
    for i, k in enumerate(classes):
        m = instance == i + 1
        if not m.any():
            continue
        panoptic[m] = next_id
        rows.append((next_id, k, 1))
        thing_counts[k] = thing_counts.get(k, 0) + 1
        next_id += 1
    stuff_present = []
    for k in sorted(set(int(c) for c in stuff_classes)):
        m = (semantic == n_things + k) & (instance == 0)
        if not m.any():
            continue
        panoptic[m] = next_id
        rows.append((next_id, n_things + k, 0))
        stuff_present.append(n_things + k)
        next_id += 1
    segments = np.asarray(rows, dtype=np.int32).reshape(-1, 3)
    caption = make_caption(spec, thing_counts, stuff_present)
    return Rendered(image, semantic, panoptic, segments, caption)
