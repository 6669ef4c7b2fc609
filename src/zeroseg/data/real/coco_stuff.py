"""COCO-Stuff 164k (171 classes) in the 156/15 zero-shot split of ZegCLIP / ZegFormer.

Layout (``root`` is ``data/coco_stuff164k`` in mmseg's convention)::

    images/{train2017,val2017}/<id>.jpg
    annotations/{train2017,val2017}/<id>_labelTrainIds.png    train ids 0-170, 255 ignore
    annotations/{train2017,val2017}/<id>.png                  or: the raw 182-id maps

The raw maps of ``stuffthingmaps_trainval2017.zip`` hold ``COCO category id - 1`` (0-181) and 255
unlabelled. Eleven COCO thing ids have no annotation (12, 26, 29, 30, 45, 66, 68, 69, 71, 83, 91),
and 183 "other" is unlabelled, so 182 - 11 = 171 classes remain; their train ids are the raw ids
renumbered in order (mmseg ``tools/convert_datasets/coco_stuff164k.py``, ``clsID_to_trID``). The
loader reads either form (train ids preferred); ``zeroseg data prepare coco_stuff ROOT`` writes the
``_labelTrainIds.png`` files.
"""

from __future__ import annotations

from pathlib import Path

from zeroseg.data.classes import ClassSplit
from zeroseg.data.real.base import (
    FileListDataset,
    Item,
    LayoutError,
    identity_table,
    label_table,
    require_dir,
)

NAMES = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog",
    "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella",
    "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
    "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange",
    "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant",
    "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors",
    "teddy bear", "hair drier", "toothbrush",
    # stuff (COCO ids 92-182)
    "banner", "blanket", "branch", "bridge", "building-other", "bush", "cabinet", "cage",
    "cardboard", "carpet", "ceiling-other", "ceiling-tile", "cloth", "clothes", "clouds", "counter",
    "cupboard", "curtain", "desk-stuff", "dirt", "door-stuff", "fence", "floor-marble",
    "floor-other", "floor-stone", "floor-tile", "floor-wood", "flower", "fog", "food-other",
    "fruit", "furniture-other", "grass", "gravel", "ground-other", "hill", "house", "leaves",
    "light", "mat", "metal", "mirror-stuff", "moss", "mountain", "mud", "napkin", "net", "paper",
    "pavement", "pillow", "plant-other", "plastic", "platform", "playingfield", "railing",
    "railroad", "river", "road", "rock", "roof", "rug", "salad", "sand", "sea", "shelf",
    "sky-other", "skyscraper", "snow", "solid-other", "stairs", "stone", "straw",
    "structural-other", "table", "tent", "textile-other", "towel", "tree", "vegetable",
    "wall-brick", "wall-concrete", "wall-other", "wall-panel", "wall-stone", "wall-tile",
    "wall-wood", "water-other", "waterdrops", "window-blind", "window-other", "wood",
)  # fmt: skip
UNSEEN = (
    "cow", "giraffe", "suitcase", "frisbee", "skateboard", "carrot", "scissors", "cardboard",
    "clouds", "grass", "playingfield", "river", "road", "tree", "wall-concrete",
)  # fmt: skip

# COCO category ids (1-based) that COCO-Stuff never annotates; every other id in 1-182 is a class.
UNUSED_COCO_IDS = (12, 26, 29, 30, 45, 66, 68, 69, 71, 83, 91)
RAW_IDS = tuple(i - 1 for i in range(1, 183) if i not in UNUSED_COCO_IDS)  # raw value of train id k
OTHER_RAW_ID = 182  # COCO-Stuff's "other" (id 183): unlabelled

TABLE = identity_table(len(NAMES))
SCHEME = "COCO-Stuff train ids 0-170 and 255"
RAW_TABLE = label_table({**{raw: k for k, raw in enumerate(RAW_IDS)}, OTHER_RAW_ID: 255, 255: 255})
RAW_SCHEME = "raw COCO-Stuff ids 0-181 (COCO id - 1, without the 11 unused thing ids) and 255"
SPLITS = ("train", "val")
TRAIN_ID_SUFFIX = "_labelTrainIds.png"


def class_split() -> ClassSplit:
    return ClassSplit.from_names(NAMES, UNSEEN)


def uses_raw_labels(ann_dir: Path) -> bool:
    """Whether a split holds only raw 182-id maps (no ``_labelTrainIds.png`` file at all)."""
    for p in ann_dir.iterdir():
        if p.name.endswith(TRAIN_ID_SUFFIX):
            return False
    return any(p.suffix == ".png" for p in ann_dir.iterdir())


def items(root: str | Path, split: str) -> tuple[list[Item], bool]:
    """The files of a split and whether its labels are raw 182-id maps."""
    if split not in SPLITS:
        raise ValueError(f"unknown COCO-Stuff split {split!r}; valid: {list(SPLITS)}")
    root = Path(root)
    image_dir = require_dir(root / "images" / f"{split}2017", "COCO-Stuff image")
    ann_dir = require_dir(root / "annotations" / f"{split}2017", "COCO-Stuff annotation")
    raw = uses_raw_labels(ann_dir)
    suffix = ".png" if raw else TRAIN_ID_SUFFIX
    images = sorted(image_dir.glob("*.jpg"))
    if not images:
        raise LayoutError(f"COCO-Stuff image directory {image_dir} holds no .jpg file")
    return [Item(p.stem, p, ann_dir / f"{p.stem}{suffix}") for p in images], raw


def build(
    root: str | Path, split: str, *, limit: int | None = None, train_transform=None
) -> FileListDataset:
    files, raw = items(root, split)
    return FileListDataset(
        files,
        class_split=class_split(),
        table=RAW_TABLE if raw else TABLE,
        scheme=RAW_SCHEME if raw else SCHEME,
        name="coco_stuff",
        split_name=split,
        limit=limit,
        train_transform=train_transform,
    )
