"""COCO crowd regions through the loader, PQ and mask AP, against the reference rules.

One COCO panoptic validation image (10 x 10) in the exact layout, with a crowd of persons:

    rows 0-4: person A (id 101, cols 0-3, 20 px) | crowd of persons (id 102, cols 4-9, 30 px)
    rows 5-9: car (id 103, cols 0-3, 20 px)      | grass-merged (id 104, cols 4-9, 30 px)

PQ: the expected figures are derived by hand with panopticapi's ``pq_compute_single_core`` rules
(cocodataset/panopticapi, panopticapi/evaluation.py): a crowd segment is never matched nor an FN;
a prediction's pixels on a crowd stay in the IoU union (only VOID pixels leave it); an unmatched
prediction is not an FP when more than half of it lies on VOID plus the crowd of *its own*
category. They equal panopticapi's own ``pq_compute`` run on this fixture (recorded below in
``PANOPTICAPI_*``; benchmarks/panopticapi_reference.py reproduces them from a checkout).
Mask AP: pycocotools' COCOeval is run on the same image (a dev dependency).
"""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from zeroseg.config import DataConfig
from zeroseg.data.protocol import SeenOnly
from zeroseg.data.real import build_real_dataset, coco_panoptic
from zeroseg.data.real.fixtures import panoptic_categories, write_panoptic_image
from zeroseg.metrics.instance import InstanceEvaluator
from zeroseg.metrics.panoptic import PanopticEvaluator, crowd_flags, pq_stats
from zeroseg.runner import Data

PERSON, CAR, GRASS = 1, 3, 193  # COCO category ids
K = len(coco_panoptic.CATEGORIES)


def index_of(cid: int) -> int:
    return [c for c, _ in coco_panoptic.CATEGORIES].index(cid)


def gt_ids() -> np.ndarray:
    ids = np.zeros((10, 10), np.int64)
    ids[:5, :4], ids[:5, 4:], ids[5:, :4], ids[5:, 4:] = 101, 102, 103, 104
    return ids


GT_SEGMENTS = [
    {"id": 101, "category_id": PERSON, "iscrowd": 0, "area": 20},
    {"id": 102, "category_id": PERSON, "iscrowd": 1, "area": 30},
    {"id": 103, "category_id": CAR, "iscrowd": 0, "area": 20},
    {"id": 104, "category_id": GRASS, "iscrowd": 0, "area": 30},
]


@pytest.fixture
def crowd_root(tmp_path):
    root = tmp_path / "coco"
    train = {"images": [], "annotations": [], "categories": panoptic_categories()}
    val = {"images": [], "annotations": [], "categories": panoptic_categories()}
    write_panoptic_image(root, "val", 7, gt_ids(), GT_SEGMENTS, val)
    # two training images (one is held out as val): a crowd of cows (unseen) beside a person,
    # and a crowd of persons beside a car
    for image_id, crowd_cat in ((1, 21), (2, PERSON)):
        ids = np.full((6, 8), 11, np.int64)
        ids[:, 4:] = 12
        segs = [
            {"id": 11, "category_id": PERSON if crowd_cat != PERSON else CAR, "iscrowd": 0},
            {"id": 12, "category_id": crowd_cat, "iscrowd": 1},
        ]
        write_panoptic_image(root, "train", image_id, ids, segs, train)
    (root / "annotations/panoptic_train2017.json").write_text(json.dumps(train))
    (root / "annotations/panoptic_val2017.json").write_text(json.dumps(val))
    return root


# panopticapi's pq_compute on the ground truth above and predictions() (see the PQ test)
PANOPTICAPI_PER_CLASS = {
    "person": (66.666667, 66.666667, 100.0),
    "car": (66.666667, 100.0, 66.666667),
    "grass-merged": (100.0, 100.0, 100.0),
}
PANOPTICAPI_GROUPS = {
    "": (77.777778, 88.888889, 88.888889, 3),
    "things_": (66.666667, 83.333333, 83.333333, 2),
    "stuff_": (100.0, 100.0, 100.0, 1),
}


def predictions() -> tuple[np.ndarray, np.ndarray]:
    """The predicted panoptic map and its (id, class) rows:
    P1 person rows 0-4 cols 0-5 (30 px: person A and 10 px of the crowd), P2 car rows 0-4
    cols 6-9 (20 px, all on the person crowd), P3 car = the car, P4 grass = the grass."""
    pred = np.zeros((10, 10), np.int64)
    pred[:5, :6], pred[:5, 6:], pred[5:, :4], pred[5:, 4:] = 1, 2, 3, 4
    rows = np.array(
        [[1, index_of(PERSON)], [2, index_of(CAR)], [3, index_of(CAR)], [4, index_of(GRASS)]]
    )
    return pred, rows


