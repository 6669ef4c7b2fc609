"""YAML reading with numbers in every standard form.

PyYAML follows YAML 1.1, whose float pattern needs a dot: ``1e-4`` and ``3E+2`` load as strings,
so ``lr: 1e-4`` in a preset (or ``--set train.lr=1e-4``) failed as "expected a number". This
loader adds the YAML 1.2 float pattern (exponent without a dot) and is otherwise ``safe_load``:
no tags that build Python objects.
"""

from __future__ import annotations

import re
from typing import Any

import yaml

# YAML 1.2 core schema floats that YAML 1.1 misses: digits with an exponent but no dot.
_FLOAT_12 = re.compile(r"^[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)[eE][-+]?[0-9]+$")


class _Loader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that also reads ``1e-4`` as a float."""


_Loader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT_12, list("-+0123456789."))


def safe_load(text: str) -> Any:
    """``yaml.safe_load`` with YAML 1.2 exponent floats (``1e-4``, ``3E+2``)."""
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader


def one_line(error: yaml.YAMLError) -> str:
    """A YAML error's message on one line (PyYAML spreads it over several, with marks)."""
    return " ".join(str(error).split())
