"""benchmarks/mutations.py follows the code: every deliberate bug it lists still applies.

The script takes about half an hour, so it is not part of the suite; a code change that moves or
rewrites a mutated line would otherwise go unnoticed until someone runs it (session 34 found two
such entries). This checks the list itself in a fraction of a second.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "mutations.py"


def _module():
    spec = importlib.util.spec_from_file_location("zeroseg_mutations", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their module by name
    spec.loader.exec_module(module)
    return module


def test_every_mutation_applies_to_the_current_code():
    mutations = _module()
    assert mutations.stale(mutations.MUTATIONS) == []


def test_a_moved_line_is_reported():
    mutations = _module()
    m = mutations.MUTATIONS[0]
    moved = mutations.Mutation(m.name, m.what, m.path, m.old + "no such text", m.new, m.tests)
    lost = mutations.Mutation(m.name, m.what, m.path, m.old, m.new, ("tests/no_such_test.py",))
    assert mutations.stale([moved]) == [f"{m.name}: the text to replace occurs 0 times in {m.path}"]
    assert mutations.stale([lost]) == [f"{m.name}: no test file tests/no_such_test.py"]
    names = [x.name for x in mutations.MUTATIONS]
    assert len(names) == len(set(names))
