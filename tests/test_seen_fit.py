"""``zeroseg eval --seen-only`` / ``--split train``: the fit check over the seen classes alone,
on the training images through the protocol, reading no unseen label."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from zeroseg import runner
from zeroseg.cli import main


def _best_seen(method, split, embed, images: torch.Tensor) -> np.ndarray:
    emb = embed(split.names)
    seen = torch.zeros(split.num_classes, dtype=torch.bool)
    seen[list(split.seen)] = True
    with torch.no_grad():
        scores = method.scores(images, emb, seen)
    scores[:, ~seen] = float("-inf")
    return scores.argmax(1).numpy()


def _seen_miou(preds, labels, seen, ignore_index=255) -> tuple[float, dict[int, float]]:
    """Reference: IoU of each seen class that occurs, from boolean masks."""
    pred = np.concatenate([p.reshape(-1) for p in preds])
    label = np.concatenate([t.reshape(-1) for t in labels])
    keep = label != ignore_index
    pred, label = pred[keep], label[keep]
    iou = {}
    for c in seen:
        union = np.sum((pred == c) | (label == c))
        if union:
            iou[c] = np.sum((pred == c) & (label == c)) / union * 100
    return float(np.mean(list(iou.values()))), iou


def test_train_split_is_scored_on_seen_pixels_only(demo_run, capsys):
    run = next((demo_run / "runs").glob("projection-*"))
    assert main(["eval", str(run), "--split", "train", "--limit", "40", "--per-class"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["vocabulary"] == "seen" and out["eval_split"] == "train" and out["images"] == 40

    method, cfg, split, _ = runner.load_model(run)
    data = runner.build_data(cfg, progress=False)
    embed = runner.Embedder(cfg.text, world=data.world)
    samples = [data.train[i] for i in range(40)]
    preds = [_best_seen(method, split, embed, s["image"][None])[0] for s in samples]
    raw = [s["label"].numpy().astype(np.int64) for s in samples]
    unseen = np.isin(np.stack(raw), list(split.unseen))
    assert unseen.any(), "the fixture's training images must hold unseen pixels for this test"
    # what the protocol shows the method: unseen pixels are void
    hidden = [np.where(np.isin(r, list(split.unseen)), split.ignore_index, r) for r in raw]
    expected, per_class = _seen_miou(preds, hidden, split.seen)
    assert out["seen_miou"] == pytest.approx(expected, abs=1e-6)
    names = {split.names[c]: v for c, v in per_class.items()}
    assert out["per_class_iou"] == pytest.approx(names, abs=1e-6)
    # Reading the raw labels (a leak) would give another figure: the unseen pixels would count
    # against the seen classes predicted there, and the unseen class would get an IoU of 0.
    leaked, _ = _seen_miou(preds, raw, split.seen)
    assert leaked != pytest.approx(expected, abs=1e-3)
    assert all(split.names[u] not in out["per_class_iou"] for u in split.unseen)


def test_val_seen_only_matches_the_reference_and_bad_options_fail(demo_run, capsys):
    run = next((demo_run / "runs").glob("oracle-*"))
    assert main(["eval", str(run), "--split", "val", "--seen-only", "--limit", "30"]) == 0
    out = json.loads(capsys.readouterr().out)
    method, cfg, split, _ = runner.load_model(run)
    data = runner.build_data(cfg, progress=False)
    embed = runner.Embedder(cfg.text, world=data.world)
    samples = [data.val[i] for i in range(30)]
    preds = [_best_seen(method, split, embed, s["image"][None])[0] for s in samples]
    hidden = [
        np.where(np.isin(lab, list(split.unseen)), split.ignore_index, lab)
        for lab in (s["label"].numpy().astype(np.int64) for s in samples)
    ]
    assert out["seen_miou"] == pytest.approx(_seen_miou(preds, hidden, split.seen)[0], abs=1e-6)
    assert "unseen_miou" not in out and "per_class_iou" not in out
    # --per-class on the usual evaluation: every class's IoU beside the calibrated figures
    assert main(["eval", str(run), "--split", "val", "--per-class", "--no-progress"]) == 0
    full = json.loads(capsys.readouterr().out)
    assert set(full["per_class_iou"]) == set(split.names) and "hiou" in full

    assert main(["eval", str(run), "--split", "train", "--refine", "spectral"]) == 2
    assert "--refine is not available" in capsys.readouterr().err
    assert main(["eval", str(run), "--limit", "5"]) == 2
    assert "--limit is for --seen-only" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["eval", str(run), "--seen-only", "--limit", "0"])
    assert "expected an integer >= 1" in capsys.readouterr().err
