"""Where do an unseen class's pixels go? (docs/methods.md, AlignZeg: the mask family's seed spread)

Runs a trained model on the ``val`` split (never ``test``) at the gamma the shared calibration
rule chooses there (as every report does) and prints, for each unseen class, the share of its
labelled pixels predicted as itself and the classes that take most of the rest (seen or unseen),
with the class's IoU. Setting two runs of one method side by side (two seeds) shows whether a
class lost in one seed went to a seen class, to another unseen class or to a ground.

Usage: python benchmarks/unseen_confusion.py RUN [RUN ...] [--top 3]
(RUN: a run directory or checkpoint, e.g. ``runs/dev-check/seed-1/runs/mask-projection-<hash>``.)
"""

from __future__ import annotations

import argparse

import torch

from zeroseg import runner
from zeroseg.data.loader import iterate_eval
from zeroseg.metrics.calibration import choose_gamma


def confusion(run: str) -> tuple[torch.Tensor, list[str], list[int], float]:
    """(K, K) pixel counts (rows: ground truth, columns: prediction) of ``run`` on ``val`` at the
    calibration gamma chosen there; the class names, the unseen positions and that gamma."""
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
    return counts, list(split.names), sorted(split.unseen), gamma


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--top", type=int, default=3, help="other classes shown per unseen class")
    args = parser.parse_args()
    for run in args.runs:
        counts, names, unseen, gamma = confusion(run)
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


if __name__ == "__main__":
    main()
