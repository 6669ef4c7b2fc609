"""ZegCLIP: relationship descriptor, focal + dice loss, seen-score reduction, protocol, a tiny fit."""

from __future__ import annotations

import inspect
import math
from pathlib import Path

import pytest
import torch

from zeroseg.config import load_config
from zeroseg.data.protocol import SeenOnly
from zeroseg.methods import METHODS
from zeroseg.methods.base import RunContext
from zeroseg.methods.zegclip import (
    ZegCLIPST,
    mask_losses,
    reduce_seen,
    sigmoid_focal_loss,
)
from zeroseg.models.heads.zegclip_decoder import (
    ZegCLIPDecoder,
    ZegCLIPDecoderConfig,
    relationship_descriptor,
)
from zeroseg.runner import Embedder, ImagesOnly, build_data, build_method, evaluate, train

# A small version of the ShapeWorld preset for the 32 px tiny world (stage 0 included).
TINY = [
    "train.iters=100",
    "train.batch_size=16",
    "train.lr=0.002",
    "model.pretrain.image_size=32",
    "model.pretrain.width=64",
    "model.pretrain.layers=2",
    "model.pretrain.heads=2",
    "model.pretrain.train.iters=60",
    "model.pretrain.train.batch_size=32",
    "model.pretrain.train.lr=0.003",
    "model.decoder.width=32",
    "model.decoder.heads=2",
    "model.decoder.layers=2",
    "model.prompt_tokens=2",
    "model.self_training.train.iters=20",
]


def tiny_cfg(world: Path, method: str = "zegclip", extra=()):
    preset = f"{method}_vit-tiny_shapeworld"
    return load_config(preset, [f"data.world={world}", *TINY, *extra])


def paper_mask_losses(logits, labels, *, num_classes: int) -> dict:
    """``mask_losses`` with the paper's weights (focal x100, dice x1, alpha 0.25, gamma 2)."""
    return mask_losses(
        logits,
        labels,
        num_classes=num_classes,
        ignore_index=255,
        focal_weight=100.0,
        dice_weight=1.0,
        alpha=0.25,
        gamma=2.0,
    )


def test_relationship_descriptor_hand_case():
    text = torch.tensor([[1.0, 2.0], [3.0, 4.0]])  # K=2
    cls = torch.tensor([[10.0, 0.5]])  # B=1
    r = relationship_descriptor(text, cls)
    # [t ⊙ g ; t]: (1*10, 2*0.5, 1, 2) and (3*10, 4*0.5, 3, 4)
    assert torch.equal(r, torch.tensor([[[10.0, 1.0, 1.0, 2.0], [30.0, 2.0, 3.0, 4.0]]]))
    with pytest.raises(ValueError, match="text dim 2 != image CLS dim 3"):
        relationship_descriptor(text, torch.zeros(1, 3))


def test_decoder_shapes_and_rd_switch():
    cfg = ZegCLIPDecoderConfig(width=16, layers=3, heads=2, dropout=0.0)
    dec = ZegCLIPDecoder(cfg, visual_dim=8, text_dim=8, relationship=True)
    masks = dec(torch.randn(2, 4, 5, 8), torch.randn(2, 8), torch.randn(7, 8))
    assert len(masks) == 3 and all(m.shape == (2, 7, 4, 5) for m in masks)
    assert dec.q_proj.in_features == 16
    assert ZegCLIPDecoder(cfg, visual_dim=8, text_dim=6, relationship=False).q_proj.in_features == 6
    with pytest.raises(ValueError, match="must match"):
        ZegCLIPDecoder(cfg, visual_dim=8, text_dim=6, relationship=True)


