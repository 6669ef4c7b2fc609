"""How well do ZS3Net's generated unseen features stand for the real ones? (docs/methods.md, ZS3Net)

For a trained ``zs3net`` / ``zs5net`` run with the projection head, on the ``val`` split (never
``test``): gathers real hidden features (the head's 64-d map the GMMN imitates) of every class
from ``val`` (labels nearest-downsampled to the feature resolution, as the feature bank does),
draws as many fakes per class as stage 3 draws them (the GMMN in train mode), and prints per class:

- ``mmd``: the per-class MMD between the fakes and the real ``val`` features (the generator's own
  kernel bandwidths, sqrt of MMD^2); for seen classes also ``mmd bank``, the same between the
  real features of the training bank and of ``val`` (what two samples of real features differ by);
- ``fake->own``: the share of the fakes the *starting* classifier (the head's text side: the
  projection baseline's scoring) puts in their own class, and where most of the rest go;
- ``real->own start / retrained``: the share of the class's real ``val`` features put in their
  own class before and after stage 3 (argmax over every class, no calibration).

A summary line gives the seen and unseen classes' means. Reading (docs/methods.md, ZS3Net, "Why
ZS3Net gains less on the drawn worlds"): stage 3 can only teach what the unseen fakes disagree
with the starting classifier about; where it already puts nearly all of them in their own class
(a high unseen ``fake->own``), the unseen classes gain little (``real->own`` start -> retrained)
while the real seen features keep lifting the seen ones. Labels of ``val`` are read (it is a
diagnosis, as ``unseen_confusion.py``); nothing trains.

Usage: python benchmarks/zs3_fake_quality.py RUN [RUN ...] [--per-class N] [--classes]
"""

from __future__ import annotations

import argparse
import statistics

import torch

from zeroseg import runner
from zeroseg.data.labels import downsample_labels
from zeroseg.data.loader import iterate_eval
from zeroseg.generators.mmd import mmd_loss
from zeroseg.methods.zs3net import ZS3Net, _seeded
from zeroseg.models.heads.projection import CosineClassifier


def real_features(method: ZS3Net, dataset, k: int, per_class: int) -> list[torch.Tensor]:
    """Up to ``per_class`` real hidden features of each of the ``k`` classes, in image order."""
    got: list[list[torch.Tensor]] = [[] for _ in range(k)]
    have = [0] * k
    method.eval()
    with torch.no_grad():
        for batch in iterate_eval(dataset, 50):
            feats = method.features(batch["image"]).float()
            labels = downsample_labels(batch["label"], tuple(feats.shape[-2:])).reshape(-1)
            flat = feats.permute(0, 2, 3, 1).reshape(-1, feats.shape[1])
            for c in torch.unique(labels).tolist():
                if 0 <= c < k and have[c] < per_class:
                    mine = flat[labels == c][: per_class - have[c]]
                    got[c].append(mine)
                    have[c] += len(mine)
            if min(have) >= per_class:
                break
    return [torch.cat(g) if g else torch.zeros(0, 1) for g in got]


def fakes(method: ZS3Net, k: int, n: int, seed: int = 0) -> list[torch.Tensor]:
    """``n`` features for each of the ``k`` classes, drawn as stage 3 draws its fakes (the
    method's own batch: the GMMN in train mode, its dropout on)."""
    classes = torch.arange(k)
    emb = method.train_embeddings[classes]
    batch = method._fake_only_batch(classes, emb, n, _seeded(seed, 0))
    return [batch["features"][batch["label"] == c] for c in range(k)]


def report(run: str, per_class: int, show_classes: bool) -> dict[str, float]:
    method, cfg, split, _ = runner.load_model(run)
    if not isinstance(method, ZS3Net) or not method.projection_head:
        raise SystemExit(f"{run}: expected a zs3net / zs5net run with the projection head")
    data = runner.build_data(cfg, progress=False, test=False)
    k = split.num_classes
    names, unseen = list(split.names), set(split.unseen)
    real = real_features(method, data.val, k, per_class)
    fake = fakes(method, k, per_class)
    start = CosineClassifier(method.segmenter.head, method.train_embeddings, train_shared=False)
    retrained = method.segmenter.classifier
    bandwidths = method.cfg.generator.bandwidths
    seen_pos = {c: p for p, c in enumerate(split.seen)}

    def predict(clf, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return clf(x[:, :, None, None])[:, :, 0, 0].argmax(1)

    rows = {"seen": [], "unseen": []}
    print(f"{run}")
    for c in range(k):
        if len(real[c]) < 2:
            print(f"  {names[c]}: fewer than 2 labelled val pixels at the feature resolution")
            continue
        mmd = float(mmd_loss(fake[c], real[c], bandwidths, root=True))
        bank = ""
        if c in seen_pos and int(method.feature_gen.bank_count[seen_pos[c]]) > 1:
            p = seen_pos[c]
            b = method.feature_gen.bank[p, : int(method.feature_gen.bank_count[p])].float()
            bank = f"{float(mmd_loss(b[:per_class], real[c], bandwidths, root=True)):.3f}"
        fp = predict(start, fake[c])
        fake_own = float((fp == c).float().mean()) * 100  # as the stage-3 note counts it
        counts = torch.bincount(fp[fp != c], minlength=k)
        top = [
            f"{names[j]} {100 * int(counts[j]) / len(fp):.0f}%"
            for j in counts.argsort(descending=True)[:2].tolist()
            if counts[j] > 0
        ]
        own0 = float((predict(start, real[c]) == c).float().mean()) * 100
        own1 = float((predict(retrained, real[c]) == c).float().mean()) * 100
        kind = "unseen" if c in unseen else "seen"
        rows[kind].append((mmd, fake_own, own0, own1))
        if show_classes:
            print(
                f"  {names[c]:24s} {'U' if kind == 'unseen' else 'S'} mmd {mmd:.3f}"
                f"{' (bank ' + bank + ')' if bank else ''}  fake->own {fake_own:5.1f}"
                f"{' (' + ', '.join(top) + ')' if top else ''}"
                f"  real->own {own0:5.1f} -> {own1:5.1f}"
            )
    out = {}
    for kind, r in rows.items():
        if not r:
            continue
        m = [statistics.fmean(col) for col in zip(*r)]
        out.update({f"{kind}_{n}": v for n, v in zip(("mmd", "fake_own", "own0", "own1"), m)})
        print(
            f"  {kind:6s} ({len(r)} classes): mmd {m[0]:.3f}  fake->own {m[1]:.1f}"
            f"  real->own start {m[2]:.1f} -> retrained {m[3]:.1f}"
        )
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("runs", nargs="+", help="zs3net / zs5net run directories")
    ap.add_argument("--per-class", type=int, default=512, help="features per class (default 512)")
    ap.add_argument("--classes", action="store_true", help="print every class's line")
    args = ap.parse_args(argv)
    results = [report(r, args.per_class, args.classes) for r in args.runs]
    if len(results) > 1:
        print(f"mean ± std over {len(results)} runs:")
        for key in results[0]:
            vals = [r[key] for r in results]
            print(f"  {key}: {statistics.fmean(vals):.3f} ± {statistics.stdev(vals):.3f}")


if __name__ == "__main__":
    main()
