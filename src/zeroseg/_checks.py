"""Bounds checks of dataclass configs, with one message format for every config."""

from __future__ import annotations

from collections.abc import Iterable


def check_minimum(
    obj: object, names: Iterable[str], minimum: float, *, strict: bool = False
) -> None:
    """Raises ``ValueError("<Class>.<name> must be >= <minimum>, got <value>")`` for the first of
    ``obj``'s fields ``names`` below ``minimum`` (``strict``: not above it, ``> <minimum>``)."""
    for name in names:
        value = getattr(obj, name)
        if value < minimum or (strict and value == minimum):
            relation = ">" if strict else ">="
            raise ValueError(
                f"{type(obj).__name__}.{name} must be {relation} {minimum}, got {value}"
            )
