"""How much the choice of images moves a gap: per-image confusion matrices and a paired bootstrap.

A report's figures are computed on one fixed sample of images (ShapeWorld's first 200 or all 500
of ``test``). The seed spread measures how training moves a row on that sample, not how another
sample of images would move it. The paired bootstrap (Efron & Tibshirani 1993, ch. 16; the
paired form of Koehn 2004's test for machine translation) resamples the *images* with
replacement, the same draw for every seed of both rows, recomputes each row's mean over seeds
from the resampled images' summed confusion matrices, and reports a percentile interval of the
difference. Seeds and models stay as trained: the interval is the image-sample part of the
uncertainty, to read beside the seed spread, not instead of it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from zeroseg.metrics.semantic import confusion_matrix

__all__ = [
    "BOOTSTRAP_REPS",
    "ImageConfusions",
    "gap_intervals",
    "group_scores",
    "load_image_confusions",
    "paired_gap_interval",
    "resample_counts",
    "save_image_confusions",
]

GAP_METRICS = ("seen_miou", "unseen_miou", "hiou")
BOOTSTRAP_REPS = 2000  # resamples of the images per interval (the reports')


class ImageConfusions:
    """An extra evaluator of :func:`zeroseg.engine.inference.evaluate_semantic` that keeps each
    image's (K, K) confusion matrix, in the order the images are scored (the dataset's)."""

    def __init__(self, num_classes: int, ignore_index: int = 255):
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.reset()

    def reset(self) -> None:
        self.images: list[torch.Tensor] = []

    def process(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """Adds a batch of (B, H, W) predictions and labels, one matrix per image."""
        for p, t in zip(pred, target):
            conf = confusion_matrix(p.cpu(), t.cpu(), self.num_classes, self.ignore_index)
            self.images.append(conf.to(torch.int32))

    def stacked(self) -> torch.Tensor:
        """(N, K, K) int32."""
        k = self.num_classes
        return torch.stack(self.images) if self.images else torch.zeros(0, k, k, dtype=torch.int32)

    def evaluate(self) -> dict:
        return {}  # the matrices are read from the evaluator, not the metrics

    def state(self) -> dict:
        raise RuntimeError(ONE_PROCESS_ONLY)

    def merge(self, state: dict) -> None:
        raise RuntimeError(ONE_PROCESS_ONLY)


ONE_PROCESS_ONLY = (
    "per-image confusion matrices are kept in one process only (a distributed evaluation splits "
    "the images across ranks): evaluate without torchrun"
)


ROW_PREFIX = "row/"


def save_image_confusions(
    path: Path,
    rows: dict[str, torch.Tensor],
    *,
    names: Sequence[str],
    seen: Sequence[int],
    unseen: Sequence[int],
    split: str,
) -> None:
    """Writes ``rows`` (row name -> (N, K, K) per-image confusion matrices, rows ground truth,
    columns prediction) to a compressed .npz with the class ``names``, the ``seen`` / ``unseen``
    class indices and the ``split`` scored; whole or not at all (a ``.part`` file renamed)."""
    arrays = {f"{ROW_PREFIX}{name}": conf.to(torch.int32).numpy() for name, conf in rows.items()}
    tmp = path.with_name(path.name + ".part")
    with open(tmp, "wb") as f:
        np.savez_compressed(
            f,
            names=np.array(list(names)),
            seen=np.array(list(seen), dtype=np.int64),
            unseen=np.array(list(unseen), dtype=np.int64),
            split=np.array(split),
            **arrays,
        )
    tmp.replace(path)


def load_image_confusions(path: Path) -> dict:
    """A :func:`save_image_confusions` file: ``rows`` (name -> (N, K, K) int32 tensor),
    ``names``, ``seen``, ``unseen`` (lists) and ``split``."""
    with np.load(path) as f:
        return {
            "rows": {
                key.removeprefix(ROW_PREFIX): torch.from_numpy(f[key])
                for key in f.files
                if key.startswith(ROW_PREFIX)
            },
            "names": f["names"].tolist(),
            "seen": f["seen"].tolist(),
            "unseen": f["unseen"].tolist(),
            "split": str(f["split"]),
        }


def group_scores(
    conf: torch.Tensor, seen: Sequence[int], unseen: Sequence[int]
) -> dict[str, torch.Tensor]:
    """Seen / unseen mIoU and hIoU (percent) of a batch of confusion matrices, as
    :func:`zeroseg.metrics.semantic.summarize` computes them for one.

    Args:
        conf: (..., K, K) counts, rows ground truth, columns prediction.

    Returns:
        ``seen_miou``, ``unseen_miou``, ``hiou``: (...) float64 each. A class whose IoU is
        undefined (absent from labels and predictions) is left out of its group's mean; an empty
        group is 0, and hIoU is 0 when either side is 0.
    """
    conf = conf.double()
    tp = conf.diagonal(dim1=-2, dim2=-1)
    denom = conf.sum(-2) + conf.sum(-1) - tp
    defined = denom > 0
    iou = torch.where(defined, tp / denom.clamp(min=1), torch.zeros_like(tp))

    def mean(idx: Sequence[int]) -> torch.Tensor:
        idx = list(idx)
        if not idx:
            return torch.zeros(conf.shape[:-2], dtype=torch.float64)
        n = defined[..., idx].sum(-1)
        total = iou[..., idx].sum(-1)
        return torch.where(n > 0, total / n.clamp(min=1) * 100, torch.zeros_like(total))

    s, u = mean(seen), mean(unseen)
    h = torch.where((s > 0) & (u > 0), 2 * s * u / (s + u).clamp(min=1e-12), torch.zeros_like(s))
    return {"seen_miou": s, "unseen_miou": u, "hiou": h}


def resample_counts(n: int, reps: int, seed: int = 0) -> torch.Tensor:
    """(reps, n) float64: how often each of ``n`` images is drawn in each resample (n draws with
    replacement), from ``seed`` alone."""
    if n < 1 or reps < 1:
        raise ValueError(f"resample_counts: n and reps must be >= 1, got {n}, {reps}")
    rng = np.random.default_rng(seed)
    return torch.from_numpy(rng.multinomial(n, np.full(n, 1.0 / n), size=reps)).double()


def _row_means(
    stacks: Sequence[torch.Tensor], weights: torch.Tensor, seen, unseen
) -> dict[str, torch.Tensor]:
    """Per metric, (R,) the mean over seeds of each weighting of the images (``weights`` (R, N))."""
    scores = [
        group_scores((weights @ s.double().flatten(1)).view(-1, *s.shape[1:]), seen, unseen)
        for s in stacks
    ]
    return {m: torch.stack([x[m] for x in scores]).mean(0) for m in GAP_METRICS}


def gap_intervals(
    rows: dict[str, Sequence[torch.Tensor]],
    pairs: Sequence[tuple[str, str]],
    seen: Sequence[int],
    unseen: Sequence[int],
    *,
    reps: int = BOOTSTRAP_REPS,
    level: float = 0.95,
    seed: int = 0,
) -> dict[tuple[str, str], dict[str, dict[str, float]]]:
    """Percentile intervals of (mean over seeds of row A) - (mean over seeds of row B) when the
    scored images are resampled with replacement, one draw for every seed of every row.

    Args:
        rows: row name -> one (N, K, K) per-image confusion stack per seed (the same N images,
            in the same order, everywhere).
        pairs: (A, B) row names.
        reps: bootstrap resamples.
        level: the interval's coverage (0.95: the 2.5th and 97.5th percentiles).
        seed: the resampling's random seed (the intervals are a function of it and the inputs).

    Returns:
        (A, B) -> metric -> ``gap`` (on the images as scored: the report's difference of the
        means), ``low``, ``high``; for ``seen_miou``, ``unseen_miou`` and ``hiou``.

    Raises:
        ValueError: a pair's row missing or without seeds, or stacks of different images.
    """
    used = {name for pair in pairs for name in pair}
    for name in used:
        if not rows.get(name):
            raise ValueError(f"gap_intervals: row {name!r} has no seeds' confusions")
    stacks = [s for name in used for s in rows[name]]
    shapes = {tuple(s.shape) for s in stacks}
    if len(shapes) > 1 or (stacks and (stacks[0].dim() != 3 or not stacks[0].shape[0])):
        raise ValueError(
            f"gap_intervals: every seed of every row needs the same (N, K, K) images with N > 0, "
            f"got shapes {sorted(shapes)}"
        )
    if not 0 < level < 1:
        raise ValueError(f"gap_intervals: level must be in (0, 1), got {level}")
    if not pairs:
        return {}
    n = stacks[0].shape[0]
    counts = resample_counts(n, reps, seed)
    ones = torch.ones(1, n, dtype=torch.float64)
    point = {name: _row_means(rows[name], ones, seen, unseen) for name in used}
    boot = {name: _row_means(rows[name], counts, seen, unseen) for name in used}
    tail = (1 - level) / 2 * 100
    out: dict[tuple[str, str], dict[str, dict[str, float]]] = {}
    for a, b in pairs:
        out[(a, b)] = {}
        for m in GAP_METRICS:
            low, high = np.percentile((boot[a][m] - boot[b][m]).numpy(), [tail, 100 - tail])
            gap = float(point[a][m][0] - point[b][m][0])
            out[(a, b)][m] = {"gap": gap, "low": float(low), "high": float(high)}
    return out


def paired_gap_interval(
    a: Sequence[torch.Tensor],
    b: Sequence[torch.Tensor],
    seen: Sequence[int],
    unseen: Sequence[int],
    **kwargs,
) -> dict[str, dict[str, float]]:
    """:func:`gap_intervals` of one pair: ``a`` and ``b`` are the two rows' per-seed stacks."""
    return gap_intervals({"a": a, "b": b}, [("a", "b")], seen, unseen, **kwargs)[("a", "b")]
