"""The peak memory of a command and every process it starts (``zeroseg demo --jobs 2`` runs rows
in worker processes, which ``/usr/bin/time`` does not add up).

    python benchmarks/tree_memory.py -- make demo

Samples the process tree every ``--interval`` seconds and prints, at the end, the wall time, the
peak of the tree's summed RSS (counts the pages the processes share, such as torch's libraries,
once per process: an upper bound), the peak of its summed PSS (each shared page split among the
processes that map it: the memory the tree takes from the machine) and the largest single
process's RSS. A peak shorter than the interval can be missed. Exits with the command's code.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path


def _children() -> dict[int, list[int]]:
    """Parent pid -> its children's pids, from /proc."""
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:  # the process ended meanwhile
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        tree.setdefault(parent, []).append(int(entry))
    return tree


def _field_kib(path: str, field: str) -> int:
    """A ``Field:   123 kB`` line of a /proc file, in KiB (0 if the process ended)."""
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _tree(root: int) -> list[int]:
    children = _children()
    pids, stack = [], [root]
    while stack:
        pid = stack.pop()
        pids.append(pid)
        stack.extend(children.get(pid, []))
    return pids


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--interval", type=float, default=0.5, help="seconds between samples")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="the command (after --)")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the command to measure after --, e.g. -- make demo")
    if args.interval <= 0:
        parser.error(f"--interval must be > 0 seconds, got {args.interval}")
    start = time.perf_counter()
    process = subprocess.Popen(command)
    peak_rss = peak_pss = peak_one = 0
    while process.poll() is None:
        pids = _tree(process.pid)
        rss = [_field_kib(f"/proc/{p}/status", "VmRSS") for p in pids]
        pss = [_field_kib(f"/proc/{p}/smaps_rollup", "Pss") for p in pids]
        peak_rss, peak_pss = max(peak_rss, sum(rss)), max(peak_pss, sum(pss))
        peak_one = max([peak_one, *rss])
        time.sleep(args.interval)
    gib = 1024 * 1024
    print(
        f"[tree_memory] wall {time.perf_counter() - start:.0f} s  peak tree RSS "
        f"{peak_rss / gib:.2f} GiB  peak tree PSS {peak_pss / gib:.2f} GiB  largest process "
        f"RSS {peak_one / gib:.2f} GiB  (sampled every {args.interval:g} s)",
        file=sys.stderr,
    )
    return process.returncode


if __name__ == "__main__":
    raise SystemExit(main())
