import numpy as np
import pytest
import torch

from zeroseg.data.loader import StepLoader, StepSampler, hflip
from zeroseg.data.protocol import ProtocolError, SeenOnly, assert_seen_only
from zeroseg.data.shapeworld import ShapeWorldDataset, load_spec
from zeroseg.engine.trainer import TrainConfig, train_stage


@pytest.fixture(scope="module")
def world(tiny_world):
    spec = load_spec(tiny_world)
    return spec, ShapeWorldDataset(spec, "train", progress=False)


@pytest.mark.parametrize("protocol", ["ignore", "strict"])
def test_no_unseen_label_reaches_any_training_batch(world, protocol):
    spec, ds = world
    split = spec.class_split()
    assert split.contains_unseen(torch.from_numpy(ds.labels()))  # the raw data has unseen pixels
    seen_only = SeenOnly(ds, split, protocol)
    loader = StepLoader(seen_only, StepSampler(len(seen_only), 32, seed=0), transform=hflip)
    steps = -(-len(seen_only) // 32) + 2  # more than an epoch
    for _, batch in loader(0, steps):
        assert not split.contains_unseen(batch["label"])
        for segs in batch["segments"]:
            assert not np.isin(segs[:, 1].numpy(), split.unseen).any()
        assert "caption" not in batch  # captions name unseen classes
        assert_seen_only(batch, split, stage="test")


def test_strict_drops_every_image_with_unseen_pixels(world):
    spec, ds = world
    split = spec.class_split()
    strict = SeenOnly(ds, split, "strict")
    has_unseen = np.isin(ds.labels(), split.unseen).reshape(len(ds), -1).any(1)
    assert strict.dropped == has_unseen.sum() > 0
    assert len(strict) == len(ds) - strict.dropped
    for i in range(len(strict)):
        assert not split.contains_unseen(ds[int(strict.unseen_free[i])]["label"])


def test_ignore_keeps_images_but_voids_unseen_pixels(world):
    spec, ds = world
    split = spec.class_split()
    view = SeenOnly(ds, split, "ignore")
    assert len(view) == len(ds)
    i = int(np.flatnonzero(np.isin(ds.labels(), split.unseen).reshape(len(ds), -1).any(1))[0])
    full, seen = ds[i]["label"], view[i]["label"]
    unseen_px = torch.isin(full, torch.tensor(split.unseen))
    assert (seen[unseen_px] == 255).all() and (seen[~unseen_px] == full[~unseen_px]).all()
    assert (view[i]["panoptic"][unseen_px] == 0).all()


def test_a_training_stage_refuses_a_leaking_batch(world, tmp_path):
    spec, ds = world
    split = spec.class_split()
    model = torch.nn.Linear(1, 1)

    def leaking(start, stop):  # full labels, bypassing SeenOnly
        for step in range(start, stop):
            yield step, {"label": ds[0]["label"][None] * 0 + split.unseen[0]}

    with pytest.raises(ProtocolError, match="blue square"):
        train_stage(
            stage="segmenter",
            model=model,
            step_fn=lambda m, b: {"loss": m.weight.sum()},
            batches=leaking,
            cfg=TrainConfig(iters=2),
            directory=tmp_path / "s",
            split=split,
            progress=False,
        )


@pytest.mark.parametrize("where", ["second image", "later step", "segments only"])
def test_the_guard_checks_every_image_every_step_and_the_segments(world, tmp_path, where):
    spec, ds = world
    split = spec.class_split()
    seen_only = SeenOnly(ds, split, "ignore")
    clean = [seen_only[i] for i in range(2)]

    def batch(leak: bool) -> dict:
        labels = torch.stack([c["label"] for c in clean])
        segs = [c["segments"].clone() for c in clean]
        if leak and where in ("second image", "later step"):
            labels[1, 0, 0] = split.unseen[0]  # one pixel of the second image
        if leak and where == "segments only":
            segs[1][0, 1] = split.unseen[0]  # a segment row of an unseen class
        return {"label": labels, "segments": segs}

    def batches(start, stop):
        for step in range(start, stop):
            # the leak: at step 0 in the second image / segments, or only at step 3
            yield step, batch(leak=(step == 3) if where == "later step" else (step == 0))

    with pytest.raises(ProtocolError):
        train_stage(
            stage="segmenter",
            model=torch.nn.Linear(1, 1),
            step_fn=lambda m, b: {"loss": m.weight.sum()},
            batches=batches,
            cfg=TrainConfig(iters=5),
            directory=tmp_path / "s",
            split=split,
            progress=False,
        )


def test_zeroseg_world_protocols_counts_the_training_images_each_protocol_keeps(
    world, tiny_world, capsys
):
    from zeroseg.cli import main

    spec, ds = world
    labels = ds.labels()
    clean = int((~np.isin(labels, spec.class_split().unseen).reshape(len(labels), -1).any(1)).sum())
    assert 0 < clean < len(ds)  # the tiny world has images with and without unseen pixels
    assert main(["world", str(tiny_world), "--protocols"]) == 0
    pct = f"{100 * clean / len(ds):.0f}"
    assert capsys.readouterr().out.splitlines()[-1] == (
        f"train: {len(ds)} images under `ignore` (unseen pixels void); {clean} ({pct} %) under "
        "`strict` (no unseen pixel: the mask family's presets)"
    )
