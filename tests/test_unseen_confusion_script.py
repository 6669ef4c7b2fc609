"""benchmarks/unseen_confusion.py: where an unseen class's val pixels go (docs/methods.md, AlignZeg)."""

import json

import pytest

from zeroseg import runner
from zeroseg.cli import main

pytestmark = pytest.mark.slow


def test_the_confusion_is_of_val_at_the_rules_gamma_and_never_loads_test(
    demo_run, benchmark_script, capsys, test_split_forbidden
):
    run = next((demo_run / "runs").glob("projection-*"))
    with test_split_forbidden():
        counts, names, unseen, gamma = benchmark_script("unseen_confusion").confusion(str(run))
    _, cfg, split, _ = runner.load_model(run)
    data = runner.build_data(cfg, progress=False, test=False)
    labels = sum(
        (data.val[i]["label"] != split.ignore_index).sum().item() for i in range(len(data.val))
    )
    assert counts.sum().item() == labels  # every labelled val pixel once
    assert unseen == sorted(split.unseen) and names == list(split.names)
    # the diagonal gives the per-class IoUs zeroseg eval --split val reports at the same gamma
    capsys.readouterr()
    assert main(["eval", str(run), "--split", "val", "--per-class", "--no-progress"]) == 0
    val = json.loads(capsys.readouterr().out)
    assert val["calibration"]["gamma"] == gamma
    for c in unseen:
        union = counts[c].sum() + counts[:, c].sum() - counts[c, c]
        assert 100 * counts[c, c].item() / union.item() == pytest.approx(
            val["per_class_iou"][names[c]], abs=1e-6
        )
