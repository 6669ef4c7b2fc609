"""Where do an unseen class's pixels go? (docs/methods.md, AlignZeg: the mask family's seed spread)

Runs a trained model on the ``val`` split (never ``test``) at the gamma the shared calibration
rule chooses there (as every report does) and prints, for each unseen class, the share of its
labelled pixels predicted as itself and the classes that take most of the rest (seen or unseen),
with the class's IoU. Setting two runs of one method side by side (two seeds) shows whether a
class lost in one seed went to a seen class, to another unseen class or to a ground.

``--summary`` also prints, over all unseen classes' labelled pixels together, the share
predicted as their own class, as a seen class and as another unseen class.

Usage: python benchmarks/unseen_confusion.py RUN [RUN ...] [--top 3] [--summary]
(RUN: a run directory or checkpoint, e.g. ``runs/dev-check/seed-1/runs/mask-projection-<hash>``.)
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import torch

from zeroseg import runner
from zeroseg.data.loader import iterate_eval
from zeroseg.metrics.calibration import choose_gamma


def confusion(run: str) -> tuple[torch.Tensor, list[str], list[int], float, tuple[int, ...]]:
    """(K, K) pixel counts (rows: ground truth, columns: prediction) of ``run`` on ``val`` at the
    calibration gamma chosen there; the class names, the unseen positions, that gamma and the
    split's thing classes."""
    method, cfg, split, _ = runner.load_model(run)
    data = runner.build_data(cfg, progress=False, test=False)
    embed = runner.Embedder(cfg.text, world=data.world)
    gamma = choose_gamma(
        runner.calibration_curve(method, cfg, data.val, split, embed, progress=False)
    )
    emb = embed(split.names)
    seen = split.seen_mask()
    k = split.num_classes
    counts = torch.zeros(k, k, dtype=torch.long)
    method.eval()
    with torch.no_grad():
        for batch in iterate_eval(data.val, cfg.eval.batch_size):
            pred = method.calibrated_scores(batch["image"], emb, seen, gamma).argmax(1)
            label = batch["label"].long()
            valid = label != split.ignore_index
            counts += torch.bincount(label[valid] * k + pred[valid], minlength=k * k).reshape(k, k)
    return counts, list(split.names), sorted(split.unseen), gamma, split.things


def unseen_summary(counts: torch.Tensor, unseen: list[int], things: Sequence[int] = ()) -> str:
    """The unseen classes' labelled pixels together: the percent predicted as their own class,
    as a seen class and as another unseen class (``counts``: rows truth, columns prediction);
    with ``things`` (the split's countable classes), also for the unseen things and the unseen
    stuff (ShapeWorld's grounds) apart, whose large regions otherwise dominate the total."""
    groups = [("all unseen", list(unseen))]
    if things:
        groups += [
            ("unseen things", [c for c in unseen if c in things]),
            ("unseen stuff", [c for c in unseen if c not in things]),
        ]
    return "; ".join(_shares(counts, name, members, unseen) for name, members in groups)


def _shares(counts: torch.Tensor, name: str, members: list[int], unseen: list[int]) -> str:
    group = torch.zeros(counts.shape[0], dtype=torch.bool)
    group[members] = True
    is_unseen = torch.zeros(counts.shape[0], dtype=torch.bool)
    is_unseen[list(unseen)] = True
    rows = counts[group].double()
    total = rows.sum().item()
    if not total:
        return f"{name}: no labelled pixel in val"
    own = counts.diagonal()[group].sum().item()
    to_seen = rows[:, ~is_unseen].sum().item()
    return (
        f"{name}: itself {100 * own / total:.1f}%, a seen class {100 * to_seen / total:.1f}%, "
        f"another unseen {100 * (total - own - to_seen) / total:.1f}%"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--top", type=int, default=3, help="other classes shown per unseen class")
    parser.add_argument("--summary", action="store_true", help="all unseen pixels together")
    args = parser.parse_args()
    for run in args.runs:
        counts, names, unseen, gamma, things = confusion(run)
        print(f"{run} (val, gamma {gamma:+.2f})")
        for c in unseen:
            row = counts[c].double()
            total = row.sum().item()
            if not total:
                print(f"  {names[c]}: no labelled pixel in val")
                continue
            union = total + counts[:, c].sum().item() - counts[c, c].item()
            others = [j for j in row.argsort(descending=True).tolist() if j != c][: args.top]
            taken = ", ".join(
                f"{names[j]}{' (unseen)' if j in unseen else ''} {100 * row[j].item() / total:.0f}%"
                for j in others
                if row[j] > 0
            )
            print(
                f"  {names[c]}: IoU {100 * counts[c, c].item() / union:.1f}, itself "
                f"{100 * row[c].item() / total:.0f}%; then {taken}"
            )
        if args.summary:
            print("  " + unseen_summary(counts, unseen, things))


if __name__ == "__main__":
    main()
