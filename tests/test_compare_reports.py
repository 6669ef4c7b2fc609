"""benchmarks/compare_reports.py: the "every figure equal" check README's benchmark rerun quotes."""

import json

import pytest


def _report(hiou: float, train_seconds: float, total: float) -> dict:
    return {
        "torch": "2.13.0",
        "total_seconds": total,
        "methods": {
            "projection": {
                "figures": {"hiou": hiou, "seen_miou": 75.9},
                "train_seconds": train_seconds,
                "memory": {"peak_mib": 1000 + total},
            },
            "projection+spectral": {"figures": {"hiou": 74.7}},
        },
    }


def _write(root, rel: str, report: dict) -> None:
    path = root / rel / "report.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report))


def test_times_and_memory_may_differ_figures_may_not(benchmark_script, tmp_path, capsys):
    script = benchmark_script("compare_reports")
    old, new = tmp_path / "old", tmp_path / "new"
    _write(old, "default/seed-0", _report(71.1, 100.0, 600.0))
    _write(new, "default/seed-0", _report(71.1, 110.0, 660.0))  # slower, same figures
    (old / "default" / "seeds.json").write_text("{}")  # not a seed report: skipped
    assert script.main([str(old), str(new)]) == 0
    out = capsys.readouterr().out
    assert "default/seed-0/report.json: 3 figures, 0 differ" in out
    assert "1 rows: min 1.100, median 1.100, max 1.100" in out

    _write(new, "default/seed-0", _report(71.2, 110.0, 660.0))
    assert script.main([str(old), str(new)]) == 1
    assert "1 differ: methods.projection.figures.hiou" in capsys.readouterr().out

    # a field added since the first run is new, not moved; a figure the second run lost differs
    grown = _report(71.1, 110.0, 660.0)
    grown["methods"]["projection"]["figures"]["over_images"] = {"low": -0.3, "high": 2.6}
    _write(new, "default/seed-0", grown)
    assert script.main([str(old), str(new)]) == 0
    out = capsys.readouterr().out
    assert "3 figures, 0 differ (2 new in the second run)" in out
    assert "0 differing figures in 1 reports; 2 figures new in the second run" in out
    del grown["methods"]["projection"]["figures"]["seen_miou"]
    _write(new, "default/seed-0", grown)
    assert script.main([str(old), str(new)]) == 1
    assert "1 differ: methods.projection.figures.seen_miou" in capsys.readouterr().out


def test_unpaired_reports_and_missing_directories_are_named(benchmark_script, tmp_path, capsys):
    script = benchmark_script("compare_reports")
    old, new = tmp_path / "old", tmp_path / "new"
    _write(old, "default/seed-0", _report(71.1, 100.0, 600.0))
    _write(old, "default/seed-1", _report(70.7, 100.0, 600.0))
    _write(new, "default/seed-0", _report(71.1, 100.0, 600.0))
    with pytest.raises(SystemExit):
        script.main([str(old), str(new)])
    assert "reports in only one of the two runs: ['default/seed-1/report.json']" in (
        capsys.readouterr().err
    )
    with pytest.raises(SystemExit):
        script.main([str(old), str(tmp_path / "absent")])
    assert "absent: not a directory" in capsys.readouterr().err


def test_rows_compares_only_the_named_rows(benchmark_script, tmp_path, capsys):
    # A run of some rows into a copy of another: it lacks rows the first holds, holds others.
    script = benchmark_script("compare_reports")
    old, new = tmp_path / "old", tmp_path / "new"
    _write(old, "default/seed-0", _report(71.1, 100.0, 600.0))
    subset = _report(71.1, 100.0, 600.0)
    del subset["methods"]["projection+spectral"]
    subset["methods"]["projection"]["reused"] = True  # loaded, not trained: not a figure
    subset["methods"]["zs3net"] = {"figures": {"hiou": 72.2}}
    _write(new, "default/seed-0", subset)
    assert script.main([str(old), str(new)]) == 1  # the whole reports differ
    capsys.readouterr()
    assert script.main([str(old), str(new), "--rows", "projection"]) == 0
    assert "default/seed-0/report.json: 2 figures, 0 differ" in capsys.readouterr().out
    subset["methods"]["projection"]["figures"]["hiou"] = 71.2
    _write(new, "default/seed-0", subset)
    assert script.main([str(old), str(new), "--rows", "projection"]) == 1
    assert "1 differ: methods.projection.figures.hiou" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        script.main([str(old), str(new), "--rows", "zs3net"])
    assert "no method row 'zs3net' (--rows)" in capsys.readouterr().err
