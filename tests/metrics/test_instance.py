"""Mask AP@0.5 / recall@100: hand cases and parity with pycocotools' COCOeval."""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from zeroseg.metrics.instance import InstanceEvaluator, average_precision, evaluate_image

H = W = 16


def box(y0: int, x0: int, y1: int, x1: int) -> np.ndarray:
    m = np.zeros((H, W), bool)
    m[y0:y1, x0:x1] = True
    return m


def run(images, k=2, seen=(0,), unseen=(1,), things=(0, 1)) -> dict:
    ev = InstanceEvaluator(k, list(seen), list(unseen), list(things))
    for img in images:
        ev.process(*img)
    return ev.evaluate()


def image(dets, gts, crowd=None):
    """dets: [(mask, score, label)], gts: [(mask, label)]."""
    pm = np.stack([d[0] for d in dets]) if dets else np.zeros((0, H, W), bool)
    gm = np.stack([g[0] for g in gts]) if gts else np.zeros((0, H, W), bool)
    return (
        pm,
        np.array([d[1] for d in dets], float),
        np.array([d[2] for d in dets], int),
        gm,
        np.array([g[1] for g in gts], int),
        None if crowd is None else np.array(crowd, bool),
    )


def test_tp_fp_tp_ranking():
    g1, g2 = box(0, 0, 4, 4), box(8, 8, 12, 12)
    # Ranked TP (0.9), FP (0.8), TP (0.7): recall .5, .5, 1; precision 1, .5, 2/3 -> envelope
    # 1, 2/3, 2/3. Thresholds 0..0.50 (51 of them) read 1, 0.51..1 (50) read 2/3.
    r = run([image([(g1, 0.9, 0), (box(4, 4, 8, 8), 0.8, 0), (g2, 0.7, 0)], [(g1, 0), (g2, 0)])])
    ap = (51 * 1 + 50 * (2 / 3)) / 101
    assert r["per_class_ap50"]["0"] == pytest.approx(100 * ap)
    assert r["per_class_recall100"]["0"] == pytest.approx(100.0)
    assert r["per_class_ap50"]["1"] is None  # no ground truth of class 1 anywhere
    assert r["ap50"] == pytest.approx(100 * ap) and r["n"] == 1


def test_evaluate_image_ranks_and_matches_per_class():
    g1, g2 = box(0, 0, 4, 4), box(8, 8, 12, 12)
    img = image(
        [(box(4, 4, 8, 8), 0.8, 0), (g2, 0.7, 0), (g1, 0.9, 0), (g1, 0.6, 1)], [(g1, 0), (g2, 0)]
    )
    out = evaluate_image(*img, classes=[0, 1])
    assert out[0]["scores"].tolist() == [0.9, 0.8, 0.7]
    assert out[0]["matched"].tolist() == [True, False, True] and out[0]["num_gt"] == 2
    assert out[1]["matched"].tolist() == [False] and out[1]["num_gt"] == 0


def test_iou_exactly_half_matches():
    # gt 4x4 = 16 px; detection 4x8 = 32 px containing it: IoU 16/32 = 0.5 >= 0.5 (COCOeval's
    # threshold is inclusive); 4x9 gives 16/36 < 0.5.
    g = box(0, 0, 4, 4)
    assert run([image([(box(0, 0, 4, 8), 0.9, 0)], [(g, 0)])])["ap50"] == pytest.approx(100)
    assert run([image([(box(0, 0, 4, 9), 0.9, 0)], [(g, 0)])])["ap50"] == 0.0


def test_detection_on_crowd_is_ignored():
    g, crowd_region = box(0, 0, 4, 4), box(8, 0, 16, 16)
    dets = [(box(8, 0, 12, 4), 0.9, 0), (g, 0.8, 0)]
    # Crowd IoU of the first detection is |d ∩ crowd| / |d| = 1: it is ignored, AP = 1.
    r = run([image(dets, [(g, 0), (crowd_region, 0)], crowd=[False, True])])
    assert r["ap50"] == pytest.approx(100) and r["recall100"] == pytest.approx(100)
    # Without the crowd flag the region is a regular gt (IoU 16/128): FP then TP -> precision
    # 0, 1/2 -> envelope 1/2 everywhere up to recall 1/2, then nothing: AP = .5 · 51/101.
    r = run([image(dets, [(g, 0), (crowd_region, 0)])])
    assert r["ap50"] == pytest.approx(100 * 0.5 * 51 / 101)
    assert r["recall100"] == pytest.approx(50.0)


