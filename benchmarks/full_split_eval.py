"""Re-evaluate the models of ``zeroseg demo --seeds`` runs on whole splits, and compare pairs.

    python benchmarks/full_split_eval.py runs/b42/default runs/b42/second \\
        --rows projection-frozen projection-probe zegclip \\
        --pairs zegclip:projection-frozen zegclip:projection-probe

``--quick`` evaluates on the first 200 images of ``val`` and ``test``. This evaluates the same
trained models (each seed's ``seed-<s>/runs/<row>-<digest>``; nothing is trained) with ``zeroseg
eval --set data.val_limit=N``, in this process (default N: the whole split, ShapeWorld's 500):
the calibration gamma chosen on N ``val`` images, the metrics on N ``test`` images (``--split
val``: on those ``val`` images, the split choices are made on). Both splits' images are fixed
functions of the world, so what moves a gap between 200 and 500 images is which images are
scored, not the training. Prints mean ± sample std over the seeds per row and world, and per pair
the difference of the means on unseen mIoU and hIoU, **bold** where it exceeds the two rows'
stds added (in brackets), "=" where it does not, with the differences seed by seed: the demo's
statistics and the README tables' cells. Writes nothing
but ``--json`` (every evaluation's figures) when given.

``--bootstrap R`` also prints, per pair, a 95% interval of each gap over the scored images: the
images are resampled R times with replacement, the same draw for every seed of both rows
(:func:`zeroseg.metrics.bootstrap.paired_gap_interval`, from each evaluation's per-image
confusion matrices, ``zeroseg eval --image-confusions``). The seed spread says how training moves
a gap on these images; the interval says how another sample of images would.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import re
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from readme_tables import cell, gap_cell  # noqa: E402  (the README tables' cells, this directory)

from zeroseg.cli import main as zeroseg_main  # noqa: E402
from zeroseg.demo import seed_gaps, seed_spread  # noqa: E402  (the demo's seed statistics)
from zeroseg.metrics.bootstrap import gap_intervals, load_image_confusions  # noqa: E402
from zeroseg.report import image_interval  # noqa: E402  (the reports' "[low, high]")

METRICS = ("seen_miou", "unseen_miou", "hiou")
GAP_METRICS = ("unseen_miou", "hiou")


def seed_dirs(run: Path) -> list[Path]:
    seeds = sorted(run.glob("seed-*"), key=lambda p: int(p.name.removeprefix("seed-")))
    if not seeds:
        raise SystemExit(f"{run}: no seed-<s> directories (the --out of `zeroseg demo --seeds`)")
    return seeds


def model_dir(seed: Path, row: str) -> Path:
    """The one trained run of ``row`` in a seed's ``runs/`` (``<row>-<10 hex digits>``)."""
    pattern = re.compile(rf"^{re.escape(row)}-[0-9a-f]{{10}}$")
    found = [
        d
        for d in sorted((seed / "runs").iterdir())
        if pattern.match(d.name) and (d / "model.safetensors").is_file()
    ]
    if len(found) != 1:
        names = [d.name for d in found] or "none"
        raise SystemExit(f"{seed}/runs: expected one trained run of {row!r}, found {names}")
    return found[0]


def evaluate(
    directory: Path, limit: int | None, split: str = "test", confusions: Path | None = None
) -> dict:
    """``zeroseg eval`` of one trained run, in this process; its JSON figures (and, with
    ``confusions``, its per-image confusion matrices written there)."""
    value = "null" if limit is None else str(limit)
    argv = ["eval", str(directory), "--no-progress", "--split", split]
    argv += ["--set", f"data.val_limit={value}"]
    if confusions is not None:
        argv += ["--image-confusions", str(confusions)]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = zeroseg_main(argv)
    if code:
        raise SystemExit(f"zeroseg {' '.join(argv)} failed (exit {code})")
    text = out.getvalue()
    return json.loads(text[text.index("{") :])


def load_confusions(path: Path) -> dict:
    """An ``--image-confusions`` file (one run's): ``confusions`` (N, K, K) and the ``seen`` /
    ``unseen`` class indices."""
    found = load_image_confusions(path)
    (confusions,) = found["rows"].values()
    return {"confusions": confusions, "seen": found["seen"], "unseen": found["unseen"]}


def intervals(
    confusions: dict, pairs: list[tuple[str, str]], reps: int
) -> dict[str, dict[tuple[str, str], dict]]:
    """``confusions``: world -> row -> one :func:`load_confusions` per seed. Per world,
    :func:`gap_intervals` of the pairs (one draw of the images for every row and seed)."""
    out: dict[str, dict[tuple[str, str], dict]] = {}
    for world, rows in confusions.items():
        first = next(iter(rows.values()))[0]
        stacks = {row: [c["confusions"] for c in seeds] for row, seeds in rows.items()}
        out[world] = gap_intervals(stacks, pairs, first["seen"], first["unseen"], reps=reps)
    return out


def interval_cell(gap: dict) -> str:
    """``+1.2 [-0.3, +2.6]``: the gap on the scored images and its 95% interval over images."""
    return f"{gap['gap']:+.1f} {image_interval(gap)}"


