"""benchmarks/tree_memory.py: the process-tree memory docs/benchmarks.md and README quote."""

import sys

import pytest


def test_it_adds_up_the_children_and_passes_the_exit_code_on(benchmark_script, capsys):
    script = benchmark_script("tree_memory")
    # a parent holding nothing much starts a child that holds 300 MiB (touched) for a second
    child = "import time; b = bytearray(300 << 20); time.sleep(1.5)"
    parent = (
        f"import subprocess, sys; sys.exit(3 + subprocess.call([sys.executable, '-c', {child!r}]))"
    )
    assert script.main(["--interval", "0.1", "--", sys.executable, "-c", parent]) == 3
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith("[tree_memory] wall ")
    fields = line.split()
    peak_rss = float(fields[fields.index("RSS") + 1])  # the first RSS: the tree's
    largest = float(fields[fields.index("process") + 2])
    assert peak_rss * 1024 >= 300 and largest * 1024 >= 300  # the child's 300 MiB were counted
    assert peak_rss > largest  # ... and the parent's on top


def test_it_needs_a_command_and_a_positive_interval(benchmark_script, capsys):
    script = benchmark_script("tree_memory")
    with pytest.raises(SystemExit):
        script.main(["--"])
    assert "give the command to measure" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        script.main(["--interval", "0", "--", "true"])
    assert "--interval must be > 0" in capsys.readouterr().err
