"""The main job: generate a world, train each method, evaluate, write the report and figures.

Each method runs from its ShapeWorld preset (``zeroseg/configs/*_shapeworld.yaml``) into
``<out>/runs/<method>-<fingerprint>``, where the fingerprint hashes the config and the world, so a
re-run with the same settings reuses finished stages and a changed setting never overwrites them.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from zeroseg import runner
from zeroseg._yaml import safe_load
from zeroseg.config import PRESET_DIR, ConfigError, load_config, to_dict
from zeroseg.data.shapeworld import load_spec
from zeroseg.report import _fmt


def demo_rows() -> dict[str, tuple[str, str, int]]:
    """Row name -> (preset, "default" | "ablation", order), from the presets' ``demo:`` entries.

    A row is named by its preset's first word (``projection-frozen_unet-small_2k_shapeworld`` ->
    ``projection-frozen``); a method joins the demo by its preset alone.
    """
    rows: dict[str, tuple[str, str, int]] = {}
    for path in sorted(PRESET_DIR.glob("*.yaml")):
        demo = (safe_load(path.read_text()) or {}).get("demo") or {}
        if not demo.get("row"):
            continue
        name = path.stem.split("_")[0]
        if name in rows:
            raise ConfigError(
                f"demo row {name!r} is claimed by two presets: {rows[name][0]} and {path.stem}"
            )
        rows[name] = (path.stem, demo["row"], int(demo.get("order", 0)))
    return rows


def _rows_of(kind: str) -> tuple[str, ...]:
    rows = demo_rows()
    return tuple(sorted((n for n in rows if rows[n][1] == kind), key=lambda n: (rows[n][2], n)))


# row name -> its ShapeWorld preset; the default rows (one per published system, its baseline and
# the oracle) and the ablation rows (with --ablations), in the report's order.
DEMO_PRESETS: dict[str, str] = {name: row[0] for name, row in demo_rows().items()}
DEFAULT_METHODS = _rows_of("default")
ABLATIONS = _rows_of("ablation")
QUICK = {"iters_scale": 0.25, "val_images": 200}  # val_images: the val and test limit


def fingerprint(cfg, world_key: str) -> str:
    blob = json.dumps({"cfg": to_dict(cfg), "world": world_key}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:10]


def demo_config(method: str, *, world: str | None, quick: bool, overrides: Sequence[str] = ()):
    if method not in DEMO_PRESETS:
        raise ValueError(f"unknown method {method!r} for the demo; valid: {sorted(DEMO_PRESETS)}")
    sets = [f"data.world={world}"] if world else []
    cfg = load_config(DEMO_PRESETS[method], sets + list(overrides))
    if quick:
        cfg.train.iters = max(50, int(cfg.train.iters * QUICK["iters_scale"]))
        cfg.data.val_limit = QUICK["val_images"]
    return cfg


REFINEMENTS = ("spectral",)


def build_refinement(kind: str):
    """A ``post(scores, batch) -> labels`` refinement applicable to any method's scores."""
    if kind == "spectral":
        from zeroseg.shape.refine import spectral_post

        return spectral_post()
    raise ValueError(f"unknown refinement {kind!r}; valid: {list(REFINEMENTS)}")


def row_from(
    metrics: dict,
    method,
    train_seconds: float,
    sec_per_image: float,
    notes,
    *,
    reused=False,
    protocol_detail: dict | None = None,
) -> dict:
    """A report row; ``reused``: every stage was loaded from an earlier run (no training time)."""
    row = {k: v for k, v in metrics.items()}
    row.update(
        protocol=method.protocol,
        protocol_detail=protocol_detail,
        train_seconds=train_seconds,
        reused=reused,
        infer_ms_per_image=sec_per_image * 1000,
        notes=list(notes),
    )
    return row


