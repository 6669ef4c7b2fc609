"""PASCAL Context-59 in the 49/10 zero-shot split of ZegCLIP / ZegFormer.

Layout (``root`` is ``VOCdevkit/VOC2010``, as mmseg's ``pascal_context.py`` converter writes it)::

    JPEGImages/<id>.jpg
    SegmentationClassContext/<id>.png          0 background, 1-59 the classes below
    ImageSets/SegmentationContext/{train,val}.txt      4,996 / 5,104 ids

Context-59 drops background (mmseg ``PascalContextDataset59``, ``reduce_zero_label=True``): 0
becomes ignore (255), k becomes class k-1. The 59 classes are the 59 most frequent of the full
459-class annotation; ``zeroseg data prepare context ROOT`` converts the raw ``trainval/*.mat``
files (459 ids, ``labels.txt`` numbering) with :data:`CONTEXT459_IDS`.
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

# (459-class id in labels.txt / trainval .mat files, name): the 59 classes, in label order. These are
# the 59 non-background ids of the mapping in mmseg/PyTorch-Encoding's converter, sorted.
CONTEXT459_IDS = (
    (2, "aeroplane"), (9, "bag"), (18, "bed"), (19, "bedclothes"), (22, "bench"),
    (23, "bicycle"), (25, "bird"), (31, "boat"), (33, "book"), (34, "bottle"), (44, "building"),
    (45, "bus"), (46, "cabinet"), (59, "car"), (65, "cat"), (68, "ceiling"), (72, "chair"),
    (80, "cloth"), (85, "computer"), (98, "cow"), (104, "cup"), (105, "curtain"), (113, "dog"),
    (115, "door"), (144, "fence"), (158, "floor"), (159, "flower"), (162, "food"), (187, "grass"),
    (189, "ground"), (207, "horse"), (220, "keyboard"), (232, "light"), (258, "motorbike"),
    (259, "mountain"), (260, "mouse"), (284, "person"), (295, "plate"), (296, "platform"),
    (308, "pottedplant"), (324, "road"), (326, "rock"), (347, "sheep"), (349, "shelves"),
    (354, "sidewalk"), (355, "sign"), (360, "sky"), (366, "snow"), (368, "sofa"), (397, "table"),
    (415, "track"), (416, "train"), (420, "tree"), (424, "truck"), (427, "tvmonitor"),
    (440, "wall"), (445, "water"), (454, "window"), (458, "wood"),
)  # fmt: skip
NAMES = tuple(name for _, name in CONTEXT459_IDS)
UNSEEN = (
    "cow",
    "motorbike",
    "sofa",
    "cat",
    "boat",
    "fence",
    "bird",
    "tvmonitor",
    "keyboard",
    "aeroplane",
)
TABLE = shifted_table(len(NAMES))  # 0 background -> 255, k -> k-1
SCHEME = "Context-59 ids 0 (background) to 59 and 255"
SPLITS = ("train", "val")
LABEL_DIR = "SegmentationClassContext"
LIST_DIR = ("ImageSets", "SegmentationContext")


def class_split() -> ClassSplit:
    return ClassSplit.from_names(NAMES, UNSEEN)


def items(root: str | Path, split: str) -> list[Item]:
    if split not in SPLITS:
        raise ValueError(f"unknown Context split {split!r}; valid: {list(SPLITS)}")
    root = Path(root)
    require_dir(root / "JPEGImages", "Context image")
    require_dir(root / LABEL_DIR, "Context-59 label (run `zeroseg data prepare context ROOT`?)")
    ids = read_split_list(root.joinpath(*LIST_DIR) / f"{split}.txt")
    return [Item(i, root / "JPEGImages" / f"{i}.jpg", root / LABEL_DIR / f"{i}.png") for i in ids]


build = table_builder("context", items, class_split, TABLE, SCHEME)
