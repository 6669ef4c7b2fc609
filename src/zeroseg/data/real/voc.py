"""PASCAL VOC 2012 with the SBD augmented training set, in the 15/5 zero-shot split.

Layout (``root`` is ``VOCdevkit/VOC2012``)::

    JPEGImages/<id>.jpg
    SegmentationClass/<id>.png       palette PNGs: 0 background, 1-20 classes, 255 boundary
    SegmentationClassAug/<id>.png    SBD-derived labels, same ids (gray or palette)
    ImageSets/Segmentation/{train,val}.txt, and trainaug.txt (or mmseg's aug.txt)

Classes follow ZS3Net/ZegCLIP's 15/5 setting: the 20 object classes *without* background. ZegCLIP
(``ZeroPascalVOCDataset20``) loads VOC with mmseg's ``reduce_zero_label=True``: label 0
(background) becomes ignore (255) and label k becomes class k-1; 255 (object boundaries) stays
ignore. We do exactly that, so background pixels are neither trained nor evaluated.

Training split: ``trainaug.txt`` (10,582 ids, VOC train + SBD minus VOC val) with each label taken
from ``SegmentationClassAug`` when present there, else ``SegmentationClass``; without a trainaug
list, mmseg's layout ``train.txt`` (SegmentationClass) + ``aug.txt`` (SegmentationClassAug); else
``train.txt`` alone. Validation: ``val.txt`` (1,449 ids) with ``SegmentationClass``.
"""

from __future__ import annotations

from pathlib import Path

from zeroseg.data.classes import ClassSplit
from zeroseg.data.real.base import (
    Item,
    read_split_list,
    require_dir,
    shifted_table,
    table_builder,
)

NAMES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
    "tvmonitor",
)  # fmt: skip
UNSEEN = ("pottedplant", "sheep", "sofa", "train", "tvmonitor")
TABLE = shifted_table(len(NAMES))  # 0 background -> 255, k -> k-1, 255 boundary kept
SCHEME = "VOC ids 0 (background) to 20 and 255"
SPLITS = ("train", "val")


def class_split() -> ClassSplit:
    return ClassSplit.from_names(NAMES, UNSEEN)


def _items(root: Path, ids: list[str], label_dirs: tuple[str, ...]) -> list[Item]:
    items = []
    for i in ids:
        candidates = [root / d / f"{i}.png" for d in label_dirs]
        # a missing label keeps the first candidate's path, so `data check` names it
        label = next((p for p in candidates if p.is_file()), candidates[0])
        items.append(Item(i, root / "JPEGImages" / f"{i}.jpg", label))
    return items


def items(root: str | Path, split: str) -> list[Item]:
    """The files of a split; raises :class:`LayoutError` if the layout lacks a list or directory."""
    root = Path(root)
    require_dir(root / "JPEGImages", "VOC image")
    sets = root / "ImageSets" / "Segmentation"
    if split == "val":
        require_dir(root / "SegmentationClass", "VOC label")
        return _items(root, read_split_list(sets / "val.txt"), ("SegmentationClass",))
    if split != "train":
        raise ValueError(f"unknown VOC split {split!r}; valid: {list(SPLITS)}")
    if (sets / "trainaug.txt").is_file():
        return _items(
            root,
            read_split_list(sets / "trainaug.txt"),
            ("SegmentationClassAug", "SegmentationClass"),
        )
    train = _items(root, read_split_list(sets / "train.txt"), ("SegmentationClass",))
    if (sets / "aug.txt").is_file():
        train += _items(root, read_split_list(sets / "aug.txt"), ("SegmentationClassAug",))
    return train


build = table_builder("voc", items, class_split, TABLE, SCHEME)
