"""Deliberate protocol and metric bugs that the test suite must catch (issue 18, item 7).

Each mutation is an exact text replacement in one source file. For each, the script copies
``src/`` and ``tests/`` to a temporary directory, applies the replacement there (the working tree
is never touched), runs the tests that guard against it, and prints ``killed`` (a test failed) or
``survived`` (every test passed: the bug would go unnoticed). A replacement whose text is not
found stops the script with an error naming it: the list must follow the code.

Usage: python benchmarks/mutations.py [--only NAME ...] [--list]
(run from the repository root with the project's environment; about 15-20 minutes on one core)
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Mutation:
    name: str
    what: str  # the bug, in words
    path: str  # file under the repository root
    old: str  # exact text to replace (must occur exactly once)
    new: str
    tests: tuple[str, ...]  # pytest node ids or files that must catch it


MUTATIONS = (
    Mutation(
        "guard-first-image",
        "the protocol guard checks only the first image of a batch",
        "src/zeroseg/data/protocol.py",
        "if label is not None and split.contains_unseen(label):",
        "if label is not None and split.contains_unseen(label[:1]):",
        ("tests/data/test_protocol.py",),
    ),
    Mutation(
        "guard-ignores-segments",
        "the protocol guard ignores panoptic segments",
        "src/zeroseg/data/protocol.py",
        'segs = batch.get("segments")\n',
        "segs = None\n",
        ("tests/data/test_protocol.py",),
    ),
    Mutation(
        "guard-first-step",
        "the protocol guard checks only the first step",
        "src/zeroseg/engine/trainer.py",
        "            if split is not None:\n                assert_seen_only(",
        "            if split is not None and step == start:\n                assert_seen_only(",
        ("tests/data/test_protocol.py",),
    ),
    Mutation(
        "zegclip-no-seen-reduction",
        "inductive ZegCLIP without the seen-score reduction at inference",
        "src/zeroseg/methods/zegclip.py",
        "return reduce_seen(logits, seen_mask, self.reduction(), sigmoid=self.cfg.nel)",
        "return reduce_seen(logits, seen_mask, 0.0, sigmoid=self.cfg.nel)",
        (
            "tests/methods/test_zegclip.py::"
            "test_inference_applies_the_seen_reduction_and_the_decoder_reads_the_cls_token",
        ),
    ),
    Mutation(
        "zegclip-rd-without-cls",
        "the relationship descriptor without the CLS token",
        "src/zeroseg/methods/zegclip.py",
        "return self.decoder(patches, cls, F.normalize(class_embeddings.float(), dim=-1))",
        "return self.decoder(patches, torch.ones_like(cls), "
        "F.normalize(class_embeddings.float(), dim=-1))",
        (
            "tests/methods/test_zegclip.py::"
            "test_inference_applies_the_seen_reduction_and_the_decoder_reads_the_cls_token",
        ),
    ),
    Mutation(
        "zs5net-pseudo-on-unseen-gt",
        "ZS5Net pseudo-labels restricted to unseen ground-truth pixels (the released code's leak)",
        "src/zeroseg/methods/zs3net.py",
        "        indices, pseudo = self.pseudo_label(ctx.train_images, device=ctx.device, amp=cfg.amp)\n",
        "        indices, pseudo = self.pseudo_label(ctx.train_images, device=ctx.device, amp=cfg.amp)\n"
        "        gt = torch.stack([ctx.train_images.dataset[i]['label'] for i in indices])\n"
        "        unseen_gt = torch.isin(gt, torch.tensor(list(self.split.unseen)))\n"
        "        pseudo = torch.where(unseen_gt, pseudo, torch.full_like(pseudo, 255))\n",
        ("tests/methods/test_zs3net.py::test_pseudo_labels_do_not_depend_on_the_ground_truth",),
    ),
    Mutation(
        "iou-predicted-absent-undefined",
        "IoU undefined for classes predicted but absent from the ground truth",
        "src/zeroseg/metrics/semantic.py",
        'iou = torch.where(denom > 0, tp / denom.clamp(min=1), torch.full_like(tp, float("nan")))',
        "iou = torch.where(conf.sum(1) > 0, tp / denom.clamp(min=1), "
        'torch.full_like(tp, float("nan")))',
        ("tests/metrics/test_semantic.py",),
    ),
    Mutation(
        "zs5net-all-class-seen-term",
        "ZS5Net's supervised self-training term over all classes (pushes unseen scores down "
        "everywhere but the ignored pixels)",
        "src/zeroseg/methods/zs3net.py",
        "out[:n].index_select(1, seen_idx), lookup[seen_t], ignore_index=ignore",
        "out[:n], seen_t, ignore_index=ignore",
        (
            "tests/methods/test_zs3net.py::test_self_training_never_learns_where_the_ignored_pixels_are",
        ),
    ),
    Mutation(
        "zegclip-st-all-class-seen-term",
        "ZegCLIP-ST's supervised term over all class names",
        "src/zeroseg/methods/zegclip.py",
        "sup = model.loss(images, labels, seen_emb)",
        'sup = model.loss(images, batch["label"].to(ctx.device).clamp(0, 255), all_emb)',
        (
            "tests/methods/test_zegclip.py::"
            "test_self_training_pseudo_labels_come_only_from_unlabelled_images",
        ),
    ),
    Mutation(
        "coco-crowd-dropped",
        "the COCO panoptic loader drops crowd segments (void, no flag)",
        "src/zeroseg/data/real/coco_panoptic.py",
        '            crowd = bool(seg.get("iscrowd", 0))\n',
        '            crowd = bool(seg.get("iscrowd", 0))\n            if crowd:\n'
        "                continue\n",
        ("tests/data/test_coco_crowd.py",),
    ),
    Mutation(
        "ap-without-crowd-flags",
        "mask AP evaluation without crowd flags",
        "src/zeroseg/metrics/panoptic.py",
        "    return rows[:, 3] != 0\n",
        "    return np.zeros(len(rows), dtype=bool)\n",
        ("tests/data/test_coco_crowd.py",),
    ),
    Mutation(
        "calibration-ignores-gamma",
        "the shared calibration rule does not subtract gamma",
        "src/zeroseg/methods/base.py",
        "seen_mask)\n        return probs - gamma * seen_mask.to(probs).view(1, -1, 1, 1)",
        "seen_mask)\n        return probs",
        ("tests/metrics/test_calibration.py",),
    ),
    Mutation(
        "calibration-tuned-on-test",
        "gamma chosen on the reported split instead of val",
        "src/zeroseg/runner.py",
        "val_curve = calibration_curve(method, cfg, data.val, split, embed, progress=progress)",
        "val_curve = calibration_curve(method, cfg, dataset, split, embed, progress=progress)",
        ("tests/test_e2e.py::test_figures_are_on_test_at_the_gamma_chosen_on_val",),
    ),
)


def run(m: Mutation) -> tuple[str, float]:
    """Applies ``m`` to a fresh copy and runs its tests: ('killed' | 'survived', seconds)."""
    with tempfile.TemporaryDirectory(prefix=f"mutation-{m.name}-") as tmp:
        copy = Path(tmp)
        for part in ("src", "tests"):
            shutil.copytree(ROOT / part, copy / part, ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copy(ROOT / "pyproject.toml", copy / "pyproject.toml")
        target = copy / m.path
        text = target.read_text()
        if text.count(m.old) != 1:
            raise SystemExit(
                f"mutation {m.name}: the text to replace occurs {text.count(m.old)} times in "
                f"{m.path} (expected once); update benchmarks/mutations.py"
            )
        target.write_text(text.replace(m.old, m.new))
        env = {**os.environ, "PYTHONPATH": str(copy / "src"), "OMP_NUM_THREADS": "1"}
        t0 = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *m.tests],
            cwd=copy,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        seconds = time.perf_counter() - t0
        if proc.returncode not in (0, 1):  # 1: tests failed; else a collection or usage error
            tail = "\n".join(proc.stdout.splitlines()[-15:])
            raise SystemExit(f"mutation {m.name}: pytest exited with {proc.returncode}:\n{tail}")
        return ("survived" if proc.returncode == 0 else "killed"), seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", metavar="NAME", help="run these mutations only")
    parser.add_argument("--list", action="store_true", help="list the mutations and exit")
    args = parser.parse_args(argv)
    chosen = list(MUTATIONS)
    if args.only:
        names = {m.name for m in MUTATIONS}
        unknown = sorted(set(args.only) - names)
        if unknown:
            raise SystemExit(f"unknown mutations {unknown}; valid: {sorted(names)}")
        chosen = [m for m in MUTATIONS if m.name in args.only]
    if args.list:
        for m in chosen:
            print(f"{m.name}: {m.what}")
        return 0
    survived = 0
    for m in chosen:
        verdict, seconds = run(m)
        survived += verdict == "survived"
        print(f"{verdict:8s} {m.name:32s} {seconds:6.0f}s  {m.what}", flush=True)
    print(f"{len(chosen) - survived} of {len(chosen)} killed")
    return 1 if survived else 0


if __name__ == "__main__":
    raise SystemExit(main())
