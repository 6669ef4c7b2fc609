"""How well SAZS's eigen-segments follow the objects (docs/methods.md, "SAZS": how many segments).

For the first N images of a ShapeWorld split (default: 100 of `val`), builds the eigen-segments of
each fusion setting exactly as the fusion does (``spectral_decomposition`` on the colour graph,
``refine_segments``, the segments ``refine`` fuses with) and prints the mean
number of segments per image, the mean number of classes per image, and the share of pixels lying
in *mixed* segments: segments whose most frequent label covers less than ``--purity`` of them
(one segment that spans a seen object and its neighbours hands them all one class). The labels
are read only to score the segments; nothing is trained or chosen here.

Settings: "eigengap-8" (8 eigenvectors, Deep Spectral's eigengap count: the ShapeWorld preset
until session 30) and "preset" (``zeroseg.shape.refine.default_refine_config``: the SAZS
ShapeWorld preset's and ``--refine spectral``'s).

Usage: python benchmarks/eigen_segment_purity.py [--split val] [--images 100] [--world FILE]
"""

from __future__ import annotations

import argparse
import dataclasses

import numpy as np

from zeroseg.data.shapeworld import load_spec, load_split
from zeroseg.shape.fusion import RefineConfig, refine_segments
from zeroseg.shape.refine import default_refine_config
from zeroseg.shape.spectral import spectral_decomposition


def settings() -> dict[str, RefineConfig]:
    preset = default_refine_config()
    old = RefineConfig(
        spectral=dataclasses.replace(preset.spectral, num_eigenvectors=8), num_segments=None
    )
    return {"eigengap-8": old, "preset": preset}


def mixed_share(segments: np.ndarray, labels: np.ndarray, purity: float) -> float:
    """Share of pixels in segments whose most frequent label covers less than ``purity`` of them."""
    seg = segments.ravel()
    lab = labels.ravel().astype(np.int64)
    counts = np.zeros((int(seg.max()) + 1, int(lab.max()) + 1), dtype=np.int64)
    np.add.at(counts, (seg, lab), 1)
    sizes = counts.sum(axis=1)
    mixed = counts.max(axis=1) < purity * sizes
    return float(sizes[mixed].sum() / seg.size)


def measure(images, labels, cfg: RefineConfig, purity: float) -> dict[str, float]:
    """Mean segments per image, classes per image and mixed-pixel share under ``cfg``."""
    n_seg, n_cls, mixed = [], [], []
    for image, label in zip(images, labels, strict=True):
        segments = refine_segments(
            spectral_decomposition(np.asarray(image), None, cfg.spectral), cfg
        )
        n_seg.append(int(segments.max()) + 1)
        n_cls.append(len(np.unique(label)))
        mixed.append(mixed_share(segments, label, purity))
    return {
        "segments": float(np.mean(n_seg)),
        "classes": float(np.mean(n_cls)),
        "mixed": 100.0 * float(np.mean(mixed)),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--split", default="val", choices=["val", "test", "train"])
    ap.add_argument("--images", type=int, default=100)
    ap.add_argument("--purity", type=float, default=0.9)
    ap.add_argument("--world", default=None, help="ShapeWorld spec (default: the default world)")
    args = ap.parse_args()
    split = load_split(load_spec(args.world), args.split, progress=False)
    images, labels = split.images[: args.images], split.semantic[: args.images]
    print(
        f"| setting | segments / image | classes / image | pixels in mixed segments (< {args.purity:.0%} one class) |"
    )
    print("|---|---:|---:|---:|")
    for name, cfg in settings().items():
        m = measure(images, labels, cfg, args.purity)
        print(f"| {name} | {m['segments']:.1f} | {m['classes']:.1f} | {m['mixed']:.1f} % |")


if __name__ == "__main__":
    main()
