"""ShapeWorld specs: a procedural segmentation world defined entirely by a YAML file.

A spec names thing classes (a colour x a shape, drawn as instances) and stuff classes (a colour x a
texture, drawn as background regions), which of them are unseen, the image size, split sizes and a
seed. Validation names the offending entry; any spec that validates can be generated.

Splits: ``train`` (labelled through the protocol), ``val`` (every choice: hyperparameters,
calibration, schedule length), ``test`` (reported, read by nothing else) and ``caption``
(image-text pairs for stage-0 pretraining). Each split draws from its own seed stream.
"""

from __future__ import annotations

import hashlib
import json
import re
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import yaml

from zeroseg._yaml import one_line, safe_load
from zeroseg.data.classes import ClassSplit

SHAPES = ("circle", "square", "triangle", "star", "hexagon", "cross", "ring", "diamond")
TEXTURES = ("flat", "stripes", "checker", "dots", "noise", "waves")
DEFAULT_SPEC = Path(__file__).with_name("default.yaml")
GENERATOR_VERSION = 1  # bump when rendering changes, so cached worlds are rebuilt


class SpecError(ValueError):
    """A ShapeWorld spec that does not validate."""


class SpecWarning(UserWarning):
    """A spec that validates but is probably not what was meant (shown, never fatal)."""


@dataclass(frozen=True)
class ThingClass:
    name: str
    color: tuple[int, int, int]
    shape: str


@dataclass(frozen=True)
class StuffClass:
    name: str
    color: tuple[int, int, int]
    texture: str


@dataclass(frozen=True)
class Variation:
    """Within-class variation; the defaults keep the task from being trivial."""

    size: tuple[float, float] = (0.25, 0.45)  # object diameter as a fraction of the image side
    color_jitter: int = 18  # max per-channel shift of a class colour, in 0-255 units
    pixel_noise: float = 6.0  # std of per-pixel Gaussian noise, in 0-255 units
    min_visible: float = 0.35  # an occluded object keeps at least this fraction of its area
    stuff_regions: tuple[int, int] = (1, 3)  # stuff regions per image, inclusive


@dataclass(frozen=True)
class WorldSpec:
    """A validated ShapeWorld spec (see ``default.yaml`` for the schema)."""

    name: str
    seed: int
    image_size: int
    train_images: int
    val_images: int
    objects_per_image: tuple[int, int]
    things: tuple[ThingClass, ...]
    stuff: tuple[StuffClass, ...]
    unseen: tuple[str, ...]
    caption_images: int = 4000  # the separate image-caption split for CLIP-style pretraining
    variation: Variation = field(default_factory=Variation)
    test_images: int = 500  # the reported split (default in a spec file: as many as val_images)

    @property
    def class_names(self) -> tuple[str, ...]:
        """Things first, then stuff: label ``i`` is ``class_names[i]``."""
        return tuple(t.name for t in self.things) + tuple(s.name for s in self.stuff)

    @property
    def num_classes(self) -> int:
        return len(self.things) + len(self.stuff)

    def class_split(self) -> ClassSplit:
        return ClassSplit.from_names(
            self.class_names, self.unseen, thing_names=[t.name for t in self.things]
        )

    def to_dict(self) -> dict:
        d = asdict(self)
        d["things"] = [asdict(t) for t in self.things]
        d["stuff"] = [asdict(s) for s in self.stuff]
        return d

    def content_key(self) -> str:
        """A hash of everything that decides the generated images (the cache key).

        ``test_images`` is left out: each image is a function of ``(spec, split, index)`` only,
        so the test split's size decides nothing about the other splits, and worlds cached before
        the test split existed keep their key (their train/val/caption files stay valid). The test
        file's name carries its size instead (:func:`zeroseg.data.shapeworld.world.split_file`).
        """
        d = self.to_dict()
        d.pop("test_images")
        blob = json.dumps({"spec": d, "generator": GENERATOR_VERSION}, sort_keys=True, default=list)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _color(value, where: str) -> tuple[int, int, int]:
    if not isinstance(value, Sequence) or isinstance(value, str) or len(value) != 3:
        raise SpecError(f"{where}: color must be [r, g, b], got {value!r}")
    out = []
    for c in value:
        if isinstance(c, bool) or not isinstance(c, int) or not 0 <= c <= 255:
            raise SpecError(f"{where}: color {list(value)} has {c!r}, expected integers 0-255")
        out.append(int(c))
    return (out[0], out[1], out[2])