def test_focal_and_dice_hand_checked():
    # Logits 0 -> p = 0.5. Focal, target 1: 0.25 * 0.5**2 * ln 2; target 0: 0.75 * 0.5**2 * ln 2.
    f = sigmoid_focal_loss(
        torch.zeros(1, 2, 1),
        torch.tensor([[[1.0], [0.0]]]),
        torch.ones(1, 1, dtype=torch.bool),
        alpha=0.25,
        gamma=2.0,
    )
    assert torch.allclose(f, torch.tensor([[0.0625 * math.log(2), 0.1875 * math.log(2)]]))
    # Two pixels: class 0, then ignored. K = 2, one ground-truth mask (class 0 in image 0).
    logits = torch.zeros(1, 2, 1, 2)
    labels = torch.tensor([[[0, 255]]])
    out = paper_mask_losses(logits, labels, num_classes=2)
    # focal: (0.0625 + 0.1875) ln 2 over 1 mask, x100; dice of class 0 only: 1 - (2*.5+1)/(.5+1+1) = 0.2
    assert out["focal"].item() == pytest.approx(25 * math.log(2), rel=1e-5)
    assert out["dice"].item() == pytest.approx(0.2, rel=1e-5)


def test_deep_supervision_sums_every_layer_and_off_keeps_the_last(tiny_world, monkeypatch):
    """The loss is the mask loss of every decoder layer, or of the last only (the release)."""
    torch.manual_seed(0)
    layers = [torch.randn(2, 3, 8, 8) for _ in range(3)]
    labels = torch.randint(0, 3, (2, 32, 32))
    labels[0, :4] = 255

    def parts(m):
        m = torch.nn.functional.interpolate(m, size=(16, 16), mode="bilinear", align_corners=False)
        target = labels[:, ::2, ::2]  # loss_stride 2: the labels subsampled
        return sum(paper_mask_losses(m, target, num_classes=3).values())

    totals = {}
    for deep in (True, False):
        cfg = tiny_cfg(tiny_world, extra=[f"model.deep_supervision={str(deep).lower()}"])
        m = build_method(cfg, load_spec_split(tiny_world), 384)
        monkeypatch.setattr(m, "mask_logits", lambda images, emb: layers)
        out = m.loss(torch.zeros(2, 3, 32, 32, dtype=torch.uint8), labels, torch.randn(3, 384))
        totals[deep] = out["loss"]
        assert out["focal"] + out["dice"] == pytest.approx(parts(layers[-1]).item(), rel=1e-5)
    assert totals[True].item() == pytest.approx(sum(parts(x) for x in layers).item(), rel=1e-5)
    assert totals[False].item() == pytest.approx(parts(layers[-1]).item(), rel=1e-5)


def test_seen_score_reduction():
    logits = torch.zeros(1, 3, 1, 1)
    seen = torch.tensor([True, False, True])
    s = reduce_seen(logits, seen, 0.1)
    assert torch.allclose(s.flatten(), torch.tensor([0.4, 0.5, 0.4]))
    assert torch.allclose(reduce_seen(logits, seen, 0.0).flatten(), torch.full((3,), 0.5))
    # softmax variant (NEL off): 1/3 each, minus 0.1 on seen
    assert torch.allclose(
        reduce_seen(logits, seen, 0.1, sigmoid=False).flatten(),
        torch.tensor([1 / 3 - 0.1, 1 / 3, 1 / 3 - 0.1]),
    )


def test_ablations_force_their_flag(tiny_world):
    for name, flag in (("zegclip-nodpt", "dpt"), ("zegclip-nord", "rd"), ("zegclip-nonel", "nel")):
        cfg = load_config(
            f"{name}_vit-tiny_shapeworld", [f"data.world={tiny_world}", f"model.{flag}=true"]
        )
        m = build_method(cfg, load_spec_split(tiny_world), 384)
        assert getattr(m.cfg, flag) is False, name
    assert (
        METHODS["zegclip-st"].protocol == "transductive"
        and METHODS["zegclip"].protocol == "inductive"
    )


def load_spec_split(world):
    from zeroseg.data.shapeworld import load_spec

    return load_spec(world).class_split()


class SpyEmbedder:
    """Records every name a stage asks to embed."""

    def __init__(self, inner):
        self.inner, self.calls = inner, []

    def __call__(self, names):
        self.calls.append(list(names))
        return self.inner(names)


def _ctx(cfg, data, method, tmp_path, embed, train_images=None):
    return RunContext(
        cfg=cfg,
        directory=tmp_path / "run",
        split=data.split,
        train_set=SeenOnly(data.train, data.split, "ignore"),
        train_images=train_images if train_images is not None else ImagesOnly(data.train),
        embed=embed,
        device=torch.device("cpu"),
        progress=False,
        world=data.world,
    )


