"""Real benchmarks in their standard layouts: PASCAL VOC 2012 (+SBD), COCO-Stuff 164k, PASCAL
Context-59 and COCO panoptic 2017, each with the zero-shot class split of DESIGN.md, and the
four-fold PASCAL-5i / COCO-20i splits (SAZS) over the VOC and COCO-Stuff files.

``DATASETS`` maps a dataset name (``DataConfig.dataset``) to its builder
``build(root, split, *, limit, train_transform) -> FileListDataset``; the builders of ``FOLDED``
datasets also take ``fold`` (``DataConfig.fold``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

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


def build_real_dataset(data_cfg) -> tuple[FileListDataset, FileListDataset, ClassSplit]:
    """The training and validation sets and class split of a ``zeroseg.config.DataConfig``.

    The training set carries ``train_transform`` (resize ``data_cfg.scale_range``, crop
    ``data_cfg.crop_size``, flip, photometric distortion) for the step loader to apply; the
    validation set is not augmented.
    """
    from zeroseg.data.transforms import train_transform

    build = get_builder(data_cfg.dataset, fold=getattr(data_cfg, "fold", None))
    if not data_cfg.root:
        raise ValueError(
            f"data.root is not set: point it at the {data_cfg.dataset} dataset directory"
        )
    aug = train_transform(data_cfg.crop_size, tuple(data_cfg.scale_range))
    train = build(data_cfg.root, "train", limit=data_cfg.train_limit, train_transform=aug)
    val = build(data_cfg.root, "val", limit=data_cfg.val_limit)
    if getattr(data_cfg, "skip_bad", False):
        for ds in (train, val):
            skip_bad_samples(ds)
    return train, val, train.class_split


def skip_bad_samples(ds: FileListDataset) -> int:
    """Scans a split and removes the samples with a problem, logging each one and the count.

    Without ``data.skip_bad`` a bad sample stops the run with an error naming its file; with it,
    nothing is dropped silently: every skipped file is logged and ``ds.skipped`` records them.
    """
    import logging

    from zeroseg.data.check import check_item

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
    "build_real_dataset",
    "get_builder",
]
