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
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import yaml

from zeroseg.data.classes import ClassSplit

SHAPES = ("circle", "square", "triangle", "star", "hexagon", "cross", "ring", "diamond")
TEXTURES = ("flat", "stripes", "checker", "dots", "noise", "waves")
DEFAULT_SPEC = Path(__file__).with_name("default.yaml")
GENERATOR_VERSION = 1  # bump when rendering changes, so cached worlds are rebuilt


class SpecError(ValueError):
    """A ShapeWorld spec that does not validate."""


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

    things = []
    for i, entry in enumerate(data.get("things") or []):
        where = f"{source}: things[{i}]"
        if not isinstance(entry, dict):
            raise SpecError(f"{where}: expected {{name, color, shape}}, got {entry!r}")
        extra = set(entry) - {"name", "color", "shape"}
        if extra:
            raise SpecError(f"{where} ({entry.get('name')!r}): unknown keys {sorted(extra)}")
        tname = entry.get("name")
        if not isinstance(tname, str) or not tname.strip():
            raise SpecError(f"{where}: a name is required")
        where = f"{source}: thing {tname!r}"
        shape = entry.get("shape")
        if shape not in SHAPES:
            raise SpecError(f"{where}: unknown shape {shape!r}; built-in shapes: {list(SHAPES)}")
        things.append(ThingClass(tname.strip(), _color(entry.get("color"), where), shape))

    stuff = []
    for i, entry in enumerate(data.get("stuff") or []):
        where = f"{source}: stuff[{i}]"
        if not isinstance(entry, dict):
            raise SpecError(f"{where}: expected {{name, color, texture}}, got {entry!r}")
        extra = set(entry) - {"name", "color", "texture"}
        if extra:
            raise SpecError(f"{where} ({entry.get('name')!r}): unknown keys {sorted(extra)}")
        sname = entry.get("name")
        if not isinstance(sname, str) or not sname.strip():
            raise SpecError(f"{where}: a name is required")
        where = f"{source}: stuff {sname!r}"
        texture = entry.get("texture")
        if texture not in TEXTURES:
            raise SpecError(
                f"{where}: unknown texture {texture!r}; built-in textures: {list(TEXTURES)}"
            )
        stuff.append(StuffClass(sname.strip(), _color(entry.get("color"), where), texture))

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

    return WorldSpec(
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


def load_spec(path: str | Path | None = None) -> WorldSpec:
    """Reads and validates a spec file (the default world when ``path`` is None)."""
    path = Path(path) if path is not None else DEFAULT_SPEC
    if not path.is_file():
        raise SpecError(f"world spec {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise SpecError(f"world spec {path} is not valid YAML: {e}") from None
    return parse_spec(data, source=str(path))
