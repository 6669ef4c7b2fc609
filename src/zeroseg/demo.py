"""The main job: generate a world, train each method, evaluate, write the report and figures.

Each method runs from its ShapeWorld preset (``zeroseg/configs/*_shapeworld.yaml``) into
``<out>/runs/<method>-<fingerprint>``, where the fingerprint hashes the config, the world and the
method's code revision, so a re-run with the same settings and code reuses finished stages, and a
changed setting, or a code change that alters the method's training, never reuses or overwrites
them.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch

from zeroseg import runner
from zeroseg._yaml import safe_load
from zeroseg.config import (
    DEMO_AFTER_EXPECTED,
    DEMO_COST_EXPECTED,
    PRESET_DIR,
    ConfigError,
    DemoConfig,
    _check,
    _finite,
    _names,
    _set_path,
    to_dict,
)
from zeroseg.data.shapeworld import load_spec
from zeroseg.engine.rundir import without_neutral
from zeroseg.methods.base import revision_key
from zeroseg.metrics.bootstrap import (
    ImageConfusions,
    gap_intervals,
    load_image_confusions,
    save_image_confusions,
)
from zeroseg.report import _fmt

DEFAULT_ROW_COST = DemoConfig.cost  # seconds: a row whose preset states no demo.cost


@dataclass(frozen=True)
class DemoRow:
    """A row of ``zeroseg demo``, declared by its preset's ``demo:`` entry."""

    preset: str
    kind: str  # "default" or "ablation" (shown with --ablations)
    order: int
    # the rows it is compared with like for like (same backbone, images, budget), first = main
    baselines: tuple[str, ...] = ()
    cost: float = DEFAULT_ROW_COST  # seconds: only the --jobs start order (DemoConfig.cost)
    after: tuple[str, ...] | None = None  # rows whose stages it reuses (DemoConfig.after)


REFINEMENTS = ("spectral",)  # the inference-time refinements a demo row may get (--refine)


def demo_rows() -> dict[str, DemoRow]:
    """Row name -> its :class:`DemoRow`, from the presets' ``demo:`` entries.

    A row is named by its preset's first word (``projection-frozen_unet-small_2k_shapeworld`` ->
    ``projection-frozen``); a method joins the demo by its preset alone. ``demo: {baselines:
    [...]}`` names the rows it is compared with; each must be a demo row itself, or one refined
    at inference (``projection+spectral``, compared when the run has that row).
    """
    rows: dict[str, DemoRow] = {}
    for path in sorted(PRESET_DIR.glob("*.yaml")):
        demo = (safe_load(path.read_text()) or {}).get("demo") or {}
        if not demo.get("row"):
            continue
        name = path.stem.split("_")[0]
        if name in rows:
            raise ConfigError(
                f"demo row {name!r} is claimed by two presets: {rows[name].preset} and {path.stem}"
            )
        if demo["row"] not in ("default", "ablation"):
            raise ConfigError(
                f"{path.stem}: demo.row must be 'default' or 'ablation', got {demo['row']!r}"
            )
        baselines = demo.get("baselines") or []
        if not _names(baselines):
            raise ConfigError(
                f"{path.stem}: demo.baselines must be a list of demo row names, got {baselines!r}"
            )
        cost = demo.get("cost", DEFAULT_ROW_COST)
        _check(_finite(cost, 0), path.stem, "demo.cost", DEMO_COST_EXPECTED, cost)
        after = demo.get("after")
        _check(
            after is None or _names(after),
            path.stem,
            "demo.after",
            DEMO_AFTER_EXPECTED,
            after,
        )
        rows[name] = DemoRow(
            path.stem,
            demo["row"],
            int(demo.get("order", 0)),
            tuple(baselines),
            float(cost),
            None if after is None else tuple(after),
        )
    for name, row in rows.items():
        unknown = [b for b in row.baselines if not _is_row(b, rows) or b.partition("+")[0] == name]
        if unknown:
            raise ConfigError(
                f"{row.preset}: demo.baselines {unknown} are not other demo rows; "
                f"valid: {sorted(rows)}, each also as ROW+REFINEMENT with one of {list(REFINEMENTS)}"
            )
        unknown = [b for b in row.after or () if b not in rows or b == name]
        if unknown:
            raise ConfigError(
                f"{row.preset}: demo.after {unknown} are not other demo rows; valid: {sorted(rows)}"
            )
    return rows


def _is_row(name: str, rows: dict[str, DemoRow]) -> bool:
    """A demo row, or a demo row refined at inference (``projection+spectral``)."""
    base, plus, refinement = name.partition("+")
    return base in rows and (not plus or refinement in REFINEMENTS)


