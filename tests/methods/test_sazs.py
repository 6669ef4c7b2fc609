"""SAZS: boundary targets, the boundary losses, label-free fusion, presets, a tiny end-to-end fit."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from zeroseg import runner
from zeroseg.config import load_config
from zeroseg.data.classes import ClassSplit
from zeroseg.data.protocol import ProtocolError
from zeroseg.methods import METHODS
from zeroseg.methods.sazs import (
    Sazs,
    SazsConfig,
    SazsNoFusion,
    balanced_edge_bce,
    balanced_edge_weights,
    boundary_targets,
    edge_attention_loss,
)
from zeroseg.shape.fusion import RefineConfig
from zeroseg.shape.refine import precompute_dataset, spectral_post
from zeroseg.shape.spectral import SpectralConfig

I = 255  # ignore


# ----------------------------------------------------------------------------- boundary targets


def test_boundary_targets_hand_case_ignore_gives_no_boundary():
    labels = torch.tensor(
        [
            [0, 0, 1, 1],
            [0, 0, 1, 1],
            [I, I, 1, 1],
        ]
    )[None]
    # Radius 1 = 4-neighbours. (0,1)/(0,2)/(1,1)/(1,2) touch the 0|1 edge. (1,0) and (2,2) touch
    # only their own class and ignore: unknown, not an edge. Ignore pixels are unknown. Borders
    # of the image are not edges, so (0,0), (0,3), (1,3), (2,3) are plain 0.
    expected = torch.tensor(
        [
            [0, 1, 1, 0],
            [I, 1, 1, 0],
            [I, I, I, 0],
        ]
    )[None]
    assert torch.equal(boundary_targets(labels, radius=1), expected)


def test_a_region_bordering_only_ignore_has_no_edge_pixel():
    labels = torch.zeros(1, 6, 6, dtype=torch.long)
    labels[0, 2:4, 2:4] = I  # an unseen object, seen only as ignore
    t = boundary_targets(labels, radius=1)
    assert not (t == 1).any()
    # its 8 four-neighbours are unknown, everything else is a known non-edge
    assert int((t == I).sum()) == 4 + 8
    assert int((t == 0).sum()) == 36 - 12


def test_boundary_radius_two_is_a_disk():
    labels = torch.zeros(1, 1, 7, dtype=torch.long)
    labels[0, 0, 4:] = 1
    # distance to the other class <= 2 along the row
    assert boundary_targets(labels, radius=2)[0, 0].tolist() == [0, 0, 1, 1, 1, 1, 0]


# ----------------------------------------------------------------------------------- losses


def test_class_balanced_weights_hand_case():
    targets = torch.tensor([[[1, 0, 0, 0, I]]])
    # 1 edge, 3 non-edge: the edge gets 3/4, each non-edge 1/4, the unknown pixel 0.
    w = balanced_edge_weights(targets)
    assert torch.allclose(w, torch.tensor([[[0.75, 0.25, 0.25, 0.25, 0.0]]]))
    # zero logits: every BCE is ln 2; weighted sum 1.5 ln 2 over 4 labelled pixels
    loss = balanced_edge_bce(torch.zeros(1, 1, 1, 5), targets)
    assert loss.item() == pytest.approx(1.5 * math.log(2) / 4, rel=1e-6)


def test_edge_attention_uses_only_predicted_edges_with_image_weights():
    logits = torch.zeros(1, 2, 1, 4)
    logits[0, 0, 0, 0] = 2.0  # pixel 0 leans to class 0
    targets = torch.tensor([[[0, 0, 1, 1]]])
    edge = torch.tensor([[[[5.0, 5.0, 5.0, -5.0]]]])  # pixel 3 is not an edge: excluded
    # kept targets [0, 0, 1]: freq [2/3, 1/3] -> weights [4/3, 5/3]
    l0 = -torch.log_softmax(torch.tensor([2.0, 0.0]), 0)[0]
    ln2 = math.log(2)
    expected = (4 / 3 * l0 + 4 / 3 * ln2 + 5 / 3 * ln2) / (4 / 3 + 4 / 3 + 5 / 3)
    got = edge_attention_loss(logits, targets, edge, threshold=0.8)
    assert got.item() == pytest.approx(expected.item(), rel=1e-6)


def test_edge_attention_without_predicted_edges_is_zero_not_nan():
    logits = torch.randn(2, 3, 4, 4, requires_grad=True)
    loss = edge_attention_loss(
        logits, torch.zeros(2, 4, 4, dtype=torch.long), -torch.ones(2, 1, 4, 4)
    )
    assert loss.item() == 0.0
    loss.backward()  # still part of the graph


# ------------------------------------------------------------------------ fusion reads no label


class _GarbageLabels(torch.utils.data.Dataset):
    def __init__(self, dataset, seed: int):
        self.dataset, self.seed = dataset, seed

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, i):
        s = dict(self.dataset[i])
        g = torch.Generator().manual_seed(self.seed * 1000 + i)
        s["label"] = torch.randint(0, 7, s["label"].shape, generator=g)
        return s


@pytest.fixture(scope="module")
def trained(tiny_world, tmp_path_factory):
    """SAZS and its no-fusion row trained once (shared stage) on the tiny world."""
    out = tmp_path_factory.mktemp("sazs")
    sets = [
        f"data.world={tiny_world}",
        "train.iters=120",
        "data.val_limit=32",
        "eval.batch_size=32",
        "device=cpu",
    ]
    cfg = load_config("sazs_unet-small_2k_shapeworld", sets)
    data = runner.build_data(cfg, progress=False)
    fused = runner.train(cfg, out / "sazs", progress=False, data=data)
    cfg_nf = load_config("sazs-nofusion_unet-small_2k_shapeworld", sets)
    plain = runner.train(cfg_nf, out / "sazs-nofusion", progress=False, data=data)
    return cfg, data, fused, plain, out


def _predictions(result, cfg, dataset, split, post=None):
    _, _, kept = runner.evaluate(
        result.method,
        cfg,
        dataset,
        split,
        result.embed,
        progress=False,
        keep=len(dataset),
        post=post,
    )
    return torch.stack(kept)


def test_fusion_never_reads_labels(trained):
    cfg, data, fused, _, _ = trained
    a = _predictions(fused, cfg, _GarbageLabels(data.val, 1), data.split)
    b = _predictions(fused, cfg, _GarbageLabels(data.val, 2), data.split)
    assert torch.equal(a, b)


def test_spectral_post_never_reads_labels(trained):
    cfg, data, _, plain, _ = trained
    post = spectral_post(RefineConfig(spectral=SpectralConfig(max_side=16)))
    a = _predictions(plain, cfg, _GarbageLabels(data.val, 1), data.split, post=post)
    b = _predictions(plain, cfg, _GarbageLabels(data.val, 2), data.split, post=post)
    assert torch.equal(a, b)
    # a batch with no label at all works the same
    batch = {
        "image": torch.stack([data.val[i]["image"] for i in range(4)]),
        "id": ["a", "b", "c", "d"],
    }
    scores = torch.randn(4, 7, *batch["image"].shape[-2:])
    assert post(scores, batch).shape == (4, *batch["image"].shape[-2:])


# ----------------------------------------------------------------------------- end to end


def test_tiny_fit_learns_and_the_stage_is_shared(trained):
    cfg, data, fused, plain, out = trained
    shared = list((out / "_shared").glob("sazs-segmenter-*"))
    assert len(shared) == 1  # the no-fusion row reused the fused row's stage
    assert fused.notes == plain.notes  # both name the one shared stage
    a, b = fused.method.state_dict(), plain.method.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    metrics, _, _ = runner.evaluate(
        plain.method, cfg, data.val, data.split, plain.embed, progress=False
    )
    # 7 classes (chance ~14%), 120 steps: the seen classes are clearly learned
    assert metrics["seen_miou"] > 45.0, metrics  # measured 60.6
    log = (shared[0] / "log.csv").read_text().splitlines()[0]
    for column in ("ce", "edge_bce", "edge_att"):
        assert column in log


def test_training_on_unseen_labels_is_refused(tiny_world, tmp_path):
    cfg = load_config(
        "sazs_unet-small_2k_shapeworld",
        [f"data.world={tiny_world}", "train.iters=2", "train.batch_size=64", "device=cpu"],
    )
    data = runner.build_data(cfg, progress=False)
    method = runner.build_method(cfg, data.split, 384)
    ctx = runner.RunContext(
        cfg=cfg,
        directory=tmp_path / "run",
        split=data.split,
        train_set=data.train,  # full labels
        train_images=runner.ImagesOnly(data.train),
        embed=runner.Embedder(cfg.text, world=data.world),
        device=torch.device("cpu"),
        progress=False,
        world=data.world,
    )
    with pytest.raises(ProtocolError):
        method.fit(ctx)


# ------------------------------------------------------------------------- cache, presets


def test_precompute_command_writes_each_image_once(trained, tmp_path):
    _, data, _, _, _ = trained
    subset = torch.utils.data.Subset(data.val, range(3))
    cfg = SpectralConfig(max_side=16, num_eigenvectors=4)
    first = precompute_dataset(subset, tmp_path, cfg, progress=False)
    assert (first["images"], first["written"], first["skipped"]) == (3, 3, 0)
    assert len(list((tmp_path / first["directory"].split("/")[-1]).glob("*.safetensors"))) == 3
    again = precompute_dataset(subset, tmp_path, cfg, progress=False)
    assert again["written"] == 0


VOC = (
    "background aeroplane bicycle bird boat bottle bus car cat chair cow diningtable dog horse "
    "motorbike person pottedplant sheep sofa train tvmonitor"
).split()


@pytest.mark.parametrize(
    "preset",
    [
        "sazs_unet-small_2k_shapeworld",
        "sazs-nofusion_unet-small_2k_shapeworld",
        "sazs_unet-small_20k_voc-15+5",
        "sazs_unet-small_20k_pascal-5i-fold0",
        "sazs_unet-small_20k_coco-20i-fold0",
    ],
)
def test_presets_parse_and_build(preset):
    cfg = load_config(preset)
    split = ClassSplit.from_names(VOC, VOC[-5:])
    method = runner.build_method(cfg, split, 512)
    assert isinstance(method, Sazs) and METHODS[cfg.method] is type(method)
    assert method.cfg.edge_weight == 0.3 and method.cfg.attention_weight == 0.1
    assert isinstance(method, SazsNoFusion) == (cfg.method == "sazs-nofusion")


def test_shapeworld_fusion_is_the_refine_spectral_default():
    """SAZS's ShapeWorld fusion and ``--refine spectral`` are one setting (chosen on val), so a
    refined baseline row and SAZS differ by their training only."""
    from zeroseg.shape.refine import default_refine_config

    own = runner.model_config(load_config("sazs_unet-small_2k_shapeworld")).refine
    assert own == default_refine_config()
    assert own.num_segments == 24 and own.spectral.num_eigenvectors == 16


def test_config_rejects_unknown_affinity_features():
    with pytest.raises(ValueError, match="affinity_features"):
        SazsConfig(affinity_features="dino")


def test_bench_extra_reports_decomposition_time(tiny_world):
    from zeroseg.data.shapeworld import load_spec

    spec = load_spec(tiny_world)
    method = Sazs(SazsConfig(), split=spec.class_split(), embed_dim=16).eval()
    row = method.bench_extra(spec)
    assert row["spectral_ms_per_image"] > 0 and row["fusion_ms_per_image"] > 0
    assert np.isfinite(list(row.values())).all()
