"""Deliberate protocol, metric and run-identity bugs that the test suite must catch (issue 18, item 7).

Each mutation is an exact text replacement in one source file. For each, the script copies
``src/`` and ``tests/`` to a temporary directory, applies the replacement there (the working tree
is never touched), runs the tests that guard against it, and prints ``killed`` (a test failed) or
``survived`` (every test passed: the bug would go unnoticed). A replacement whose text is not
found stops the script with an error naming it: the list must follow the code.

First the tests of every chosen mutation run on an unmutated copy and must pass (otherwise a
"killed" would mean nothing); each run checks that the copy imports its own ``src``.

Usage: python benchmarks/mutations.py [--only NAME ...] [--list] [--no-baseline]
(run from the repository root with the project's environment; about half an hour on one core)
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
        "if split is not None:\n                    assert_seen_only(batch, split",
        "if split is not None and step == start:\n                    assert_seen_only(batch, split",
        ("tests/data/test_protocol.py",),
    ),
    Mutation(
        "crowd-reaches-training",
        "COCO crowd segments reach training (SeenOnly keeps them as instance targets)",
        "src/zeroseg/data/protocol.py",
        "drop |= segs[:, 3] != 0",
        "drop |= segs[:, 3] < 0",
        ("tests/data/test_coco_crowd.py::test_crowd_regions_reach_no_training_stage",),
    ),
    Mutation(
        "strict-misses-unseen-crowd",
        "the strict protocol keeps an image whose only unseen region is a crowd (255 in the label)",
        "src/zeroseg/data/protocol.py",
        " or bool(np.isin(classes, split.unseen).any())",
        "",
        ("tests/data/test_coco_crowd.py::test_crowd_regions_reach_no_training_stage",),
    ),
    Mutation(
        "zegclip-no-seen-reduction",
        "inductive ZegCLIP without the seen-score reduction at inference",
        "src/zeroseg/methods/zegclip.py",
        # every inference path (sigmoid shift, softmax reduction) reads it through reduction()
        "        return self.cfg.seen_reduction\n",
        "        return 0.0\n",
        (
            "tests/methods/test_zegclip.py::"
            "test_inference_applies_the_seen_reduction_and_the_decoder_reads_the_cls_token",
        ),
    ),
    Mutation(
        "zegclip-rd-without-cls",
        "the relationship descriptor without the CLS token",
        "src/zeroseg/methods/zegclip.py",
        "return self.decoder(patches, cls, ",
        "return self.decoder(patches, torch.ones_like(cls), ",
        (
            "tests/methods/test_zegclip.py::"
            "test_inference_applies_the_seen_reduction_and_the_decoder_reads_the_cls_token",
        ),
    ),
    Mutation(
        "zegclip-rd-without-cls-at-inference",
        "the relationship descriptor without the CLS token on the cached inference path only",
        "src/zeroseg/methods/zegclip.py",
        "return self.decoder.predict(patches, cls, ",
        "return self.decoder.predict(patches, torch.ones_like(cls), ",
        (
            "tests/methods/test_zegclip.py::"
            "test_inference_applies_the_seen_reduction_and_the_decoder_reads_the_cls_token",
        ),
    ),
    Mutation(
        "zs5net-pseudo-on-unseen-gt",
        "ZS5Net pseudo-labels restricted to unseen ground-truth pixels (the released code's leak)",
        "src/zeroseg/methods/zs3net.py",
        # in pseudo_label, which gets the unlabelled images (ImagesOnly hides their labels)
        "        return indices, pseudo\n",
        "        gt = torch.stack([images.dataset[i]['label'] for i in indices])\n"
        "        unseen_gt = torch.isin(gt.long(), torch.tensor(list(self.split.unseen)))\n"
        "        pseudo = torch.where(unseen_gt, pseudo, torch.full_like(pseudo, 255))\n"
        "        return indices, pseudo\n",
        ("tests/methods/test_zs3net.py::test_pseudo_labels_do_not_depend_on_the_ground_truth",),
    ),
    Mutation(
        "zs5net-seen-pseudo-on-seen-gt",
        "ZS5Net's seen pseudo-labels (pseudo_seen) kept only on seen ground-truth pixels",
        "src/zeroseg/methods/zs3net.py",
        "        return indices, pseudo\n",
        "        gt = torch.stack([images.dataset[i]['label'] for i in indices]).long()\n"
        "        seen = torch.tensor(list(self.split.seen))\n"
        "        wrong = torch.isin(pseudo.long(), seen) & ~torch.isin(gt, seen)\n"
        "        pseudo = torch.where(wrong, torch.full_like(pseudo, 255), pseudo)\n"
        "        return indices, pseudo\n",
        (
            "tests/methods/test_zs3net.py::"
            "test_pseudo_label_maps_do_not_depend_on_the_ground_truth[True]",
        ),
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
        "ap-ignores-crowd-flags",
        "the instance evaluator ignores the crowd flags it is given",
        "src/zeroseg/metrics/instance.py",
        "crowd = np.zeros(m, bool) if gt_iscrowd is None else",
        "crowd = np.zeros(m, bool) if True else",
        ("tests/data/test_coco_crowd.py::test_mask_ap_on_the_loader_path_equals_cocoeval",),
    ),
    Mutation(
        "eval-pq-without-crowd-column",
        "the mask-model methods' evaluation gives PQ the segments without their crowd column",
        "src/zeroseg/methods/mask_model.py",
        "pq.process(pan.cpu(), rows, gt_pan, gt_segs)",
        "pq.process(pan.cpu(), rows, gt_pan, gt_segs[:, :3])",
        (
            "tests/data/test_coco_crowd.py::test_the_methods_evaluation_keeps_the_crowd_for_pq_and_ap",
        ),
    ),
    Mutation(
        "eval-ap-without-crowd-flags",
        "the mask-model methods' evaluation gives AP no crowd flags",
        "src/zeroseg/methods/mask_model.py",
        "thing_rows[:, 1], crowd)",
        "thing_rows[:, 1])",
        (
            "tests/data/test_coco_crowd.py::test_the_methods_evaluation_keeps_the_crowd_for_pq_and_ap",
        ),
    ),
    Mutation(
        "pq-fp-exempt-on-any-crowd",
        "PQ exempts an unmatched prediction lying mostly on a crowd of any class (not its own)",
        "src/zeroseg/metrics/panoptic.py",
        "same_crowd = (g_cats[crowd_g][:, None] == p_cats[None, :]) * conf",
        "same_crowd = conf",
        ("tests/data/test_coco_crowd.py", "tests/metrics/test_panoptic.py"),
    ),
    Mutation(
        "pq-crowd-leaves-union",
        "PQ removes a prediction's pixels on a crowd from the IoU union (only void may leave it)",
        "src/zeroseg/metrics/panoptic.py",
        "- inter - on_void[None, :]",
        "- inter - on_void[None, :] - conf[:n_g][real_g & g_crowd, :n_p].sum(0)[None, :]",
        ("tests/data/test_coco_crowd.py", "tests/metrics/test_panoptic.py"),
    ),
    Mutation(
        "calibration-ignores-gamma",
        "the shared calibration rule does not subtract gamma",
        "src/zeroseg/methods/base.py",
        "    return probs - gamma * seen_mask.to(probs).view(1, -1, 1, 1)",
        "    return probs",
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
    Mutation(
        "ausuc-on-val",
        "AUSUC swept on val instead of the reported split",
        "src/zeroseg/runner.py",
        'metrics["ausuc"] = ausuc(test_curve)',
        'metrics["ausuc"] = ausuc(calibration_curve(method, cfg, data.val, split, embed))',
        ("tests/test_e2e.py::test_figures_are_on_test_at_the_gamma_chosen_on_val",),
    ),
    Mutation(
        "stale-stages",
        "a method's code revision left out of its stage keys (older code's stages reused)",
        "src/zeroseg/methods/base.py",
        "**revision_key(self.revision),",
        "",
        (
            "tests/test_stages.py::test_a_method_revision_enters_the_demo_fingerprint_and_its_stage_keys",
        ),
    ),
    Mutation(
        "world-left-out-of-stage-keys",
        "a stage's key names the world by neither path nor content (another world's stage reused)",
        "src/zeroseg/methods/base.py",
        'key = {"data": data, "world": world, "seed": self.cfg.seed}',
        'key = {"data": data, "world": None, "seed": self.cfg.seed}',
        (
            "tests/engine/test_rundir.py::"
            "test_the_same_world_named_another_way_is_the_same_run_and_the_same_stages",
        ),
    ),
    Mutation(
        "dropout-inverted-mask",
        "the CPU dropout keeps the elements it should drop",
        "src/zeroseg/models/dropout.py",
        "keep = (draws >= round(p * _RANGE))",
        "keep = (draws < round(p * _RANGE))",
        ("tests/models/test_dropout.py",),
    ),
    Mutation(
        "projection-norm-cross-term",
        "the projection head's pixel norm drops the bias cross term 2 b . W g",
        "src/zeroseg/models/heads/projection.py",
        "(w.T @ w)[..., None, None], 2.0 * (w.T @ b))",
        "(w.T @ w)[..., None, None])",
        ("tests/models/test_projection_head.py",),
    ),
    Mutation(
        "mmd-batched-pooled",
        "the batched MMD pools the kernel means of all class pairs into one",
        "src/zeroseg/generators/mmd.py",
        "torch.exp(sq / (-2.0 * s)).mean((-2, -1))",
        "torch.exp(sq / (-2.0 * s)).mean()",
        ("tests/generators/test_mmd.py",),
    ),
    Mutation(
        "zegclip-deep-supervision-ignored",
        "ZegCLIP supervises every decoder layer whatever model.deep_supervision says",
        "src/zeroseg/methods/zegclip.py",
        "if not cfg.deep_supervision:",
        "if False:",
        ("tests/methods/test_zegclip.py",),
    ),
    Mutation(
        "neutral-option-always-dropped",
        "an option set away from its neutral default stays out of run identities, so a run with "
        "train.channels_last on would reuse stages trained without it",
        "src/zeroseg/engine/rundir.py",
        "if not (k in NEUTRAL_DEFAULTS and v == NEUTRAL_DEFAULTS[k])",
        "if k not in NEUTRAL_DEFAULTS",
        ("tests/engine/test_rundir.py",),
    ),
    Mutation(
        "channels-last-kept-after-training",
        "a channels-last stage leaves its weights in NHWC, so a freshly trained model is evaluated "
        "with other kernels than the same weights reloaded",
        "src/zeroseg/engine/trainer.py",
        "model.to(memory_format=torch.contiguous_format)",
        "pass",
        ("tests/engine/test_engine.py",),
    ),
    Mutation(
        "seen-fit-reads-raw-train-labels",
        "the training-split fit check reads the training labels directly instead of through the "
        "protocol, so unseen pixels' labels reach a figure",
        "src/zeroseg/runner.py",
        "dataset = SeenOnly(data.train, split, cfg.data.protocol)",
        "dataset = data.train",
        ("tests/test_seen_fit.py",),
    ),
    Mutation(
        "seen-fit-lets-unseen-win",
        "the seen-only fit check lets unseen classes win pixels, so it is no longer a seen-class "
        "figure",
        "src/zeroseg/runner.py",
        'return scores.masked_fill(~seen_mask[None, :, None, None], float("-inf"))',
        "return scores",
        ("tests/test_seen_fit.py",),
    ),
    Mutation(
        "shared-segmenter-ignores-labels",
        "the projection model's shared stage key leaves out which labels it trained on, so the "
        "baseline (or ZS3Net) can load the oracle's weights, trained on unseen labels",
        "src/zeroseg/methods/pixel_projection.py",
        '"classes": classes,',
        '"classes": "seen",',
        (
            "tests/methods/test_zs3net.py::test_zs3net_loads_the_baselines_stage_1_and_nobody_loads_the_oracles",
        ),
    ),
    Mutation(
        "projection-loss-at-stride-2",
        "the projection model's loss back at the logits' stride-2 resolution on nearest-subsampled "
        "labels (revision 1), so labels off that grid train nothing",
        "src/zeroseg/methods/pixel_projection.py",
        "up = bilinear(logits.float(), labels.shape[-2:])",
        "up, labels = logits.float(), F.interpolate(labels[:, None].float(), size=logits.shape[-2:])[:, 0]",
        ("tests/methods/test_pixel_projection.py",),
    ),
    Mutation(
        "zs3net-stage-3-trains-the-shared-layer",
        "ZS3Net's stage 3 (head: projection) also trains the head's last layer and logit scale "
        "although the preset says cosine_train_shared: false",
        "src/zeroseg/methods/zs3net.py",
        "self.train_embeddings, train_shared=self.cfg.cosine_train_shared",
        "self.train_embeddings, train_shared=True",
        ("tests/methods/test_zs3net.py",),
    ),
    Mutation(
        "demo-val-check-loads-test",
        "a --split val demo (a check for a choice) loads the test split it must never read",
        "src/zeroseg/demo.py",
        'data = runner.build_data(plan.first_config, progress=progress, test=split == "test")',
        "data = runner.build_data(plan.first_config, progress=progress)",
        ("tests/test_e2e.py::test_demo_split_val_reports_val_and_never_loads_test",),
    ),
    Mutation(
        "stages-from-any-config",
        "demo --stages-from copies the stages of a run started with another config",
        "src/zeroseg/runner.py",
        "        check_run_dir(\n            reuse_from,",
        "        (lambda *a, **k: None)(\n            reuse_from,",
        ("tests/test_e2e.py::test_stages_from_a_run_of_another_config_is_refused_before_training",),
    ),
    Mutation(
        "indicator-script-loads-test",
        "benchmarks/alignzeg_indicator.py (a val-only diagnostic) loads the test split",
        "benchmarks/alignzeg_indicator.py",
        "data = runner.build_data(cfg, progress=False, test=False)",
        "data = runner.build_data(cfg, progress=False)",
        ("tests/test_alignzeg_indicator_script.py",),
    ),
    Mutation(
        "pooled-weights-swapped",
        "the pooled classifier's ensemble weighs the frozen foundation by alpha for unseen classes "
        "and beta for seen ones",
        "src/zeroseg/models/heads/mask_pooling.py",
        "weight = torch.where(seen_mask.to(probs.device), alpha, beta)",
        "weight = torch.where(seen_mask.to(probs.device), beta, alpha)",
        ("tests/models/test_mask_pooling.py::test_geometric_ensemble_by_hand",),
    ),
    Mutation(
        "pooled-in-stage-key",
        "model.pooled (inference only) enters AlignZeg's stage key, so alignzeg-pooled retrains",
        "src/zeroseg/methods/mask_model.py",
        'INFERENCE_FIELDS = ("object_threshold", "overlap_threshold", "topk", "pooled")',
        'INFERENCE_FIELDS = ("object_threshold", "overlap_threshold", "topk")',
        ("tests/models/test_mask_pooling.py::test_pooled_is_left_out_of_the_trained_stage_key",),
    ),
)


def _copy_tree(dest: Path) -> None:
    """Copies what the tests read (``src/``, ``tests/``, the ``benchmarks/`` scripts some tests
    load, ``pyproject.toml``) to ``dest``."""
    for part in ("src", "tests", "benchmarks"):
        shutil.copytree(ROOT / part, dest / part, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", dest / "pyproject.toml")


def _pytest(copy: Path, tests: tuple[str, ...]) -> tuple[int, str, float]:
    """Runs ``tests`` in ``copy`` against the copy's own ``src``: (exit code, output, seconds)."""
    # COLUMNS: wide enough that pytest's summary line keeps the failure's message
    env = {**os.environ, "PYTHONPATH": str(copy / "src"), "OMP_NUM_THREADS": "1", "COLUMNS": "400"}
    # the package must come from the copy, not from an installed or the working tree's src:
    # otherwise every mutation would "survive" (or the baseline would test the wrong code)
    where = subprocess.run(
        [sys.executable, "-c", "import zeroseg; print(zeroseg.__file__)"],
        cwd=copy,
        env=env,
        stdout=subprocess.PIPE,
        text=True,
        check=True,
    ).stdout.strip()
    if not Path(where).resolve().is_relative_to((copy / "src").resolve()):
        raise SystemExit(f"the copy in {copy} imports zeroseg from {where}, not its own src/")
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *tests],
        cwd=copy,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    return proc.returncode, proc.stdout, time.perf_counter() - t0


