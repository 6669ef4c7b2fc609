"""benchmarks/unseen_confusion.py: where an unseen class's val pixels go (docs/methods.md, AlignZeg)."""

import json

import pytest
import torch

from zeroseg import runner
from zeroseg.cli import main


def test_the_summary_splits_unseen_pixels_into_own_seen_and_other_unseen(benchmark_script):
    # classes 0, 1 seen; 2, 3 unseen (2 a thing, 3 stuff); rows: truth, columns: prediction
    counts = torch.zeros(4, 4, dtype=torch.long)
    counts[2, 2], counts[2, 0], counts[2, 3] = 50, 20, 10
    counts[3, 3], counts[3, 1], counts[3, 2] = 15, 4, 1
    counts[0, 2] = 99  # a seen pixel predicted unseen: not an unseen pixel's fate
    script = benchmark_script("unseen_confusion")

    def summary(counts, unseen, things=()):
        return script.summary_line(script.group_shares(counts, unseen, things))

    assert summary(counts, [2, 3]) == (
        "all unseen: itself 65.0%, a seen class 24.0%, another unseen 11.0%"
    )
    assert summary(counts, [2, 3], things=(0, 2)) == (
        "all unseen: itself 65.0%, a seen class 24.0%, another unseen 11.0%; "
        "unseen things: itself 62.5%, a seen class 25.0%, another unseen 12.5%; "
        "unseen stuff: itself 75.0%, a seen class 20.0%, another unseen 5.0%"
    )


def test_the_spread_over_runs_is_each_shares_mean_and_sample_std(benchmark_script):
    script = benchmark_script("unseen_confusion")
    runs = [
        {"unseen stuff": {"itself": 0.0, "seen": 100.0, "other": 0.0}},
        {"unseen stuff": {"itself": 40.0, "seen": 60.0, "other": 0.0}},
        {"unseen stuff": {"itself": 20.0, "seen": 70.0, "other": 10.0}},
    ]
    assert script.shares_spread(runs) == [
        "unseen stuff: itself 20.0 ± 20.0%, a seen class 76.7 ± 20.8%, another unseen 3.3 ± 5.8%"
    ]
    assert script.shares_spread(runs + [{"unseen stuff": None}]) == [
        "unseen stuff: not in every run"
    ]


@pytest.mark.slow
def test_the_confusion_is_of_val_at_the_rules_gamma_and_never_loads_test(
    demo_run, benchmark_script, capsys, test_split_forbidden
):
    run = next((demo_run / "runs").glob("projection-*"))
    with test_split_forbidden():
        counts, names, unseen, gamma, things = benchmark_script("unseen_confusion").confusion(
            str(run)
        )
    _, cfg, split, _ = runner.load_model(run)
    data = runner.build_data(cfg, progress=False, test=False)
    labels = sum(
        (data.val[i]["label"] != split.ignore_index).sum().item() for i in range(len(data.val))
    )
    assert counts.sum().item() == labels  # every labelled val pixel once
    assert unseen == sorted(split.unseen) and names == list(split.names)
    assert things == split.things
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


def test_logit_scale_replaces_the_query_classifiers_scale_and_refuses_other_runs(
    benchmark_script,
):
    from types import SimpleNamespace

    from zeroseg.models.heads.mask_decoder import TextClassifier

    script = benchmark_script("unseen_confusion")
    classifier = TextClassifier(4)
    method = SimpleNamespace(model=SimpleNamespace(classifier=classifier))
    assert classifier.scale().item() == pytest.approx(1 / 0.07)
    script.set_logit_scale(method, 20.0, "RUN")
    assert classifier.scale().item() == pytest.approx(20.0)
    logits = classifier(torch.tensor([[1.0, 0.0, 0.0, 0.0]]), torch.eye(4)[:2])
    assert logits[0, 0].item() == pytest.approx(20.0)  # s * cos 1
    for bad in (0.0, 150.0):  # 150: above the classifier's cap of 100, so it would not act
        with pytest.raises(SystemExit, match=rf"--logit-scale must be in \(0, 100\].*got {bad}"):
            script.set_logit_scale(method, bad, "RUN")
    assert classifier.scale().item() == pytest.approx(20.0)  # a refused value changes nothing
    pixel = SimpleNamespace(model=SimpleNamespace(head=None))  # a pixel row: no query classifier
    with pytest.raises(SystemExit, match="RUN has no query classifier with a logit scale"):
        script.set_logit_scale(pixel, 20.0, "RUN")