def test_the_loader_keeps_crowd_segments_flagged(crowd_root):
    _, _, test, split = build_real_dataset(
        DataConfig(dataset="coco_panoptic", root=str(crowd_root))
    )
    s = test[0]
    segs = s["segments"].numpy()
    assert segs.tolist() == [
        [1, index_of(PERSON), 1, 0],
        [2, index_of(PERSON), 1, 1],
        [3, index_of(CAR), 1, 0],
        [4, index_of(GRASS), 0, 0],
    ]
    assert (
        s["panoptic"].numpy()
        == np.array([0, 1, 2, 3, 4])[np.searchsorted([0, 101, 102, 103, 104], gt_ids())]
    ).all()
    assert crowd_flags(segs).tolist() == [False, True, False, False]
    assert (s["label"][:5, 4:] == 255).all()  # a crowd is no single instance: ignore in the label


def test_pq_on_the_loader_path_equals_panopticapi(crowd_root):
    _, _, test, split = build_real_dataset(
        DataConfig(dataset="coco_panoptic", root=str(crowd_root))
    )
    s = test[0]
    pred, rows = predictions()
    ev = PanopticEvaluator(K, split.seen, split.unseen, split.things, names=split.names)
    ev.process(pred, rows, s["panoptic"], s["segments"])  # the path PADing's evaluation takes
    r = ev.evaluate()
    # panopticapi by hand:
    #   person: P1 vs person A: inter 20, union 30 + 20 - 20 - 0 (no VOID) = 30 -> IoU 2/3, TP;
    #           the crowd is neither matched nor an FN -> PQ 2/3, SQ 2/3, RQ 1
    #   car: P3 matches the car, IoU 1 (TP); P2 is unmatched and lies on a crowd of *persons*:
    #        its VOID + own-category-crowd share is 0 -> FP -> PQ 1 / 1.5, SQ 1, RQ 2/3
    #   grass: IoU 1 -> PQ 1
    assert r["per_class_pq"]["person"] == pytest.approx(200 / 3)
    assert r["per_class_sq"]["person"] == pytest.approx(200 / 3)
    assert r["per_class_pq"]["car"] == pytest.approx(200 / 3)
    assert r["per_class_rq"]["car"] == pytest.approx(200 / 3)
    assert r["per_class_pq"]["grass-merged"] == pytest.approx(100.0)
    assert r["pq"] == pytest.approx(700 / 9) and r["n"] == 3
    # panopticapi's own pq_compute on this fixture, recorded with
    # `python benchmarks/panopticapi_reference.py --panopticapi <checkout>` (cocodataset/panopticapi
    # 7bb4655): per category (PQ, SQ, RQ) and per group (PQ, SQ, RQ, n), in percent
    for name, figures in PANOPTICAPI_PER_CLASS.items():
        got = tuple(r[f"per_class_{m}"][name] for m in ("pq", "sq", "rq"))
        assert got == pytest.approx(figures, abs=1e-6), name
    for prefix, figures in PANOPTICAPI_GROUPS.items():
        got = tuple(r[f"{prefix}{m}"] for m in ("pq", "sq", "rq", "n"))
        assert got == pytest.approx(figures, abs=1e-6), prefix or "all"
    occurring = {n for n, v in r["per_class_pq"].items() if v is not None}
    assert occurring == set(PANOPTICAPI_PER_CLASS)
    # the same figures as the json's own segment list on the raw PNG ids (panopticapi's input)
    gt_dicts = [
        {"id": g["id"], "category_id": index_of(g["category_id"]), "iscrowd": g["iscrowd"]}
        for g in GT_SEGMENTS
    ]
    raw = pq_stats(pred, rows, gt_ids(), gt_dicts, num_classes=K)
    for key in ("tp", "fp", "fn"):
        assert np.array_equal(raw[key], ev._stats[key])
    assert np.allclose(raw["iou"], ev._stats["iou"], rtol=0, atol=1e-14)
    # with the crowd dropped to void (the loader before this fix) PQ was inflated to 100:
    # P1's crowd pixels left the union (IoU 1) and P2 on "void" was exempt from being an FP
    keep = ~crowd_flags(s["segments"])
    pan = s["panoptic"].clone()
    pan[pan == 2] = 0
    old = PanopticEvaluator(K, split.seen, split.unseen, split.things, names=split.names)
    old.process(pred, rows, pan, s["segments"][keep][:, :3])
    assert old.evaluate()["pq"] == pytest.approx(100.0)