def test_inductive_training_never_sees_unseen_names(tiny_world, tmp_path, monkeypatch):
    cfg = tiny_cfg(tiny_world, extra=["train.iters=3"])
    data = build_data(cfg, progress=False)
    spy = SpyEmbedder(Embedder(cfg.text, world=data.world))
    method = build_method(cfg, data.split, 384)

    def forbidden(self, *, reason, stage):
        raise AssertionError(f"inductive ZegCLIP called all_embeddings ({reason}, stage {stage})")

    monkeypatch.setattr(RunContext, "all_embeddings", forbidden)
    ctx = _ctx(cfg, data, method, tmp_path, spy)
    method.fit(ctx)
    assert ctx.unseen_name_stages == []
    asked = {n for call in spy.calls for n in call}
    assert asked and asked <= set(data.split.seen_names)
    assert not asked & set(data.split.unseen_names)
    assert "starts from the ShapeWorld CLIP-style encoder (stage 0)" in ctx.notes


class _Constant(torch.utils.data.Dataset):
    """'Unlabelled training images' that are all grey, to tell them apart from labelled ones."""

    def __init__(self, n, size):
        self.n, self.size = n, size

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return {
            "image": torch.full((3, self.size, self.size), 77, dtype=torch.uint8),
            "id": f"u/{i}",
        }


def test_self_training_pseudo_labels_come_only_from_unlabelled_images(
    tiny_world, tmp_path, monkeypatch
):
    assert "label" not in inspect.signature(ZegCLIPST.pseudo_labels).parameters
    cfg = tiny_cfg(tiny_world, "zegclip-st", ["train.iters=3", "model.self_training.train.iters=3"])
    data = build_data(cfg, progress=False)
    method = build_method(cfg, data.split, 384)
    seen_images = []
    real = ZegCLIPST.pseudo_labels

    def spy(self, images, *args, **kw):
        seen_images.append(images.clone())
        return real(self, images, *args, **kw)

    monkeypatch.setattr(ZegCLIPST, "pseudo_labels", spy)
    losses = []  # (unlabelled stream?, classes, label values) of every loss call
    real_loss = ZegCLIPST.loss

    def loss_spy(self, images, labels, class_embeddings):
        values = set(torch.unique(labels).tolist())
        losses.append((bool((images == 77).all()), len(class_embeddings), values))
        return real_loss(self, images, labels, class_embeddings)

    monkeypatch.setattr(ZegCLIPST, "loss", loss_spy)
    size = data.world.image_size
    ctx = _ctx(
        cfg,
        data,
        method,
        tmp_path,
        Embedder(cfg.text, world=data.world),
        train_images=_Constant(len(data.train), size),
    )
    method.fit(ctx)
    assert len(seen_images) == 3
    assert all(bool((x == 77).all()) for x in seen_images)  # only the unlabelled stream
    assert any("transductive" in n for n in ctx.notes)
    assert ctx.unseen_name_stages == ["5"]  # self-training's pseudo-labels use every name
    # The supervised term (labelled images) is over the seen classes only, in every stage: it
    # never pushes the unseen masks down at labelled pixels (that would teach where the ignored,
    # i.e. unseen, pixels are); only the pseudo-label term (unlabelled images) has every class.
    n_seen, k = len(data.split.seen), data.split.num_classes
    sup = [c for c in losses if not c[0]]
    pseudo = [c for c in losses if c[0]]
    assert len(sup) == 6 and len(pseudo) == 3  # 3 inductive + 3 self-training steps
    assert all(n == n_seen and v <= set(range(n_seen)) | {255} for _, n, v in sup)
    assert all(n == k for _, n, _ in pseudo)
    # a second fit loads every finished stage, and still says so
    again = build_method(cfg, data.split, 384)
    embed = Embedder(cfg.text, world=data.world)
    ctx2 = _ctx(cfg, data, again, tmp_path, embed, train_images=_Constant(len(data.train), size))
    again.fit(ctx2)
    assert ctx2.unseen_name_stages == ["5"] and not ctx2.trained


