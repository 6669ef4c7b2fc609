"""``zeroseg``: a thin command-line shell over the library.

zeroseg demo [--world FILE] [--methods ...] [--out DIR] [--quick]
zeroseg train CONFIG [--set key=value ...] [--out DIR]
zeroseg eval CKPT [--world FILE] [--set ...]
zeroseg predict CKPT IMAGE... --classes "a,b,c" [--out DIR]
zeroseg bench [--methods ...]
zeroseg serve [RUN_DIR_OR_CHECKPOINT ...] [--host 127.0.0.1] [--port 7860]   (a web page)
zeroseg world FILE [--preview PNG] [--protocols]
zeroseg pretrain [CONFIG] [--set ...]   (the ShapeWorld stage-0 encoder and its diagnostics)
zeroseg pretrain foundation [--exclude WORLD] [--out DIR] [--ship]   (the shipped foundation)
zeroseg data check DATASET ROOT | zeroseg data prepare DATASET ROOT
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from functools import partial
from pathlib import Path


def _setup_env() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    default_format = warnings.formatwarning

    def fmt(message, category, filename, lineno, line=None):
        # zeroseg's own warnings (e.g. a spec's unseen class no seen class explains) are for the
        # user: one line, without the source location.
        if category.__module__.startswith("zeroseg"):
            return f"zeroseg: warning: {message}\n"
        return default_format(message, category, filename, lineno, line)

    warnings.formatwarning = fmt


def _positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (argparse turns the ValueError into a one-line error)."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text}")
    return value


def cmd_demo(args) -> int:
    from zeroseg.demo import ABLATIONS, DEFAULT_METHODS, run_demo, run_seeds

    methods = list(args.methods or DEFAULT_METHODS) + (list(ABLATIONS) if args.ablations else [])
    run = run_demo if not args.seeds else partial(run_seeds, seeds=args.seeds)
    run(
        out=Path(args.out),
        world=args.world,
        methods=methods,
        quick=args.quick,
        overrides=args.set or [],
        progress=not args.no_progress,
        refine=args.refine or [],
        refine_on=args.refine_on,
        jobs=args.jobs,
        split=args.split,
        stages_from=None if args.stages_from is None else Path(args.stages_from),
    )
    return 0


def cmd_train(args) -> int:
    from zeroseg import runner
    from zeroseg.config import describe_source

    cfg = runner.load_experiment(args.config, args.set)
    runner.check_config(cfg, where=describe_source(args.config, args.set))  # model.* too
    name = cfg.name or cfg.method
    out = Path(args.out) / name
    result = runner.train(cfg, out, progress=not args.no_progress, overwrite=args.overwrite)
    # gamma chosen on val, figures on --split: test, or val for a choice (test is then never read)
    metrics, spi, _ = runner.evaluate_protocol(
        result.method,
        cfg,
        result.data,
        result.embed,
        eval_split=args.split,
        progress=not args.no_progress,
    )
    metrics.update(eval_split=args.split, tuned_on="val", protocol_detail=result.protocol_detail)
    summary = {k: v for k, v in metrics.items() if k not in ("per_class_iou", "calibration_curve")}
    summary.update(train_seconds=result.train_seconds, infer_ms_per_image=spi * 1000)
    from zeroseg.report import write_text_atomic

    name = "metrics.json" if args.split == "test" else "metrics-val.json"
    write_text_atomic(out / name, json.dumps(metrics, indent=2))
    print(json.dumps(summary, indent=2))
    print(f"model: {out / 'model.safetensors'}")
    return 0


def cmd_eval(args) -> int:
    from zeroseg import runner

    seen_only = args.seen_only or args.split == "train"  # train has no unseen side to report
    if seen_only and args.refine:
        raise ValueError("--refine is not available with --seen-only (or --split train)")
    if not seen_only and args.limit is not None:
        raise ValueError("--limit is for --seen-only; use --set data.val_limit=N for val and test")
    if args.image_confusions and seen_only:
        raise ValueError("--image-confusions is for the calibrated evaluation, not --seen-only")
    if args.image_confusions and Path(args.image_confusions).exists():
        raise ValueError(f"--image-confusions: {args.image_confusions} exists; name a new file")

    sets = list(args.set or []) + ([f"data.world={args.world}"] if args.world else [])
    method, cfg, split, _ = runner.load_model(args.checkpoint, device=args.device, overrides=sets)
    data = runner.build_data(cfg, progress=not args.no_progress)
    if data.split.names != split.names:
        raise SystemExit(
            f"the checkpoint was trained on {split.num_classes} classes {list(split.names)[:5]}..., "
            f"the evaluation data has {data.split.num_classes}: use the same world or dataset"
        )
    embed = runner.Embedder(cfg.text, world=data.world)
    if seen_only:
        out = runner.evaluate_seen(
            method,
            cfg,
            data,
            embed,
            eval_split=args.split,
            limit=args.limit,
            progress=not args.no_progress,
        )
        per_class = out.pop("per_class_iou")
        out.update(eval_split=args.split, vocabulary="seen")
        if args.per_class:
            out["per_class_iou"] = {k: v for k, v in per_class.items() if v is not None}
        print(json.dumps(out, indent=2))
        return 0
    post = None
    if args.refine:
        from zeroseg.demo import build_refinement

        post = build_refinement(args.refine)
    confusions = None
    if args.image_confusions:
        from zeroseg.metrics.bootstrap import ImageConfusions

        confusions = ImageConfusions(data.split.num_classes, data.split.ignore_index)
    # gamma of the shared calibration rule chosen on val; the figures on --split (test)
    metrics, spi, _ = runner.evaluate_protocol(
        method,
        cfg,
        data,
        embed,
        eval_split=args.split,
        progress=not args.no_progress,
        post=post,
        image_confusions=confusions,
    )
    if confusions is not None:
        from zeroseg.metrics.bootstrap import save_image_confusions

        split = data.split
        save_image_confusions(
            Path(args.image_confusions),
            {method.name: confusions.stacked()},
            names=split.names,
            seen=split.seen,
            unseen=split.unseen,
            split=args.split,
        )
    out = {k: v for k, v in metrics.items() if k not in ("per_class_iou", "calibration_curve")}
    out.update(eval_split=args.split, tuned_on="val", infer_ms_per_image=spi * 1000)
    if args.per_class:
        out["per_class_iou"] = metrics["per_class_iou"]
    # Segment-producing methods (PADing, AlignZeg) add PQ and AP50 on panoptic data (test).
    if args.split == "test" and len(data.test) and "panoptic" in data.test[0]:
        out.update(method.extra_metrics(cfg, data, embed, progress=not args.no_progress))
    print(json.dumps(out, indent=2))
    return 0


def output_stems(images: list[str]) -> list[str]:
    """One distinct output stem per input: the file stem, or stem + extension where two inputs
    share a stem (``a.png a.jpg`` -> ``a_png``, ``a_jpg``).

    Raises:
        ImageError: two inputs that still collide (the same file name in two directories).
    """
    from zeroseg.data.io import ImageError

    paths = [Path(p) for p in images]
    stems = [p.stem for p in paths]
    out = [
        f"{p.stem}_{p.suffix.lstrip('.')}" if stems.count(p.stem) > 1 and p.suffix else p.stem
        for p in paths
    ]
    for i, name in enumerate(out):
        j = out.index(name)
        if j != i:
            raise ImageError(
                f"{images[j]} and {images[i]} would both write {name}_label.png; rename one or "
                "predict them into different --out directories"
            )
    return out


def cmd_predict(args) -> int:
    import numpy as np

    from zeroseg.data.classes import validate_class_names
    from zeroseg.data.io import ImageError, read_image
    from zeroseg.predict import Predictor
    from zeroseg.viz import save_label_png, save_overlay

    names = list(validate_class_names(args.classes.split(","), what="--classes"))
    out = Path(args.out)
    stems = output_stems(args.images)
    targets = [(out / f"{s}_label.png", out / f"{s}_overlay.png") for s in stems]
    if not args.overwrite:
        existing = [str(t) for pair in targets for t in pair if t.exists()]
        if existing:
            raise ImageError(
                f"{existing[0]} already exists ({len(existing)} output file(s) in all); pass "
                "--overwrite to replace them or choose another --out"
            )
    predictor = Predictor.from_checkpoint(args.checkpoint, device=args.device)
    if args.amp is not None:
        predictor.cfg.eval.amp = args.amp
    for path, (label_path, overlay_path) in zip(args.images, targets):
        image = read_image(Path(path), alpha=args.alpha)  # one at a time: memory stays bounded
        label = predictor.predict(image, names)
        save_label_png(label, label_path, num_classes=len(names))
        save_overlay(image, label, names, overlay_path)
        present = ", ".join(names[int(c)] for c in np.unique(label))
        print(f"{path}: {label_path}, {overlay_path} ({present})")
    return 0


def cmd_serve(args) -> int:
    from zeroseg.serve import find_models

    entries = find_models(args.paths)  # a bad path fails here, before Gradio's import
    try:
        from zeroseg.serve_page import serve
    except ModuleNotFoundError as e:
        if e.name != "gradio":
            raise
        print(
            "zeroseg: error: zeroseg serve needs Gradio: pip install 'zeroseg[web]' "
            "(make venv installs it)",
            file=sys.stderr,
        )
        return 2
    serve(entries, host=args.host, port=args.port, device=args.device, max_pixels=args.max_pixels)
    return 0


def cmd_bench(args) -> int:
    from zeroseg.bench import bench_presets, run_bench

    if args.set and not args.train:
        raise SystemExit("zeroseg bench: --set applies to --train only")
    if args.train:
        from zeroseg.bench_train import bench_train

        rows = bench_train(
            args.methods, steps=args.steps, world=args.world, overrides=args.set or ()
        )
    elif args.presets is not None:
        rows = bench_presets(args.presets or None, crop=args.crop)
    else:
        rows = run_bench(methods=args.methods, world=args.world)
    if args.out:
        from zeroseg.report import write_text_atomic

        write_text_atomic(Path(args.out), json.dumps(rows, indent=2))
    return 0


def cmd_world(args) -> int:
    from zeroseg.config import ConfigError
    from zeroseg.data.shapeworld import load_spec
    from zeroseg.data.shapeworld.render import render
    from zeroseg.foundation.web import world_path

    if args.draw is not None:
        args.spec = draw_world_file(args)
    elif args.out is not None:
        raise ConfigError("--out names the file --draw writes; give --draw SEED with it")
    spec = load_spec(world_path(args.spec) if args.spec is not None else None)
    split = spec.class_split()
    print(
        f"{spec.name}: {spec.num_classes} classes ({len(spec.things)} things, {len(spec.stuff)} stuff)"
    )
    print(f"unseen ({len(split.unseen)}): {', '.join(split.unseen_names)}")
    print(f"cache key {spec.content_key()}")
    if args.protocols:
        from zeroseg.data.protocol import SeenOnly
        from zeroseg.data.shapeworld import ShapeWorldDataset

        train = ShapeWorldDataset(spec, "train")  # generated once and cached, as a demo would
        strict = len(SeenOnly(train, split, "strict"))
        print(
            f"train: {len(train)} images under `ignore` (unseen pixels void); "
            f"{strict} ({100 * strict / max(1, len(train)):.0f} %) under `strict` "
            f"(no unseen pixel: the mask family's presets)"
        )
    if args.preview:
        import numpy as np
        from PIL import Image

        tiles = [render(spec, "train", i).image for i in range(16)]
        rows = [np.concatenate(tiles[r * 4 : r * 4 + 4], 1) for r in range(4)]
        Image.fromarray(np.concatenate(rows, 0)).save(args.preview)
        print(f"preview: {args.preview}")
    return 0


def draw_world_file(args) -> str:
    """``zeroseg world --draw SEED --out FILE``: writes the drawn spec, never over a file."""
    from zeroseg.config import ConfigError
    from zeroseg.foundation.web import draw_world, world_yaml
    from zeroseg.report import write_text_atomic

    if args.spec is not None:
        raise ConfigError(f"give a spec ({args.spec}) or --draw SEED, not both")
    if args.out is None:
        raise ConfigError("--draw needs --out FILE, the spec file to write")
    out = Path(args.out)
    data = draw_world(args.draw)
    header = (
        f"Drawn by `zeroseg world --draw {args.draw} --out {out.name}`: colours, shapes, textures\n"
        "and the unseen classes at random within the shipped foundation's range (the same seed\n"
        "gives the same world). Nothing in zeroseg was chosen on a drawn world."
    )
    text = world_yaml(data, header=header)
    if out.exists():
        if not out.is_file() or out.read_text() != text:
            raise ConfigError(
                f"{out} exists and is not this draw; --draw never writes over a file: give "
                "another --out"
            )
        print(f"{out}: already this draw, left as it is")
        return str(out)
    write_text_atomic(out, text)
    print(f"wrote {out}")
    return str(out)


def cmd_pretrain(args) -> int:
    if args.config == "foundation":
        return cmd_pretrain_foundation(args)
    from zeroseg import runner
    from zeroseg.config import ConfigError
    from zeroseg.data.shapeworld import load_spec
    from zeroseg.pretrain import encoder_report, load_or_train, pretrain_dir

    cfg = runner.load_experiment(args.config, args.set)
    if cfg.data.dataset != "shapeworld":
        raise ConfigError(
            f"{args.config}: stage 0 exists for ShapeWorld only, not {cfg.data.dataset!r}"
        )
    from zeroseg.methods import METHODS

    stage0 = METHODS[cfg.method].stage0_config(runner.model_config(cfg))
    if stage0 is None:
        raise ConfigError(f"{args.config}: method {cfg.method!r} does not start from stage 0")
    spec = load_spec(cfg.data.world)
    print(f"[zeroseg] stage 0: {pretrain_dir(spec, stage0)}")
    visual = load_or_train(spec, stage0, progress=not args.no_progress)
    embed = runner.Embedder(cfg.text, world=spec)
    report = encoder_report(
        visual, spec, embed(list(spec.class_names)), train_images=args.probe_images
    )
    zs = report["zero_shot"]
    print(
        f"caption retrieval top-5 ({report['eval_split']} images): {report['retrieval_top5']:.1f}%"
    )
    print(
        f"zero-shot patch labels (all names, no training): mIoU(S) {zs['seen_miou']:.1f}  "
        f"mIoU(U) {zs['unseen_miou']:.1f}  hIoU {zs['hiou']:.1f}"
    )
    print(
        f"linear probe on frozen patch tokens (seen classes, {report['train_images']} train "
        f"images): mIoU(S) {report['linear_probe_seen_mIoU']:.1f}"
    )
    if args.out:
        from zeroseg.report import write_text_atomic

        write_text_atomic(Path(args.out), json.dumps(report, indent=2))
    return 0


def cmd_pretrain_foundation(args) -> int:
    from zeroseg.foundation.build import pretrain_foundation

    command = (
        "zeroseg pretrain foundation"
        + "".join(
            f" {flag} {value}"
            for flag, value in (("--exclude", args.exclude), ("--web", args.web))
            if value
        )
        + "".join(f" --set {kv}" for kv in args.set or [])
    )
    pretrain_foundation(
        overrides=args.set or [],
        exclude=args.exclude,
        web=args.web,
        out=Path(args.out) if args.out else None,
        ship=args.ship,
        report_worlds=args.report_world,
        probe_images=args.probe_images,
        command=command,
        progress=not args.no_progress,
    )
    return 0


def cmd_data_check(args) -> int:
    from zeroseg.data.check import check_dataset

    report = check_dataset(
        args.dataset,
        args.root,
        splits=tuple(args.split or ("train", "val")),
        limit=args.limit,
        progress=True,
        fold=args.fold,
    )
    print(report.format(examples=args.examples))
    return 0 if report.ok else 1


def cmd_data_prepare(args) -> int:
    from zeroseg.data.check import prepare

    result = prepare(args.dataset, args.root, source=args.source, force=args.force, progress=True)
    print(result.format())
    return 1 if result.failed else 0


def cmd_data_spectral(args) -> int:
    from zeroseg import runner
    from zeroseg.config import load_config
    from zeroseg.paths import cache_dir
    from zeroseg.shape.refine import precompute_dataset

    sets = list(args.set or []) + ([f"data.world={args.world}"] if args.world else [])
    cfg = load_config(args.config, sets)
    data = runner.build_data(cfg)
    dataset = data.train if args.split == "train" else data.eval_split(args.split)
    root = Path(args.cache) if args.cache else cache_dir() / "spectral"
    result = precompute_dataset(dataset, root, _refine_config(cfg), progress=True)
    print(json.dumps(result, indent=2))
    return 0


def _refine_config(cfg):
    """The method's own refinement settings, else those of ``--refine spectral``."""
    from zeroseg import runner
    from zeroseg.methods import METHODS
    from zeroseg.shape.refine import default_refine_config

    own = METHODS[cfg.method].refinement(runner.model_config(cfg))
    return own if own is not None else default_refine_config()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="zeroseg", description="Generalized zero-shot segmentation toolkit"
    )
    sub = p.add_subparsers(dest="command", required=True)

    def command(parent, name, fn, help, description=None, *, overrides=False):
        """Subcommand ``name`` of ``parent`` running ``fn(args)``; ``overrides``: it reads a config,
        so it takes ``--set`` overrides and ``--no-progress``."""
        sp = parent.add_parser(name, help=help, description=description)
        sp.set_defaults(fn=fn)
        if overrides:
            sp.add_argument(
                "--set",
                action="append",
                metavar="KEY=VALUE",
                help="config override (repeatable), e.g. train.lr=0.001; a stage's schedule also "
                "by the stage's name: stages.<stage>.iters=N",
            )
            sp.add_argument("--no-progress", action="store_true", help="hide progress bars")
        return sp

    def device_arg(sp):
        sp.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: cpu)")

    def model_args(sp):
        """The trained model a command reads, and where it runs."""
        sp.add_argument(
            "checkpoint",
            help="a model.safetensors, the run directory holding it, or the --out given to train",
        )
        device_arg(sp)

    d = command(
        sub,
        "demo",
        cmd_demo,
        help="generate ShapeWorld, train and evaluate methods, write a report",
        overrides=True,
    )
    d.add_argument("--world", help="ShapeWorld spec YAML (default: the built-in world)")
    d.add_argument(
        "--methods", nargs="+", help="methods to run (default: one row per system + baselines)"
    )
    d.add_argument(
        "--ablations",
        action="store_true",
        help="also run the ablation rows of ZegCLIP, PADing, AlignZeg",
    )
    d.add_argument("--out", default="runs/demo", help="output directory (default: runs/demo)")
    d.add_argument(
        "--seeds",
        nargs="+",
        type=int,
        metavar="S",
        help="run every method once per seed (OUT/seed-<s>) and write the spread (OUT/seeds.md)",
    )
    d.add_argument("--quick", action="store_true", help="a short schedule for a fast look")
    d.add_argument(
        "--refine",
        action="append",
        choices=["spectral"],
        help="also report methods refined by this inference-time fusion (spectral: SAZS's eigen-segments)",
    )
    d.add_argument(
        "--refine-on", nargs="+", metavar="METHOD", help="methods to refine (default: all)"
    )
    d.add_argument(
        "--jobs",
        type=_positive_int,
        default=1,
        metavar="N",
        help="train N rows at once, each in its own process with 1/N of the threads; a row "
        "starts once its baselines have finished (default: 1, one row at a time)",
    )
    d.add_argument(
        "--split",
        choices=["test", "val"],
        default="test",
        help="the split every figure is of (default: test, the reported one); val checks a "
        "choice (e.g. on worlds/dev.yaml) and never loads test; an OUT holding the other "
        "split's report is refused",
    )
    d.add_argument(
        "--stages-from",
        metavar="DIR",
        help="an earlier demo --out (with the same --seeds): copy every training stage finished "
        "there for a row of this run (same config, world and seed) into OUT instead of training "
        "it, e.g. to score a finished test run on --split val; DIR is only read",
    )

    t = command(
        sub,
        "train",
        cmd_train,
        help="train one config (a preset name or a YAML file)",
        description="Train one config and evaluate it on its test split, with the calibration "
        "gamma chosen on its val split (--split val evaluates val instead, for choices). The "
        "model lands in OUT/<name>/model.safetensors (<name>: the config's name, else its "
        "method) with metrics.json, run.json (the resolved config and its hash) and one directory per "
        "training stage. Re-running the same config into the same OUT resumes: finished stages "
        "are loaded, an interrupted stage continues from its newest checkpoint (written every "
        "train.ckpt_minutes minutes and every train.ckpt_every steps). Another config into the "
        "same directory is refused unless --overwrite is given.",
        overrides=True,
    )
    t.add_argument(
        "config",
        help="a preset name (see src/zeroseg/configs, e.g. projection_unet-small_2k_shapeworld) or a YAML file",
    )
    t.add_argument(
        "--out",
        default="runs",
        help="parent directory of the run; the run itself is OUT/<name> (default: runs)",
    )
    t.add_argument(
        "--overwrite",
        action="store_true",
        help="discard what OUT/<name> holds from a run with another config, instead of refusing",
    )
    t.add_argument(
        "--split",
        choices=["test", "val"],
        default="test",
        help="where the trained model is evaluated (default: test, written to metrics.json); "
        "val, for a choice between settings, writes metrics-val.json and never reads test",
    )

    e = command(
        sub,
        "eval",
        cmd_eval,
        help="evaluate a model checkpoint on its test split (calibrated on val)",
        description="Evaluate a trained model on the test split of the data it was trained on "
        "(or --world), with the calibration gamma chosen on its val split, and print seen / "
        "unseen / harmonic mIoU as JSON (PQ and AP50 too for segment-producing methods on "
        "panoptic data). --seen-only (and --split train) is a fit check over the seen classes "
        "alone. Writes nothing but --image-confusions.",
        overrides=True,
    )
    model_args(e)
    e.add_argument("--world", help="ShapeWorld spec (default: the one it was trained on)")
    e.add_argument("--refine", choices=["spectral"], help="refine predictions at inference")
    e.add_argument(
        "--split",
        choices=["test", "val", "train"],
        default="test",
        help="split to report (default test; the calibration gamma is always chosen on val); "
        "train implies --seen-only",
    )
    e.add_argument(
        "--seen-only",
        action="store_true",
        help="a fit check: each pixel's best seen class, scored on seen pixels only (no unseen "
        "label is read; on train the images as the run's protocol gave them). Compare train "
        "with val: both low is underfitting, train high and val low is overfitting",
    )
    e.add_argument(
        "--limit",
        type=_positive_int,
        help="with --seen-only: evaluate the first N images of the split",
    )
    e.add_argument("--per-class", action="store_true", help="also print each class's IoU")
    e.add_argument(
        "--image-confusions",
        metavar="NPZ",
        help="also write each scored image's confusion matrix (at the chosen gamma) to this new "
        ".npz file, for a paired bootstrap over images (benchmarks/full_split_eval.py "
        "--bootstrap)",
    )

    pr = command(
        sub,
        "predict",
        cmd_predict,
        help="segment images with any vocabulary",
        description="Segment images with any list of class names. For each IMAGE, writes "
        "OUT/<stem>_label.png (the index of the class of each pixel in --classes order; 8-bit, "
        "or 16-bit beyond 256 names) and OUT/<stem>_overlay.png (the image with coloured labels "
        "and a legend). Inputs that share a stem get their extension added (a_png, a_jpg); "
        "existing outputs are never replaced without --overwrite.",
    )
    model_args(pr)
    pr.add_argument("images", nargs="+", help="image files (PNG, JPEG, WebP, ...)")
    pr.add_argument(
        "--classes",
        required=True,
        help='comma-separated class names, e.g. "red circle,blue square,gray ground"; names the '
        "model was trained on count as seen",
    )
    pr.add_argument("--out", default="predictions", help="output directory (default: predictions)")
    pr.add_argument(
        "--overwrite", action="store_true", help="replace output files that already exist"
    )
    pr.add_argument(
        "--alpha",
        choices=["error", "drop"],
        default="error",
        help="images with an alpha channel: refuse them (error, the default) or ignore the "
        "alpha (drop)",
    )
    pr.add_argument(
        "--amp",
        choices=["none", "bf16"],
        default=None,
        help="the forward under bf16 autocast (eval.amp; default: the model's config, none for "
        "every shipped preset): faster on a CPU or GPU that multiplies bf16 natively",
    )

    sv = command(
        sub,
        "serve",
        cmd_serve,
        help="a local web page: segment any image with any class names (Gradio)",
    )
    sv.add_argument(
        "paths",
        nargs="*",
        metavar="RUN_DIR_OR_CHECKPOINT",
        help="models: checkpoints, run directories or directories holding them (default: runs/demo)",
    )
    sv.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    sv.add_argument("--port", type=int, default=7860, help="port (default: 7860)")
    device_arg(sv)
    sv.add_argument(
        "--max-pixels",
        type=int,
        default=1024 * 1024,  # zeroseg.serve.DEFAULT_MAX_PIXELS (not imported: --help stays fast)
        help="larger uploads are refused (default: 1048576, 1024x1024)",
    )

    b = command(sub, "bench", cmd_bench, help="inference speed and peak memory per method")
    b.add_argument("--methods", nargs="+")
    b.add_argument("--world")
    b.add_argument("--out", help="also write the results as JSON here")
    b.add_argument(
        "--presets",
        nargs="*",
        help="instead: per-iteration training cost of paper presets (all if none named) at a reduced crop",
    )
    b.add_argument("--crop", type=int, default=128, help="crop size for --presets (default 128)")
    b.add_argument(
        "--train",
        action="store_true",
        help="instead: training images/s, GFLOP/s against the matmul peak and peak RSS of each "
        "stage of the ShapeWorld demo presets (--methods: which; default: those demo trains)",
    )
    b.add_argument(
        "--steps", type=int, default=5, help="--train: steps per stage (1 warm-up, 1 counted)"
    )
    b.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="--train: override a preset value (repeatable), e.g. model.token_pool=1",
    )

    data = sub.add_parser("data", help="check or prepare a real dataset in its standard layout")
    dsub = data.add_subparsers(dest="data_command", required=True)
    dc = command(
        dsub, "check", cmd_data_check, help="report every missing or malformed file at once"
    )
    dc.add_argument(
        "dataset", help="voc | coco_stuff | context | coco_panoptic | pascal_5i | coco_20i"
    )
    dc.add_argument("--fold", type=int, help="pascal_5i / coco_20i fold (default 0)")
    dc.add_argument("root")
    dc.add_argument("--split", action="append", help="split(s) to check (default: train and val)")
    dc.add_argument("--limit", type=int, help="check only the first N items of each split")
    dc.add_argument("--examples", type=int, default=5, help="file names shown per problem kind")
    dp = command(
        dsub,
        "prepare",
        cmd_data_prepare,
        help="label conversions (COCO-Stuff 182->171, Context 459->59)",
    )
    dp.add_argument("dataset", help="coco_stuff | context")
    dp.add_argument("root")
    dp.add_argument("--source", help="raw annotations (Context: ROOT/trainval by default)")
    dp.add_argument("--force", action="store_true", help="rewrite converted files that exist")

    ds = command(
        dsub,
        "spectral",
        cmd_data_spectral,
        help="precompute SAZS eigenvectors for a dataset's images",
    )
    ds.add_argument(
        "config",
        nargs="?",
        default="sazs_unet-small_2k_shapeworld",
        help="a preset or YAML (data + spectral settings)",
    )
    ds.add_argument("--split", choices=["train", "val", "test"], default="val")
    ds.add_argument("--world", help="ShapeWorld spec (for ShapeWorld configs)")
    ds.add_argument("--cache", help="cache root (default: $ZEROSEG_CACHE/spectral)")
    ds.add_argument("--set", action="append", metavar="KEY=VALUE")

    pt = command(
        sub,
        "pretrain",
        cmd_pretrain,
        help="pretrain the ShapeWorld foundation ('zeroseg pretrain foundation'), or train (or "
        "load) a config's stage-0 encoder; both report how well the frozen features segment",
        overrides=True,
    )
    pt.add_argument(
        "config",
        nargs="?",
        default="zegclip_vit-tiny_shapeworld",
        help="'foundation', or a preset or YAML whose method starts from stage 0 (default: "
        "zegclip_vit-tiny_shapeworld)",
    )
    pt.add_argument(
        "--exclude",
        metavar="WORLD",
        help="foundation: a world spec (or 'default') whose unseen class names the captions "
        "never mention (the images stay in, those objects unnamed)",
    )
    pt.add_argument("--web", help="foundation: the web world file (default: the shipped web.yaml)")
    pt.add_argument(
        "--ship",
        action="store_true",
        help="foundation: also install the result as the package's shipped foundation",
    )
    pt.add_argument(
        "--report-world",
        action="append",
        metavar="WORLD",
        help="foundation: worlds to report quality figures on (default: default and second)",
    )
    pt.add_argument(
        "--probe-images", type=int, default=2000, help="training images for the linear probe"
    )
    pt.add_argument(
        "--out",
        help="stage 0: also write the figures to this JSON file; foundation: the output "
        "directory (default: $ZEROSEG_CACHE/foundation/<config hash>)",
    )

    w = command(sub, "world", cmd_world, help="validate a ShapeWorld spec and preview it")
    w.add_argument(
        "spec", nargs="?", help="a spec file or a shipped world's name (default: default)"
    )
    w.add_argument(
        "--draw",
        type=int,
        metavar="SEED",
        help="draw a new world at random within the shipped foundation's range (a check on a "
        "world nobody chose anything on) and write it to --out",
    )
    w.add_argument(
        "--out", help="the spec file --draw writes (never over a file that holds another spec)"
    )
    w.add_argument("--preview", help="write a 4x4 grid of training images to this PNG")
    w.add_argument(
        "--protocols",
        action="store_true",
        help="render the training split (cached for later runs) and print how many of its images "
        "each protocol trains on",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    _setup_env()
    args = build_parser().parse_args(argv)
    from zeroseg.errors import USER_ERRORS

    try:
        return args.fn(args)
    except USER_ERRORS as e:
        print(f"zeroseg: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("zeroseg: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