def _rows_of(rows: dict[str, DemoRow], kind: str) -> tuple[str, ...]:
    return tuple(
        sorted((n for n in rows if rows[n].kind == kind), key=lambda n: (rows[n].order, n))
    )


# The presets' demo rows, read once: row name -> its ShapeWorld preset; the default rows (one per
# published system, its baseline and the oracle) and the ablation rows (with --ablations), in the
# report's order.
DEMO_ROWS = demo_rows()
DEMO_PRESETS: dict[str, str] = {name: row.preset for name, row in DEMO_ROWS.items()}
DEFAULT_METHODS = _rows_of(DEMO_ROWS, "default")
ABLATIONS = _rows_of(DEMO_ROWS, "ablation")
QUICK_VAL_IMAGES = 200  # --quick: the val and test limit
QUICK_MIN_ITERS = 50  # --quick never shortens a stage below this many steps


def baselines_of(name: str) -> tuple[str, ...]:
    """The rows ``name`` is compared with: its preset's ``demo.baselines``; a refined row
    (``projection+spectral``) is compared with the same method unrefined."""
    if "+" in name:
        return (name.split("+")[0],)
    row = DEMO_ROWS.get(name)
    return row.baselines if row else ()


def waits_for(name: str) -> tuple[str, ...]:
    """The rows a ``--jobs`` run finishes before it starts ``name``: its preset's ``demo.after``
    (the rows whose trained stages it reuses), else its baselines (:func:`baselines_of`)."""
    row = DEMO_ROWS.get(name)
    if row is not None and row.after is not None:
        return row.after
    return baselines_of(name)


def fingerprint(cfg, world_key: str, *, by_path: bool = False) -> str:
    """The run directory's hash: the config (without the row's metadata), the world and the
    method's code revision (:attr:`zeroseg.methods.base.Method.revision`, when not 0).

    The world enters by its content (``world_key``), not by the path ``data.world`` names it by,
    so the same world named another way is the same run. ``by_path``: the hash before session
    55, with the path as typed (for the default world, None: the same hash), whose run
    directories are still found (:func:`run_dir_of`)."""
    run = {k: v for k, v in to_dict(cfg).items() if k != "demo"}  # the row's metadata: no effect
    if not by_path:
        run["data"] = {**run["data"], "world": None}  # world_key says which world
    run = without_neutral(run)  # an option at its neutral default keeps earlier fingerprints
    key = {"cfg": run, "world": world_key, **revision_key(runner.method_class(cfg).revision)}
    blob = json.dumps(key, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:10]


def run_dir_of(name: str, cfg, world_key: str, root: Path) -> Path:
    """Row ``name``'s run directory in the demo output ``root``, relative to it:
    ``runs/<name>-<fingerprint>``, or the one named by the fingerprint before session 55
    (:func:`fingerprint` ``by_path``) where only that one exists there."""
    named = [
        Path("runs") / f"{name}-{fingerprint(cfg, world_key, by_path=by_path)}"
        for by_path in (False, True)
    ]
    return next((d for d in named if (root / d).is_dir()), named[0])


def demo_config(method: str, *, world: str | None, quick: bool, overrides: Sequence[str] = ()):
    if method not in DEMO_PRESETS:
        raise ValueError(f"unknown method {method!r} for the demo; valid: {sorted(DEMO_PRESETS)}")
    sets = [f"data.world={world}"] if world else []
    cfg = runner.load_experiment(DEMO_PRESETS[method], sets + list(overrides))
    return quick_config(cfg) if quick else cfg


def quick_config(cfg):
    """``--quick``: every stage of the method (:attr:`Method.stages`) runs ``stage.quick`` of its
    steps (at least :data:`QUICK_MIN_ITERS`), and val and test are cut to their first
    :data:`QUICK_VAL_IMAGES` images. Changes ``cfg`` in place and returns it."""
    for stage in runner.method_class(cfg).stages:
        if stage.quick == 1.0:
            continue  # full length, and the config stays as written (its fingerprint too)
        iters = max(QUICK_MIN_ITERS, int(runner.stage_schedule(cfg, stage).iters * stage.quick))
        if stage.schedule == "train":
            cfg.train.iters = iters
        else:
            _set_path(cfg.model, f"{stage.schedule.removeprefix('model.')}.iters", iters)
    cfg.data.val_limit = QUICK_VAL_IMAGES
    return cfg


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