def test_tiny_end_to_end_fit(tiny_world, tmp_path):
    torch.manual_seed(0)
    cfg = tiny_cfg(tiny_world)
    result = train(cfg, tmp_path / "zegclip", progress=False)
    metrics, _, _ = evaluate(
        result.method,
        cfg,
        result.data.val,
        result.data.split,
        result.embed,
        progress=False,
        boundary=False,
    )
    # An untrained model scores ~3% seen mIoU here (measured); 100 steps give ~20%.
    assert metrics["seen_miou"] > 15.0, metrics
    # inductive, but its stage-0 encoder read captions that name the unseen class
    from zeroseg.data.shapeworld.world import caption_images_with_unseen

    detail = result.protocol_detail
    naming, total = caption_images_with_unseen(result.data.world)
    assert detail["unseen_names"] == [] and not detail["unlabelled_images"]
    assert detail["captioned_encoder"] == [
        {
            "encoder": "ShapeWorld stage-0 caption-contrastive encoder",
            "captions_name_unseen": True,
            "caption_images": total,
            "caption_images_naming_unseen": naming,
        }
    ]
    assert detail["clip_like"] and 0 < naming < total == 64
    assert (tmp_path / "zegclip" / "model.safetensors").is_file()


def test_a_finished_stage_needs_no_stage0_encoder(tiny_world, tmp_path, monkeypatch):
    cfg = tiny_cfg(tiny_world, extra=["train.iters=3"])
    first = train(cfg, tmp_path / "run", progress=False)
    assert first.trained_stages == ["zegclip"]
    # Another machine's cache: the finished stage holds the frozen encoder, so nothing retrains.
    monkeypatch.setenv("ZEROSEG_CACHE", str(tmp_path / "empty-cache"))

    def forbidden(*args, **kwargs):
        raise AssertionError("stage 0 was loaded or trained for a finished ZegCLIP stage")

    monkeypatch.setattr("zeroseg.pretrain.load_or_train", forbidden)
    again = train(cfg, tmp_path / "run", progress=False)
    assert again.trained_stages == []
    assert "starts from the ShapeWorld CLIP-style encoder (stage 0)" in again.notes
    for key, value in first.method.state_dict().items():
        assert torch.equal(value, again.method.state_dict()[key]), key


@pytest.mark.parametrize(
    "preset,classes",
    [
        ("zegclip_vitb16_20k_voc-15+5", 20),
        ("zegclip_vitb16_80k_coco-stuff-156+15", 171),
        ("zegclip_vitb16_40k_context-49+10", 59),
    ],
)
def test_paper_presets_parse_and_build(preset, classes):
    from zeroseg.data.classes import ClassSplit

    cfg = load_config(preset)
    assert cfg.eval.mode == "slide" and (cfg.eval.crop, cfg.eval.stride) == (512, 426)
    assert cfg.model["encoder"] == "ViT-B/16"
    assert cfg.model["pretrained"] == "checkpoints/ViT-B-16.pt"
    assert cfg.text.encoder == "clip:checkpoints/ViT-B-16.pt"
    # Tiny overrides: the same wiring on the "tiny" CLIP (output_dim 32), randomly initialised.
    tiny = ["model.encoder=tiny", "model.decoder.width=32", "model.decoder.heads=2"]
    cfg = load_config(preset, [*tiny, "model.pretrained=null"])
    names = [f"class {i}" for i in range(classes)]
    split = ClassSplit(tuple(names), unseen=tuple(range(classes - 3, classes)))
    m = build_method(cfg, split, 32).eval()
    assert m.prompts.shape == (2, 10, 64)  # tiny CLIP: 2 layers, width 64; 10 prompts per layer
    seen = torch.zeros(classes, dtype=torch.bool)
    seen[: classes - 3] = True
    with torch.no_grad():
        s = m.scores(torch.zeros(1, 3, 64, 64, dtype=torch.uint8), torch.randn(classes, 32), seen)
    assert s.shape == (1, classes, 64, 64)


def test_seen_score_reduction_in_place_matches():
    logits = torch.randn(2, 3, 4, 4)
    seen = torch.tensor([True, False, True])
    expected = reduce_seen(logits, seen, 0.1)
    got = reduce_seen(logits.clone(), seen, 0.1, inplace=True)
    assert torch.allclose(got, expected)