def baseline(chosen: list[Mutation]) -> float:
    """Runs every chosen mutation's tests on an unmutated copy; they must pass, or a "killed"
    would mean nothing (a test that fails anyway kills every mutation). Returns seconds."""
    tests = tuple(dict.fromkeys(t for m in chosen for t in m.tests))
    with tempfile.TemporaryDirectory(prefix="mutation-baseline-") as tmp:
        _copy_tree(Path(tmp))
        code, out, seconds = _pytest(Path(tmp), tests)
    if code != 0:
        tail = "\n".join(out.splitlines()[-15:])
        raise SystemExit(f"the unmutated copy fails its tests (pytest exit {code}):\n{tail}")
    return seconds


def _first_failure(out: str) -> str:
    """pytest's first ``FAILED``/``ERROR`` summary line, shortened: which test caught the bug
    and with what (an AssertionError, or an error the bug raised)."""
    for line in out.splitlines():
        if line.startswith(("FAILED ", "ERROR ")):
            line = line.split(" ", 1)[1].replace("tests/", "", 1)
            return line if len(line) <= 150 else line[:147] + "..."
    return "?"


def stale(mutations) -> list[str]:
    """What of ``mutations`` no longer follows the code: a text to replace that does not occur
    exactly once in its file, or a test file that does not exist (tests/test_mutations.py runs
    this in the suite, so a change that moves a mutated line is caught at once)."""
    out = []
    for m in mutations:
        path = ROOT / m.path
        count = path.read_text().count(m.old) if path.is_file() else 0
        if count != 1:
            out.append(f"{m.name}: the text to replace occurs {count} times in {m.path}")
        for test in m.tests:
            if not (ROOT / test.split("::")[0]).is_file():
                out.append(f"{m.name}: no test file {test.split('::')[0]}")
    return out


