"""`zeroseg world --draw`: worlds drawn at random within the foundation's range."""

from __future__ import annotations

import math

import pytest

from zeroseg._yaml import safe_load
from zeroseg.cli import main
from zeroseg.config import ConfigError
from zeroseg.data.shapeworld import load_spec, parse_spec
from zeroseg.data.shapeworld.spec import DEFAULT_SPEC, spec_warnings
from zeroseg.foundation.web import TEXTURE_WORDS, check_world_in_range, draw_world, world_yaml

SEEDS = range(300)


def _grid(data: dict, key: str, form: str) -> tuple[dict, dict, set]:
    """Seen classes per colour and per form (shape or texture), and the unseen (colour, form)s."""
    unseen = set(data["unseen"])
    by_color: dict = {}
    by_form: dict = {}
    cells = set()
    for cls in data[key]:
        color = tuple(cls["color"])
        by_color.setdefault(color, 0)
        by_form.setdefault(cls[form], 0)
        if cls["name"] in unseen:
            cells.add((color, cls[form]))
        else:
            by_color[color] += 1
            by_form[cls[form]] += 1
    return by_color, by_form, cells


def test_the_same_seed_draws_the_same_world_and_seeds_differ():
    assert draw_world(7) == draw_world(7)
    drawn = {repr(draw_world(s)) for s in range(20)}
    assert len(drawn) == 20


@pytest.mark.parametrize("chunk", range(3))
def test_every_drawn_world_validates_and_each_unseen_name_is_made_of_seen_words(chunk):
    for seed in SEEDS[chunk::3]:
        data = draw_world(seed)
        spec = parse_spec(data)
        assert spec_warnings(spec) == [], seed
        check_world_in_range(spec)
        things, stuff = data["things"], data["stuff"]
        n_unseen_things = sum(t["name"] in data["unseen"] for t in things)
        n_unseen_stuff = sum(s["name"] in data["unseen"] for s in stuff)
        assert n_unseen_things == max(2, round(0.2 * len(things))), seed
        assert n_unseen_stuff == (1 if len(stuff) <= 6 else 2), seed
        for key, form in (("things", "shape"), ("stuff", "texture")):
            by_color, by_form, cells = _grid(data, key, form)
            n = len(cells)
            # at most a row's or a column's share of the unseen classes in any colour or form
            per_color = {c: sum(cc == c for cc, _ in cells) for c in by_color}
            per_form = {f: sum(ff == f for _, ff in cells) for f in by_form}
            assert max(per_color.values()) <= math.ceil(n / len(by_color)), (seed, key)
            assert max(per_form.values()) <= math.ceil(n / len(by_form)), (seed, key)
            # and every colour and form keeps seen classes to learn its word from
            assert min(by_color.values()) >= (2 if len(by_form) >= 4 else 1), (seed, key)
            assert min(by_form.values()) >= (2 if len(by_color) >= 4 else 1), (seed, key)
        thing_colors = {tuple(t["color"]) for t in things}
        assert thing_colors.isdisjoint(tuple(s["color"]) for s in stuff), seed
        for s in stuff:
            assert s["name"].startswith(TEXTURE_WORDS[s["texture"]] + " "), seed


def test_world_yaml_reads_back_as_the_drawn_spec(tmp_path):
    data = draw_world(11)
    path = tmp_path / "w.yaml"
    path.write_text(world_yaml(data, header="a test\nof two lines"))
    text = path.read_text()
    assert text.startswith("# a test\n# of two lines\nname: drawn-11\n")
    assert safe_load(text) == data
    assert load_spec(path) == parse_spec(data)


def test_a_palette_too_small_to_draw_from_is_refused(tmp_path):
    web = tmp_path / "web.yaml"
    web.write_text("colors:\n" + "".join(f"  c{i}: [{20 * i}, 0, 0]\n" for i in range(9)))
    with pytest.raises(ConfigError, match="at least 10 colour words, got 9"):
        draw_world(0, web=web)
    with pytest.raises(ConfigError, match="integer >= 0"):
        draw_world(-1)


def test_the_command_writes_a_new_file_and_never_over_one(tmp_path, capsys):
    out = tmp_path / "drawn.yaml"
    assert main(["world", "--draw", "5", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"wrote {out}" in printed and "drawn-5:" in printed
    assert safe_load(out.read_text()) == draw_world(5)
    assert "zeroseg world --draw 5" in out.read_text().splitlines()[0]
    before = out.read_bytes()
    assert main(["world", "--draw", "5", "--out", str(out)]) == 0  # the same draw: a no-op
    assert "already this draw" in capsys.readouterr().out
    assert main(["world", "--draw", "6", "--out", str(out)]) == 2
    assert "exists and is not this draw" in capsys.readouterr().err
    assert out.read_bytes() == before
    out.write_text(out.read_text().replace("seed: 5", "seed: 50"))  # a hand-edited draw
    edited = out.read_bytes()
    assert main(["world", "--draw", "5", "--out", str(out)]) == 2
    assert "exists and is not this draw" in capsys.readouterr().err
    assert out.read_bytes() == edited
    assert main(["world", "--draw", "6"]) == 2
    assert "--draw needs --out" in capsys.readouterr().err
    assert main(["world", str(DEFAULT_SPEC), "--draw", "6", "--out", str(tmp_path / "x")]) == 2
    assert "not both" in capsys.readouterr().err
    assert main(["world", "--out", str(tmp_path / "y.yaml")]) == 2
    assert "give --draw SEED" in capsys.readouterr().err
    assert not (tmp_path / "x").exists() and not (tmp_path / "y.yaml").exists()


def test_the_shipped_drawn_worlds_are_what_their_command_draws():
    shipped = sorted((DEFAULT_SPEC.parent / "worlds").glob("drawn-*.yaml"))
    assert [p.stem for p in shipped] == ["drawn-53", "drawn-54", "drawn-55"]
    for path in shipped:
        seed = int(path.stem.removeprefix("drawn-"))
        assert f"`zeroseg world --draw {seed} --out {path.name}`" in path.read_text()
        assert safe_load(path.read_text()) == draw_world(seed), path.name


def test_the_command_takes_a_shipped_worlds_name(capsys):
    assert main(["world", "drawn-53"]) == 0
    assert capsys.readouterr().out.startswith("drawn-53: 36 classes")
    assert main(["world", "no-such-world"]) == 2
    err = capsys.readouterr().err
    assert "'no-such-world' is neither a shipped world (default, dev, drawn-53" in err
