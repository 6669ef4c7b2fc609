"""Colouring label maps, overlays with legends, prediction grids and bar charts (matplotlib)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from zeroseg.engine.checkpoint import _atomic_write  # noqa: E402

LEGEND_MAX = 30  # overlay legend entries (the most frequent classes)
OVERLAY_MAX = 1200  # overlay figures subsample larger images to this many pixels a side


def palette(n: int) -> np.ndarray:
    """(n, 3) uint8 distinct colours (golden-ratio hues), the same for every run."""
    hues = (np.arange(n) * 0.618033988749895) % 1.0
    sat = 0.65 + 0.35 * ((np.arange(n) // 7) % 2)
    val = 0.95 - 0.25 * ((np.arange(n) // 3) % 2)
    rgb = matplotlib.colors.hsv_to_rgb(np.stack([hues, sat, val], 1))
    return (rgb * 255).astype(np.uint8)


def label_dtype(num_classes: int) -> np.dtype:
    """The smallest unsigned type holding ``num_classes`` labels: uint8 up to 256, else uint16."""
    if num_classes > 65536:
        raise ValueError(f"at most 65536 classes fit a 16-bit label map, got {num_classes}")
    return np.dtype(np.uint8 if num_classes <= 256 else np.uint16)


def colorize(label: np.ndarray, num_classes: int, ignore_index: int | None = 255) -> np.ndarray:
    """(H, W) labels -> (H, W, 3) uint8, any number of classes.

    Values outside ``[0, num_classes)`` are black; so is ``ignore_index`` (it never collides with
    a class: ``ClassSplit`` refuses an ``ignore_index`` inside the class range).
    """
    pal = np.concatenate([palette(num_classes), np.zeros((1, 3), np.uint8)])
    label = np.asarray(label).astype(np.int64)
    index = np.where((label < 0) | (label >= num_classes), num_classes, label)
    if ignore_index is not None and ignore_index >= num_classes:
        index[label == ignore_index] = num_classes
    return pal[index]


def save_overlay(
    image: np.ndarray,
    label: np.ndarray,
    class_names: Sequence[str],
    path: Path,
    *,
    alpha: float = 0.55,
) -> Path:
    """Writes the image blended with its coloured labels and a legend of the classes present.

    The figure is about 600 px wide, so large images are subsampled (nearest) to at most
    ``OVERLAY_MAX`` pixels a side first: a 4000 x 4000 overlay then costs megabytes, not GiB.
    """
    step = max(1, -(-max(np.shape(label)[:2]) // OVERLAY_MAX))
    image, label = np.asarray(image)[::step, ::step], np.asarray(label)[::step, ::step]
    colors = colorize(label, len(class_names), ignore_index=None)
    blend = (image.astype(np.float32) * (1 - alpha) + colors.astype(np.float32) * alpha).astype(
        np.uint8
    )
    values, counts = np.unique(label, return_counts=True)
    keep = values < len(class_names)
    values, counts = values[keep], counts[keep]
    # A legend of hundreds of entries (large vocabularies) is unreadable: the most frequent.
    present = sorted(int(c) for c in values[np.argsort(-counts, kind="stable")[:LEGEND_MAX]])
    pal = palette(len(class_names))
    fig, ax = plt.subplots(figsize=(6, 4.5), dpi=100)
    ax.imshow(blend, interpolation="nearest")
    ax.axis("off")
    handles = [matplotlib.patches.Patch(color=pal[c] / 255, label=class_names[c]) for c in present]
    if len(values) > len(present):
        more = f"... {len(values) - len(present)} more classes"
        handles.append(matplotlib.patches.Patch(color="none", label=more))
    if handles:
        ax.legend(
            handles=handles, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8, frameon=False
        )
    fig.tight_layout()
    # Atomic: an interrupted write never leaves a truncated figure under the final name.
    _atomic_write(Path(path), lambda tmp: fig.savefig(tmp, bbox_inches="tight", format="png"))
    plt.close(fig)
    return path


def save_label_png(label: np.ndarray, path: Path, *, num_classes: int | None = None) -> Path:
    """The raw label map as a PNG holding the class index of each pixel (written atomically).

    8-bit grayscale while every label fits (``num_classes`` <= 256, or the largest label < 256
    when ``num_classes`` is not given), 16-bit grayscale beyond, so class 256 never wraps to 0.
    """
    label = np.asarray(label)
    if label.size and (label.min() < 0 or label.max() > 65535):
        raise ValueError(f"{path}: labels must be 0-65535, got {label.min()}-{label.max()}")
    n = num_classes if num_classes is not None else (int(label.max()) + 1 if label.size else 1)
    if label_dtype(n) == np.uint8:
        img = Image.fromarray(label.astype(np.uint8), mode="L")
    else:
        img = Image.fromarray(label.astype(np.uint16))  # mode I;16
    _atomic_write(Path(path), lambda tmp: img.save(tmp, format="PNG"))
    return path


def prediction_grid(
    images: Sequence[np.ndarray],
    truths: Sequence[np.ndarray],
    predictions: dict[str, Sequence[np.ndarray]],
    num_classes: int,
    path: Path,
) -> Path:
    """Rows = images; columns = image, ground truth, then each method's prediction."""
    cols = ["image", "ground truth", *predictions]
    n = len(images)
    fig, axes = plt.subplots(
        n, len(cols), figsize=(1.6 * len(cols), 1.6 * n), dpi=100, squeeze=False
    )
    for r in range(n):
        panels = [images[r], colorize(truths[r], num_classes)] + [
            colorize(predictions[m][r], num_classes) for m in predictions
        ]
        for c, panel in enumerate(panels):
            ax = axes[r][c]
            ax.imshow(panel, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(cols[c], fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def bar_chart(rows: dict[str, dict], path: Path, keys=("seen_miou", "unseen_miou", "hiou")) -> Path:
    """Grouped bars of seen mIoU, unseen mIoU and hIoU per method."""
    methods = list(rows)
    x = np.arange(len(methods))
    width = 0.8 / len(keys)
    fig, ax = plt.subplots(figsize=(max(5, 1.2 * len(methods) + 2), 3.5), dpi=100)
    for i, key in enumerate(keys):
        vals = [rows[m].get(key) or 0.0 for m in methods]
        bars = ax.bar(x + (i - (len(keys) - 1) / 2) * width, vals, width, label=key)
        ax.bar_label(bars, fmt="%.1f", fontsize=6)
    ax.set_xticks(x, methods, rotation=20, fontsize=8)
    ax.set_ylabel("%")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=8)
    ax.set_title("ShapeWorld: seen / unseen / harmonic mIoU")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def seen_unseen_curves(rows: dict[str, dict], path: Path) -> Path:
    """mIoU(S) against mIoU(U) over the calibration sweep of each row (``calibration_curve``),
    the chosen ``gamma`` marked, AUSUC in the legend. Rows without a curve are left out."""
    fig, ax = plt.subplots(figsize=(5.5, 4.5), dpi=100)
    for name, row in rows.items():
        curve = row.get("calibration_curve")
        if not curve:
            continue
        (line,) = ax.plot(
            curve["unseen_miou"],
            curve["seen_miou"],
            lw=1.2,
            label=f"{name} (AUSUC {row.get('ausuc', 0.0):.1f})",
        )
        gamma = row.get("calibration", {}).get("gamma")
        if gamma in curve["gamma"]:
            i = curve["gamma"].index(gamma)
            ax.plot(curve["unseen_miou"][i], curve["seen_miou"][i], "o", color=line.get_color())
    ax.set_xlabel("mIoU(U) %")
    ax.set_ylabel("mIoU(S) %")
    ax.set_xlim(0, 100)
    ax.set_ylim(0, 100)
    ax.legend(fontsize=7)
    ax.set_title("seen-unseen trade-off over gamma (dot: gamma chosen on val)", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