def _small_foundation_zegclip(
    tiny_world, *extra: str, preset: str = "zegclip_foundation_shapeworld"
):
    """A foundation ZegCLIP preset with a small decoder (20 steps) on the tiny world."""
    return load_config(
        preset,
        [
            f"data.world={tiny_world}",
            "train.iters=20",
            "model.decoder.width=72",  # the aligned start needs more than the tokens' 65 dims
            "model.decoder.heads=2",
            "model.decoder.layers=2",
            *extra,
        ],
    )


def test_the_foundation_preset_keeps_the_foundation_frozen(tiny_world, tmp_path):
    from zeroseg.foundation import load_foundation

    cfg = _small_foundation_zegclip(tiny_world)
    result = train(cfg, tmp_path / "run", progress=False)
    method = result.method
    found = load_foundation("shipped")
    for name, value in found.transfer_state().items():
        assert torch.equal(method.encoder.state_dict()[name], value), name  # loaded, never trained
    assert any("ShapeWorld foundation" in n for n in result.notes)
    images = torch.randint(0, 255, (2, 3, 32, 32), dtype=torch.uint8)
    seen = torch.tensor([True, False, True])
    assert method.scores(images, torch.randn(3, 384), seen).shape == (2, 3, 32, 32)
    with pytest.raises(ValueError, match="deep prompt tuning"):
        build_method(
            load_config(
                "zegclip_foundation_shapeworld", [f"data.world={tiny_world}", "model.dpt=true"]
            ),
            load_spec_split(tiny_world),
            384,
        )


def test_tune_head_trains_the_foundation_head_and_nothing_else_of_it(tiny_world, tmp_path):
    from zeroseg.foundation import load_foundation

    cfg = _small_foundation_zegclip(tiny_world, "model.tune_head=true")
    method = train(cfg, tmp_path / "run", progress=False).method
    start = load_foundation("shipped").transfer_state()
    state = method.encoder.state_dict()
    moved = {name for name, value in start.items() if not torch.equal(state[name], value)}
    assert moved and all(name.startswith("head.") for name in moved)
    assert "head.text_proj.weight" in moved  # the text-side map trains with it
    assert not any(p.requires_grad for p in method.encoder.backbone.parameters())
    method.train()
    assert method.encoder.head.training and not method.encoder.backbone.training
    with pytest.raises(ValueError, match="tune_head"):
        build_method(
            load_config(
                "zegclip_foundation_shapeworld",
                [
                    f"data.world={tiny_world}",
                    "model.encoder=shapeworld",
                    "model.decoder.aligned_init=false",  # the preset's, refused for this encoder
                    "model.tune_head=true",
                ],
            ),
            load_spec_split(tiny_world),
            384,
        )


def test_head_lr_mult_gives_the_tuned_head_its_own_rate(
    tiny_world, tmp_path, monkeypatch, neutral_default
):
    import zeroseg.methods.zegclip as zegclip_mod

    plans = []
    real = zegclip_mod.StagePlan

    def spy(*args, **kwargs):
        plans.append(kwargs.get("params"))
        return real(*args, **kwargs)

    monkeypatch.setattr(zegclip_mod, "StagePlan", spy)
    cfg = _small_foundation_zegclip(
        tiny_world, "model.tune_head=true", "model.head_lr_mult=10", "train.iters=2"
    )
    method = train(cfg, tmp_path / "run", progress=False).method
    (groups,) = plans
    head = {id(p) for p in method.encoder.head.parameters()}
    decoder = {id(p) for p in method.decoder.parameters()}
    base = cfg.train.lr
    assert sorted(g["lr"] for g in groups) == [base, pytest.approx(10 * base)]
    slow, fast = sorted(groups, key=lambda g: g["lr"])
    assert head <= {id(p) for p in fast["params"]}
    assert decoder <= {id(p) for p in slow["params"]}
    # zegclip-st's self-training stage gives the head the same share of its own rate
    plans.clear()
    cfg = _small_foundation_zegclip(
        tiny_world,
        "train.iters=2",
        "model.self_training.train.iters=2",
        "model.tune_head=true",
        "model.head_lr_mult=10",
        preset="zegclip-st_foundation_shapeworld",
    )
    train(cfg, tmp_path / "st" / "run", progress=False)  # its own _shared: both stages train
    st_lr = cfg.model["self_training"]["train"]["lr"]
    assert [sorted(g["lr"] for g in groups) for groups in plans] == [
        [base, pytest.approx(10 * base)],
        [st_lr, pytest.approx(10 * st_lr)],
    ]
    for bad, match in (
        ("model.head_lr_mult=0", "head_lr_mult"),
        ("model.head_lr_mult=2", "tune_head"),
    ):
        with pytest.raises(ValueError, match=match):
            build_method(
                _small_foundation_zegclip(tiny_world, bad), load_spec_split(tiny_world), 384
            )
    neutral_default(
        "zegclip_foundation_shapeworld",
        "model.head_lr_mult",
        "model.head_lr_mult=10",
    )


