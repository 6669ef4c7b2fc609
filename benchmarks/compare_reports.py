"""Compare two runs of `make demo` / `make benchmark` (or `zeroseg demo`): figures and speed.

Every seed report (``report.json``) under the first output directory is paired with the one at
the same relative path under the second. Figures are compared value by value (every leaf of the
JSON), leaving out what a rerun may change without any figure changing: wall and CPU times,
memory, versions, the machine and the dates. Then the training time of every method row in
every seed (``methods.<row>.train_seconds``, rows that trained for 20 s or more) is compared as
a ratio, second run over first: min, median, max, and the three rows furthest out either way.

    python benchmarks/compare_reports.py OLD_RUNS NEW_RUNS
    python benchmarks/compare_reports.py /work/a/runs/benchmark /work/b/runs/benchmark

With ``--rows ROW ...`` only those method rows (``methods.<row>``) are compared: for a run of
some rows into a copy of another run (ablation rows beside the full rows they reused), which
holds rows the first run lacks and lacks rows it holds.

Exits with 1 if any figure differs or is missing from the second run, so it can gate a "nothing
moved" claim. Figures only the second run has (a field added since the first, such as session
43's ``over_images`` intervals) are counted apart: they are new, not moved.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# leaves whose dotted path contains one of these (lower case) are not figures
NOT_FIGURES = (
    "seconds",
    "time",
    "memory",
    "rss",
    "mib",
    "cpu",
    "machine",
    "version",
    "torch",
    "date",
    "commit",
    "ms_per",
    "per_image",
    "reused",  # whether a row's stages were loaded, not what they give
)


_MISSING = object()  # a figure the second run lacks differs from every value


def leaves(value: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted path, value) of every leaf of a JSON value."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield from leaves(item, f"{path}.{key}" if path else str(key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from leaves(item, f"{path}[{i}]")
    else:
        yield path, value


def figures(report: dict, rows: list[str] | None = None) -> dict[str, Any]:
    """The report's figures; with ``rows``, only those under ``methods.<row>`` for a listed row."""
    found = {k: v for k, v in leaves(report) if not any(s in k.lower() for s in NOT_FIGURES)}
    if rows is None:
        return found
    prefixes = tuple(f"methods.{row}." for row in rows)
    return {k: v for k, v in found.items() if k.startswith(prefixes)}


def seed_reports(root: Path) -> dict[Path, dict]:
    """Relative path -> contents of every report.json under ``root`` that has ``methods``."""
    found = {}
    for path in sorted(root.rglob("report.json")):
        report = json.loads(path.read_text())
        if "methods" in report:
            found[path.relative_to(root)] = report
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("old", type=Path, help="the first run's output directory")
    parser.add_argument("new", type=Path, help="the second run's output directory")
    parser.add_argument(
        "--rows", nargs="+", metavar="ROW", help="compare only these method rows (methods.<row>)"
    )
    args = parser.parse_args(argv)
    for root in (args.old, args.new):
        if not root.is_dir():
            parser.error(f"{root}: not a directory (expected a demo or benchmark output)")
    old, new = seed_reports(args.old), seed_reports(args.new)
    if not old:
        parser.error(f"{args.old}: no seed report.json (with 'methods') under it")
    unpaired = sorted(set(old) ^ set(new))
    if unpaired:
        parser.error(f"reports in only one of the two runs: {[str(p) for p in unpaired]}")

    differing, added_total = 0, 0
    ratios: list[tuple[float, str]] = []
    for rel in sorted(old):
        a, b = old[rel], new[rel]
        absent = [row for row in args.rows or () if row not in a["methods"]]
        if absent:
            parser.error(f"{args.old / rel}: no method row {absent[0]!r} (--rows)")
        fa, fb = figures(a, args.rows), figures(b, args.rows)
        diffs = sorted(k for k in fa if fa[k] != fb.get(k, _MISSING))
        added = sorted(fb.keys() - fa.keys())
        differing += len(diffs)
        added_total += len(added)
        shown = ", ".join(diffs[:5]) + (" ..." if len(diffs) > 5 else "")
        new_note = f" ({len(added)} new in the second run)" if added else ""
        print(
            f"{rel}: {len(fa)} figures, {len(diffs)} differ{': ' + shown if diffs else ''}"
            f"{new_note}"
        )
        for row, entry in a["methods"].items():
            if args.rows and row not in args.rows:
                continue
            t_old = entry.get("train_seconds") if isinstance(entry, dict) else None
            t_new = b["methods"].get(row, {}).get("train_seconds")
            if t_old and t_new and t_old >= 20:
                ratios.append((t_new / t_old, f"{rel.parent}/{row}"))
    if ratios:
        values = sorted(r for r, _ in ratios)
        print(
            f"\ntraining time, second run / first, {len(values)} rows: min {values[0]:.3f}, "
            f"median {statistics.median(values):.3f}, max {values[-1]:.3f}"
        )
        ranked = sorted(ratios)
        for ratio, name in ranked[:3] + ranked[-3:]:
            print(f"  {ratio:.3f}  {name}")
    print(
        f"\n{differing} differing figures in {len(old)} reports"
        + (f"; {added_total} figures new in the second run" if added_total else "")
    )
    return 1 if differing else 0


if __name__ == "__main__":
    sys.exit(main())
