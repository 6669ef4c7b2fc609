"""Print README's 3-seed tables from the reports ``zeroseg demo --seeds`` writes.

    python benchmarks/readme_tables.py runs/benchmark/default runs/benchmark/second

Each argument is the ``--out`` of a seed run (its ``report.json``: per method each metric's mean
and ``<metric>_std``, and the gaps to its baselines). The first table has a column group per
run (mIoU(S), mIoU(U), hIoU, AUSUC as mean ± std); the second the like-for-like gaps on unseen
mIoU and hIoU, **bold** where the gap exceeds the two rows' standard deviations added (given in
brackets), "=" where it does not. With ``--rows`` only those methods are printed, in that order.
With ``--by-seed`` a third table gives each of those gaps seed by seed (each gap's ``by_seed``,
which ``zeroseg demo --seeds`` records beside it): descriptive, for pairs whose rows vary together
(a method that loads its baseline's stage 1 per seed); the rule above still decides which gaps
count. With ``--over-images`` another table gives each gap's 95% interval over resampled images
(``over_images``, since session 43: how much another sample of images could move it).

With ``--pairs METHOD:BASELINE ...`` only README's headline table is printed: a row per pair and a
column per run, each cell "Δ mIoU(U) / Δ hIoU" marked as in the second table
(``python benchmarks/readme_tables.py runs/benchmark/default runs/benchmark/second
runs/benchmark/third --pairs zs3net:projection zs5net:zs3net ...``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

METRICS = ("seen_miou", "unseen_miou", "hiou", "ausuc")
GAP_METRICS = ("unseen_miou", "hiou")


def load(run: Path) -> dict:
    path = run / "report.json"
    if not path.is_file():
        raise SystemExit(f"{path}: not found (the --out of a `zeroseg demo --seeds` run)")
    report = json.loads(path.read_text())
    if "seeds" not in report:
        raise SystemExit(f"{path}: not a seed report (no 'seeds'); run zeroseg demo --seeds")
    return report


def cell(row: dict, metric: str, bold: bool = False) -> str:
    text = f"{row[metric]:.1f} ± {row[metric + '_std']:.1f}"
    return f"**{text}**" if bold else text


def gap_cell(gap: dict, spread: bool = True) -> str:
    """A gap, **bold** beyond the spread, "= " within; with ``spread``, the spread in brackets."""
    text = f"{gap['value']:+.1f}"
    marked = f"**{text}**" if gap["exceeds_spread"] else f"= {text}"
    return f"{marked} ({gap['spread']:.1f})" if spread else marked


def method_row(run: Path, report: dict, name: str) -> dict:
    if name not in report["methods"]:
        raise SystemExit(f"{run / 'report.json'} has no method {name!r}")
    return report["methods"][name]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="--out directories of seed runs")
    parser.add_argument("--rows", nargs="+", help="methods to print (default: all, report order)")
    parser.add_argument(
        "--by-seed", action="store_true", help="also print each gap seed by seed (third table)"
    )
    parser.add_argument(
        "--over-images",
        action="store_true",
        help="also print each gap's 95%% interval over resampled images (another table)",
    )
    parser.add_argument(
        "--pairs",
        nargs="+",
        metavar="METHOD:BASELINE",
        help="print only the headline table: these gaps, a column per run",
    )
    args = parser.parse_args(argv)
    reports = [load(r) for r in args.runs]
    if args.pairs:
        print_headline(args.runs, reports, [parse_pair(p) for p in args.pairs])
        return
    names = args.rows or list(reports[0]["methods"])
    for name in names:
        for run, rep in zip(args.runs, reports):
            method_row(run, rep, name)
    header = ["method"]
    for rep in reports:
        header += [f"{rep['world']}: mIoU(S)", "mIoU(U)", "hIoU", "AUSUC"]
    print("| " + " | ".join(header) + " |")
    print("|---|" + "---:|" * (len(header) - 1))
    for name in names:
        cells = [name]
        for rep in reports:
            row = rep["methods"][name]
            cells += [cell(row, m, bold=m == "hiou") if m in row else "–" for m in METRICS]
        print("| " + " | ".join(cells) + " |")
    print()

    def mean_gap(i: int, name: str, base: str, m: str) -> str:
        gaps = reports[i]["methods"][name].get("comparisons", {}).get(base, {})
        return gap_cell(gaps[m]) if m in gaps else "–"

    print_gap_table(reports, names, ("Δ mIoU(U)", "Δ hIoU"), mean_gap)
    if args.by_seed:
        print()
        print_by_seed(args.runs, reports, names)
    if args.over_images:
        print()
        print_over_images(args.runs, reports, names)


def parse_pair(text: str) -> tuple[str, str]:
    method, sep, base = text.partition(":")
    if not sep or not method or not base:
        raise SystemExit(f"--pairs: {text!r} is not METHOD:BASELINE (e.g. zs3net:projection)")
    return method, base


def print_headline(runs: list[Path], reports: list[dict], pairs: list[tuple[str, str]]) -> None:
    """README's headline: one row per (method, baseline) pair, one column per run."""
    print("| method | vs | " + " | ".join(rep["world"] for rep in reports) + " |")
    print("|---|---|" + "---:|" * len(reports))
    for method, base in pairs:
        cells = [method, base]
        for run, rep in zip(runs, reports):
            gaps = method_row(run, rep, method).get("comparisons", {}).get(base)
            if gaps is None:
                raise SystemExit(
                    f"{run / 'report.json'}: {method!r} is not compared with {base!r} "
                    "(its preset's demo.baselines)"
                )
            cells.append(" / ".join(gap_cell(gaps[m], spread=False) for m in GAP_METRICS))
        print("| " + " | ".join(cells) + " |")


