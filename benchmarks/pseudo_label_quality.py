"""How right are ZegCLIP's self-training pseudo-labels? (docs/methods.md, ZegCLIP: self-training)

``zegclip-st`` fine-tunes the inductive ``zegclip`` model on the unlabelled training images with
the pseudo-labels the model itself gives them (``ZegCLIPST.pseudo_labels``: each pixel's best
class over all names after the seen-score reduction, the top ``pseudo_percent`` % most confident
pixels of each class per batch). Whether that helps depends on how often those labels are right,
which a training image cannot tell: where the unseen pixels of a training image are is the
oracle's alone to read. So this makes the same pseudo-labels of the ``val`` images (never
``test``), in batches of the self-training stage's size, with the model self-training starts
from (the seed's ``zegclip`` row, whose inductive stage ``zegclip-st`` shares) or, with
``--trained``, the self-trained model, and compares them with ``val``'s labels.

Per seed it prints, for the pixels pseudo-labelled as an unseen class: the share that are that
class (precision), that are a seen class, and that are another unseen class; the share of the
unseen classes' labelled pixels that got their own class (recall); and the precision of the seen
pseudo-labels (``self_training.pseudo_seen``). Then mean ± std over the seeds. ``--per-class``
adds each unseen class's precision and recall, summed over the seeds.

Usage: python benchmarks/pseudo_label_quality.py RUN [RUN ...] [--trained] [--per-class]
(RUN: the ``--out`` of ``zeroseg demo --seeds`` with the rows ``zegclip`` and ``zegclip-st``,
e.g. ``runs/b44/third-zeg``.)
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))

from full_split_eval import model_dir, seed_dirs  # noqa: E402  (this directory)
from unseen_confusion import unseen_shares  # noqa: E402

from zeroseg import runner  # noqa: E402
from zeroseg.data.loader import iterate_eval  # noqa: E402


def _inductive(cfg) -> tuple:
    """The settings of the stage ``zegclip`` and ``zegclip-st`` share: all but self-training."""
    return {k: v for k, v in cfg.model.items() if k != "self_training"}, cfg.data, cfg.train


def pseudo_confusion(seed: Path, *, trained: bool = False) -> tuple[torch.Tensor, dict]:
    """(K, K) pixel counts of one seed's ``val`` pseudo-labels (rows: pseudo-label, columns: the
    true class), and the true class's labelled pixel counts (K,); with the split."""
    method, cfg, split, _ = runner.load_model(model_dir(seed, "zegclip-st"))
    if not trained:  # the inductive model self-training starts from
        start, start_cfg, _, _ = runner.load_model(model_dir(seed, "zegclip"))
        if _inductive(start_cfg) != _inductive(cfg):
            raise SystemExit(f"{seed}: the zegclip row is not zegclip-st's starting point")
        method.load_state_dict(start.state_dict())
    data = runner.build_data(cfg, progress=False, test=False)
    embed = runner.Embedder(cfg.text, world=data.world)
    emb, seen = embed(split.names), split.seen_mask()
    k, ignore = split.num_classes, split.ignore_index
    counts = torch.zeros(k, k, dtype=torch.long)
    labelled = torch.zeros(k, dtype=torch.long)
    stride = method.cfg.loss_stride  # the method's typed config
    with torch.no_grad():
        for batch in iterate_eval(data.val, method.cfg.self_training.train.batch_size):
            images, label = batch["image"], batch["label"].long()
            size = (images.shape[-2] // stride, images.shape[-1] // stride)
            pseudo = method.pseudo_labels(images, emb, seen, size)  # as the training step
            pseudo = F.interpolate(pseudo[:, None].float(), size=label.shape[-2:], mode="nearest")
            pseudo = pseudo[:, 0].long()
            known = label != ignore
            labelled += torch.bincount(label[known], minlength=k)
            both = known & (pseudo != ignore)
            counts += torch.bincount(pseudo[both] * k + label[both], minlength=k * k).view(k, k)
    return counts, {"labelled": labelled, "split": split}


def summary(counts: torch.Tensor, labelled: torch.Tensor, unseen: list[int]) -> dict[str, float]:
    """Percent figures of one seed's pseudo-labels (see the module's docstring)."""
    nan = float("nan")
    as_unseen = unseen_shares(counts, unseen, unseen)  # rows: pseudo-labelled as an unseen class
    seen = [c for c in range(counts.shape[0]) if c not in set(unseen)]
    as_seen = unseen_shares(counts, seen, seen)  # the same for the seen pseudo-labels
    right = counts.diagonal()[list(unseen)].sum().item()
    return {
        "unseen_precision": as_unseen["itself"] if as_unseen else nan,
        "unseen_wrong_seen": as_unseen["seen"] if as_unseen else nan,
        "unseen_wrong_unseen": as_unseen["other"] if as_unseen else nan,
        "unseen_recall": 100 * right / labelled[list(unseen)].sum().item(),
        "seen_precision": as_seen["itself"] if as_seen else nan,
    }


COLUMNS = (
    ("unseen_precision", "unseen: right"),
    ("unseen_wrong_seen", "a seen class"),
    ("unseen_wrong_unseen", "another unseen"),
    ("unseen_recall", "unseen recall"),
    ("seen_precision", "seen: right"),
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--trained", action="store_true", help="the self-trained model's labels")
    parser.add_argument("--per-class", action="store_true", help="each unseen class, all seeds")
    args = parser.parse_args(argv)
    model = "the self-trained model" if args.trained else "the model self-training starts from"
    print(f"ZegCLIP-ST's pseudo-labels of `val` images by {model}, percent of pixels")
    print("| run | seed | " + " | ".join(name for _, name in COLUMNS) + " |")
    print("|---|---|" + "---:|" * len(COLUMNS))
    for run in args.runs:
        rows, split = [], None
        summed_counts, summed_labelled = 0, 0
        for seed in seed_dirs(run):
            counts, info = pseudo_confusion(seed, trained=args.trained)
            split = info["split"]
            figures = summary(counts, info["labelled"], sorted(split.unseen))
            rows.append(figures)
            summed_counts = summed_counts + counts
            summed_labelled = summed_labelled + info["labelled"]
            cells = " | ".join(f"{figures[key]:.1f}" for key, _ in COLUMNS)
            print(f"| {run} | {seed.name.removeprefix('seed-')} | {cells} |")
        spread = " | ".join(
            f"{statistics.mean(r[key] for r in rows):.1f} ± "
            f"{statistics.stdev(r[key] for r in rows) if len(rows) > 1 else 0.0:.1f}"
            for key, _ in COLUMNS
        )
        print(f"| {run} | mean ± std | {spread} |")
        if args.per_class:
            counts, labelled = summed_counts, summed_labelled
            for c in sorted(split.unseen):
                pseudo = counts[c].sum().item()
                right = counts[c, c].item()
                precision = f"{100 * right / pseudo:.1f}" if pseudo else "-"
                recall = f"{100 * right / labelled[c].item():.1f}" if labelled[c] else "-"
                print(f"    {split.names[c]}: right {precision}%, recall {recall}%")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