def run_demo(
    *,
    out: Path,
    world: str | None = None,
    methods: Sequence[str] = DEFAULT_METHODS,
    quick: bool = False,
    overrides: Sequence[str] = (),
    progress: bool = True,
    grid_images: int = 6,
    refine: Sequence[str] = (),
    refine_on: Sequence[str] | None = None,
) -> dict:
    """Runs the demo and returns the report summary (also written to ``out``)."""
    spec = load_spec(world)  # validates before any work
    methods = list(dict.fromkeys(methods))
    for m in methods:
        if m not in DEMO_PRESETS:
            raise ValueError(f"unknown method {m!r}; the demo knows {sorted(DEMO_PRESETS)}")
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    rows: dict[str, dict] = {}
    grid_preds: dict[str, list[np.ndarray]] = {}
    foundations: dict[str, dict] = {}
    data = None
    for name in methods:
        cfg = demo_config(name, world=world, quick=quick, overrides=overrides)
        from zeroseg.methods import METHODS

        started_from = METHODS[cfg.method].foundation_of(runner.model_config(cfg))
        if started_from and started_from not in foundations:
            from zeroseg.foundation import foundation_identity

            foundations[started_from] = foundation_identity(started_from)
        if data is None:
            print(
                f"[zeroseg] world {spec.name!r}: {spec.num_classes} classes, {len(spec.unseen)} unseen"
            )
            data = runner.build_data(cfg, progress=progress)
        directory = out / "runs" / f"{name}-{fingerprint(cfg, spec.content_key())}"
        print(f"[zeroseg] {name}: training (or loading finished stages) into {directory}")
        result = runner.train(cfg, directory, progress=progress, data=data)
        # gamma of the shared calibration rule chosen on val; figures on test (never tuned on)
        metrics, spi, kept = runner.evaluate_protocol(
            result.method, cfg, data, result.embed, progress=progress, keep=grid_images
        )
        metrics.update(result.method.extra_metrics(cfg, data, result.embed, progress=progress))
        reused = not result.trained_stages
        detail = result.protocol_detail
        rows[name] = row_from(
            metrics,
            result.method,
            result.train_seconds,
            spi,
            result.notes,
            reused=reused,
            protocol_detail=detail,
        )
        rows[name]["foundation"] = foundations[started_from] if started_from else None
        grid_preds[name] = [p.cpu().numpy() for p in kept]
        for kind in refine if refine_on is None or name in refine_on else ():
            post = build_refinement(kind)
            r_metrics, r_spi, r_kept = runner.evaluate_protocol(
                result.method,
                cfg,
                data,
                result.embed,
                progress=progress,
                keep=grid_images,
                post=post,
                calibration=metrics["calibration"],
                curve=False,
            )
            note = (
                f"{name} refined by {kind} fusion at inference (no ground truth used), at "
                f"{name}'s gamma"
            )
            rows[f"{name}+{kind}"] = row_from(
                r_metrics,
                result.method,
                result.train_seconds,
                r_spi,
                [note],
                reused=reused,
                protocol_detail=detail,
            )
            grid_preds[f"{name}+{kind}"] = [p.cpu().numpy() for p in r_kept]
            print(
                f"[zeroseg] {name}+{kind}: mIoU(S) {r_metrics['seen_miou']:.1f}  mIoU(U) "
                f"{_fmt(r_metrics['unseen_miou'])}  hIoU {_fmt(r_metrics['hiou'])}  boundary F {r_metrics['boundary_f']:.1f}"
            )
        took = (
            "every stage reused from an earlier run"
            if reused
            else f"{result.train_seconds:.0f}s train"
        )
        print(
            f"[zeroseg] {name}: mIoU(S) {metrics['seen_miou']:.1f}  mIoU(U) {_fmt(metrics['unseen_miou'])}"
            f"  hIoU {_fmt(metrics['hiou'])}  AUSUC {_fmt(metrics.get('ausuc'))}"
            f"  gamma {metrics['calibration']['gamma']:+.2f} (on val)  ({took})"
        )
    from zeroseg.report import write_report
    from zeroseg.viz import bar_chart, prediction_grid, seen_unseen_curves

    figures = {
        "bars": bar_chart(rows, out / "bars.png").name,
        "seen_unseen": seen_unseen_curves(rows, out / "seen_unseen.png").name,
    }
    samples = [data.test[i] for i in range(min(grid_images, len(data.test)))]
    figures["predictions"] = prediction_grid(
        [s["image"].permute(1, 2, 0).numpy() for s in samples],
        [s["label"].numpy() for s in samples],
        grid_preds,
        data.split.num_classes,
        out / "predictions.png",
    ).name
    split = data.split
    summary = {
        "title": f"ShapeWorld '{spec.name}'" + (" (quick)" if quick else ""),
        "world": spec.name,
        "world_key": spec.content_key(),
        "eval_split": "test",  # every figure below; read by nothing else
        "tuned_on": "val",  # every choice: the calibration gamma, and the presets' settings
        "train_images": len(data.train),
        "val_images": len(data.val),
        "test_images": len(data.test),
        "quick": quick,
        "threads": torch.get_num_threads(),
        "split": {
            "num_classes": split.num_classes,
            "names": list(split.names),
            "seen": list(split.seen_names),
            "unseen": list(split.unseen_names),
        },
        "foundation": next(iter(foundations.values()), None),
        "methods": rows,
        "figures": figures,
        "total_seconds": time.perf_counter() - t_start,
    }
    md, js = write_report(out, summary)
    print(f"[zeroseg] report: {md} and {js} ({summary['total_seconds']:.0f}s)")
    return summary