def _positive_int(d: dict, key: str, *, minimum: int = 1, default=None) -> int:
    value = d.get(key, default)
    if value is None:
        raise SpecError(f"spec is missing {key!r}")
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # 4e3 is a count written in exponent form
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise SpecError(f"spec {key!r} must be an integer >= {minimum}, got {value!r}")
    return value


def _pair(value, where: str, *, kind=int, minimum=0):
    if not isinstance(value, Sequence) or isinstance(value, str) or len(value) != 2:
        raise SpecError(f"{where} must be a pair [low, high], got {value!r}")
    lo, hi = value
    for v in (lo, hi):
        if isinstance(v, bool) or not isinstance(v, (int, float) if kind is float else int):
            raise SpecError(f"{where} must hold {kind.__name__}s, got {value!r}")
    if lo < minimum or hi < lo:
        raise SpecError(f"{where} must satisfy {minimum} <= low <= high, got {value!r}")
    return (kind(lo), kind(hi))


_TOP_KEYS = {
    "name",
    "seed",
    "image_size",
    "train_images",
    "val_images",
    "test_images",
    "caption_images",
    "objects_per_image",
    "things",
    "stuff",
    "unseen",
    "variation",
}


def _classes(data: dict, key: str, singular: str, kind: str, builtin, cls, source: str) -> list:
    """The validated entries ``{name, color, <kind>}`` of ``data[key]`` (``things`` or ``stuff``)
    as ``cls(name, color, <kind>)``; ``kind`` (``shape`` or ``texture``) must be one of
    ``builtin``."""
    out = []
    for i, entry in enumerate(data.get(key) or []):
        where = f"{source}: {key}[{i}]"
        if not isinstance(entry, dict):
            raise SpecError(f"{where}: expected {{name, color, {kind}}}, got {entry!r}")
        extra = set(entry) - {"name", "color", kind}
        if extra:
            raise SpecError(f"{where} ({entry.get('name')!r}): unknown keys {sorted(extra)}")
        cname = entry.get("name")
        if not isinstance(cname, str) or not cname.strip():
            raise SpecError(f"{where}: a name is required")
        where = f"{source}: {singular} {cname!r}"
        value = entry.get(kind)
        if value not in builtin:
            raise SpecError(f"{where}: unknown {kind} {value!r}; built-in {kind}s: {list(builtin)}")
        out.append(cls(cname.strip(), _color(entry.get("color"), where), value))
    return out


