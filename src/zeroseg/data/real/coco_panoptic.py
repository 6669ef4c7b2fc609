"""COCO panoptic 2017 (133 categories) in the 119/14 zero-shot split of PADing.

Layout (``root`` is ``datasets/coco`` in detectron2's convention)::

    {train2017,val2017}/<image>.jpg
    annotations/panoptic_{train2017,val2017}.json
    annotations/panoptic_{train2017,val2017}/<image>.png

A panoptic PNG encodes the segment id of each pixel in RGB, ``id = R + 256 G + 256^2 B`` (0 =
void); the json lists each image's segments with ``category_id`` and ``iscrowd``
(panopticapi's format). The 133 categories (80 things, 53 stuff, non-contiguous ids 1-200) are
numbered 0-132 in id order, as detectron2's ``COCO_CATEGORIES``; the json must list exactly these.

Samples: segment ids are renumbered 1..n per image (0 = void) so they are small integers, and
``segments`` rows are ``(segment_id, class_index, is_thing, is_crowd)``; the semantic label is
derived from the segments. Crowd segments keep their pixels in ``panoptic`` with their flag, so
PQ leaves them out of the IoU union and exempts predictions lying mostly on them, and mask AP lets
them absorb detections, as panopticapi and COCOeval do. They are ignore (255) in ``label``, and
:class:`zeroseg.data.protocol.SeenOnly` turns them void for training (no training target, as
detectron2's COCO panoptic mapper).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from zeroseg.data.classes import ClassSplit
from zeroseg.data.io import ImageError, read_image
from zeroseg.data.real.base import FileListDataset, Item, LabelRangeError, LayoutError, require_dir
from zeroseg.data.real.coco_stuff import NAMES as COCO_STUFF_NAMES
from zeroseg.data.real.coco_stuff import RAW_IDS

# (COCO category id, name) of the 80 things (same names and ids as COCO-Stuff's first 80 classes)
THINGS = tuple(
    (raw + 1, name) for raw, name in zip(RAW_IDS[:80], COCO_STUFF_NAMES[:80], strict=True)
)
# (COCO category id, name) of the 53 panoptic stuff categories (panopticapi's
# panoptic_coco_categories.json; the "-merged" ones merge several COCO-Stuff classes).
STUFF = (
    (92, "banner"), (93, "blanket"), (95, "bridge"), (100, "cardboard"), (107, "counter"),
    (109, "curtain"), (112, "door-stuff"), (118, "floor-wood"), (119, "flower"), (122, "fruit"),
    (125, "gravel"), (128, "house"), (130, "light"), (133, "mirror-stuff"), (138, "net"),
    (141, "pillow"), (144, "platform"), (145, "playingfield"), (147, "railroad"), (148, "river"),
    (149, "road"), (151, "roof"), (154, "sand"), (155, "sea"), (156, "shelf"), (159, "snow"),
    (161, "stairs"), (166, "tent"), (168, "towel"), (171, "wall-brick"), (175, "wall-stone"),
    (176, "wall-tile"), (177, "wall-wood"), (178, "water-other"), (180, "window-blind"),
    (181, "window-other"), (184, "tree-merged"), (185, "fence-merged"), (186, "ceiling-merged"),
    (187, "sky-other-merged"), (188, "cabinet-merged"), (189, "table-merged"),
    (190, "floor-other-merged"), (191, "pavement-merged"), (192, "mountain-merged"),
    (193, "grass-merged"), (194, "dirt-merged"), (195, "paper-merged"), (196, "food-other-merged"),
    (197, "building-other-merged"), (198, "rock-merged"), (199, "wall-other-merged"),
    (200, "rug-merged"),
)  # fmt: skip
CATEGORIES = THINGS + STUFF  # class index k is CATEGORIES[k]
NAMES = tuple(name for _, name in CATEGORIES)
THING_NAMES = tuple(name for _, name in THINGS)
UNSEEN = (
    "cow", "giraffe", "suitcase", "frisbee", "skateboard", "carrot", "scissors", "cardboard",
    "sky-other-merged", "grass-merged", "playingfield", "river", "road", "tree-merged",
)  # fmt: skip
SPLITS = ("train", "val")


def class_split() -> ClassSplit:
    return ClassSplit.from_names(NAMES, UNSEEN, thing_names=THING_NAMES)


def rgb_to_id(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 panoptic PNG -> (H, W) int64 segment ids, ``R + 256 G + 256^2 B``."""
    rgb = rgb.astype(np.int64)
    return rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]


