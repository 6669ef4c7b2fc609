"""Where do an unseen class's pixels go? (docs/methods.md, AlignZeg: the mask family's seed spread)

Runs a trained model on the ``val`` split (never ``test``) at the gamma the shared calibration
rule chooses there (as every report does) and prints, for each unseen class, the share of its
labelled pixels predicted as itself and the classes that take most of the rest (seen or unseen),
with the class's IoU. Setting two runs of one method side by side (two seeds) shows whether a
class lost in one seed went to a seen class, to another unseen class or to a ground.

``--summary`` also prints, over all unseen classes' labelled pixels together (and the unseen
things' and the unseen stuff's apart), the share predicted as their own class, as a seen class
and as another unseen class; given several runs (one row's seeds), each share's mean ± std.

``--logit-scale S`` evaluates a mask-family run with its query classifier's learned logit scale
replaced by S (inference only; the rule's gamma is chosen again at that scale): whether the
classifier's sharpness, rather than its embeddings, decides where the unseen pixels go.

Usage: python benchmarks/unseen_confusion.py RUN [RUN ...] [--top 3] [--summary] [--logit-scale S]
(RUN: a run directory or checkpoint, e.g. ``runs/dev-check/seed-1/runs/mask-projection-<hash>``.)
"""

from __future__ import annotations

import argparse
import math
import statistics
from collections.abc import Sequence

import torch

from zeroseg import runner
from zeroseg.data.loader import iterate_eval
from zeroseg.metrics.calibration import choose_gamma


def confusion(
    run: str, logit_scale: float | None = None
) -> tuple[torch.Tensor, list[str], list[int], float, tuple[int, ...]]:
    """(K, K) pixel counts (rows: ground truth, columns: prediction) of ``run`` on ``val`` at the
    calibration gamma chosen there; the class names, the unseen positions, that gamma and the
    split's thing classes. ``logit_scale``: the query classifier's scale set to it first."""
    method, cfg, split, _ = runner.load_model(run)
    if logit_scale is not None:
        set_logit_scale(method, logit_scale, run)
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


def set_logit_scale(method, scale: float, run: str) -> None:
    """Replace a mask-family model's learned query-classifier scale (``classifier.logit_scale``,
    stored as a log) by ``scale``."""
    classifier = getattr(getattr(method, "model", None), "classifier", None)
    if not hasattr(classifier, "logit_scale"):
        raise SystemExit(f"--logit-scale: {run} has no query classifier with a logit scale")
    if not 0 < scale <= 100:  # TextClassifier.scale() clamps at 100: a larger one would not act
        raise SystemExit(f"--logit-scale must be in (0, 100] (the classifier's cap), got {scale}")
    with torch.no_grad():
        classifier.logit_scale.fill_(math.log(scale))


def unseen_groups(unseen: Sequence[int], things: Sequence[int] = ()) -> list[tuple[str, list[int]]]:
    """All unseen classes, then, with ``things`` (the split's countable classes), the unseen
    things and the unseen stuff (ShapeWorld's grounds) apart: stuff's large regions otherwise
    dominate the total."""
    groups = [("all unseen", list(unseen))]
    if things:
        groups += [
            ("unseen things", [c for c in unseen if c in things]),
            ("unseen stuff", [c for c in unseen if c not in things]),
        ]
    return groups


def unseen_shares(
    counts: torch.Tensor, members: Sequence[int], unseen: Sequence[int]
) -> dict[str, float] | None:
    """Of the pixels in the rows ``members`` of ``counts`` together, the percent in the same
    class's column (``itself``), in a seen class's (``seen``) and in another unseen class's
    (``other``); None when those rows are empty. With rows = truth (this script) that is where
    the unseen classes' pixels go; with rows = a pseudo-label
    (``benchmarks/pseudo_label_quality.py``) what the pixels given an unseen class really are."""
    k = counts.shape[0]
    group = torch.zeros(k, dtype=torch.bool)
    group[list(members)] = True
    is_unseen = torch.zeros(k, dtype=torch.bool)
    is_unseen[list(unseen)] = True
    rows = counts[group].double()
    total = rows.sum().item()
    if not total:
        return None
    own = counts.diagonal()[group].sum().item()
    to_seen = rows[:, ~is_unseen].sum().item()
    return {
        "itself": 100 * own / total,
        "seen": 100 * to_seen / total,
        "other": 100 * (total - own - to_seen) / total,
    }


def _shares_text(name: str, shares: dict[str, float] | None, spread: dict | None = None) -> str:
    if shares is None:
        return f"{name}: no labelled pixel in val"

    def cell(key: str) -> str:
        return f"{shares[key]:.1f}" + (f" ± {spread[key]:.1f}" if spread else "") + "%"

    return (
        f"{name}: itself {cell('itself')}, a seen class {cell('seen')}, "
        f"another unseen {cell('other')}"
    )


def group_shares(
    counts: torch.Tensor, unseen: list[int], things: Sequence[int] = ()
) -> dict[str, dict[str, float] | None]:
    """``{group: unseen_shares(...)}`` for each of :func:`unseen_groups`."""
    return {name: unseen_shares(counts, m, unseen) for name, m in unseen_groups(unseen, things)}


def summary_line(shares: dict[str, dict[str, float] | None]) -> str:
    """:func:`group_shares` as one line."""
    return "; ".join(_shares_text(name, s) for name, s in shares.items())


def shares_spread(summaries: list[dict[str, dict[str, float] | None]]) -> list[str]:
    """Per group of :func:`unseen_groups`, each share's mean ± sample std over several runs'
    ``{group: unseen_shares(...)}`` (one row's seeds); a group some run lacks is said so."""
    lines = []
    for name in summaries[0]:
        values = [s.get(name) for s in summaries]
        if any(v is None for v in values):
            lines.append(f"{name}: not in every run")
            continue
        mean = {key: statistics.mean(v[key] for v in values) for key in values[0]}
        std = {key: statistics.stdev(v[key] for v in values) for key in values[0]}
        lines.append(_shares_text(name, mean, std))
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--top", type=int, default=3, help="other classes shown per unseen class")
    parser.add_argument("--summary", action="store_true", help="all unseen pixels together")
    parser.add_argument(
        "--logit-scale",
        type=float,
        help="a mask-family run's query-classifier scale replaced by this (inference only)",
    )
    args = parser.parse_args()
    summaries: list[dict] = []
    for run in args.runs:
        counts, names, unseen, gamma, things = confusion(run, args.logit_scale)
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
            summaries.append(group_shares(counts, unseen, things))
            print("  " + summary_line(summaries[-1]))
    if len(summaries) > 1:  # the runs as seeds of one row
        print(f"mean ± std over the {len(summaries)} runs")
        for line in shares_spread(summaries):
            print("  " + line)


if __name__ == "__main__":
    main()
