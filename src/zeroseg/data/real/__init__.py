"""Real benchmarks in their standard layouts: PASCAL VOC 2012 (+SBD), COCO-Stuff 164k, PASCAL
Context-59 and COCO panoptic 2017, each with the zero-shot class split of DESIGN.md, and the
four-fold PASCAL-5i / COCO-20i splits (SAZS) over the VOC and COCO-Stuff files.

``DATASETS`` maps a dataset name (``DataConfig.dataset``) to its builder
``build(root, split, *, limit, train_transform) -> FileListDataset``; the builders of ``FOLDED``
datasets also take ``fold`` (``DataConfig.fold``).

Evaluation splits (docs/methods.md, "Splits"): the benchmark's official validation set is our
``test`` split (reported, read by nothing else), and our ``val`` split (every choice: calibration,
hyperparameters, schedule) is a fixed part of the official training set, held out from training:
the ``ceil(5 %)`` of its images, at most 500, whose ids have the smallest
``sha256("zeroseg-val-0:" + id)``. The choice depends on the ids only (not on file order,
``train_limit`` or the machine), so every run and every method holds out the same images.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import math
from collections.abc import Callable, Sequence

from zeroseg.data.classes import ClassSplit
from zeroseg.data.real import coco_panoptic, coco_stuff, context, folds, voc
from zeroseg.data.real.base import FileListDataset, LayoutError

DATASETS: dict[str, Callable[..., FileListDataset]] = {
    "voc": voc.build,
    "coco_stuff": coco_stuff.build,
    "context": context.build,
    "coco_panoptic": coco_panoptic.build,
    "pascal_5i": folds.build_pascal_5i,
    "coco_20i": folds.build_coco_20i,
}
FOLDED = frozenset({"pascal_5i", "coco_20i"})

CLASS_SPLITS: dict[str, Callable[[], ClassSplit]] = {
    "voc": voc.class_split,
    "coco_stuff": coco_stuff.class_split,
    "context": context.class_split,
    "coco_panoptic": coco_panoptic.class_split,
    "pascal_5i": lambda fold=0: folds.pascal_5i_split(fold),
    "coco_20i": lambda fold=0: folds.coco_20i_split(fold),
}


def get_builder(name: str, *, fold: int | None = None) -> Callable[..., FileListDataset]:
    """The builder of dataset ``name``, with ``fold`` bound for the four-fold datasets."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; valid: {sorted(DATASETS)} (and shapeworld)")
    build = DATASETS[name]
    if name in FOLDED:
        return functools.partial(build, fold=fold)
    if fold is not None:
        raise ValueError(
            f"data.fold is set ({fold}) but {name} has one fixed split; folds exist for "
            f"{sorted(FOLDED)}"
        )
    return build


VAL_SALT = "zeroseg-val-0"  # the seed of the held-out validation images (changing it changes val)
VAL_FRACTION = 0.05  # share of the official training images held out as ``val``
VAL_MAX = 500  # at most this many


def val_holdout_ids(ids: Sequence[str]) -> set[str]:
    """The training ids held out as the ``val`` split (see the module docstring for the rule).

    Raises:
        ValueError: fewer than two training images (nothing would be left to train on).
    """
    ids = list(dict.fromkeys(ids))
    if len(ids) < 2:
        raise ValueError(
            f"holding out a validation split needs at least 2 training images, got {len(ids)}"
        )
    n = min(VAL_MAX, math.ceil(VAL_FRACTION * len(ids)), len(ids) - 1)
    ranked = sorted(ids, key=lambda i: hashlib.sha256(f"{VAL_SALT}:{i}".encode()).hexdigest())
    return set(ranked[:n])


def build_real_dataset(
    data_cfg,
) -> tuple[FileListDataset, FileListDataset, FileListDataset, ClassSplit]:
    """The ``train``, ``val`` and ``test`` sets and class split of a ``zeroseg.config.DataConfig``.

    ``test`` is the official validation set; ``val`` the images of the official training set
    chosen by :func:`val_holdout_ids`, which ``train`` then leaves out (``train_limit`` applies
    to what remains; ``val_limit`` to both evaluation splits). The training set carries
    ``train_transform`` (resize ``data_cfg.scale_range``, crop ``data_cfg.crop_size``, flip,
    photometric distortion) for the step loader to apply; ``val`` and ``test`` are not augmented.
    """
    from zeroseg.data.transforms import train_transform

    build = get_builder(data_cfg.dataset, fold=getattr(data_cfg, "fold", None))
    if not data_cfg.root:
        raise ValueError(
            f"data.root is not set: point it at the {data_cfg.dataset} dataset directory"
        )
    aug = train_transform(data_cfg.crop_size, tuple(data_cfg.scale_range))
    train = build(data_cfg.root, "train", train_transform=aug)
    test = build(data_cfg.root, "val", limit=data_cfg.val_limit)
    if getattr(data_cfg, "skip_bad", False):
        for ds in (train, test):
            skip_bad_samples(ds)
    held = val_holdout_ids([it.id for it in train.items])
    # val: the held-out official training images, not augmented; ids keep their official split
    val = copy.copy(train)
    val.train_transform = None
    val.items = [it for it in train.items if it.id in held][: data_cfg.val_limit]
    train.items = [it for it in train.items if it.id not in held][: data_cfg.train_limit]
    return train, val, test, train.class_split


def skip_bad_samples(ds: FileListDataset) -> int:
    """Scans a split and removes the samples with a problem, logging each one and the count.

    Without ``data.skip_bad`` a bad sample stops the run with an error naming its file; with it,
    nothing is dropped silently: every skipped file is logged and ``ds.skipped`` records them.
    """
    import logging

    from zeroseg.data.real.items import check_item

    log = logging.getLogger("zeroseg.data")
    bad: dict[int, list[str]] = {}
    for i, item in enumerate(ds.items):
        for p in check_item(ds, i, item, ds.split_name):
            bad.setdefault(i, []).append(f"{p.kind}: {p.path}: {p.detail}")
    for i, reasons in bad.items():
        for r in reasons:
            log.warning("skipping %s/%s sample %d (%s)", ds.name, ds.split_name, i, r)
    ds.skipped = [str(ds.items[i].image) for i in sorted(bad)]
    ds.items = [it for i, it in enumerate(ds.items) if i not in bad]
    if bad:
        log.warning(
            "skipped %d of %d %s/%s samples",
            len(bad),
            len(bad) + len(ds.items),
            ds.name,
            ds.split_name,
        )
    if not ds.items:
        raise ValueError(f"{ds.name}/{ds.split_name}: every sample is bad; see the log")
    return len(bad)


__all__ = [
    "CLASS_SPLITS",
    "DATASETS",
    "FOLDED",
    "FileListDataset",
    "LayoutError",
    "VAL_FRACTION",
    "VAL_MAX",
    "VAL_SALT",
    "build_real_dataset",
    "val_holdout_ids",
    "get_builder",
]