def tables(
    results: dict,
    rows: list[str],
    pairs: list[tuple[str, str]],
    gap_intervals: dict | None = None,
) -> str:
    """``results``: world -> row -> one evaluation's figures per seed (in seed order). Means,
    sample stds and the gaps' rule are the demo's (:func:`zeroseg.demo.seed_spread`,
    :func:`zeroseg.demo.seed_gaps`). ``gap_intervals``: :func:`intervals`' output, a table of
    its own."""
    worlds = list(results)
    spread = {
        w: seed_spread(
            {i: {r: results[w][r][i] for r in rows} for i in range(len(results[w][rows[0]]))}
        )
        for w in worlds
    }
    flat = {
        w: {
            r: {k: v for m in METRICS for k, v in ((m, sp[m]["mean"]), (f"{m}_std", sp[m]["std"]))}
            for r, sp in spread[w].items()
        }
        for w in worlds
    }
    head = "| method | " + " | ".join(
        f"{w}: mIoU(S) | mIoU(U) | hIoU" if i == 0 else "mIoU(S) | mIoU(U) | hIoU"
        for i, w in enumerate(worlds)
    )
    lines = [head + " |", "|---|" + "---:|" * (3 * len(worlds))]
    for row in rows:
        cells = [cell(flat[w][row], m) for w in worlds for m in METRICS]
        lines.append(f"| {row} | " + " | ".join(cells) + " |")

    def gap_head(unseen: str, hiou: str) -> list[str]:
        """A gap table's blank line, header (a column pair per world) and separator."""
        pairs_ = " | ".join(f"{w}: {unseen} | {hiou}" for w in worlds)
        return ["", f"| method | vs | {pairs_} |", "|---|---|" + "---:|" * (2 * len(worlds))]

    gaps = gap_head("Δ mIoU(U)", "Δ hIoU")
    by_seed = gap_head("Δ mIoU(U) by seed", "Δ hIoU by seed")
    for a, b in pairs:
        cells, seeds = [], []
        for w in worlds:
            gap = seed_gaps(flat[w][a], flat[w][b], GAP_METRICS)
            for m in GAP_METRICS:
                cells.append(gap_cell(gap[m]))
                va, vb = spread[w][a][m]["values"], spread[w][b][m]["values"]
                seeds.append(", ".join(f"{va[s] - vb[s]:+.1f}" for s in va))
        gaps.append(f"| {a} | {b} | " + " | ".join(cells) + " |")
        by_seed.append(f"| {a} | {b} | " + " | ".join(seeds) + " |")
    over_images = []
    if gap_intervals is not None:
        over_images = gap_head("Δ mIoU(U) [95% over images]", "Δ hIoU")
        for a, b in pairs:
            cells = [
                interval_cell(gap_intervals[w][(a, b)][m]) for w in worlds for m in GAP_METRICS
            ]
            over_images.append(f"| {a} | {b} | " + " | ".join(cells) + " |")
    return "\n".join(lines + gaps + by_seed + over_images)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="--out directories of demo --seeds")
    parser.add_argument("--rows", nargs="+", required=True, help="demo rows to evaluate")
    parser.add_argument(
        "--pairs", nargs="*", default=[], help="METHOD:BASELINE pairs to compare (rows above)"
    )
    parser.add_argument(
        "--limit", type=int, default=None, help="images of val and of test (default: all)"
    )
    parser.add_argument(
        "--split",
        choices=("test", "val"),
        default="test",
        help="the split scored (gamma is chosen on val either way; val scores its own images)",
    )
    parser.add_argument("--json", type=Path, help="write every evaluation's figures here")
    parser.add_argument(
        "--bootstrap",
        type=int,
        default=0,
        metavar="R",
        help="also a 95%% interval of each pair's gaps over R resamples of the images (0: off)",
    )
    args = parser.parse_args(argv)
    if args.bootstrap < 0:
        raise SystemExit(f"--bootstrap: a number of resamples >= 0, got {args.bootstrap}")
    pairs = []
    for p in args.pairs:
        a, sep, b = p.partition(":")
        if not sep or a not in args.rows or b not in args.rows:
            raise SystemExit(f"--pairs {p!r}: expected METHOD:BASELINE, both among --rows")
        pairs.append((a, b))
    results: dict[str, dict[str, list[dict]]] = {}
    confusions: dict[str, dict[str, list[dict]]] = {}
    with tempfile.TemporaryDirectory() as scratch:
        for run in args.runs:
            world = run.name
            if world in results:
                raise SystemExit(f"{run}: two runs named {world!r}; give runs distinct names")
            results[world] = {row: [] for row in args.rows}
            confusions[world] = {row: [] for row in args.rows}
            for seed in seed_dirs(run):
                for row in args.rows:
                    directory = model_dir(seed, row)
                    print(f"[full_split_eval] {directory}", file=sys.stderr, flush=True)
                    path = None
                    if args.bootstrap:
                        path = Path(scratch) / f"{world}-{seed.name}-{row}.npz"
                    results[world][row].append(evaluate(directory, args.limit, args.split, path))
                    if path is not None:
                        confusions[world][row].append(load_confusions(path))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    gap_intervals = intervals(confusions, pairs, args.bootstrap) if args.bootstrap else None
    print(tables(results, args.rows, pairs, gap_intervals))


if __name__ == "__main__":
    main()
