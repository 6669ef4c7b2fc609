"""The methods, by name. Each entry is imported explicitly; an unknown name lists the valid ones."""

from zeroseg.methods.base import Method
from zeroseg.methods.projection import Oracle, Projection

METHODS: dict[str, type[Method]] = {
    Projection.name: Projection,
    Oracle.name: Oracle,
}

__all__ = ["METHODS", "Method"]
