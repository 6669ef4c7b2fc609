"""ShapeWorld: the embedded procedural world (see ``default.yaml``)."""

from zeroseg.data.shapeworld.spec import (
    DEFAULT_SPEC,
    SHAPES,
    TEXTURES,
    SpecError,
    WorldSpec,
    load_spec,
    parse_spec,
)
from zeroseg.data.shapeworld.world import ShapeWorldDataset, generate_split, load_split, world_dir

__all__ = [
    "DEFAULT_SPEC",
    "SHAPES",
    "TEXTURES",
    "ShapeWorldDataset",
    "SpecError",
    "WorldSpec",
    "generate_split",
    "load_spec",
    "load_split",
    "parse_spec",
    "world_dir",
]