def run(m: Mutation) -> tuple[str, float, str]:
    """Applies ``m`` to a fresh copy and runs its tests: ('killed' | 'survived', seconds, the
    first failing test)."""
    with tempfile.TemporaryDirectory(prefix=f"mutation-{m.name}-") as tmp:
        copy = Path(tmp)
        _copy_tree(copy)
        target = copy / m.path
        text = target.read_text()
        if text.count(m.old) != 1:
            raise SystemExit(
                f"mutation {m.name}: the text to replace occurs {text.count(m.old)} times in "
                f"{m.path} (expected once); update benchmarks/mutations.py"
            )
        target.write_text(text.replace(m.old, m.new))
        code, out, seconds = _pytest(copy, m.tests)
        if code not in (0, 1):  # 1: tests failed; else a collection or usage error
            tail = "\n".join(out.splitlines()[-15:])
            raise SystemExit(f"mutation {m.name}: pytest exited with {code}:\n{tail}")
        if code == 0:
            return "survived", seconds, ""
        return "killed", seconds, _first_failure(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", metavar="NAME", help="run these mutations only")
    parser.add_argument("--list", action="store_true", help="list the mutations and exit")
    parser.add_argument(
        "--no-baseline", action="store_true", help="skip the run of the tests on an unmutated copy"
    )
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
    problems = stale(chosen)
    if problems:  # before any test runs, not half an hour in
        raise SystemExit("update benchmarks/mutations.py:\n  " + "\n  ".join(problems))
    if not args.no_baseline:
        seconds = baseline(chosen)
        print(f"{'passed':8s} {'(baseline, unmutated)':36s} {seconds:6.0f}s", flush=True)
    survived = 0
    for m in chosen:
        verdict, seconds, by = run(m)
        survived += verdict == "survived"
        print(f"{verdict:8s} {m.name:36s} {seconds:6.0f}s  {m.what}", flush=True)
        if by:
            print(f"{'':8s} {'':36s} {'':7s}  by {by}", flush=True)
    print(f"{len(chosen) - survived} of {len(chosen)} killed")
    return 1 if survived else 0


if __name__ == "__main__":
    raise SystemExit(main())