def _coco_ap(gt_masks, gt_cats, gt_crowd, dets) -> dict[int, float]:
    """COCOeval (segm) at IoU 0.5, 100 detections, area all: category id -> AP (-1: absent)."""
    gts = []
    for j, (m, c, crowd) in enumerate(zip(gt_masks, gt_cats, gt_crowd, strict=True), start=1):
        rle = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
        gts.append(
            {
                "id": j,
                "image_id": 1,
                "category_id": c,
                "segmentation": rle,
                "area": float(mask_utils.area(rle)),
                "bbox": mask_utils.toBbox(rle).tolist(),
                "iscrowd": int(crowd),
            }
        )
    res = [
        {
            "image_id": 1,
            "category_id": c,
            "segmentation": mask_utils.encode(np.asfortranarray(m.astype(np.uint8))),
            "score": sc,
        }
        for m, c, sc in dets
    ]
    gt = COCO()
    gt.dataset = {
        "images": [{"id": 1, "height": 10, "width": 10}],
        "annotations": gts,
        "categories": [{"id": PERSON, "name": "person"}, {"id": CAR, "name": "car"}],
    }
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
        ev = COCOeval(gt, gt.loadRes(res), iouType="segm")
        ev.params.iouThrs = np.array([0.5])
        ev.params.maxDets = [100]
        ev.params.areaRng = [[0, 1e5**2]]
        ev.params.areaRngLbl = ["all"]
        ev.evaluate()
        ev.accumulate()
    precision = ev.eval["precision"][0, :, :, 0, 0]  # (101, categories)
    return {
        cid: float(precision[:, j].mean()) if (precision[:, j] > -1).all() else -1.0
        for j, cid in enumerate(ev.params.catIds)
    }


def detections() -> list[tuple[np.ndarray, int, float]]:
    """(mask, COCO category id, score): a small person detection inside the crowd (scored
    highest; its IoU with the crowd region is 8/30, so without the crowd flag it is a false
    hit), person A, a car detection on the person crowd, and the car."""
    box = np.zeros((10, 10), bool)
    in_crowd, on_crowd = box.copy(), box.copy()
    in_crowd[:2, 6:] = True  # 8 px inside the person crowd
    on_crowd[:5, 6:] = True  # 20 px inside the person crowd
    person_a, car = box.copy(), box.copy()
    person_a[:5, :4], car[5:, :4] = True, True
    return [
        (in_crowd, PERSON, 0.95),
        (person_a, PERSON, 0.9),
        (on_crowd, CAR, 0.8),
        (car, CAR, 0.7),
    ]


def test_mask_ap_on_the_loader_path_equals_cocoeval(crowd_root):
    _, _, test, split = build_real_dataset(
        DataConfig(dataset="coco_panoptic", root=str(crowd_root))
    )
    s = test[0]
    dets = detections()
    # the path PADing's evaluation takes: thing rows of the sample, their masks and crowd flags
    segs = s["segments"]
    things = segs[segs[:, 2] == 1]
    gt_masks = s["panoptic"][None] == things[:, 0][:, None, None]
    ev = InstanceEvaluator(K, split.seen, split.unseen, split.things, names=split.names)
    ev.process(
        np.stack([d[0] for d in dets]),
        np.array([d[2] for d in dets]),
        np.array([index_of(d[1]) for d in dets]),
        gt_masks,
        things[:, 1],
        crowd_flags(things),
    )
    ours = ev.evaluate()
    cats = [coco_panoptic.CATEGORIES[int(c)][0] for c in things[:, 1]]
    ref = _coco_ap(gt_masks.numpy(), cats, crowd_flags(things), dets)
    # COCOeval: the top person detection falls in the crowd (|d ∩ crowd| / |d| = 1) and is
    # ignored, so person AP is 1; the car detection on the person crowd is an FP ahead of the
    # true car: precision 1/2 at recall 1 -> AP 0.5
    assert ref == {PERSON: pytest.approx(1.0), CAR: pytest.approx(0.5)}
    assert ours["per_class_ap50"]["person"] == pytest.approx(100 * ref[PERSON], abs=1e-9)
    assert ours["per_class_ap50"]["car"] == pytest.approx(100 * ref[CAR], abs=1e-9)
    # without the crowd flag the crowd is one more person to find and the small detection in
    # it is a false hit ahead of person A (COCOeval with iscrowd 0 agrees): precision 1/2 up to
    # recall 1/2, never recall 1 -> AP 51/101 * 1/2
    plain = InstanceEvaluator(K, split.seen, split.unseen, split.things, names=split.names)
    plain.process(
        np.stack([d[0] for d in dets]),
        np.array([d[2] for d in dets]),
        np.array([index_of(d[1]) for d in dets]),
        gt_masks,
        things[:, 1],
    )
    no_crowd = _coco_ap(gt_masks.numpy(), cats, np.zeros(len(cats), bool), dets)
    assert no_crowd[PERSON] == pytest.approx(51 / 101 / 2)
    assert plain.evaluate()["per_class_ap50"]["person"] == pytest.approx(
        100 * no_crowd[PERSON], abs=1e-9
    )