def test_norm_tuning_trains_the_foundation_norm_affines_and_nothing_else_of_it(
    tiny_world, tmp_path, neutral_default
):
    from zeroseg.foundation import load_foundation

    cfg = _small_foundation_zegclip(tiny_world, "model.norm_tuning=true")
    method = train(cfg, tmp_path / "run", progress=False).method
    start = load_foundation("shipped").transfer_state()
    state = method.encoder.state_dict()
    moved = {name for name, value in start.items() if not torch.equal(state[name], value)}
    norms = {
        f"{prefix}.{leaf}" if prefix else leaf
        for prefix, m in method.encoder.named_modules()
        if isinstance(m, torch.nn.BatchNorm2d)
        for leaf in ("weight", "bias")
    }
    assert moved and moved <= norms  # affines only: no conv weight, no running statistic
    assert any(n.startswith("backbone.") for n in moved)  # at every depth, not only the head
    assert not method.encoder.training  # running statistics as loaded, never updated
    neutral_default("zegclip_foundation_shapeworld", "model.norm_tuning", "model.norm_tuning=true")
    with pytest.raises(ValueError, match="norm_tuning"):
        build_method(
            load_config(
                "zegclip_foundation_shapeworld",
                [
                    f"data.world={tiny_world}",
                    "model.encoder=shapeworld",
                    "model.decoder.aligned_init=false",
                    "model.norm_tuning=true",
                ],
            ),
            load_spec_split(tiny_world),
            384,
        )


def test_inference_applies_the_seen_reduction_and_the_decoder_reads_the_cls_token(
    tiny_world, monkeypatch
):
    import torch.nn.functional as F

    import zeroseg.models.heads.zegclip_decoder as decoder_mod

    torch.manual_seed(0)
    cfg = tiny_cfg(tiny_world)
    spec_split = build_data(cfg, progress=False).split
    method = build_method(cfg, spec_split, 384).eval()
    assert method.cfg.seen_reduction == pytest.approx(0.1)
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    emb = torch.randn(spec_split.num_classes, 384)
    seen = torch.zeros(spec_split.num_classes, dtype=torch.bool)
    seen[list(spec_split.seen)] = True
    # inductive inference: sigmoid scores minus 0.1 on the seen classes (ZegCLIP's own constant,
    # what `zeroseg predict` applies); the shared rule starts from the unreduced scores
    with torch.no_grad():
        own = method.scores(images, emb, seen)
        plain = method.calibration_scores(images, emb, seen)
    assert torch.allclose(own, plain - 0.1 * seen.view(1, -1, 1, 1).float(), atol=1e-6)
    # the relationship descriptor receives the image's own CLS embedding
    got = []
    real = decoder_mod.relationship_descriptor

    def spy(text, cls):
        got.append(cls.detach().clone())
        return real(text, cls)

    monkeypatch.setattr(decoder_mod, "relationship_descriptor", spy)
    with torch.no_grad():
        method.mask_logits(images, emb)
        x = (images.float() - method.mean) / method.std
        feats = method.encoder.forward_features(x, prompts=method.prompts)
    assert len(got) == 1
    assert torch.allclose(got[0], F.normalize(feats["cls_proj"].float(), dim=-1), atol=1e-6)
    assert not torch.allclose(got[0][0], got[0][1])  # two images, two CLS tokens
    # inference takes the cached path (decoder.predict): the same logits, the CLS token included
    with torch.no_grad():
        fast = method.predict_logits(images, emb)
        full = method.mask_logits(images, emb)[-1]
        patches, cls = method._image_side(images)
        blind = method.decoder(patches, torch.ones_like(cls), method._unit_text(emb))[-1]
    assert torch.allclose(fast, full, atol=1e-5)
    assert not torch.allclose(blind, full, atol=1e-4)  # the CLS token does move the logits


