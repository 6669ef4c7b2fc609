"""How long the foundation's linear probe must train: the figures behind ``PROBE_STEPS``.

Fits the seen-class linear probe of :func:`zeroseg.pretrain.dense_encoder_report` on the shipped
foundation's frozen pixel embeddings (seen-class pixels of 2000 default-world training images)
with several schedules, and prints each one's training loss (a tenth of the fit pixels) and seen
mIoU on 500 **val** images (the split choices are made on; the reported figures are on test).

Usage: .venv/bin/python benchmarks/probe_schedule.py   (one thread; about 15 minutes)
"""

from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from zeroseg.data.shapeworld import ShapeWorldDataset, load_spec
from zeroseg.foundation import load_foundation
from zeroseg.metrics.semantic import confusion_matrix, iou_per_class
from zeroseg.pretrain import _dense_features, _split_tensors

# (steps, peak lr, cosine schedule): the old probe first, then longer ones
ADAM_SCHEDULES = ((300, 1e-2, False), (1000, 1e-2, True), (3000, 1e-2, True), (3000, 3e-2, True))


def main() -> None:
    torch.set_num_threads(1)
    model = load_foundation()
    spec = load_spec(None)

    @torch.no_grad()
    def features(images):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            pix = model.pixel_embeddings(images)
        return F.normalize(pix.float(), dim=1).permute(0, 2, 3, 1)

    seen = list(spec.class_split().seen)
    train = ShapeWorldDataset(spec, "train", progress=False)
    val = ShapeWorldDataset(spec, "val", progress=False)
    tx, ty = _dense_features(features, *_split_tensors(train, 2000))
    vx, vy = _dense_features(features, *_split_tensors(val, 500))
    position = torch.full((256,), -1, dtype=torch.long)
    position[torch.tensor(seen)] = torch.arange(len(seen))
    tx, ty = tx.flatten(0, 2), position[ty.flatten().clamp(0, 255)]
    keep = ty >= 0  # seen-class pixels only: unseen training labels are never read
    tx, ty = tx[keep], ty[keep]
    vpos = position[vy.clamp(0, 255)]
    vxs, vys = vx[vpos >= 0], vpos[vpos >= 0]

    def report(name: str, probe: nn.Module, seconds: float) -> None:
        with torch.no_grad():
            loss = F.cross_entropy(probe(tx[::10]), ty[::10]).item()
            pred = probe(vxs).argmax(-1)
        miou = 100 * float(np.nanmean(iou_per_class(confusion_matrix(pred, vys, len(seen)))))
        print(f"{name}: train loss {loss:.4f}  val seen mIoU {miou:.1f}  ({seconds:.0f}s)")

    for steps, lr, cosine in ADAM_SCHEDULES:
        start = time.time()
        gen = torch.Generator().manual_seed(0)
        torch.manual_seed(0)
        probe = nn.Linear(tx.shape[1], len(seen))
        opt = torch.optim.Adam(probe.parameters(), lr=lr)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps) if cosine else None
        for _ in range(steps):
            idx = torch.randint(0, len(tx), (8192,), generator=gen)
            loss = F.cross_entropy(probe(tx[idx]), ty[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            if sched:
                sched.step()
        report(
            f"adam {steps} steps lr {lr} {'cosine' if cosine else 'constant'}",
            probe,
            time.time() - start,
        )

    # L-BFGS on a fixed subsample with a small L2 penalty (sklearn-style logistic regression)
    start = time.time()
    sub = torch.randperm(len(tx), generator=torch.Generator().manual_seed(0))[:200_000]
    x, y = tx[sub], ty[sub]
    torch.manual_seed(0)
    probe = nn.Linear(tx.shape[1], len(seen))
    opt = torch.optim.LBFGS(
        probe.parameters(),
        lr=1,
        max_iter=500,
        history_size=20,
        line_search_fn="strong_wolfe",
        tolerance_grad=1e-6,
        tolerance_change=1e-9,
    )

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(probe(x), y) + 1e-5 * probe.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    report("lbfgs 200k pixels L2 1e-5", probe, time.time() - start)


if __name__ == "__main__":
    main()
