"""The methods, by name. Each entry is imported explicitly; an unknown name lists the valid ones."""

from zeroseg.methods.base import Method
from zeroseg.methods.projection import Oracle, Projection
from zeroseg.methods.sazs import Sazs, SazsNoFusion
from zeroseg.methods.zs3net import ZS3Net, ZS5Net

METHODS: dict[str, type[Method]] = {
    Projection.name: Projection,
    Oracle.name: Oracle,
    Sazs.name: Sazs,
    SazsNoFusion.name: SazsNoFusion,
    ZS3Net.name: ZS3Net,
    ZS5Net.name: ZS5Net,
}

__all__ = ["METHODS", "Method"]
