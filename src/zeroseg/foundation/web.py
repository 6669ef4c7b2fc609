"""The foundation's captioned "web" world and the range it covers.

``web.yaml`` lists colour words with their RGB values and the world's settings; this module
expands it into a ShapeWorld spec whose things are every colour x built-in shape
("<colour> <shape>") and whose stuff is every built-in texture x colour
("<texture word> <colour> ground"), the naming every shipped benchmark world uses. Only the
spec's ``caption`` split is read (its own seed, so no image is shared with a benchmark world).
"""

from __future__ import annotations

import math
import random
from pathlib import Path

import yaml

from zeroseg._yaml import safe_load
from zeroseg.config import ConfigError
from zeroseg.data.shapeworld.spec import SHAPES, TEXTURES, WorldSpec, parse_spec, spec_warnings

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


def web_colors(path: str | Path | None = None) -> dict[str, list[int]]:
    """The web world's colour words and their RGB values, in the file's order."""
    path = Path(path) if path is not None else WEB_SPEC
    return dict(yaml.safe_load(path.read_text())["colors"])


def thing_class(color: str, rgb, shape: str) -> dict:
    """A thing class of a spec, named as every shipped world names them ("pink ring")."""
    return {"name": f"{color} {shape}", "color": list(rgb), "shape": shape}


def ground_class(color: str, rgb, texture: str) -> dict:
    """A stuff class of a spec, named as every shipped world names them ("dotted teal ground")."""
    return {
        "name": f"{TEXTURE_WORDS[texture]} {color} ground",
        "color": list(rgb),
        "texture": texture,
    }


def web_spec(path: str | Path | None = None, *, caption_images: int | None = None) -> WorldSpec:
    """The expanded web world (``caption_images`` overrides the file's count, for tests)."""
    path = Path(path) if path is not None else WEB_SPEC
    raw = yaml.safe_load(path.read_text())
    colors = raw["colors"]
    things = [thing_class(c, rgb, s) for c, rgb in colors.items() for s in SHAPES]
    stuff = [ground_class(c, rgb, t) for c, rgb in colors.items() for t in TEXTURES]
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
        names = ["default", *sorted(p.stem for p in shipped.parent.glob("*.yaml"))]
        raise FileNotFoundError(
            f"world {name!r} is neither a shipped world ({', '.join(names)}) nor a spec file"
        )
    return Path(name)


# --- worlds drawn at random within the foundation's range ------------------------------------------


def draw_world(seed: int, *, web: str | Path | None = None) -> dict:
    """A ShapeWorld spec (as a dict) drawn from ``seed``, within the web world's range.

    For checking that a result carries over to a world nobody chose anything on: 4-6 colour
    words x 4-6 shapes as things, 2-4 other colour words x 2-3 textures as grounds, 1-4 or 2-5
    objects an image, the shipped worlds' split sizes. About a fifth of the things (at least two)
    and one ground (two when there are more than six) are unseen, each a new combination of a
    colour and a shape (or texture) that seen classes show: no colour or shape loses more than
    its share of seen classes, so every unseen name is made of words the seen classes teach.
    The same seed gives the same spec; the spec validates with no warning.
    """
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"a world's draw seed must be an integer >= 0, got {seed!r}")
    rng = random.Random(seed)
    colors = web_colors(web)
    words = list(colors)
    if len(words) < 10:  # up to six for the things, up to four others for the grounds
        raise ConfigError(
            f"{web or WEB_SPEC}: drawing a world needs at least 10 colour words, got {len(words)}"
        )
    thing_colors = rng.sample(words, rng.randint(4, 6))
    shapes = rng.sample(SHAPES, rng.randint(4, 6))
    ground_colors = rng.sample([w for w in words if w not in thing_colors], rng.randint(2, 4))
    textures = rng.sample(TEXTURES, rng.randint(2, 3))
    things = {(c, s): thing_class(c, colors[c], s) for c in thing_colors for s in shapes}
    stuff = {(c, t): ground_class(c, colors[c], t) for c in ground_colors for t in textures}
    unseen_things = _unseen_cells(rng, thing_colors, shapes, max(2, round(0.2 * len(things))))
    unseen_stuff = _unseen_cells(rng, ground_colors, textures, 1 if len(stuff) <= 6 else 2)
    data = {
        "name": f"drawn-{seed}",
        "seed": seed,
        "image_size": 64,
        "train_images": 4000,
        "val_images": 500,
        "test_images": 500,
        "caption_images": 1000,
        "objects_per_image": rng.choice([[1, 4], [2, 5]]),
        "things": list(things.values()),
        "stuff": list(stuff.values()),
        "unseen": [things[cell]["name"] for cell in unseen_things]
        + [stuff[cell]["name"] for cell in unseen_stuff],
    }
    spec = parse_spec(data, source=f"drawn world {seed}")
    problems = spec_warnings(spec)
    if problems:  # the palette (a --web file) has colours too close to tell apart
        raise ConfigError(f"drawn world {seed}: {problems[0]}")
    return data


def _unseen_cells(rng: random.Random, rows: list[str], cols: list[str], n: int) -> list[tuple]:
    """``n`` cells of the rows x cols grid, at most its share of them in any row or column.

    At draw_world's sizes (n about a fifth of a grid of 4-6 x 4-6, or 1-2 of 2-4 x 2-3) that
    share leaves every row and column at least two seen cells when it has four or more, one
    otherwise (tested over 300 seeds). A shuffled greedy pass, retried when it paints itself
    into a corner (from the same generator, so the result depends on the seed alone).
    """
    cap_row, cap_col = math.ceil(n / len(rows)), math.ceil(n / len(cols))
    cells = [(r, c) for r in rows for c in cols]
    for _ in range(1000):
        rng.shuffle(cells)
        picked: list[tuple] = []
        for r, c in cells:
            in_row = sum(p[0] == r for p in picked)
            in_col = sum(p[1] == c for p in picked)
            if in_row < cap_row and in_col < cap_col:
                picked.append((r, c))
                if len(picked) == n:  # in the grid's order
                    return sorted(picked, key=lambda rc: (rows.index(rc[0]), cols.index(rc[1])))
    raise ConfigError(f"cannot leave {n} of {len(rows)}x{len(cols)} classes unseen")


def world_yaml(data: dict, *, header: str) -> str:
    """A drawn spec as YAML in the shipped worlds' layout (one class a line), ``header`` as a
    comment on top; reading it back gives ``data``."""
    lines = [f"# {line}".rstrip() for line in header.splitlines()]
    forms = {"things": "shape", "stuff": "texture"}
    for key, value in data.items():  # in draw_world's order
        if key in forms:
            lines.append(f"{key}:")
            for cls in value:
                r, g, b = cls["color"]
                form = forms[key]
                lines.append(
                    f"  - {{name: {cls['name']}, color: [{r}, {g}, {b}], {form}: {cls[form]}}}"
                )
        elif key == "unseen":
            lines += ["unseen:", *(f"  - {name}" for name in value)]
        elif isinstance(value, list):  # objects_per_image
            lines.append(f"{key}: [{', '.join(map(str, value))}]")
        else:
            lines.append(f"{key}: {value}")
    text = "\n".join(lines) + "\n"
    if safe_load(text) != data:  # names are colour, shape and texture words: plain YAML scalars
        raise ConfigError(f"world {data['name']!r} does not read back from YAML as written")
    return text
