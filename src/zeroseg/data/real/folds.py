"""PASCAL-5i and COCO-20i: the four-fold class splits of the few-shot benchmarks, as SAZS (and LSeg
before it) use them for zero-shot segmentation.

Each fold makes a quarter of the classes unseen and trains on the rest:

- **PASCAL-5i** (``pascal_5i``): the 20 VOC classes, fold ``i`` unseen = classes ``5i+1 .. 5i+5``
  in VOC order (fold 0: aeroplane, bicycle, bird, boat, bottle). Files are PASCAL VOC 2012 + SBD
  in the layout of :mod:`zeroseg.data.real.voc`, read exactly as there (background ignored).
- **COCO-20i** (``coco_20i``): the 80 COCO thing classes, fold ``i`` unseen = every fourth class
  ``i, i+4, ..., i+76`` (0-based, COCO's category order), as the released code's
  ``fewshot_data/data/coco.py`` (from HSNet) takes ``fold + 4 * v``. Labels come from COCO-Stuff
  164k's maps (layout of :mod:`zeroseg.data.real.coco_stuff`): its train ids 0-79 are the 80
  thing classes in that order, and its 91 stuff classes become ignore (255). HSNet builds its
  COCO-20i masks from the COCO 2014 instance annotations; COCO-Stuff's maps carry the same thing
  pixels for the 2017 images (train2017 + val2017 = train2014 + val2014).

The few-shot papers evaluate a fold by episodes (one class at a time, foreground / background);
zeroseg evaluates every class of the fold's vocabulary at once, so "unseen mIoU" here is the
generalized, 20-way (PASCAL) or 80-way (COCO) counterpart of the fold mIoU, and is stricter.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from zeroseg.data.classes import ClassSplit
from zeroseg.data.real import coco_stuff, voc
from zeroseg.data.real.base import FileListDataset, table_builder

NUM_FOLDS = 4
COCO_THINGS = coco_stuff.NAMES[:80]


def _check_fold(fold: int | None, dataset: str) -> int:
    if fold is None:
        raise ValueError(f"{dataset} needs data.fold (0-{NUM_FOLDS - 1})")
    if not isinstance(fold, int) or not 0 <= fold < NUM_FOLDS:
        raise ValueError(f"{dataset}: data.fold must be 0-{NUM_FOLDS - 1}, got {fold!r}")
    return fold


def pascal_5i_unseen(fold: int) -> tuple[str, ...]:
    fold = _check_fold(fold, "pascal_5i")
    return voc.NAMES[5 * fold : 5 * fold + 5]


def coco_20i_unseen(fold: int) -> tuple[str, ...]:
    fold = _check_fold(fold, "coco_20i")
    return tuple(COCO_THINGS[fold + NUM_FOLDS * v] for v in range(len(COCO_THINGS) // NUM_FOLDS))


def pascal_5i_split(fold: int | None = None) -> ClassSplit:
    return ClassSplit.from_names(voc.NAMES, pascal_5i_unseen(fold))


def coco_20i_split(fold: int) -> ClassSplit:
    return ClassSplit.from_names(COCO_THINGS, coco_20i_unseen(fold))


def _things_only(table: np.ndarray) -> np.ndarray:
    """A COCO-Stuff table with the stuff classes (train ids 80-170) sent to ignore."""
    out = table.copy()
    out[(out >= len(COCO_THINGS)) & (out != 255)] = 255
    return out


THINGS_TABLE = _things_only(coco_stuff.TABLE)
THINGS_RAW_TABLE = _things_only(coco_stuff.RAW_TABLE)


# build_pascal_5i(root, split, *, fold, limit=None, train_transform=None): the VOC files
build_pascal_5i = table_builder("pascal_5i", voc.items, pascal_5i_split, voc.TABLE, voc.SCHEME)


def build_coco_20i(
    root: str | Path,
    split: str,
    *,
    fold: int | None = None,
    limit: int | None = None,
    train_transform=None,
) -> FileListDataset:
    files, raw = coco_stuff.items(root, split)
    return FileListDataset(
        files,
        class_split=coco_20i_split(fold),
        table=THINGS_RAW_TABLE if raw else THINGS_TABLE,
        scheme=coco_stuff.RAW_SCHEME if raw else coco_stuff.SCHEME,
        name="coco_20i",
        split_name=split,
        limit=limit,
        train_transform=train_transform,
    )
