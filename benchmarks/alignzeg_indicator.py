"""Does AlignZeg's class indicator find the unseen-class proposals? (docs/methods.md, AlignZeg)

Runs a trained ``alignzeg`` model on the ``val`` split (never ``test``) and looks at its proposals
before the post-process: every proposal whose background probability is below 0.5 and whose mask
(sigmoid > 0.5 at image resolution) covers at least ``--min-area`` labelled pixels is assigned the
ground-truth class that covers most of its mask. For the proposals of unseen against those of seen
classes it prints

- the learned indicator's AUC (0.5: chance), and the fractions the post-process flags: by the
  model's ``indicator`` (the learned one, or ``unseen_mass``, the ShapeWorld preset's since
  session 27) above its ``bias_threshold``;
- for comparison, two scores the indicator could have been: the seen-only doubt, one minus the
  largest seen-class probability over the training vocabulary (seen classes and background, no
  unseen name), and the classifier's probability mass on the unseen names (what the shared
  calibration rule acts on); and how often an unseen proposal's most probable class is a seen one
  (the bias to correct).

Usage: python benchmarks/alignzeg_indicator.py RUN [RUN ...] [--min-area 10]
(RUN: a run directory or checkpoint of an ``alignzeg`` model, e.g. ``runs/demo/seed-0/alignzeg``.)
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import mannwhitneyu

from zeroseg import runner
from zeroseg.data.loader import collate
from zeroseg.methods.alignzeg import unseen_mass


@dataclass
class Proposals:
    """One row per kept proposal."""

    indicator: np.ndarray  # indicator probability u_q
    seen_doubt: np.ndarray  # 1 - the largest seen-class probability (seen classes + background)
    unseen_mass: np.ndarray  # share of the class probability on unseen names
    flag_score: np.ndarray  # what the model's post-process flags by (AlignZeg.indicator_scores)
    top_is_seen: np.ndarray  # bool: the most probable class is a seen one
    is_unseen: np.ndarray  # bool: the ground-truth class covering most of the mask is unseen


def collect(run: str, min_area: int) -> tuple[Proposals, str, float]:
    """The proposals of ``run``'s model on ``val``, its ``indicator`` and its ``bias_threshold``."""
    method, cfg, split, _ = runner.load_model(run)
    if not method.name.startswith("alignzeg"):
        raise SystemExit(f"{run}: holds a {method.name!r} model, not an alignzeg one")
    data = runner.build_data(cfg, progress=False, test=False)  # val only: test is never loaded
    embed = runner.Embedder(cfg.text, world=data.world)
    emb = embed(split.names)
    seen = split.seen_mask()
    seen_cols = torch.cat([seen.nonzero().flatten(), torch.tensor([split.num_classes])])
    rows: dict[str, list] = {k: [] for k in ("u", "doubt", "mass", "flag", "top", "gt")}
    loader = torch.utils.data.DataLoader(
        data.val, batch_size=cfg.eval.batch_size, collate_fn=collate
    )
    with torch.no_grad():
        for batch in loader:
            images, labels = batch["image"], batch["label"]
            out = method.model(images)
            logits = method.model.classify(out.embeddings, emb).float()
            probs = logits.softmax(-1)
            seen_probs = logits[..., seen_cols].softmax(-1)[..., :-1]  # the training vocabulary
            u = method.model.indicator(out.hidden).sigmoid()
            mass = unseen_mass(probs, seen)
            flag = method.indicator_scores(probs, out.hidden, seen)
            masks = F.interpolate(
                out.masks.float(), size=images.shape[-2:], mode="bilinear", align_corners=False
            )
            masks = masks.sigmoid() > 0.5
            for b in range(len(images)):
                for q in range(probs.shape[1]):
                    if probs[b, q, -1] >= 0.5:
                        continue
                    covered = labels[b][masks[b, q]]
                    covered = covered[covered != split.ignore_index]
                    if len(covered) < min_area:
                        continue
                    gt = torch.bincount(covered, minlength=split.num_classes).argmax()
                    cls = probs[b, q, :-1]
                    rows["u"].append(u[b, q].item())
                    rows["doubt"].append(1.0 - seen_probs[b, q].max().item())
                    rows["mass"].append(mass[b, q].item())
                    rows["flag"].append(flag[b, q].item())
                    rows["top"].append(bool(seen[cls.argmax()]))
                    rows["gt"].append(not bool(seen[gt]))
    keys = ("u", "doubt", "mass", "flag", "top", "gt")
    found = Proposals(*(np.asarray(rows[k]) for k in keys))
    return found, method.cfg.indicator, method.cfg.bias_threshold


def auc(score: np.ndarray, positive: np.ndarray) -> float:
    """P(score of a positive > score of a negative), ties one half (Mann-Whitney U / n1 n2)."""
    pos, neg = score[positive], score[~positive]
    return float(mannwhitneyu(pos, neg).statistic / (len(pos) * len(neg)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--min-area", type=int, default=10)
    args = ap.parse_args()
    print(
        "| run | proposals (unseen) | indicator AUC | flagged by (threshold): seen / unseen | "
        "seen-doubt AUC | unseen-mass AUC | unseen proposals with a seen top class |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for run in args.runs:
        p, indicator, threshold = collect(run, args.min_area)
        if p.is_unseen.all() or not p.is_unseen.any():
            raise SystemExit(f"{run}: the val proposals are all of one kind; no AUC to compute")
        flagged = p.flag_score > threshold
        print(
            f"| {run} | {len(p.is_unseen)} ({p.is_unseen.sum()}) | {auc(p.indicator, p.is_unseen):.3f} | "
            f"{indicator} ({threshold:g}): "
            f"{flagged[~p.is_unseen].mean():.3f} / {flagged[p.is_unseen].mean():.3f} | "
            f"{auc(p.seen_doubt, p.is_unseen):.3f} | {auc(p.unseen_mass, p.is_unseen):.3f} | "
            f"{p.top_is_seen[p.is_unseen].mean():.3f} |"
        )


if __name__ == "__main__":
    main()