def parse_spec(data: dict, *, source: str = "spec") -> WorldSpec:
    """Validates a spec given as a dict (parsed YAML) and returns a :class:`WorldSpec`."""
    if not isinstance(data, dict):
        raise SpecError(f"{source}: expected a mapping at the top level, got {type(data).__name__}")
    unknown = set(data) - _TOP_KEYS
    if unknown:
        raise SpecError(
            f"{source}: unknown keys {sorted(unknown)}; valid keys: {sorted(_TOP_KEYS)}"
        )
    name = str(data.get("name", "world"))
    seed = data.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise SpecError(f"{source}: seed must be an integer, got {seed!r}")
    image_size = _positive_int(data, "image_size", minimum=16)
    train_images = _positive_int(data, "train_images")
    val_images = _positive_int(data, "val_images")
    # A spec without test_images gets a test split as large as its validation split.
    test_images = _positive_int(data, "test_images", default=val_images)
    caption_images = _positive_int(data, "caption_images", default=4000)
    objects = _pair(data.get("objects_per_image", [1, 4]), f"{source}: objects_per_image")

    things = _classes(data, "things", "thing", "shape", SHAPES, ThingClass, source)
    stuff = _classes(data, "stuff", "stuff", "texture", TEXTURES, StuffClass, source)

    if not stuff:
        raise SpecError(f"{source}: at least one stuff class is needed (backgrounds are stuff)")
    if not things:
        raise SpecError(f"{source}: at least one thing class is needed")
    names = [c.name for c in things] + [c.name for c in stuff]
    first: dict[str, int] = {}
    for i, n in enumerate(names):
        if n.lower() in first:
            raise SpecError(f"{source}: duplicate class name {n!r}")
        first[n.lower()] = i
    if len(names) > 254:
        raise SpecError(f"{source}: at most 254 classes fit uint8 labels, got {len(names)}")
    if objects[1] < 1 and objects[0] < 1:
        raise SpecError(f"{source}: objects_per_image allows no objects at all")

    unseen = data.get("unseen") or []
    if isinstance(unseen, str) or not isinstance(unseen, Sequence):
        raise SpecError(f"{source}: unseen must be a list of class names, got {unseen!r}")
    for u in unseen:
        if not isinstance(u, str) or u.strip().lower() not in first:
            raise SpecError(f"{source}: unseen name {u!r} is not a class of this world")
    if len({u.strip().lower() for u in unseen}) != len(unseen):
        raise SpecError(f"{source}: unseen lists a class twice: {list(unseen)}")
    if len(unseen) >= len(names):
        raise SpecError(f"{source}: every class is unseen; at least one must be seen")
    if all(t.name in unseen for t in things) or all(s.name in unseen for s in stuff):
        raise SpecError(
            f"{source}: every thing (or every stuff) class is unseen; "
            "training needs at least one seen class of each kind"
        )

    variation = Variation()
    if "variation" in data:
        v = data["variation"]
        if not isinstance(v, dict):
            raise SpecError(f"{source}: variation must be a mapping")
        known = {f.name for f in fields(Variation)}
        extra = set(v) - known
        if extra:
            raise SpecError(
                f"{source}: variation has unknown keys {sorted(extra)}; valid: {sorted(known)}"
            )
        kw = {}
        if "size" in v:
            kw["size"] = _pair(v["size"], f"{source}: variation.size", kind=float, minimum=0.02)
        if "stuff_regions" in v:
            kw["stuff_regions"] = _pair(
                v["stuff_regions"], f"{source}: variation.stuff_regions", minimum=1
            )
        for key in ("color_jitter", "pixel_noise", "min_visible"):
            if key in v:
                if isinstance(v[key], bool) or not isinstance(v[key], (int, float)) or v[key] < 0:
                    raise SpecError(
                        f"{source}: variation.{key} must be a number >= 0, got {v[key]!r}"
                    )
                kw[key] = type(getattr(variation, key))(v[key])
        variation = Variation(**kw)

    spec = WorldSpec(
        name=name,
        seed=int(seed),
        image_size=image_size,
        train_images=train_images,
        val_images=val_images,
        test_images=test_images,
        caption_images=caption_images,
        objects_per_image=objects,
        things=tuple(things),
        stuff=tuple(stuff),
        unseen=tuple(u.strip() for u in unseen),
        variation=variation,
    )
    check_bounds(spec, source)
    return spec


def load_spec(path: str | Path | None = None) -> WorldSpec:
    """Reads and validates a spec file (the default world when ``path`` is None)."""
    path = Path(path) if path is not None else DEFAULT_SPEC
    if not path.is_file():
        raise SpecError(f"world spec {path} does not exist")
    try:
        data = safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise SpecError(f"world spec {path} is not valid YAML: {one_line(e)}") from None
    spec = parse_spec(data, source=str(path))
    for message in spec_warnings(spec):
        warnings.warn(f"{path}: {message}", SpecWarning, stacklevel=2)
    return spec


# --- bounds and warnings: a spec that validates can be generated, in bounded time and memory ------

NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
MAX_IMAGE_SIZE = 1024
MAX_IMAGES = 10_000_000
MAX_SPLIT_BYTES = 4 * 2**30  # a split lives in memory: 8 bytes a pixel (RGB, label, panoptic id)
MAX_OBJECTS = 64  # each object costs a few full-image passes to place
MAX_STUFF_REGIONS = 16
MEAN_SHAPE_FILL = 0.5  # a shape covers about half of its bounding square


def max_objects(spec: WorldSpec) -> int:
    """How many things an image can hold while each keeps ``min_visible`` of its area."""
    var, s = spec.variation, spec.image_size
    smallest = MEAN_SHAPE_FILL * (var.size[0] * s) ** 2
    fits = int(s * s / (smallest * max(var.min_visible, 0.05)))
    return max(1, min(MAX_OBJECTS, fits))


