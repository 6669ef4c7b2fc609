"""Real-dataset loaders on fixtures written in the exact layouts and id schemes of the benchmarks.

Each fixture holds a few tiny images whose labels use the files' own id scheme (VOC palette PNGs
with background 0 and boundary 255, COCO-Stuff train ids or raw 182 ids, Context-59 PNGs, COCO
panoptic RGB PNGs + json), including ignore pixels and unseen classes. Expected class indices are
worked out by hand in the comments.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from zeroseg.config import DataConfig
from zeroseg.data.loader import StepLoader, StepSampler
from zeroseg.data.protocol import SeenOnly, assert_seen_only
from zeroseg.data.real import (
    CLASS_SPLITS,
    DATASETS,
    VAL_MAX,
    build_real_dataset,
    coco_panoptic,
    coco_stuff,
    context,
    folds,
    get_builder,
    val_holdout_ids,
    voc,
)
from zeroseg.data.real.base import LabelRangeError, LayoutError
from zeroseg.data.real.fixtures import (
    H,
    W,
    blocks,
    write_coco_panoptic,
    write_coco_stuff,
    write_context,
    write_jpg,
    write_png,
    write_voc,
)
from zeroseg.data.transforms import PhotometricDistortion, RandomCrop, train_transform


@pytest.fixture
def voc_root(tmp_path):
    return write_voc(tmp_path / "VOC2012")


@pytest.fixture
def coco_stuff_root(tmp_path):
    return write_coco_stuff(tmp_path / "coco_stuff164k")


@pytest.fixture
def context_root(tmp_path):
    return write_context(tmp_path / "VOC2010")


@pytest.fixture
def panoptic_root(tmp_path):
    return write_coco_panoptic(tmp_path / "coco")


ROOTS = {
    "voc": "voc_root",
    "coco_stuff": "coco_stuff_root",
    "context": "context_root",
    "coco_panoptic": "panoptic_root",
    "pascal_5i": "voc_root",
    "coco_20i": "coco_stuff_root",
}
# Fold 3 puts an unseen class in one training image of each fixture and none in the other.
FOLD_OF = {"pascal_5i": 3, "coco_20i": 3}


# ----------------------------------------------------------------------------- class splits


def test_class_splits_match_design():
    sizes = {
        "voc": (20, 5),
        "coco_stuff": (171, 15),
        "context": (59, 10),
        "coco_panoptic": (133, 14),
        "pascal_5i": (20, 5),
        "coco_20i": (80, 20),
    }
    assert set(DATASETS) == set(CLASS_SPLITS) == set(sizes)
    for name, (k, u) in sizes.items():
        split = CLASS_SPLITS[name]()
        assert (split.num_classes, len(split.unseen)) == (k, u)
    assert voc.class_split().unseen_names == ("pottedplant", "sheep", "sofa", "train", "tvmonitor")
    assert context.class_split().unseen_names == (
        "aeroplane", "bird", "boat", "cat", "cow", "fence", "keyboard", "motorbike", "sofa", "tvmonitor"
    )  # fmt: skip
    pan = coco_panoptic.class_split()
    assert len(pan.things) == 80 and set(pan.things) == set(range(80))
    # hand-checked indices: cow is the 20th COCO thing; sky-other-merged is the 40th stuff entry
    assert coco_stuff.NAMES[19] == "cow" and pan.names[19] == "cow"
    assert pan.names[80 + 39] == "sky-other-merged" and pan.is_unseen(119)
    assert context.NAMES[0] == "aeroplane" and context.NAMES[36] == "person"


def test_coco_stuff_raw_ids_skip_the_unused_coco_ids():
    # raw value = COCO id - 1; ids 12 and 26 are unused, so raw 10 -> 10, raw 12 -> 11, raw 26 -> 24
    assert (
        coco_stuff.RAW_IDS[10] == 10
        and coco_stuff.RAW_IDS[11] == 12
        and coco_stuff.RAW_IDS[24] == 26
    )
    assert coco_stuff.RAW_IDS[-1] == 181 and len(coco_stuff.RAW_IDS) == 171
    assert coco_stuff.RAW_TABLE[182] == 255 and coco_stuff.RAW_TABLE[11] == -1


def test_unknown_dataset_lists_valid_names():
    with pytest.raises(ValueError, match="coco_panoptic.*voc|valid"):
        build_real_dataset(DataConfig(dataset="cityscapes", root="/nowhere"))


# ----------------------------------------------------------------------------- labels


def test_voc_labels_and_splits(voc_root):
    train = voc.build(voc_root, "train")
    val = voc.build(voc_root, "val")
    assert [it.id for it in train.items] == ["a", "b"] and [it.id for it in val.items] == ["c"]
    assert train.items[0].label.parent.name == "SegmentationClass"  # not in Aug: falls back
    assert train.items[1].label.parent.name == "SegmentationClassAug"
    s = train[0]
    assert s["image"].shape == (3, H, W) and s["image"].dtype == torch.uint8
    assert s["label"].dtype == torch.int64 and s["id"] == "voc/train/a"
    # background 0 -> 255, aeroplane 1 -> 0, sheep 17 -> 16, boundary 255 -> 255
    assert s["label"][0, ::2].tolist() == [255, 0, 16, 255]
    assert train[1]["label"][3, ::2].tolist() == [14, 14, 4, 255]  # person 15 -> 14, bottle 5 -> 4
    assert val[0]["label"][0, ::2].tolist() == [19, 7, 255, 255]  # tvmonitor 20 -> 19, cat 8 -> 7


def test_voc_without_trainaug_uses_train_list(voc_root):
    (voc_root / "ImageSets/Segmentation/trainaug.txt").unlink()
    assert [it.id for it in voc.build(voc_root, "train").items] == ["a"]


def test_coco_stuff_labels(coco_stuff_root):
    train, val = (
        coco_stuff.build(coco_stuff_root, "train"),
        coco_stuff.build(coco_stuff_root, "val"),
    )
    assert len(train) == 2 and len(val) == 1
    assert train[0]["label"][0, ::2].tolist() == [0, 19, 170, 255]
    assert val[0]["label"][0, ::2].tolist() == [112, 5, 5, 5]


def test_coco_stuff_reads_raw_182_ids(tmp_path):
    root = tmp_path / "raw"
    # raw = COCO id - 1: person 0 -> 0, cow 20 -> 19, stop sign 12 -> 11, other 182 -> 255
    write_png(root / "annotations/train2017/000000000001.png", blocks(0, 20, 12, 182))
    write_jpg(root / "images/train2017/000000000001.jpg", 0)
    ds = coco_stuff.build(root, "train")
    assert ds[0]["label"][0, ::2].tolist() == [0, 19, 11, 255]
    write_png(root / "annotations/train2017/000000000001.png", blocks(0, 11, 0, 0))  # 11: unused id
    with pytest.raises(LabelRangeError, match=r"000000000001.png.*\[11\]"):
        ds[0]


def test_pascal_5i_folds(voc_root):
    # fold i: VOC classes 5i+1 .. 5i+5 unseen; files and labels exactly as VOC's
    assert folds.pascal_5i_unseen(0) == ("aeroplane", "bicycle", "bird", "boat", "bottle")
    assert folds.pascal_5i_unseen(3) == voc.UNSEEN  # fold 3 is the 15/5 split
    every = [n for f in range(4) for n in folds.pascal_5i_unseen(f)]
    assert sorted(every) == sorted(voc.NAMES)  # the folds partition the classes
    train = folds.build_pascal_5i(voc_root, "train", fold=0)
    assert train.class_split.unseen_names == folds.pascal_5i_unseen(0)
    assert train[0]["label"][0, ::2].tolist() == [255, 0, 16, 255]  # aeroplane 0, sheep 16
    assert train.class_split.is_unseen(0) and not train.class_split.is_unseen(16)
    assert folds.build_pascal_5i(voc_root, "train", fold=3).class_split.is_unseen(16)


def test_coco_20i_folds(coco_stuff_root):
    # fold i: COCO things i, i+4, ..., i+76 (0-based) unseen; stuff train ids -> ignore
    assert folds.coco_20i_unseen(0)[:3] == ("person", "airplane", "boat")  # 0, 4, 8
    assert folds.coco_20i_unseen(3)[4] == "cow"  # 3 + 4 * 4 = 19
    every = [n for f in range(4) for n in folds.coco_20i_unseen(f)]
    assert sorted(every) == sorted(coco_stuff.NAMES[:80])
    train = folds.build_coco_20i(coco_stuff_root, "train", fold=3)
    val = folds.build_coco_20i(coco_stuff_root, "val", fold=3)
    assert train.class_split.num_classes == 80
    assert train[0]["label"][0, ::2].tolist() == [0, 19, 255, 255]  # wood 170 (stuff) -> 255
    assert val[0]["label"][0, ::2].tolist() == [255, 5, 5, 5]  # grass (stuff, 112) -> 255
    assert train.class_split.is_unseen(19) and not train.class_split.is_unseen(0)


def test_coco_20i_reads_raw_ids(tmp_path):
    root = tmp_path / "raw"
    # raw: person 0 -> 0, cow (COCO id 20) -> 19, tree (COCO id 169, stuff) -> 255
    write_png(root / "annotations/train2017/000000000001.png", blocks(0, 20, 168, 255))
    write_jpg(root / "images/train2017/000000000001.jpg", 0)
    ds = folds.build_coco_20i(root, "train", fold=0)
    assert ds[0]["label"][0, ::2].tolist() == [0, 19, 255, 255]


@pytest.mark.parametrize("name", ["pascal_5i", "coco_20i"])
def test_folded_datasets_need_a_valid_fold(name, voc_root, coco_stuff_root):
    root = voc_root if name == "pascal_5i" else coco_stuff_root
    with pytest.raises(ValueError, match="data.fold"):
        build_real_dataset(DataConfig(dataset=name, root=str(root)))
    with pytest.raises(ValueError, match="data.fold must be 0-3, got 4"):
        build_real_dataset(DataConfig(dataset=name, root=str(root), fold=4))
    with pytest.raises(ValueError, match="voc has one fixed split"):
        build_real_dataset(DataConfig(dataset="voc", root=str(voc_root), fold=1))


def test_context_labels(context_root):
    train, val = context.build(context_root, "train"), context.build(context_root, "val")
    # background 0 -> 255, aeroplane 1 -> 0, person 37 -> 36, wood 59 -> 58
    assert train[0]["label"][0, ::2].tolist() == [255, 0, 36, 58]
    assert train[1]["label"][0, ::2].tolist() == [36, 36, 50, 255]
    assert val[0]["label"].unique().tolist() == [14]


def test_coco_panoptic_labels_and_segments(panoptic_root):
    train = coco_panoptic.build(panoptic_root, "train")
    s = train[0]
    # person -> 0, cow -> 19, sky-other-merged -> 119, crowd of persons -> 255 in the label,
    # void -> 255
    assert s["label"][0, ::2].tolist() == [0, 19, 119, 255]
    assert s["label"][5, 6].item() == 255 and s["panoptic"][5, 6].item() == 0
    # rows (id, class, is_thing, is_crowd): the crowd keeps its segment, flagged
    assert s["segments"].tolist() == [[1, 0, 1, 0], [2, 19, 1, 0], [3, 119, 0, 0], [4, 0, 1, 1]]
    assert s["panoptic"][0, ::2].tolist() == [1, 2, 3, 4]
    assert (s["panoptic"][:3, 6:8] == 4).all()
    s2 = train[1]
    assert s2["segments"].tolist() == [[1, 0, 1, 0], [2, 0, 1, 0], [3, 80, 0, 0]]  # banner: 80
    assert s2["label"][0].tolist() == [0, 0, 0, 0, 0, 80, 80, 80]
    assert coco_panoptic.build(panoptic_root, "val")[0]["label"].unique().tolist() == [125]


def test_panoptic_json_with_other_categories_is_refused(panoptic_root):
    path = panoptic_root / "annotations/panoptic_train2017.json"
    data = json.loads(path.read_text())
    data["categories"] = data["categories"][:-1]
    path.write_text(json.dumps(data))
    with pytest.raises(LayoutError, match=r"missing ids \[200\]"):
        coco_panoptic.build(panoptic_root, "train")


def test_missing_layout_names_the_directory(tmp_path):
    with pytest.raises(LayoutError, match="JPEGImages"):
        voc.build(tmp_path, "train")


# ----------------------------------------------------------------------------- protocols


@pytest.mark.parametrize("name", list(ROOTS))
@pytest.mark.parametrize("protocol", ["ignore", "strict"])
def test_no_unseen_pixel_reaches_training(name, protocol, request):
    root = request.getfixturevalue(ROOTS[name])
    cfg = DataConfig(
        dataset=name, root=str(root), protocol=protocol, crop_size=4, fold=FOLD_OF.get(name)
    )
    train, val, test, split = build_real_dataset(cfg)
    assert val.train_transform is None and test.train_transform is None
    # the whole official training list (build_real_dataset holds one fixture image out as val)
    train = get_builder(name, fold=FOLD_OF.get(name))(
        str(root), "train", train_transform=train.train_transform
    )
    assert train.train_transform is not None
    full_has_unseen = [split.contains_unseen(train[i]["label"]) for i in range(len(train))]
    assert any(full_has_unseen)  # every fixture puts an unseen class in training images
    seen_only = SeenOnly(train, split, protocol)
    if protocol == "strict":
        assert len(seen_only) == full_has_unseen.count(False) >= 1
    loader = StepLoader(
        seen_only, StepSampler(len(seen_only), 1, seed=0), transform=train.train_transform
    )
    for _, batch in loader(0, 4):
        assert batch["image"].shape == (1, 3, 4, 4) and batch["label"].shape == (1, 4, 4)
        assert_seen_only({"label": batch["label"]}, split, stage="test")
        assert not split.contains_unseen(batch["label"])
        # collate stacks equal-length segment lists to (B, n, c): check the class column per image
        for segs in batch.get("segments", []):
            segs = segs.reshape(-1, segs.shape[-1])
            assert not split.contains_unseen(segs[:, 1])
            if segs.shape[1] > 3:  # crowd regions are no training target
                assert not segs[:, 3].any()


# ----------------------------------------------------------------------------- splits


@pytest.mark.parametrize("name", list(ROOTS))
def test_val_is_held_out_of_training_and_test_is_the_official_val(name, request):
    root = request.getfixturevalue(ROOTS[name])
    cfg = DataConfig(dataset=name, root=str(root), crop_size=4, fold=FOLD_OF.get(name))
    train, val, test, _ = build_real_dataset(cfg)
    official = get_builder(name, fold=FOLD_OF.get(name))
    official_train = [it.id for it in official(str(root), "train").items]
    official_val = [it.id for it in official(str(root), "val").items]
    train_ids, val_ids = [it.id for it in train.items], [it.id for it in val.items]
    # every fixture has two official training images: ceil(5 %) of 2 = 1 is held out
    assert len(val_ids) == 1 and len(train_ids) == 1
    assert sorted(train_ids + val_ids) == sorted(official_train)
    assert [it.id for it in test.items] == official_val
    assert val.train_transform is None and train.train_transform is not None
    # val samples are read like training samples, without augmentation
    assert val[0]["image"].shape[0] == 3


def test_val_holdout_rule():
    ids = [f"img{i:05d}" for i in range(20_000)]
    held = val_holdout_ids(ids)
    assert len(held) == VAL_MAX  # 5 % of 20000 = 1000, capped at 500
    assert len(val_holdout_ids(ids[:100])) == 5  # ceil(5 % of 100)
    assert len(val_holdout_ids(ids[:101])) == 6  # ceil(5.05)
    # the rule reads ids only: order does not matter, and a held-out id stays held out when
    # other images join (it ranks by a hash of the id)
    assert val_holdout_ids(ids[::-1]) == held
    small = val_holdout_ids(ids[:1000])
    assert len(small) == 50 and small == set(sorted(ids[:1000], key=_rank)[:50])
    with pytest.raises(ValueError, match="at least 2 training images"):
        val_holdout_ids(["only"])


def _rank(i: str) -> str:
    import hashlib

    return hashlib.sha256(f"zeroseg-val-0:{i}".encode()).hexdigest()


# ----------------------------------------------------------------------------- transforms


def coordinate_sample(h: int = 24, w: int = 40) -> dict:
    """Image channels encode the column (R = 4x) and row (G = 4y); label = x, panoptic = y + 1."""
    y, x = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    image = torch.stack([4 * x, 4 * y, torch.full_like(x, 100)]).to(torch.uint8)
    segs = torch.stack(
        [torch.arange(1, h + 1), torch.zeros(h, dtype=torch.long), torch.ones(h, dtype=torch.long)],
        1,
    )
    return {"image": image, "label": x.clone(), "panoptic": y + 1, "segments": segs, "id": "grid"}


@pytest.mark.parametrize("seed", range(6))
def test_transforms_keep_image_and_maps_aligned(seed):
    t = train_transform(16, (0.5, 2.0), cat_max_ratio=1.0, photometric=False)
    out = t(coordinate_sample(), np.random.default_rng(seed))
    assert out["image"].shape == (3, 16, 16) and out["label"].shape == (16, 16)
    valid = out["label"] != 255
    assert valid.any()
    # pad: label 255, panoptic void, image black
    assert (out["panoptic"][~valid] == 0).all() and (out["image"][:, ~valid] == 0).all()
    # bilinear image vs nearest maps differ by under one source pixel (values are 4 per pixel)
    assert (out["image"][0][valid].float() / 4 - out["label"][valid]).abs().max() <= 1
    assert (out["image"][1][valid].float() / 4 - (out["panoptic"][valid] - 1)).abs().max() <= 1
    # segments are exactly those still present
    assert sorted(out["segments"][:, 0].tolist()) == sorted(set(out["panoptic"][valid].tolist()))


def test_transforms_are_deterministic_per_generator_seed():
    t = train_transform(16, (0.5, 2.0))
    a = t(coordinate_sample(), np.random.default_rng([0, 5, 2]))
    b = t(coordinate_sample(), np.random.default_rng([0, 5, 2]))
    c = t(coordinate_sample(), np.random.default_rng([0, 6, 2]))
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["label"], b["label"])
    assert not torch.equal(a["image"], c["image"])


def test_flip_moves_image_and_label_together():
    flipped = 0
    for seed in range(8):
        t = train_transform(
            40, (1.0, 1.0), base_size=(40, 24), cat_max_ratio=1.0, photometric=False
        )
        out = t(coordinate_sample(), np.random.default_rng(seed))
        # ratio 1, base = the sample size: no resize, crop = the whole image, so only the flip acts
        if out["label"][0, 0].item() == 39:
            flipped += 1
            assert out["image"][0, 0, 0].item() == 4 * 39
        else:
            assert out["label"][0, 0].item() == 0 and out["image"][0, 0, 0].item() == 0
    assert 0 < flipped < 8


def test_photometric_distortion_changes_only_the_image():
    s = coordinate_sample()
    out = PhotometricDistortion()(s, np.random.default_rng(3))
    assert out["image"].dtype == torch.uint8 and out["image"].shape == s["image"].shape
    assert out["label"] is s["label"] and out["panoptic"] is s["panoptic"]
    changed = sum(
        not torch.equal(PhotometricDistortion()(s, np.random.default_rng(i))["image"], s["image"])
        for i in range(8)
    )
    assert changed >= 6  # four independent steps at p = 0.5: all skipped 1/16 of the time


def test_cat_max_ratio_prefers_crops_with_two_classes():
    label = torch.zeros(64, 64, dtype=torch.long)
    label[:, 30:34] = 1  # a thin strip of class 1
    s = {"image": torch.zeros(3, 64, 64, dtype=torch.uint8), "label": label}

    def two_class_rate(ratio: float) -> float:
        crop = RandomCrop((8, 8), cat_max_ratio=ratio)
        hits = [len(crop(s, np.random.default_rng(i))["label"].unique()) == 2 for i in range(100)]
        return sum(hits) / len(hits)

    # one draw contains the strip with probability 11/57; ten draws: 1 - (46/57)^10 = 0.88
    assert two_class_rate(1.0) < 0.35 and two_class_rate(0.75) > 0.7
