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
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from readme_tables import cell, gap_cell  # noqa: E402  (the README tables' cells, this directory)

from zeroseg.cli import main as zeroseg_main  # noqa: E402
from zeroseg.demo import seed_gaps, seed_spread  # noqa: E402  (the demo's seed statistics)

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


def evaluate(directory: Path, limit: int | None, split: str = "test") -> dict:
    """``zeroseg eval`` of one trained run, in this process; its JSON figures."""
    value = "null" if limit is None else str(limit)
    argv = ["eval", str(directory), "--no-progress", "--split", split]
    argv += ["--set", f"data.val_limit={value}"]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = zeroseg_main(argv)
    if code:
        raise SystemExit(f"zeroseg {' '.join(argv)} failed (exit {code})")
    text = out.getvalue()
    return json.loads(text[text.index("{") :])


def tables(results: dict, rows: list[str], pairs: list[tuple[str, str]]) -> str:
    """``results``: world -> row -> one evaluation's figures per seed (in seed order). Means,
    sample stds and the gaps' rule are the demo's (:func:`zeroseg.demo.seed_spread`,
    :func:`zeroseg.demo.seed_gaps`)."""
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
    gaps = ["", "| method | vs | " + " | ".join(f"{w}: Δ mIoU(U) | Δ hIoU" for w in worlds) + " |"]
    gaps.append("|---|---|" + "---:|" * (2 * len(worlds)))
    by_seed = [
        "",
        "| method | vs | "
        + " | ".join(f"{w}: Δ mIoU(U) by seed | Δ hIoU by seed" for w in worlds)
        + " |",
        "|---|---|" + "---:|" * (2 * len(worlds)),
    ]
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
    return "\n".join(lines + gaps + by_seed)


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
    args = parser.parse_args(argv)
    pairs = []
    for p in args.pairs:
        a, sep, b = p.partition(":")
        if not sep or a not in args.rows or b not in args.rows:
            raise SystemExit(f"--pairs {p!r}: expected METHOD:BASELINE, both among --rows")
        pairs.append((a, b))
    results: dict[str, dict[str, list[dict]]] = {}
    for run in args.runs:
        world = run.name
        if world in results:
            raise SystemExit(f"{run}: two runs named {world!r}; give runs distinct names")
        results[world] = {row: [] for row in args.rows}
        for seed in seed_dirs(run):
            for row in args.rows:
                directory = model_dir(seed, row)
                print(f"[full_split_eval] {directory}", file=sys.stderr, flush=True)
                results[world][row].append(evaluate(directory, args.limit, args.split))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    print(tables(results, args.rows, pairs))


if __name__ == "__main__":
    main()
