"""The foundation's captioned "web" world and the range it covers.

``web.yaml`` lists colour words with their RGB values and the world's settings; this module
expands it into a ShapeWorld spec whose things are every colour x built-in shape
("<colour> <shape>") and whose stuff is every built-in texture x colour
("<texture word> <colour> ground"), the naming every shipped benchmark world uses. Only the
spec's ``caption`` split is read (its own seed, so no image is shared with a benchmark world).
"""

from __future__ import annotations

from pathlib import Path

import yaml

from zeroseg.config import ConfigError
from zeroseg.data.shapeworld.spec import SHAPES, TEXTURES, WorldSpec, parse_spec

WEB_SPEC = Path(__file__).with_name("web.yaml")

# How a texture is said in a stuff class name ("striped gray ground").
TEXTURE_WORDS = {
    "flat": "flat",
    "stripes": "striped",
    "checker": "checkered",
    "dots": "dotted",
    "noise": "noisy",
    "waves": "wavy",
}


def web_spec(path: str | Path | None = None, *, caption_images: int | None = None) -> WorldSpec:
    """The expanded web world (``caption_images`` overrides the file's count, for tests)."""
    path = Path(path) if path is not None else WEB_SPEC
    raw = yaml.safe_load(path.read_text())
    colors = raw["colors"]
    things = [
        {"name": f"{c} {s}", "color": rgb, "shape": s} for c, rgb in colors.items() for s in SHAPES
    ]
    stuff = [
        {"name": f"{TEXTURE_WORDS[t]} {c} ground", "color": rgb, "texture": t}
        for c, rgb in colors.items()
        for t in TEXTURES
    ]
    data = {k: raw[k] for k in ("name", "seed", "image_size", "objects_per_image", "variation")}
    data.update(
        caption_images=caption_images or raw["caption_images"],
        train_images=1,  # unused: the web has captions, never masks
        val_images=1,
        things=things,
        stuff=stuff,
        unseen=[],
    )
    return parse_spec(data, source=str(path))


def check_world_in_range(spec: WorldSpec, web: WorldSpec | None = None) -> None:
    """Raises when ``spec`` uses a shape or texture the foundation never saw.

    The foundation knows the web world's shapes and textures only; a world with another (a
    user's own renderer extension, say) needs its own foundation.
    """
    web = web or web_spec()
    shapes = {t.shape for t in web.things}
    textures = {s.texture for s in web.stuff}
    outside = sorted({t.shape for t in spec.things} - shapes) + sorted(
        {s.texture for s in spec.stuff} - textures
    )
    if outside:
        raise ConfigError(
            f"world {spec.name!r} uses {', '.join(map(repr, outside))}, outside the shipped "
            f"foundation's range (shapes {sorted(shapes)}, textures {sorted(textures)}); "
            "pretrain one that covers it with: zeroseg pretrain foundation --web YOUR_WEB.yaml"
        )


def world_path(name: str) -> Path:
    """A world spec file by path, or by the name of a shipped world ("default", "second")."""
    from zeroseg.data.shapeworld.spec import DEFAULT_SPEC

    if name == "default":
        return DEFAULT_SPEC
    shipped = DEFAULT_SPEC.parent / "worlds" / f"{name}.yaml"
    if shipped.is_file() and not Path(name).is_file():
        return shipped
    if not Path(name).is_file():
        raise FileNotFoundError(
            f"world {name!r} is neither a shipped world (default, second) nor a spec file"
        )
    return Path(name)