def test_only_100_detections_per_image_and_class():
    g = box(0, 0, 4, 4)
    miss = box(10, 10, 12, 12)
    fps = [(miss, 1.0 - i * 1e-3, 0) for i in range(99)]
    # 99 FPs above the one TP: ranks 1..100, recall reaches 1 at rank 100 with precision 1/100,
    # and the envelope makes every threshold read 1/100.
    r = run([image([*fps, (g, 0.5, 0)], [(g, 0)])])
    assert r["ap50"] == pytest.approx(1.0) and r["recall100"] == pytest.approx(100)
    # One more FP above: the TP is the 101st detection and is cut.
    r = run([image([*fps, (miss, 0.99, 0), (g, 0.5, 0)], [(g, 0)])])
    assert r["ap50"] == 0.0 and r["recall100"] == 0.0


def test_seen_unseen_harmonic():
    g = box(0, 0, 4, 4)
    img1 = image([(g, 0.9, 0), (g, 0.9, 1)], [(g, 0), (g, 1)])  # both classes: AP 1
    img2 = image([(box(8, 8, 12, 12), 0.95, 1)], [(box(0, 8, 4, 12), 1)])  # class 1: an FP, a FN
    r = run([img1, img2])
    # class 1 ranking: FP (0.95), TP (0.9) over 2 gts: precision 0, 1/2 at recall 0, 1/2.
    ap1 = 0.5 * 51 / 101
    assert r["seen_ap50"] == pytest.approx(100) and r["unseen_ap50"] == pytest.approx(100 * ap1)
    assert r["h_ap50"] == pytest.approx(2 * 100 * 100 * ap1 / (100 + 100 * ap1))
    assert r["ap50"] == pytest.approx((100 + 100 * ap1) / 2)
    assert r["unseen_recall100"] == pytest.approx(50.0)
    assert r["h_recall100"] == pytest.approx(2 * 100 * 50 / 150)


def test_non_thing_predictions_left_out_and_non_thing_gt_rejected():
    g = box(0, 0, 4, 4)
    r = run([image([(g, 0.9, 0), (g, 0.95, 2)], [(g, 0)])], k=3, seen=(0, 2), things=(0, 1))
    assert r["ap50"] == pytest.approx(100)
    with pytest.raises(ValueError, match="not thing classes"):
        run([image([], [(g, 2)])], k=3, seen=(0, 2), things=(0, 1))


def test_state_merge_equals_one_evaluator():
    rng = np.random.default_rng(3)
    imgs = [random_image(rng, i) for i in range(4)]
    a, b, both = (InstanceEvaluator(4, [0, 1], [2, 3], [0, 1, 2]) for _ in range(3))
    for i, img in enumerate(imgs):
        (a if i < 2 else b).process(*img)
        both.process(*img)
    a.merge(b.state())
    assert a.evaluate() == both.evaluate()


def test_average_precision_without_ground_truth_is_undefined():
    ap, rec = average_precision(np.array([0.5]), np.array([False]), np.array([False]), 0)
    assert np.isnan(ap) and np.isnan(rec)
    assert average_precision(np.zeros(0), np.zeros(0, bool), np.zeros(0, bool), 3) == (0.0, 0.0)


# --- parity with pycocotools ---------------------------------------------------------------


def random_image(rng: np.random.Generator, index: int, k: int = 4, things=(0, 1, 2)):
    """Noisy rectangles as ground truth; detections are shifted, noisy copies (IoU spread around
    0.5) and stray blobs. Image 0 has over 100 class-0 detections, so the cut at 100 matters."""
    size = 24

    def blob() -> np.ndarray:
        y0, x0 = rng.integers(0, size - 6, 2)
        y1, x1 = y0 + rng.integers(3, 10), x0 + rng.integers(3, 10)
        m = np.zeros((size, size), bool)
        m[y0:y1, x0:x1] = True
        return m & (rng.random((size, size)) > 0.1)

    def jitter(m: np.ndarray) -> np.ndarray:
        d = np.roll(m, int(rng.integers(-1, 2)), axis=int(rng.integers(0, 2)))
        near = np.roll(d, 1, 0) | np.roll(d, -1, 0) | np.roll(d, 1, 1) | np.roll(d, -1, 1)
        return d ^ (near & (rng.random(m.shape) < rng.uniform(0.0, 0.3)))

    m = int(rng.integers(1, 7))
    gmasks = np.stack([blob() for _ in range(m)])
    glabels = rng.choice(things, m) if index else np.zeros(m, int)  # image 0: all class 0
    crowd = rng.random(m) < 0.15
    dets, labels = [], []
    for j in range(m):
        for _ in range(int(rng.integers(0 if index else 1, 4))):
            dets.append(jitter(gmasks[j]))
            labels.append(glabels[j] if rng.random() < 0.85 else rng.integers(0, k))
    scores = list(rng.random(len(dets)))
    for _ in range(100 if index == 0 else int(rng.integers(0, 4))):
        dets.append(blob())
        labels.append(0 if index == 0 else rng.integers(0, k))
        # Image 0's flood outscores its real detections, so the cut at 100 removes some.
        scores.append(rng.uniform(0.5, 1) if index == 0 else rng.random())
    pmasks = np.stack(dets) if dets else np.zeros((0, size, size), bool)
    scores = np.round(scores, 2)  # rounded: ties in score, ranked as COCOeval does
    return pmasks, scores, np.array(labels, int), gmasks, glabels, crowd


