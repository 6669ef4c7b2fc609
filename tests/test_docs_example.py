"""docs/adding-a-method.md's worked example, done exactly as written: the package and its tests are
copied to a temp dir, the two files the page shows are written there and nothing else, and a
fresh interpreter finds the method and its demo row and passes the contract and stage tests
with it."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "adding-a-method.md"

pytestmark = pytest.mark.slow


def doc_files() -> dict[str, str]:
    """``<!-- file: path -->`` followed by a fenced block -> {path: the block's text}."""
    pattern = re.compile(r"<!-- file: (\S+) -->\n```\w*\n(.*?)```", re.S)
    return {path: text for path, text in pattern.findall(DOC.read_text())}


def test_the_page_shows_one_module_and_one_preset():
    files = doc_files()
    assert sorted(files) == [
        "src/zeroseg/configs/colour-projection_mlp_shapeworld.yaml",
        "src/zeroseg/methods/colour_projection.py",
    ]
    assert not any((REPO / path).exists() for path in files)  # an example, not shipped


def test_the_worked_example_adds_a_method(tmp_path):
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for part in ("src", "tests"):
        shutil.copytree(REPO / part, tmp_path / part, ignore=ignore, symlinks=True)
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    for path, text in doc_files().items():
        (tmp_path / path).write_text(text)
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "src")}
    check = (
        "from zeroseg.methods import METHODS\n"
        "from zeroseg.demo import ABLATIONS, DEMO_PRESETS\n"
        "assert METHODS['colour-projection'].__module__ == 'zeroseg.methods.colour_projection'\n"
        "assert DEMO_PRESETS['colour-projection'] == 'colour-projection_mlp_shapeworld'\n"
        "assert ABLATIONS[-1] == 'colour-projection'\n"
        "print(len(METHODS))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", check], env=env, cwd=tmp_path, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["21"]  # the 20 methods and the new one
    tests = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "tests/methods/test_contract.py",
            "tests/test_imports.py",
            "tests/test_stages.py",
            "-k",
            "colour-projection or import or cycle or layer",
        ],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert tests.returncode == 0, tests.stdout[-3000:] + tests.stderr[-2000:]
    # 8 contract and import tests, and 2 stage tests: its stages' schedules exist, and --quick
    assert re.search(r"\b10 passed", tests.stdout), tests.stdout[-500:]