def print_gap_table(reports: list[dict], names: list[str], labels: tuple, cell_of) -> None:
    """A table with a row per (method, baseline) of the first report and, per report, a column
    per gap metric: ``cell_of(report_index, method, baseline, metric)``."""
    header = ["method", "vs"]
    for rep in reports:
        header += [f"{rep['world']}: {labels[0]}", *labels[1:]]
    print("| " + " | ".join(header) + " |")
    print("|---|---|" + "---:|" * (len(header) - 2))
    for name in names:
        for base in reports[0]["methods"][name].get("comparisons", {}):
            cells = [name, base]
            for i in range(len(reports)):
                cells += [cell_of(i, name, base, m) for m in GAP_METRICS]
            print("| " + " | ".join(cells) + " |")


def recorded_gap(runs, reports, i: int, name: str, base: str, m: str, key: str, what: str):
    """Report ``i``'s gap of ``name`` to ``base`` on ``m`` (None if not compared), refusing a
    report that predates ``key`` (what a later ``zeroseg demo --seeds`` records beside it)."""
    gap = reports[i]["methods"][name].get("comparisons", {}).get(base, {}).get(m)
    if gap is not None and key not in gap:
        raise SystemExit(f"{runs[i]}/report.json: no {what} ('{key}'); re-run zeroseg demo --seeds")
    return gap


def print_by_seed(runs: list[Path], reports: list[dict], names: list[str]) -> None:
    """The gaps of the second table, seed by seed (method minus baseline in each seed)."""

    def by_seed(i: int, name: str, base: str, m: str) -> str:
        gap = recorded_gap(runs, reports, i, name, base, m, "by_seed", "per-seed gaps")
        return "–" if gap is None else ", ".join(f"{d:+.1f}" for d in gap["by_seed"].values())

    print_gap_table(reports, names, ("Δ mIoU(U) by seed", "Δ hIoU by seed"), by_seed)


def print_over_images(runs: list[Path], reports: list[dict], names: list[str]) -> None:
    """The gaps of the second table with their 95% intervals over resampled images (recorded
    since session 43)."""
    from zeroseg.report import image_interval  # the reports' "[low, high]"

    def over_images(i: int, name: str, base: str, m: str) -> str:
        what = "intervals over images"
        gap = recorded_gap(runs, reports, i, name, base, m, "over_images", what)
        return "–" if gap is None else f"{gap['value']:+.1f} {image_interval(gap['over_images'])}"

    print_gap_table(reports, names, ("Δ mIoU(U) [95% over images]", "Δ hIoU"), over_images)


if __name__ == "__main__":
    main()