SEED_METRICS = ("seen_miou", "unseen_miou", "hiou", "ausuc")
# The row each method's gap is measured against in a seed report: the baseline that shares its
# backbone family (pixel classifiers: the projection baseline; mask classifiers: mask-projection).
BASELINES: dict[str, str] = {
    "zs3net": "projection",
    "zs5net": "projection",
    "zegclip": "projection",
    "zegclip-st": "projection",
    "zegclip-nodpt": "projection",
    "zegclip-nord": "projection",
    "zegclip-nonel": "projection",
    "sazs": "projection",
    "sazs-nofusion": "projection",
    "pading": "mask-projection",
    "pading-g": "mask-projection",
    "pading-p": "mask-projection",
    "pading-pa": "mask-projection",
    "pading-ignore": "mask-projection-ignore",  # same stage 1 (the ignore protocol's)
    "alignzeg": "mask-projection",
    "alignzeg-norefine": "mask-projection",
    "alignzeg-nogen": "mask-projection",
    "alignzeg-nobc": "mask-projection",
}


def run_seeds(*, out: Path, seeds: Sequence[int], **kwargs) -> dict:
    """The demo once per seed (``out/seed-<s>``, each with its full report) plus a spread table.

    Seed ``s`` sets the experiment ``seed`` (weight initialisation, and every stage key) and
    ``train.seed`` (the stage-1 batch order); the stage-0 encoder is shared, as a fixed CLIP
    checkpoint would be. Writes ``out/seeds.json`` and ``out/seeds.md``: per method the mean,
    sample standard deviation, minimum and maximum of mIoU(S), mIoU(U), hIoU and AUSUC over the
    seeds; and ``out/report.json`` / ``out/report.md``: per method each metric's mean as
    ``<metric>`` and its standard deviation as ``<metric>_std``, the gap to the method's baseline
    (:data:`BASELINES`) and whether it exceeds the spread (:func:`seed_gaps`).

    Args:
        out: output directory.
        seeds: at least two distinct seeds.
        **kwargs: everything else :func:`run_demo` takes (``methods``, ``quick``, ``overrides``...).
    """
    seeds = list(seeds)
    if len(seeds) < 2 or len(set(seeds)) != len(seeds):
        raise ValueError(f"--seeds needs at least two distinct seeds, got {seeds}")
    overrides = list(kwargs.pop("overrides", ()))
    for key in ("seed", "train.seed"):
        if any(o.split("=", 1)[0].strip() == key for o in overrides):
            raise ValueError(f"--set {key}=... conflicts with --seeds; drop one of them")
    runs = {}
    for seed in seeds:
        print(f"[zeroseg] seed {seed}")
        runs[seed] = run_demo(
            out=out / f"seed-{seed}",
            overrides=[*overrides, f"seed={seed}", f"train.seed={seed}"],
            **kwargs,
        )
    spread = seed_spread({s: r["methods"] for s, r in runs.items()})
    summary = {"seeds": seeds, "methods": spread, "title": runs[seeds[0]]["title"]}
    from zeroseg.report import write_seed_report, write_seed_summary

    md, js = write_seed_report(out, summary)
    print(f"[zeroseg] spread over seeds {seeds}: {md} and {js}")
    first = runs[seeds[0]]
    rows = seed_rows({s: r["methods"] for s, r in runs.items()}, spread)
    report = {
        "title": first["title"] + f" ({len(seeds)} seeds)",
        "world": first["world"],
        "world_key": first["world_key"],
        "eval_split": first["eval_split"],
        "tuned_on": first["tuned_on"],
        "seeds": seeds,
        "train_images": first["train_images"],
        "val_images": first["val_images"],
        "test_images": first["test_images"],
        "quick": first["quick"],
        "gap_rule": GAP_RULE,
        "methods": rows,
    }
    md, js = write_seed_summary(out, report)
    print(f"[zeroseg] seed report: {md} and {js}")
    return summary