def _run_row(
    name: str,
    cfg,
    data,
    directory: Path,
    *,
    progress: bool,
    grid_images: int,
    refine: Sequence[str],
    tag: str = "",
    eval_split: str = "test",
    reuse_from: Path | None = None,
) -> dict:
    """Trains (or loads) one demo row and evaluates it, with its refined rows.

    Returns ``rows`` (the row and its ``+refinement`` rows), ``grid`` (their kept predictions),
    ``confusions`` (their per-image confusion matrices, for the paired image bootstrap) and
    ``foundation`` (the foundation it starts from, or None). ``tag`` follows the row's name
    in what it prints (``--seeds --jobs``: which seed). ``eval_split``: the split the figures
    are of (``val``: a check for a choice, the test split never read). ``reuse_from``: the
    row's run directory in a ``--stages-from`` output (:func:`zeroseg.runner.train`).
    """
    from zeroseg.methods import METHODS

    started_from = METHODS[cfg.method].foundation_of(runner.model_config(cfg))
    identity = None
    if started_from:
        from zeroseg.foundation import foundation_identity

        identity = foundation_identity(started_from)
    print(
        f"[zeroseg] {name}{tag}: training (or loading finished stages) into {directory}", flush=True
    )
    memory = _memory_mark()
    result = runner.train(cfg, directory, progress=progress, data=data, reuse_from=reuse_from)
    # gamma of the shared calibration rule chosen on val; figures on test (never tuned on), or
    # on val itself in a --split val run
    evaluate = partial(
        runner.evaluate_protocol,
        result.method,
        cfg,
        data,
        result.embed,
        eval_split=eval_split,
        progress=progress,
        keep=grid_images,
    )
    images = ImageConfusions(data.split.num_classes, data.split.ignore_index)
    metrics, spi, kept = evaluate(image_confusions=images)
    confusions = {name: images.stacked()}
    metrics.update(
        result.method.extra_metrics(
            cfg, data, result.embed, progress=progress, eval_split=eval_split
        )
    )
    reused = not result.trained_stages
    detail = result.protocol_detail
    rows = {
        name: row_from(
            metrics,
            result.method,
            result.train_seconds,
            spi,
            result.notes,
            reused=reused,
            protocol_detail=detail,
        )
    }
    rows[name]["foundation"] = identity
    grid = {name: [p.cpu().numpy() for p in kept]}
    for kind in refine:
        post = build_refinement(kind)
        images = ImageConfusions(data.split.num_classes, data.split.ignore_index)
        r_metrics, r_spi, r_kept = evaluate(
            post=post, calibration=metrics["calibration"], curve=False, image_confusions=images
        )
        confusions[f"{name}+{kind}"] = images.stacked()
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
        grid[f"{name}+{kind}"] = [p.cpu().numpy() for p in r_kept]
        print(
            f"[zeroseg] {name}+{kind}{tag}: mIoU(S) {r_metrics['seen_miou']:.1f}  mIoU(U) "
            f"{_fmt(r_metrics['unseen_miou'])}  hIoU {_fmt(r_metrics['hiou'])}  boundary F "
            f"{r_metrics['boundary_f']:.1f}",
            flush=True,
        )
    took = (
        "every stage reused from an earlier run" if reused else f"{result.train_seconds:.0f}s train"
    )
    print(
        f"[zeroseg] {name}{tag}: mIoU(S) {metrics['seen_miou']:.1f}  mIoU(U) "
        f"{_fmt(metrics['unseen_miou'])}  hIoU {_fmt(metrics['hiou'])}  AUSUC "
        f"{_fmt(metrics.get('ausuc'))}  gamma {metrics['calibration']['gamma']:+.2f} (on val)  "
        f"({took})",
        flush=True,
    )
    rows[name]["memory"] = _memory_used(memory)
    return {
        "rows": rows,
        "grid": grid,
        "confusions": confusions,
        "foundation": (started_from, identity),
    }


def _memory_mark() -> float | None:
    """Resets this process's peak-RSS mark (Linux) and returns its RSS in MiB now (None where
    /proc cannot tell): the start of a row's :func:`_memory_used`."""
    from zeroseg.engine.memory import reset_peak_rss, status_mib

    try:
        reset_peak_rss()
        return status_mib("VmRSS")
    except (OSError, RuntimeError):
        return None