def coco_eval(images, classes) -> tuple[np.ndarray, np.ndarray]:
    """(K,) AP and recall from COCOeval(segm) at IoU 0.5, maxDets 100, area all (-1: absent)."""
    gt_anns, dt_anns, ann_id = [], [], 1
    for i, (pm, sc, pl, gm, gl, crowd) in enumerate(images, start=1):
        for mask, label, c in zip(gm, gl, crowd):
            rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
            gt_anns.append(
                {
                    "id": ann_id,
                    "image_id": i,
                    "category_id": int(label) + 1,
                    "segmentation": rle,
                    "area": float(mask_utils.area(rle)),
                    "bbox": mask_utils.toBbox(rle).tolist(),
                    "iscrowd": int(c),
                }
            )
            ann_id += 1
        for mask, score, label in zip(pm, sc, pl):
            if int(label) not in classes:
                continue
            rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
            dt_anns.append(
                {
                    "image_id": i,
                    "category_id": int(label) + 1,
                    "segmentation": rle,
                    "score": float(score),
                }
            )
    size = images[0][3].shape[1:]
    gt = COCO()
    gt.dataset = {
        "images": [
            {"id": i, "height": size[0], "width": size[1]} for i in range(1, len(images) + 1)
        ],
        "annotations": gt_anns,
        "categories": [{"id": c + 1, "name": str(c)} for c in classes],
    }
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
        dt = gt.loadRes(dt_anns)
        ev = COCOeval(gt, dt, iouType="segm")
        ev.params.iouThrs = np.array([0.5])
        ev.params.maxDets = [100]
        ev.params.areaRng = [[0, 1e5**2]]
        ev.params.areaRngLbl = ["all"]
        ev.evaluate()
        ev.accumulate()
    precision = ev.eval["precision"][0, :, :, 0, 0]  # (101, K)
    ap = np.where((precision > -1).all(0), precision.mean(0), -1.0)
    return ap, ev.eval["recall"][0, :, 0, 0]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_pycocotools(seed):
    rng = np.random.default_rng(seed)
    things = (0, 1, 2)
    images = [random_image(rng, i) for i in range(6)]
    # Class 2: make every ground truth of it a crowd in one seed, absent in another.
    if seed == 1:
        images = [(*img[:5], img[5] | (img[4] == 2)) for img in images]
    ev = InstanceEvaluator(4, seen=[0, 1, 3], unseen=[2], thing_classes=list(things))
    for img in images:
        ev.process(*img)
    r = ev.evaluate()
    ref_ap, ref_rec = coco_eval(images, things)
    for j, c in enumerate(things):
        ours_ap, ours_rec = r["per_class_ap50"][str(c)], r["per_class_recall100"][str(c)]
        if ref_ap[j] < 0:
            assert ours_ap is None and ours_rec is None
        else:
            assert ours_ap == pytest.approx(100 * ref_ap[j], abs=1e-6)
            assert ours_rec == pytest.approx(100 * ref_rec[j], abs=1e-6)
    valid = ref_ap > -1
    assert valid.sum() >= 2
    # COCOeval's summary: mean of the precision array over the evaluated categories.
    assert r["ap50"] == pytest.approx(100 * ref_ap[valid].mean(), abs=1e-6)
    assert r["recall100"] == pytest.approx(100 * ref_rec[valid].mean(), abs=1e-6)
