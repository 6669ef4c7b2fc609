"""The methods, by name.

A method is one module of this package: every :class:`Method` subclass that gives itself a
``name`` of its own is registered under it, so adding a method touches its module (and its
preset in ``configs/``) and nothing else. An unknown name lists the valid ones (``runner``).
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Iterable

from zeroseg.methods.base import Method


def discover(
    package: str = __name__, paths: Iterable[str] | None = None
) -> dict[str, type[Method]]:
    """Imports every module of ``package`` (in name order) and returns name -> method class.

    Raises:
        ValueError: two classes claim one name, or a class declares no training stages.
    """
    found: dict[str, type[Method]] = {}
    for info in sorted(pkgutil.iter_modules(list(paths or __path__)), key=lambda i: i.name):
        module = importlib.import_module(f"{package}.{info.name}")
        for obj in vars(module).values():
            if not (
                isinstance(obj, type)
                and issubclass(obj, Method)
                and obj is not Method
                and obj.__module__ == module.__name__
                and "name" in vars(obj)
            ):
                continue
            if not obj.stages:
                raise ValueError(
                    f"method {obj.name!r} ({obj.__module__}.{obj.__qualname__}) declares no "
                    'training stages: set `stages = (Stage(<name>, "train"), ...)` (Method.stages)'
                )
            other = found.setdefault(obj.name, obj)
            if other is not obj:
                raise ValueError(
                    f"method name {obj.name!r} is claimed by {other.__module__}.{other.__qualname__} "
                    f"and {obj.__module__}.{obj.__qualname__}"
                )
    return found


METHODS: dict[str, type[Method]] = discover()

__all__ = ["METHODS", "Method", "discover"]