def _memory_used(start: float | None) -> dict | None:
    """The row's ``memory`` in report.json: the process's RSS when the row started (what it
    held already: torch, the world's splits, earlier rows' leftovers) and its peak while the row
    trained and was evaluated, in MiB."""
    from zeroseg.engine.memory import status_mib

    if start is None:
        return None
    # the kernel's peak mark, reset just before ``start`` was read, can lag it by a page or two
    peak = max(status_mib("VmHWM"), start)
    return {"start_rss_mib": round(start, 1), "peak_rss_mib": round(peak, 1)}


def _release_memory() -> None:
    """Hands the heap a finished row freed back to the system (glibc's malloc_trim), so a
    ``--jobs`` worker does not carry its last row's peak into the next one."""
    import ctypes
    import ctypes.util
    import gc

    gc.collect()
    libc = ctypes.util.find_library("c")
    if libc:
        try:
            ctypes.CDLL(libc).malloc_trim(0)
        except (OSError, AttributeError):  # not glibc
            pass


def _job_init(threads: int) -> None:
    """A ``--jobs`` worker: its share of the machine's threads."""
    torch.set_num_threads(threads)


def _job_row(
    name: str,
    cfg,
    directory: Path,
    grid_images: int,
    refine: Sequence[str],
    tag: str = "",
    eval_split: str = "test",
    reuse_from: Path | None = None,
) -> dict:
    """A ``--jobs`` worker's row: the world from the cache the parent filled, no progress bars
    (two workers' bars would interleave)."""
    data = runner.build_data(cfg, progress=False, test=eval_split == "test")
    try:
        return _run_row(
            name,
            cfg,
            data,
            directory,
            progress=False,
            grid_images=grid_images,
            refine=refine,
            tag=tag,
            eval_split=eval_split,
            reuse_from=reuse_from,
        )
    finally:
        del data
        _release_memory()


def _ready(name: str, done: set[str], planned: Sequence[str]) -> bool:
    """Whether a row may start in a parallel run: the rows it waits for (:func:`waits_for`) in
    this run have finished.

    Rows that share a trained stage (ZS3Net's segmenter is projection's, ZS5Net's is ZS3Net's,
    PADing's mask model is mask-projection's, sazs-nofusion's segmenter is sazs's, ablations
    start from their full method) wait for the row that trains it, so a worker does not idle
    on another worker's stage lock; rows that share none with their baselines (ZegCLIP, SAZS,
    AlignZeg) say ``demo.after: []`` and start at once.
    """
    return all(b in done for b in waits_for(name) if b in planned)


def _priority(name: str, planned: Sequence[str], _chain: frozenset[str] = frozenset()) -> float:
    """The seconds of training on the longest chain of rows that starts with ``name``: its
    ``demo.cost`` plus that of the longest chain among the planned rows that wait for it
    (:func:`_ready`). A parallel run starts the ready row with the longest chain first (list
    scheduling by critical path), so the long rows and the rows they hold up do not end up
    running alone at the end while the other worker idles."""
    chain = _chain | {name}  # a cycle among baselines ends the chain
    waiting = [d for d in planned if d not in chain and name in waits_for(d)]
    return DEMO_ROWS[name].cost + max((_priority(d, planned, chain) for d in waiting), default=0.0)


def _start_order(
    pending: Sequence[tuple[int, str]],
    done: Sequence[set[str]],
    planned: Sequence[Sequence[str]],
) -> list[tuple[int, str]]:
    """The pending ``(run, row)`` pairs of one or more demo runs that may start (:func:`_ready`
    within their own run), the longest chain first (:func:`_priority`); ties go to the earlier
    run, then to the report's order."""
    ready = [(r, n) for r, n in pending if _ready(n, done[r], planned[r])]
    return sorted(ready, key=lambda k: (-_priority(k[1], planned[k[0]]), k[0]))


def _rows_to_start(pending: Sequence[str], done: set[str], planned: Sequence[str]) -> list[str]:
    """:func:`_start_order` of a single run's rows."""
    return [n for _, n in _start_order([(0, n) for n in pending], [done], [planned])]


