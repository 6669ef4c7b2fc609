"""Tiny datasets in the real benchmarks' exact layouts and id schemes.

A few 6x8 images per dataset whose labels use the files' own id scheme (VOC palette PNGs with
background 0 and boundary 255, COCO-Stuff train ids, Context-59 PNGs, COCO panoptic RGB PNGs +
json), including ignore pixels and unseen classes. The loader tests check them pixel by pixel,
the paper-preset tests and ``zeroseg bench --presets`` train on them, and a user can write one to
see the layout a loader expects: ``python -c "from zeroseg.data.real.fixtures import write_voc;
write_voc(Path('voc-demo'))"``. Expected class indices are worked out in the comments.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from zeroseg.data.real import coco_panoptic

H, W = 6, 8


def write_jpg(path: Path, seed: int, size=(H, W)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rgb = np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(path, quality=95)


def write_png(path: Path, values: np.ndarray, *, palette: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(values.astype(np.uint8), "L")
    if palette:  # VOC's SegmentationClass files are palette PNGs whose indices are the labels
        img = img.convert("P")
        img.putpalette([(i * 37) % 256 for i in range(768)])
        img = Image.fromarray(values.astype(np.uint8), "P")
        img.putpalette([(i * 37) % 256 for i in range(768)])
    img.save(path)


def blocks(*values: int) -> np.ndarray:
    """(H, W) map: column block j (2 columns wide) holds values[j]."""
    out = np.zeros((H, W), np.uint8)
    for j, v in enumerate(values):
        out[:, 2 * j : 2 * j + 2] = v
    return out


def write_list(path: Path, ids: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{i}\n" for i in ids))


# ``extra_train`` (every writer): that many more training images, each a copy of the fixture's
# second training image under a new name, so a run that holds out part of the training set as
# ``val`` still has batches of two to train on (paper-preset tests, ``zeroseg bench --presets``).


def write_voc(root: Path, *, extra_train: int = 0) -> Path:
    # a: background 0, aeroplane 1, sheep 17 (unseen), boundary 255
    # b: person 15, bottle 5 (SBD label in SegmentationClassAug, gray PNG)
    # c (val): tvmonitor 20 (unseen), cat 8
    write_png(root / "SegmentationClass" / "a.png", blocks(0, 1, 17, 255), palette=True)
    write_png(root / "SegmentationClassAug" / "b.png", blocks(15, 15, 5, 0))
    write_png(root / "SegmentationClass" / "c.png", blocks(20, 8, 0, 0), palette=True)
    extra = [f"x{j}" for j in range(extra_train)]
    for i in extra:
        write_png(root / "SegmentationClassAug" / f"{i}.png", blocks(15, 15, 5, 0))
    for k, i in enumerate(["a", "b", "c", *extra]):
        write_jpg(root / "JPEGImages" / f"{i}.jpg", k)
    sets = root / "ImageSets" / "Segmentation"
    write_list(sets / "trainaug.txt", ["a", "b", *extra])
    write_list(sets / "train.txt", ["a"])
    write_list(sets / "val.txt", ["c"])
    return root


def write_coco_stuff(root: Path, *, extra_train: int = 0) -> Path:
    # train ids: person 0, cow 19 (unseen), wood 170, ignore 255
    write_png(
        root / "annotations/train2017/000000000001_labelTrainIds.png", blocks(0, 19, 170, 255)
    )
    extra = [f"{100 + j:012d}" for j in range(extra_train)]
    for i in ["000000000002", *extra]:
        write_png(root / f"annotations/train2017/{i}_labelTrainIds.png", blocks(0, 0, 1, 1))
    write_png(root / "annotations/val2017/000000000003_labelTrainIds.png", blocks(112, 5, 5, 5))
    for k, i in enumerate(["000000000001", "000000000002", *extra]):
        write_jpg(root / "images/train2017" / f"{i}.jpg", k)
    write_jpg(root / "images/val2017/000000000003.jpg", 3)
    return root


def write_context(root: Path, *, extra_train: int = 0) -> Path:
    # file values are 0 background and 1-59 the classes: 1 aeroplane (unseen), 37 person,
    # 59 wood, 51 track; the val image is all 15 cat (unseen)
    write_png(root / "SegmentationClassContext/2008_000001.png", blocks(0, 1, 37, 59))
    extra = [f"2008_{100 + j:06d}" for j in range(extra_train)]
    for i in ["2008_000002", *extra]:
        write_png(root / f"SegmentationClassContext/{i}.png", blocks(37, 37, 51, 0))
    write_png(root / "SegmentationClassContext/2008_000003.png", blocks(15, 15, 15, 15))
    for k, i in enumerate(["2008_000001", "2008_000002", "2008_000003", *extra]):
        write_jpg(root / "JPEGImages" / f"{i}.jpg", k)
    lists = root / "ImageSets/SegmentationContext"
    write_list(lists / "train.txt", ["2008_000001", "2008_000002", *extra])
    write_list(lists / "val.txt", ["2008_000003"])
    return root


def panoptic_categories() -> list[dict]:
    thing_ids = {cid for cid, _ in coco_panoptic.THINGS}
    return [
        {"id": cid, "name": name, "isthing": int(cid in thing_ids), "supercategory": "x"}
        for cid, name in coco_panoptic.CATEGORIES
    ]


def write_panoptic_image(
    root: Path, split: str, image_id: int, ids: np.ndarray, segments: list[dict], json_data: dict
):
    stem = f"{image_id:012d}"
    write_jpg(root / f"{split}2017" / f"{stem}.jpg", image_id, ids.shape)
    png = root / "annotations" / f"panoptic_{split}2017" / f"{stem}.png"
    png.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(coco_panoptic.id_to_rgb(ids), "RGB").save(png)
    h, w = ids.shape
    json_data["images"].append(
        {"id": image_id, "file_name": f"{stem}.jpg", "height": h, "width": w}
    )
    json_data["annotations"].append(
        {"image_id": image_id, "file_name": f"{stem}.png", "segments_info": segments}
    )


def write_coco_panoptic(root: Path, *, extra_train: int = 0) -> Path:
    train = {"images": [], "annotations": [], "categories": panoptic_categories()}
    val = {"images": [], "annotations": [], "categories": panoptic_categories()}
    # image 1: person (id 1000, cat 1), cow (id 70000, cat 21, unseen thing), sky-other-merged
    # (id 300000 > 2^16, cat 187, unseen stuff), a crowd of persons (id 5), void (0)
    ids = np.zeros((H, W), np.int64)
    ids[:, 0:2], ids[:, 2:4], ids[:, 4:6], ids[:3, 6:8] = 1000, 70000, 300000, 5
    segs = [
        {"id": 1000, "category_id": 1, "iscrowd": 0},
        {"id": 70000, "category_id": 21, "iscrowd": 0},
        {"id": 300000, "category_id": 187, "iscrowd": 0},
        {"id": 5, "category_id": 1, "iscrowd": 1},
    ]
    write_panoptic_image(root, "train", 1, ids, segs, train)
    # image 2: two persons and banner (cat 92): all seen
    ids = np.full((H, W), 9, np.int64)
    ids[:, :3], ids[:, 3:5] = 11, 12
    segs = [{"id": 11, "category_id": 1, "iscrowd": 0}, {"id": 12, "category_id": 1, "iscrowd": 0},
            {"id": 9, "category_id": 92, "iscrowd": 0}]  # fmt: skip
    for image_id in (2, *range(100, 100 + extra_train)):
        write_panoptic_image(root, "train", image_id, ids, segs, train)
    ids = np.full((H, W), 7, np.int64)
    write_panoptic_image(root, "val", 3, ids, [{"id": 7, "category_id": 193, "iscrowd": 0}], val)
    (root / "annotations/panoptic_train2017.json").write_text(json.dumps(train))
    (root / "annotations/panoptic_val2017.json").write_text(json.dumps(val))
    return root


WRITERS = {
    "voc": write_voc,
    "coco_stuff": write_coco_stuff,
    "context": write_context,
    "coco_panoptic": write_coco_panoptic,
    "pascal_5i": write_voc,  # PASCAL-5i and COCO-20i read the VOC and COCO-Stuff files
    "coco_20i": write_coco_stuff,
}