@pytest.mark.parametrize("pseudo_seen", [False, True])
def test_self_training_pseudo_labels_seen_classes_only_with_pseudo_seen(
    tiny_world, monkeypatch, pseudo_seen
):
    """Pixels predicted as a seen class get that class with ``pseudo_seen``, are ignored without."""
    split = load_spec_split(tiny_world)
    flag = str(pseudo_seen).lower()
    cfg = tiny_cfg(
        tiny_world,
        "zegclip-st",
        [f"model.self_training.pseudo_seen={flag}", "model.self_training.pseudo_percent=100"],
    )
    m = build_method(cfg, split, 384)
    s, u = sorted(split.seen)[0], sorted(split.unseen)[0]
    logits = torch.full((1, split.num_classes, 4, 4), -8.0)
    logits[0, s, :, :2] = 8.0  # left half: a confident seen class
    logits[0, u, :, 2:] = 8.0  # right half: a confident unseen class
    monkeypatch.setattr(m, "mask_logits", lambda images, emb: [logits])
    seen_mask = torch.zeros(split.num_classes, dtype=torch.bool)
    seen_mask[list(split.seen)] = True
    images = torch.zeros(1, 3, 16, 16, dtype=torch.uint8)
    pseudo = m.pseudo_labels(images, torch.randn(split.num_classes, 384), seen_mask, (4, 4))
    assert (pseudo[0, :, 2:] == u).all()
    assert (pseudo[0, :, :2] == (s if pseudo_seen else 255)).all()


def test_aligned_init_starts_the_decoder_from_the_loaded_foundation(
    tiny_world, tmp_path, neutral_default
):
    from zeroseg.foundation import load_foundation

    cfg = load_config(
        "zegclip_foundation_shapeworld",
        [
            f"data.world={tiny_world}",
            "train.iters=2",
            "train.lr=1e-6",
            "model.decoder.aligned_init=true",
            "model.decoder.width=96",  # above the 65 dimensions the foundation's tokens span
            "model.decoder.heads=2",
            "model.decoder.layers=2",
        ],
    )
    method = train(cfg, tmp_path / "run", progress=False).method
    dec = method.decoder
    # aligned to the shipped foundation's token subspace, not to the random head it was built with
    basis = load_foundation("shipped").head.embedding_basis()
    to_width = dec.input_proj.weight
    torch.testing.assert_close(to_width @ basis @ basis.T, to_width, atol=1e-3, rtol=0)
    torch.testing.assert_close(to_width.T @ to_width, basis @ basis.T, atol=1e-3, rtol=0)
    eye = torch.eye(96)
    torch.testing.assert_close(dec.layers[1].attn.k.weight, eye, atol=1e-3, rtol=0)
    assert dec.layers[1].attn.proj.weight.abs().max() < 1e-3  # residual branches start at zero
    with pytest.raises(ValueError, match="aligned_init"):
        build_method(
            load_config(
                "zegclip_foundation_shapeworld",
                [
                    f"data.world={tiny_world}",
                    "model.encoder=shapeworld",
                    "model.decoder.aligned_init=true",
                ],
            ),
            load_spec_split(tiny_world),
            384,
        )
    # a preset that keeps the random start: its runs' identities are as before the option
    with pytest.raises(ValueError, match="must exceed"):  # at build time, before any data
        build_method(
            load_config(
                "zegclip_foundation_shapeworld",
                [f"data.world={tiny_world}", "model.decoder.width=64", "model.decoder.heads=2"],
            ),
            load_spec_split(tiny_world),
            384,
        )
    neutral_default(
        "zegclip_vit-tiny_shapeworld",
        "model.decoder.aligned_init",
        "model.decoder.aligned_init=true",
    )
    neutral_default(
        "zegclip_vit-tiny_shapeworld",
        "model.decoder.aligned_scale",
        "model.decoder.aligned_scale=10",
    )