def check_bounds(spec: WorldSpec, source: str = "spec") -> None:
    """Raises :class:`SpecError` for a name that could leave the cache or sizes beyond bounds."""
    if not NAME_PATTERN.fullmatch(spec.name) or ".." in spec.name:
        raise SpecError(
            f"{source}: name {spec.name!r} must be 1-64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit, without '..' (it names a cache directory)"
        )
    if spec.image_size > MAX_IMAGE_SIZE:
        raise SpecError(f"{source}: image_size must be 16-{MAX_IMAGE_SIZE}, got {spec.image_size}")
    pixel_bytes = 8 * spec.image_size**2
    for f in fields(spec):
        if not f.name.endswith("_images"):
            continue
        n = getattr(spec, f.name)
        limit = min(MAX_IMAGES, MAX_SPLIT_BYTES // pixel_bytes)
        if n > limit:
            raise SpecError(
                f"{source}: {f.name} must be at most {limit} at image_size {spec.image_size} "
                f"(a split is held in memory, {MAX_SPLIT_BYTES // 2**30} GiB at most), got {n}"
            )
    var = spec.variation
    if var.size[1] > 1.0:
        raise SpecError(
            f"{source}: variation.size must lie in [0.02, 1.0] (a fraction of the image side), "
            f"got {list(var.size)}"
        )
    if var.min_visible > 1.0:
        raise SpecError(f"{source}: variation.min_visible must be 0-1, got {var.min_visible}")
    if var.color_jitter > 255 or var.pixel_noise > 255:
        raise SpecError(
            f"{source}: variation.color_jitter and pixel_noise must be 0-255, got "
            f"{var.color_jitter} and {var.pixel_noise}"
        )
    if var.stuff_regions[1] > MAX_STUFF_REGIONS:
        raise SpecError(
            f"{source}: variation.stuff_regions must be at most {MAX_STUFF_REGIONS}, "
            f"got {list(var.stuff_regions)}"
        )
    cap = max_objects(spec)
    if spec.objects_per_image[1] > cap:
        raise SpecError(
            f"{source}: objects_per_image {list(spec.objects_per_image)} exceeds what a "
            f"{spec.image_size}x{spec.image_size} image holds with objects of at least "
            f"{var.size[0]:g} of its side each keeping {var.min_visible:g} of its area visible: "
            f"at most {cap}"
        )


def spec_warnings(spec: WorldSpec) -> list[str]:
    """Things a valid spec probably did not mean: unseen classes whose colour, shape or texture
    no seen class shows (a text encoder cannot transfer what it never saw), classes that look
    the same (their pixels cannot be told apart), and no unseen class at all."""
    out = []
    unseen = {u.lower() for u in spec.unseen}
    seen_things = [t for t in spec.things if t.name.lower() not in unseen]
    seen_stuff = [s for s in spec.stuff if s.name.lower() not in unseen]
    seen_colors = {c.color for c in seen_things + seen_stuff}
    for cls in spec.things + spec.stuff:
        if cls.name.lower() not in unseen:
            continue
        kind = "shape" if isinstance(cls, ThingClass) else "texture"
        form = getattr(cls, kind)
        seen_forms = {getattr(c, kind) for c in (seen_things if kind == "shape" else seen_stuff)}
        missing = [f"colour {list(cls.color)}"] if cls.color not in seen_colors else []
        if form not in seen_forms:
            missing.append(f"{kind} {form!r}")
        if missing:
            out.append(
                f"unseen class {cls.name!r} has a {' and a '.join(missing)} that no seen class "
                "shows"
            )
    for group, kind in ((spec.things, "shape"), (spec.stuff, "texture")):
        for i, a in enumerate(group):
            for b in group[i + 1 :]:
                close = max(abs(x - y) for x, y in zip(a.color, b.color))
                if getattr(a, kind) == getattr(b, kind) and close <= spec.variation.color_jitter:
                    out.append(
                        f"classes {a.name!r} and {b.name!r} look the same (same {kind}, colours "
                        f"{list(a.color)} and {list(b.color)} within the colour jitter "
                        f"{spec.variation.color_jitter})"
                    )
    if not spec.unseen:
        out.append("no class is unseen: unseen mIoU and hIoU will be reported as not applicable")
    return out