def test_the_methods_evaluation_keeps_the_crowd_for_pq_and_ap(crowd_root, monkeypatch):
    """The evaluation PADing and mask-projection rows run (MaskModelMethod.extra_metrics) on the
    loader's sample, with the model's decoded output replaced by the fixture's predictions: PQ is
    panopticapi's, AP50 COCOeval's (the crowd flags reach both evaluators)."""
    import torch

    from zeroseg import runner
    from zeroseg.config import load_config
    from zeroseg.methods import mask_model

    _, _, test, split = build_real_dataset(
        DataConfig(dataset="coco_panoptic", root=str(crowd_root))
    )
    cfg = load_config("mask-projection_unet-small_1k_shapeworld")
    method = runner.build_method(cfg, split, 8)
    pred, rows = predictions()
    dets = detections()

    def model_output(images, emb):  # placeholders: the two decoders below are replaced
        return torch.zeros(len(images), 1, K + 1), torch.zeros(len(images), 1, 10, 10)

    def panoptic(probs, masks, is_thing, **kw):
        return torch.from_numpy(pred), torch.from_numpy(np.c_[rows, is_thing[rows[:, 1]]])

    def instances(probs, masks, is_thing, **kw):
        return (
            torch.from_numpy(np.stack([d[0] for d in dets])),
            torch.tensor([d[2] for d in dets]),
            torch.tensor([index_of(d[1]) for d in dets]),
        )

    monkeypatch.setattr(method, "predict", model_output)
    monkeypatch.setattr(mask_model, "panoptic_inference", panoptic)
    monkeypatch.setattr(mask_model, "instance_inference", instances)
    out = method.extra_metrics(
        cfg,
        Data(train=[], val=[], test=test, split=split),
        lambda names: torch.zeros(len(names), 8),
        progress=False,
    )
    for prefix, figures in PANOPTICAPI_GROUPS.items():
        got = tuple(out[f"{prefix}{m}"] for m in ("pq", "sq", "rq", "n"))
        assert got == pytest.approx(figures, abs=1e-6), prefix or "all"
    # COCOeval on these detections (test above): person AP 1, car AP 0.5
    things = test[0]["segments"][test[0]["segments"][:, 2] == 1]
    gt_masks = (test[0]["panoptic"][None] == things[:, 0][:, None, None]).numpy()
    cats = [coco_panoptic.CATEGORIES[int(c)][0] for c in things[:, 1]]
    ref = _coco_ap(gt_masks, cats, crowd_flags(things), dets)
    assert out["ap50"] == pytest.approx(100 * (ref[PERSON] + ref[CAR]) / 2, abs=1e-9)
    assert out["ap_n"] == 2


def test_crowd_regions_reach_no_training_stage(crowd_root):
    train, val, _, split = build_real_dataset(
        DataConfig(dataset="coco_panoptic", root=str(crowd_root), protocol="ignore")
    )
    full = coco_panoptic.build(crowd_root, "train")  # both training images (one is held out)
    for i in range(len(full)):
        raw = full[i]
        assert crowd_flags(raw["segments"]).sum() == 1  # the loader keeps each crowd ...
        s = SeenOnly(full, split, "ignore")[i]
        assert not crowd_flags(s["segments"]).any()  # ... and training never gets one
        crowd_ids = raw["segments"][crowd_flags(raw["segments"]), 0]
        assert not np.isin(s["panoptic"].numpy(), crowd_ids.numpy()).any()
    # strict drops the image whose crowd is of an unseen class (cow), though its label is 255
    strict = SeenOnly(full, split, "strict")
    assert strict.dropped == 1
    assert all(
        not np.isin(strict[i]["segments"][:, 1], split.unseen).any() for i in range(len(strict))
    )