def id_to_rgb(ids: np.ndarray) -> np.ndarray:
    """(H, W) segment ids -> (H, W, 3) uint8, the inverse of :func:`rgb_to_id`."""
    ids = np.asarray(ids, dtype=np.int64)
    return np.stack([ids % 256, ids // 256 % 256, ids // 65536 % 256], -1).astype(np.uint8)


def check_categories(categories: list[dict], *, where: str) -> dict[int, tuple[int, bool]]:
    """Validates a json's categories against :data:`CATEGORIES`.

    Returns:
        COCO category id -> (class index, is_thing), with ``is_thing`` read from the json.
    """
    by_id = {int(c["id"]): c for c in categories}
    expected = dict(CATEGORIES)
    missing = sorted(set(expected) - set(by_id))
    extra = sorted(set(by_id) - set(expected))
    renamed = [
        (i, by_id[i]["name"], expected[i])
        for i in expected
        if i in by_id and by_id[i]["name"] != expected[i]
    ]
    if missing or extra or renamed:
        raise LayoutError(
            f"{where}: categories differ from the 133 COCO panoptic categories "
            f"(missing ids {missing[:10]}, unknown ids {extra[:10]}, renamed {renamed[:5]})"
        )
    return {cid: (k, bool(by_id[cid]["isthing"])) for k, (cid, _) in enumerate(CATEGORIES)}


class CocoPanopticDataset(FileListDataset):
    """COCO panoptic samples: the shared file list, with annotations decoded from PNG + json."""

    def __init__(self, items, *, category_map: dict[int, tuple[int, bool]], **kwargs):
        super().__init__(items, **kwargs)
        self.category_map = category_map

    def read_annotation(self, i: int) -> dict[str, np.ndarray]:
        item = self.items[i]
        # the PNG is RGB, so it is read as an image; a palette or gray PNG is not a panoptic map
        ids = rgb_to_id(read_image(item.label))
        label = np.full(ids.shape, 255, np.uint8)
        panoptic = np.zeros(ids.shape, np.int64)
        rows = []
        listed = {0}
        for seg in item.info:
            sid, cid = int(seg["id"]), int(seg["category_id"])
            listed.add(sid)
            if cid not in self.category_map:
                raise LabelRangeError(f"{item.label}: segment {sid} has unknown category id {cid}")
            k, thing = self.category_map[cid]
            crowd = bool(seg.get("iscrowd", 0))
            mask = ids == sid
            if not crowd:  # a crowd is not one instance: ignore in the semantic label
                label[mask] = k
            rows.append((len(rows) + 1, k, int(thing), int(crowd)))
            panoptic[mask] = len(rows)
        unlisted = np.setdiff1d(np.unique(ids), np.fromiter(listed, np.int64))
        if len(unlisted):
            raise LabelRangeError(
                f"{item.label}: segment ids {unlisted.tolist()[:10]} are not listed for this image in the json"
            )
        segments = np.asarray(rows, np.int64).reshape(-1, 4)
        return {"label": label, "panoptic": panoptic, "segments": segments}


def load_json(path: Path) -> dict:
    if not path.is_file():
        raise LayoutError(f"panoptic annotation file {path} does not exist")
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise ImageError(f"{path}: not a readable json file ({e})") from None
    for key in ("images", "annotations", "categories"):
        if key not in data:
            raise LayoutError(f"{path}: lacks the {key!r} list of a COCO panoptic json")
    return data


def items(root: str | Path, split: str) -> tuple[list[Item], dict[int, tuple[int, bool]]]:
    if split not in SPLITS:
        raise ValueError(f"unknown COCO panoptic split {split!r}; valid: {list(SPLITS)}")
    root = Path(root)
    image_dir = require_dir(root / f"{split}2017", "COCO image")
    ann_dir = require_dir(root / "annotations" / f"panoptic_{split}2017", "COCO panoptic PNG")
    json_path = root / "annotations" / f"panoptic_{split}2017.json"
    data = load_json(json_path)
    category_map = check_categories(data["categories"], where=str(json_path))
    anns = {int(a["image_id"]): a for a in data["annotations"]}
    out = []
    for img in sorted(data["images"], key=lambda d: d["file_name"]):
        ann = anns.get(int(img["id"]))
        stem = Path(img["file_name"]).stem
        png = ann_dir / (ann["file_name"] if ann else f"{stem}.png")
        segs = tuple(ann["segments_info"]) if ann else ()
        out.append(Item(stem, image_dir / img["file_name"], png, segs))
    return out, category_map


def build(
    root: str | Path, split: str, *, limit: int | None = None, train_transform=None
) -> CocoPanopticDataset:
    files, category_map = items(root, split)
    return CocoPanopticDataset(
        files,
        category_map=category_map,
        class_split=class_split(),
        table=None,  # labels come from the segments
        scheme="COCO panoptic segment ids listed in the json",
        name="coco_panoptic",
        split_name=split,
        limit=limit,
        train_transform=train_transform,
    )
