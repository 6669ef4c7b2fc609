"""Colouring label maps, overlays with legends, prediction grids and bar charts (matplotlib)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402


def palette(n: int) -> np.ndarray:
    """(n, 3) uint8 distinct colours (golden-ratio hues), the same for every run."""
    hues = (np.arange(n) * 0.618033988749895) % 1.0
    sat = 0.65 + 0.35 * ((np.arange(n) // 7) % 2)
    val = 0.95 - 0.25 * ((np.arange(n) // 3) % 2)
    rgb = matplotlib.colors.hsv_to_rgb(np.stack([hues, sat, val], 1))
    return (rgb * 255).astype(np.uint8)


def colorize(label: np.ndarray, num_classes: int, ignore_index: int = 255) -> np.ndarray:
    """(H, W) labels -> (H, W, 3) uint8; ignore pixels black."""
    pal = np.concatenate([palette(num_classes), np.zeros((256 - num_classes, 3), np.uint8)])
    label = np.asarray(label).astype(np.int64).clip(0, 255)
    out = pal[label]
    out[label == ignore_index] = 0
    return out


def save_overlay(
    image: np.ndarray,
    label: np.ndarray,
    class_names: Sequence[str],
    path: Path,
    *,
    alpha: float = 0.55,
) -> Path:
    """Writes the image blended with its coloured labels and a legend of the classes present."""
    colors = colorize(label, len(class_names))
    blend = (image.astype(np.float32) * (1 - alpha) + colors.astype(np.float32) * alpha).astype(
        np.uint8
    )
    present = [int(c) for c in np.unique(label) if c < len(class_names)]
    pal = palette(len(class_names))
    fig, ax = plt.subplots(figsize=(6, 4.5), dpi=100)
    ax.imshow(blend, interpolation="nearest")
    ax.axis("off")
    handles = [matplotlib.patches.Patch(color=pal[c] / 255, label=class_names[c]) for c in present]
    if handles:
        ax.legend(
            handles=handles, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8, frameon=False
        )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
    return path


def save_label_png(label: np.ndarray, path: Path) -> Path:
    """The raw label map as an 8-bit PNG (class index per pixel)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(label).astype(np.uint8), mode="L").save(path)
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
