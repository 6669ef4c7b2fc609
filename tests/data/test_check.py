"""`zeroseg data check` reports every problem of a layout at once; `prepare` converts raw labels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.io import savemat

from zeroseg.data.check import check_dataset, context_table, prepare
from zeroseg.data.real import coco_stuff, context

H, W = 6, 8


def write_jpg(path: Path, size=(H, W)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((*size, 3), 120, np.uint8)).save(path)


def write_png(path: Path, values: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(values.astype(np.uint8), "L").save(path)


@pytest.fixture
def broken_voc(tmp_path):
    """VOC layout where: `bad_img` is corrupt, `bad_val` holds label 30, `no_label` has no label,
    `small` has a 4x4 label for a 6x8 image, and `good` and `good2` are fine."""
    root = tmp_path / "VOC2012"
    ids = ["good", "bad_img", "bad_val", "no_label", "small", "good2"]
    for i in ids:
        write_jpg(root / "JPEGImages" / f"{i}.jpg")
        if i != "no_label":
            write_png(root / "SegmentationClass" / f"{i}.png", np.ones((H, W)))
    (root / "JPEGImages/bad_img.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    label = np.ones((H, W))
    label[2, 3] = 30  # VOC has ids 0-20 and 255
    write_png(root / "SegmentationClass/bad_val.png", label)
    write_png(root / "SegmentationClass/small.png", np.ones((4, 4)))
    sets = root / "ImageSets/Segmentation"
    sets.mkdir(parents=True)
    (sets / "train.txt").write_text("".join(f"{i}\n" for i in ids))
    (sets / "val.txt").write_text("good\n")
    return root


def test_check_names_every_problem_at_once(broken_voc):
    report = check_dataset("voc", broken_voc)
    assert report.samples == {"train": 6, "val": 1}
    assert report.counts() == {
        "unreadable image": 1,
        "missing label": 1,
        "label out of range": 1,
        "size mismatch": 1,
    }
    text = report.format()
    assert (
        "bad_img.jpg" in text
        and "no_label.png" in text
        and "bad_val.png" in text
        and "[30]" in text
    )
    assert "small.png is 4x4" in text and "label out of range: 1" in text
    assert not report.ok


@pytest.mark.parametrize("fold", [None, 2])
def test_check_pascal_5i_reads_the_voc_files(broken_voc, fold):
    # every fold reads the same files: the same problems, whichever fold is named
    report = check_dataset("pascal_5i", broken_voc, fold=fold)
    assert report.samples == {"train": 6, "val": 1} and report.counts()["label out of range"] == 1


def test_check_clean_dataset_is_ok(broken_voc):
    report = check_dataset("voc", broken_voc, splits=("val",))
    assert report.ok and "no problem found" in report.format()


def test_check_reports_missing_layout_per_split(broken_voc):
    (broken_voc / "ImageSets/Segmentation/val.txt").unlink()
    report = check_dataset("voc", broken_voc)
    assert report.counts()["missing layout"] == 1 and "val.txt" in report.format()
    assert report.samples == {"train": 6}
    assert check_dataset("voc", broken_voc / "nowhere").counts() == {"missing layout": 1}


def test_check_unknown_dataset_lists_valid_ones(tmp_path):
    with pytest.raises(ValueError, match="valid"):
        check_dataset("ade20k", tmp_path)


def test_prepare_coco_stuff_182_to_171(tmp_path):
    root = tmp_path / "coco_stuff164k"
    raw = np.zeros((H, W), np.uint8)
    # raw = COCO id - 1: cow 20 -> 19, stop sign 12 -> 11, wood 181 -> 170, other 182 and 255 -> 255
    raw[:, 1], raw[:, 2], raw[:, 3], raw[:, 4], raw[:, 5] = 20, 12, 181, 182, 255
    write_png(root / "annotations/val2017/000000000007.png", raw)
    write_png(root / "annotations/train2017/000000000008.png", np.full((H, W), 11))  # unused id
    write_jpg(root / "images/val2017/000000000007.jpg")
    result = prepare("coco_stuff", root)
    assert (
        result.written == 1 and len(result.failed) == 1 and "000000000008.png" in result.failed[0]
    )
    out = np.asarray(Image.open(root / "annotations/val2017/000000000007_labelTrainIds.png"))
    assert out[0, :7].tolist() == [0, 19, 11, 170, 255, 255, 0]
    assert coco_stuff.build(root, "val")[0]["label"][0, :3].tolist() == [0, 19, 11]
    assert prepare("coco_stuff", root).skipped == 1  # existing outputs are kept


def test_prepare_context_459_to_59(tmp_path):
    root = tmp_path / "VOC2010"
    ids = np.zeros((H, W), np.uint16)
    # 459 ids (labels.txt): aeroplane 2 -> 1, person 284 -> 37, accordion 1 -> 0 (not in the 59),
    # wood 458 -> 59, unlabelled 0 -> 0
    ids[:, 1], ids[:, 2], ids[:, 3], ids[:, 4] = 2, 284, 1, 458
    src = root / "trainval"
    src.mkdir(parents=True)
    savemat(src / "2008_000001.mat", {"LabelMap": ids})
    Image.fromarray(ids.astype(np.uint16)).save(src / "2008_000002.png")  # a 16-bit PNG, same ids
    for i in ("2008_000001", "2008_000002"):
        write_jpg(root / "JPEGImages" / f"{i}.jpg")
    main = root / "ImageSets/Main"
    main.mkdir(parents=True)
    (main / "train.txt").write_text("2008_000001\n2008_000009\n")  # 000009 has no annotation
    (main / "val.txt").write_text("2008_000002\n")
    result = prepare("context", root)
    assert result.written == 2 and not result.failed
    for i in ("2008_000001", "2008_000002"):
        out = np.asarray(Image.open(root / "SegmentationClassContext" / f"{i}.png"))
        assert out[0, :5].tolist() == [0, 1, 37, 0, 59]
    assert (root / "ImageSets/SegmentationContext/train.txt").read_text() == "2008_000001\n"
    # and the loader reads them: 0 -> 255, aeroplane -> 0, person -> 36, wood -> 58
    assert context.build(root, "val")[0]["label"][0, :5].tolist() == [255, 0, 36, 255, 58]


def test_context_table_covers_the_59_classes():
    table = context_table()
    assert sorted(set(table.tolist())) == list(range(60))
    assert table[2] == 1 and table[458] == 59 and table[1] == 0


def test_prepare_refuses_datasets_without_conversion(tmp_path):
    with pytest.raises(ValueError, match="needs no label conversion"):
        prepare("voc", tmp_path)


def test_bad_samples_stop_a_run_unless_skipped_and_then_are_counted(broken_voc, caplog):
    from zeroseg.config import DataConfig
    from zeroseg.data.real import build_real_dataset

    cfg = DataConfig(dataset="voc", root=str(broken_voc), crop_size=8)
    train, val, _, _ = build_real_dataset(cfg)
    items = train.items + val.items  # one of the six official training images is held out
    bad = next(i for i, it in enumerate(items) if it.id == "bad_img")
    dataset = train if bad < len(train) else val
    with pytest.raises(Exception, match="bad_img.jpg"):
        dataset[bad if bad < len(train) else bad - len(train)]
    cfg.skip_bad = True
    with caplog.at_level("WARNING", logger="zeroseg.data"):
        train, val, test, _ = build_real_dataset(cfg)
    # the two good training images: one trains, one is held out as val; test is the official val
    assert len(train) == 1 and len(train.skipped) == 4 and len(val) == 1 and len(test) == 1
    assert {train.items[0].id, val.items[0].id} == {"good", "good2"}
    assert "skipped 4 of 6 voc/train samples" in caplog.text
    for name in ("bad_img", "bad_val", "no_label", "small"):
        assert name in caplog.text