def _run_rows_parallel(runs: list[list[tuple]], jobs: int, threads: int) -> list[dict[str, dict]]:
    """Runs the rows of one or more demo runs (each a list of :attr:`_DemoPlan.rows_args`;
    ``--seeds`` puts all its seeds here, so one seed's last rows overlap the next seed's
    first) in ``jobs`` processes of ``threads`` threads each, a row
    starting once the rows it waits for in its own run have finished (:func:`_ready`), the
    ready row with the longest chain first (:func:`_start_order`). Returns, per run, each row's
    :func:`_run_row` result by name."""
    import multiprocessing as mp
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    planned = [[a[0] for a in run] for run in runs]
    pending = {(r, a[0]): a for r, run in enumerate(runs) for a in run}
    results: list[dict[str, dict]] = [{} for _ in runs]
    running = {}
    # spawn, not fork: a forked child of a process whose OpenMP pool is running can hang
    ctx = mp.get_context("spawn")
    with ProcessPoolExecutor(
        jobs, mp_context=ctx, initializer=_job_init, initargs=(threads,)
    ) as pool:
        while pending or running:
            done = [set(r) for r in results]
            starting = _start_order(list(pending), done, planned)
            if not starting and not running:  # a cycle among the waits: run the next row anyway
                starting = [next(iter(pending))]
            for key in starting[: jobs - len(running)]:
                running[pool.submit(_job_row, *pending.pop(key))] = key
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                run, name = running.pop(future)
                results[run][name] = future.result()
    return results


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
    jobs: int = 1,
    split: str = "test",
    stages_from: Path | None = None,
) -> dict:
    """Runs the demo and returns the report summary (also written to ``out``).

    ``jobs`` > 1 trains that many rows at once, each in its own process with an equal share of
    this process's threads (``torch.get_num_threads() // jobs``, at least 1); a row starts once
    its baselines have finished. Each row is deterministic for a given thread count, so a
    ``--jobs 2`` run repeats exactly, but its figures differ from a ``--jobs 1`` run as another
    seed's would: kernels split their sums by thread, and training amplifies the last-digit
    differences (up to a few hIoU points in a row; docs/benchmarks.md).

    ``stages_from``: an earlier demo output (``--stages-from``): every stage finished there for
    a row of this run (the same config, world and seed) is copied into ``out`` instead of
    trained, e.g. to evaluate a finished ``test`` run on ``val`` (``split="val"``); it is only
    read.
    """
    _check_jobs(jobs)
    t_start = time.perf_counter()
    plan = _plan_demo(
        out=out,
        world=world,
        methods=methods,
        quick=quick,
        overrides=overrides,
        grid_images=grid_images,
        refine=refine,
        refine_on=refine_on,
        split=split,
        stages_from=stages_from,
    )
    spec = plan.spec
    print(f"[zeroseg] world {spec.name!r}: {spec.num_classes} classes, {len(spec.unseen)} unseen")
    data = runner.build_data(plan.first_config, progress=progress, test=split == "test")
    threads = max(1, torch.get_num_threads() // jobs)
    if jobs == 1:
        results = {
            a[0]: _run_row(
                a[0],
                a[1],
                data,
                a[2],
                progress=progress,
                grid_images=a[3],
                refine=a[4],
                eval_split=split,
                reuse_from=a[7],
            )
            for a in plan.rows_args
        }
    else:
        print(f"[zeroseg] {jobs} jobs of {threads} thread(s) each")
        results = _run_rows_parallel([plan.rows_args], jobs, threads)[0]
    return _write_demo(
        plan, data, results, quick=quick, jobs=jobs, threads=threads, t_start=t_start
    )


def _check_jobs(jobs: object) -> None:
    if not isinstance(jobs, int) or isinstance(jobs, bool) or jobs < 1:
        raise ValueError(f"--jobs must be an integer >= 1, got {jobs!r}")


@dataclass(frozen=True)
class _DemoPlan:
    """One demo run's rows before any runs: where it writes, the world, each row's arguments."""

    out: Path
    spec: object  # the world's WorldSpec
    methods: list[str]
    # (name, cfg, directory, grid_images, refine, tag, split, reuse_from) per row
    rows_args: list[tuple]
    grid_images: int
    split: str = "test"  # the split every figure is of
    stages_from: Path | None = None  # --stages-from: the output finished stages are copied from

    @property
    def first_config(self):
        return self.rows_args[0][1]


def _plan_demo(
    *,
    out: Path,
    world: str | None,
    methods: Sequence[str],
    quick: bool,
    overrides: Sequence[str],
    grid_images: int,
    refine: Sequence[str],
    refine_on: Sequence[str] | None,
    tag: str = "",
    split: str = "test",
    stages_from: Path | None = None,
) -> _DemoPlan:
    """Validates a demo run's settings and builds its rows' configs and run directories
    (and each row's directory in ``stages_from``, or None)."""
    spec = load_spec(world)  # validates before any work
    methods = list(dict.fromkeys(methods))
    for m in methods:
        if m not in DEMO_PRESETS:
            raise ValueError(f"unknown method {m!r}; the demo knows {sorted(DEMO_PRESETS)}")
    check_report_split(out, split)
    check_stages_from(stages_from, out)
    out.mkdir(parents=True, exist_ok=True)
    configs = {n: demo_config(n, world=world, quick=quick, overrides=overrides) for n in methods}
    key = spec.content_key()
    run_dirs = {n: run_dir_of(n, configs[n], key, out) for n in methods}
    reuse = {
        n: None
        if stages_from is None
        else stages_from / run_dir_of(n, configs[n], key, stages_from)
        for n in methods
    }
    rows_args = [
        (
            name,
            configs[name],
            out / run_dirs[name],
            grid_images,
            tuple(refine if refine_on is None or name in refine_on else ()),
            tag,
            split,
            reuse[name],
        )
        for name in methods
    ]
    return _DemoPlan(out, spec, methods, rows_args, grid_images, split, stages_from)


SPLITS = ("test", "val")


def seed_stages(stages_from: Path | None, seed: int) -> Path | None:
    """Seed ``seed``'s output in a ``--seeds`` run's ``--stages-from`` directory (or None)."""
    return None if stages_from is None else stages_from / f"seed-{seed}"


def check_stages_from(stages_from: Path | None, out: Path) -> None:
    """Refuses a ``--stages-from`` that is not an earlier demo output (a directory holding
    ``runs/``, as one seed's output does) or that is ``out`` itself."""
    if stages_from is None:
        return
    if not (stages_from / "runs").is_dir():
        raise ValueError(
            f"--stages-from {stages_from}: expected an earlier demo --out holding runs/ "
            "(with --seeds, one holding seed-<s>/runs/ for every seed)"
        )
    if stages_from.resolve() == out.resolve():
        raise ValueError(
            f"--stages-from {stages_from} is --out itself; its stages are reused anyway"
        )


def check_report_split(out: Path, split: str) -> None:
    """Refuses a demo whose report would replace one of the other split in ``out``: a ``val``
    check (for a choice) and the ``test`` report share file names, and neither may silently
    take the other's place."""
    if split not in SPLITS:
        raise ValueError(f"--split must be one of {list(SPLITS)}, got {split!r}")
    path = out / "report.json"
    if not path.exists():
        return
    try:
        held = json.loads(path.read_text()).get("eval_split", "test")
    except (OSError, ValueError, AttributeError):
        raise ValueError(f"{path}: not a readable zeroseg report; use another --out") from None
    if held != split:
        raise ValueError(
            f"{out} holds a report of the {held!r} split; a --split {split} demo would replace "
            f"it: use another --out"
        )


def _write_demo(
    plan: _DemoPlan,
    data,
    results: dict[str, dict],
    *,
    quick: bool,
    jobs: int,
    threads: int,
    t_start: float,
) -> dict:
    """The report of a demo run whose rows have all run: report.md/json and the figures."""
    out, spec, methods, grid_images = plan.out, plan.spec, plan.methods, plan.grid_images
    rows: dict[str, dict] = {}
    grid_preds: dict[str, list[np.ndarray]] = {}
    confusions: dict[str, torch.Tensor] = {}
    foundations: dict[str, dict] = {}
    for name in methods:  # the report keeps the rows' order, whatever finished first
        rows.update(results[name]["rows"])
        grid_preds.update(results[name]["grid"])
        confusions.update(results[name]["confusions"])
        started_from, identity = results[name]["foundation"]
        if started_from:
            foundations.setdefault(started_from, identity)
    split = data.split
    for name, row in rows.items():  # the like-for-like comparisons the report shows
        row["baselines"] = [b for b in baselines_of(name) if b in rows]
    pairs = [(name, b) for name, row in rows.items() for b in row["baselines"]]
    over_images = gap_intervals(
        {name: [c] for name, c in confusions.items()}, pairs, split.seen, split.unseen
    )
    for (name, b), gaps in over_images.items():
        rows[name].setdefault("over_images", {})[b] = gaps
    save_image_confusions(
        out / IMAGE_CONFUSIONS,
        confusions,
        names=split.names,
        seen=split.seen,
        unseen=split.unseen,
        split=plan.split,
    )
    from zeroseg.report import write_report
    from zeroseg.viz import bar_chart, prediction_grid, seen_unseen_curves

    figures = {
        "bars": bar_chart(rows, out / "bars.png").name,
        "seen_unseen": seen_unseen_curves(rows, out / "seen_unseen.png").name,
    }
    shown = data.eval_split(plan.split)
    samples = [shown[i] for i in range(min(grid_images, len(shown)))]
    figures["predictions"] = prediction_grid(
        [s["image"].permute(1, 2, 0).numpy() for s in samples],
        [s["label"].numpy() for s in samples],
        grid_preds,
        data.split.num_classes,
        out / "predictions.png",
    ).name
    summary = {
        "title": f"ShapeWorld '{spec.name}'" + (" (quick)" if quick else ""),
        "world": spec.name,
        "world_key": spec.content_key(),
        # every figure below: test, read by nothing else; or val in a --split val check, whose
        # run never loads test
        "eval_split": plan.split,
        "tuned_on": "val",  # every choice: the calibration gamma, and the presets' settings
        "stages_from": None if plan.stages_from is None else str(plan.stages_from),
        "train_images": len(data.train),
        "val_images": len(data.val),
        "test_images": len(data.test) if data.test is not None else 0,
        "quick": quick,
        "threads": torch.get_num_threads() if jobs == 1 else threads,
        "jobs": jobs,
        "split": {
            "num_classes": split.num_classes,
            "names": list(split.names),
            "seen": list(split.seen_names),
            "unseen": list(split.unseen_names),
        },
        "foundation": next(iter(foundations.values()), None),
        "methods": rows,
        "figures": figures,
        "image_confusions": IMAGE_CONFUSIONS,
        "total_seconds": time.perf_counter() - t_start,
    }
    md, js = write_report(out, summary)
    print(f"[zeroseg] report: {md} and {js} ({summary['total_seconds']:.0f}s)")
    return summary


SEED_METRICS = ("seen_miou", "unseen_miou", "hiou", "miou", "ausuc")
# each demo report's per-image confusion matrices of every row (the paired image bootstrap's)
IMAGE_CONFUSIONS = "image-confusions.npz"


def run_seeds(*, out: Path, seeds: Sequence[int], **kwargs) -> dict:
    """The demo once per seed (``out/seed-<s>``, each with its full report) plus a spread table.

    Seed ``s`` sets the experiment ``seed`` (weight initialisation, and every stage key) and
    ``train.seed`` (the stage-1 batch order); the stage-0 encoder is shared, as a fixed CLIP
    checkpoint would be. Writes ``out/seeds.json`` and ``out/seeds.md``: per method the mean,
    sample standard deviation, minimum and maximum of mIoU(S), mIoU(U), hIoU and AUSUC over the
    seeds; and ``out/report.json`` / ``out/report.md``: per method each metric's mean as
    ``<metric>`` and its standard deviation as ``<metric>_std``, the gap to each of the method's
    baselines (:func:`baselines_of`) and whether it exceeds the spread (:func:`seed_gaps`).

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
    jobs = kwargs.get("jobs", 1)
    _check_jobs(jobs)
    check_report_split(out, kwargs.get("split", "test"))
    stages_from = kwargs.pop("stages_from", None)
    for seed in seeds:  # every seed's source before any seed runs
        check_stages_from(seed_stages(stages_from, seed), out / f"seed-{seed}")
    runs = {}
    if jobs == 1:
        for seed in seeds:
            print(f"[zeroseg] seed {seed}")
            runs[seed] = run_demo(
                out=out / f"seed-{seed}",
                overrides=[*overrides, f"seed={seed}", f"train.seed={seed}"],
                stages_from=seed_stages(stages_from, seed),
                **kwargs,
            )
    else:
        runs = _run_seeds_pooled(
            out=out, seeds=seeds, overrides=overrides, stages_from=stages_from, **kwargs
        )
    spread = seed_spread({s: r["methods"] for s, r in runs.items()})
    summary = {"seeds": seeds, "methods": spread, "title": runs[seeds[0]]["title"]}
    images = {s: load_image_confusions(out / f"seed-{s}" / IMAGE_CONFUSIONS) for s in seeds}
    from zeroseg.report import write_seed_report, write_seed_summary

    md, js = write_seed_report(out, summary)
    print(f"[zeroseg] spread over seeds {seeds}: {md} and {js}")
    first = runs[seeds[0]]
    rows = seed_rows({s: r["methods"] for s, r in runs.items()}, spread)
    _add_image_intervals(rows, images)
    report = {
        "title": first["title"] + f" ({len(seeds)} seeds)",
        "world": first["world"],
        "world_key": first["world_key"],
        "eval_split": first["eval_split"],
        "tuned_on": first["tuned_on"],
        "stages_from": None if stages_from is None else str(stages_from),
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


def _run_seeds_pooled(
    *,
    out: Path,
    seeds: list[int],
    overrides: Sequence[str],
    world: str | None = None,
    methods: Sequence[str] = DEFAULT_METHODS,
    quick: bool = False,
    progress: bool = True,
    grid_images: int = 6,
    refine: Sequence[str] = (),
    refine_on: Sequence[str] | None = None,
    jobs: int = 2,
    split: str = "test",
    stages_from: Path | None = None,
) -> dict[int, dict]:
    """:func:`run_seeds` with ``jobs`` > 1: every seed's rows in one queue of ``jobs`` workers
    (a seed's last rows overlap the next seed's first ones instead of leaving a worker idle),
    then each seed's report as :func:`run_demo` writes it. Each row runs exactly as in a
    separate ``run_demo`` of its seed (same config, directory, thread count), so its figures
    are the same; a seed's ``total_seconds`` counts from the start of all seeds."""
    t_start = time.perf_counter()
    plans = {
        seed: _plan_demo(
            out=out / f"seed-{seed}",
            world=world,
            methods=methods,
            quick=quick,
            overrides=[*overrides, f"seed={seed}", f"train.seed={seed}"],
            grid_images=grid_images,
            refine=refine,
            refine_on=refine_on,
            tag=f" (seed {seed})",
            split=split,
            stages_from=seed_stages(stages_from, seed),
        )
        for seed in seeds
    }
    spec = plans[seeds[0]].spec
    print(f"[zeroseg] world {spec.name!r}: {spec.num_classes} classes, {len(spec.unseen)} unseen")
    data = runner.build_data(plans[seeds[0]].first_config, progress=progress, test=split == "test")
    threads = max(1, torch.get_num_threads() // jobs)
    print(
        f"[zeroseg] {jobs} jobs of {threads} thread(s) each; seeds {seeds}: their rows in one queue",
        flush=True,
    )
    results = _run_rows_parallel([plans[s].rows_args for s in seeds], jobs, threads)
    runs = {}
    for seed, result in zip(seeds, results, strict=True):
        print(f"[zeroseg] seed {seed}")
        runs[seed] = _write_demo(
            plans[seed], data, result, quick=quick, jobs=jobs, threads=threads, t_start=t_start
        )
    return runs


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
    gaps to its baselines (:func:`baselines_of`, :func:`seed_gaps`) that were run too: ``baseline``
    and ``gap`` for the first, ``comparisons`` for each."""
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
        present = [b for b in baselines_of(name) if b in rows]
        if present:
            comparisons = {b: seed_gaps(row, rows[b]) for b in present}
            for b, gaps in comparisons.items():
                _add_seed_differences(gaps, spread[name], spread[b])
            row["baseline"] = present[0]
            row["gap"] = comparisons[present[0]]
            row["comparisons"] = comparisons
    return rows


def _add_image_intervals(rows: dict, images: dict[int, dict]) -> None:
    """Adds to each compared metric's gap ``over_images``: the 95% interval of the difference of
    the seed means over resamples of the scored images (:func:`gap_intervals`; one draw for every
    seed of both rows). ``images``: seed -> :func:`load_image_confusions` of its report."""
    seeds = list(images)
    first = images[seeds[0]]
    stacks = {name: [images[s]["rows"][name] for s in seeds] for name in first["rows"]}
    pairs = [(n, b) for n, r in rows.items() for b in r.get("comparisons", {})]
    intervals = gap_intervals(stacks, pairs, first["seen"], first["unseen"])
    for (n, b), gaps in intervals.items():
        for m, interval in gaps.items():
            if m in rows[n]["comparisons"][b]:
                rows[n]["comparisons"][b][m]["over_images"] = {
                    "low": interval["low"],
                    "high": interval["high"],
                }


def _add_seed_differences(gaps: dict[str, dict], row: dict, base: dict) -> None:
    """Adds to each metric's gap ``by_seed`` (the row minus its baseline, seed by seed) and
    ``same_sign`` (whether every seed's difference has the sign of the mean's). Descriptive
    only: which gaps count is :data:`GAP_RULE`'s; the paired view tells the reader whether a gap
    the rule calls no difference still held in every seed (rows sharing a stage per seed, such
    as ZS3Net and the baseline whose stage 1 it loads, vary together)."""
    for m, gap in gaps.items():
        values, base_values = row[m]["values"], base[m]["values"]
        diffs = {s: values[s] - base_values[s] for s in values if s in base_values}
        gap["by_seed"] = diffs
        gap["same_sign"] = bool(diffs) and all(
            (d > 0) == (gap["value"] > 0) and d != 0 for d in diffs.values()
        )


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