GAP_RULE = (
    "a method's gap to its baseline counts where |mean difference| > the sum of the two "
    "sample standard deviations over seeds"
)


def seed_gaps(row: dict, base: dict, metrics: Sequence[str] = SEED_METRICS) -> dict[str, dict]:
    """Per metric: the difference of means to the baseline row and whether it exceeds the
    spread (:data:`GAP_RULE`); metrics missing from either row are left out."""
    out = {}
    for m in metrics:
        if m not in row or m not in base:
            continue
        gap = row[m] - base[m]
        spread = row[f"{m}_std"] + base[f"{m}_std"]
        out[m] = {"value": gap, "spread": spread, "exceeds_spread": abs(gap) > spread}
    return out


def seed_rows(rows_by_seed: dict[int, dict[str, dict]], spread: dict[str, dict]) -> dict:
    """report.json rows of a seed run: ``<metric>`` the mean over seeds, ``<metric>_std`` its
    sample standard deviation, the calibration ``gamma`` of each seed, the protocol, and the
    gap to the baseline (:func:`seed_gaps`) when the baseline was run too."""
    seeds = list(rows_by_seed)
    first = rows_by_seed[seeds[0]]
    rows: dict[str, dict] = {}
    for name, sp in spread.items():
        row: dict = {
            "protocol": first[name].get("protocol"),
            "protocol_detail": first[name].get("protocol_detail"),
        }
        for m in SEED_METRICS:
            if m in sp:
                row[m], row[f"{m}_std"] = sp[m]["mean"], sp[m]["std"]
        cal = {str(s): rows_by_seed[s][name].get("calibration") or {} for s in seeds}
        row["calibration"] = {
            "gamma_by_seed": {s: c.get("gamma") for s, c in cal.items()},
            "how": next((c["how"] for c in cal.values() if "how" in c), None),
        }
        rows[name] = row
    for name, row in rows.items():
        base = BASELINES.get(name.split("+")[0])
        if base in rows:
            row["baseline"] = base
            row["gap"] = seed_gaps(row, rows[base])
    return rows


def seed_spread(rows_by_seed: dict[int, dict[str, dict]]) -> dict[str, dict]:
    """Per method and metric: the values by seed, mean, sample std (ddof 1), min and max."""
    seeds = list(rows_by_seed)
    names = list(rows_by_seed[seeds[0]])
    out: dict[str, dict] = {}
    for name in names:
        row: dict = {"protocol": rows_by_seed[seeds[0]][name].get("protocol")}
        for metric in SEED_METRICS:
            if any(rows_by_seed[s][name].get(metric) is None for s in seeds):
                continue  # e.g. AUSUC of a refinement row (no sweep of its own)
            values = np.array([float(rows_by_seed[s][name][metric]) for s in seeds])
            row[metric] = {
                "values": dict(zip(map(str, seeds), values.tolist(), strict=True)),
                "mean": float(values.mean()),
                "std": float(values.std(ddof=1)),
                "min": float(values.min()),
                "max": float(values.max()),
            }
        out[name] = row
    return out
