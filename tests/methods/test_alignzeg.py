"""AlignZeg: bias correction, virtual features (norms, losses), background prototypes, a tiny fit."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from zeroseg import runner
from zeroseg.config import ConfigError, load_config
from zeroseg.engine import trainer
from zeroseg.methods import METHODS
from zeroseg.methods.alignzeg import (
    correct_bias,
    mixup_virtual,
    norm_auc,
    unseen_mass,
    virtual_class_embeddings,
    virtual_loss,
)
from zeroseg.metrics.semantic import harmonic_mean
from zeroseg.models.backbones.clip import CLIPVisionConfig, VisionTransformer
from zeroseg.models.backbones.small import SmallUNetConfig
from zeroseg.models.heads.alignzeg_decoder import AlignZegModel, PrototypeClassifier
from zeroseg.models.heads.mask_decoder import MaskModelConfig

sys.path.insert(0, str(Path(__file__).parent))
from _tiny_mask import FIT_MASK  # noqa: E402


def test_bias_correction_flips_flagged_unseen_proposal_and_leaves_clear_seen_alone():
    # Vocabulary: classes 0, 1 seen, class 2 unseen; last column background.
    seen = torch.tensor([True, True, False])
    probs = torch.tensor(
        [
            [0.6, 0.0, 0.3, 0.1],  # an unseen object whose seen score is higher (the bias)
            [0.8, 0.05, 0.05, 0.1],  # a clear seen object
        ]
    )
    unseen_prob = torch.tensor([0.9, 0.1])  # the indicator flags only the first
    out = correct_bias(probs, unseen_prob, seen, threshold=0.5, strength=0.6)
    # Row 0: seen scaled by 0.4 -> 0.24, 0.0; unseen 0.3; rescaled to the old class total 0.9:
    # factor 0.9 / 0.54 -> 0.4, 0.0, 0.5; background 0.1 untouched.
    assert torch.allclose(out[0], torch.tensor([0.4, 0.0, 0.5, 0.1]), atol=1e-6)
    assert out[0, :-1].argmax() == 2  # flipped to the unseen class
    assert torch.equal(out[1], probs[1])  # below threshold: unchanged
    assert torch.allclose(out.sum(-1), torch.ones(2))
    # Strength 0 or a vocabulary without unseen classes changes nothing.
    assert torch.allclose(correct_bias(probs, unseen_prob, seen, 0.5, 0.0), probs)
    assert torch.allclose(
        correct_bias(probs, unseen_prob, torch.ones(3, dtype=torch.bool), 0.5, 0.6), probs
    )


def test_unseen_mass_indicator_by_hand_background_left_out():
    seen = torch.tensor([True, True, False, False])
    probs = torch.tensor(
        [
            [[0.3, 0.1, 0.2, 0.2, 0.2], [0.0, 0.0, 0.0, 0.0, 1.0]],  # classes 0.8, 0.4 unseen
            [[0.45, 0.45, 0.0, 0.0, 0.1], [0.0, 0.0, 0.9, 0.0, 0.1]],
        ]
    )
    u = unseen_mass(probs, seen)
    assert u.shape == (2, 2)
    # 0.4 / 0.8; a background-only proposal has no class mass: 0; no unseen mass; all unseen.
    assert torch.allclose(u, torch.tensor([[0.5, 0.0], [0.0, 1.0]]))
    # With it as the indicator, the first proposal (half its class mass unseen) is corrected at a
    # threshold below one half and left alone above it.
    flagged = correct_bias(probs, u, seen, threshold=0.4, strength=0.5)
    assert flagged[0, 0, 2] > probs[0, 0, 2] and flagged[0, 0, 0] < probs[0, 0, 0]
    kept = correct_bias(probs, u, seen, threshold=0.6, strength=0.5)
    assert torch.allclose(kept[0, 0], probs[0, 0], atol=1e-6)


def test_mixup_virtual_features_by_hand_rescaled_to_real_norms():
    h = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 2.0]])
    labels = torch.tensor([0, 1, 0])
    gen = torch.Generator().manual_seed(0)
    mixed = mixup_virtual(h, labels, 50, (0.3, 0.7), gen)
    i, j, g, k = mixed.i, mixed.j, mixed.g, mixed.k
    assert (labels[i] != labels[j]).all()  # only pairs of different classes survive
    assert ((g >= 0.3) & (g <= 0.7)).all()
    # The direction of the mix, at the norm of the real feature h_k.
    raw = g[:, None] * h[i] + (1 - g[:, None]) * h[j]
    expect = raw / raw.norm(dim=-1, keepdim=True) * h[k].norm(dim=-1, keepdim=True)
    assert torch.allclose(mixed.features, expect, atol=1e-6)
    # A single class has no pair.
    assert mixup_virtual(h, torch.zeros(3, dtype=torch.long), 10, (0.3, 0.7), gen) is None


def test_mixup_virtual_kinds_keeps_pairs_of_one_kind():
    h = torch.randn(6, 4)
    labels = torch.tensor([0, 1, 2, 3, 4, 5])  # every pair of two features is of two classes
    kinds = torch.tensor([True, True, True, False, False, False])
    gen = torch.Generator().manual_seed(0)
    free = mixup_virtual(h, labels, 200, (0.3, 0.7), gen)
    assert (kinds[free.i] != kinds[free.j]).any()  # without kinds, a thing meets a ground
    kept = mixup_virtual(h, labels, 200, (0.3, 0.7), gen, kinds)
    assert len(kept.i) > 0 and (kinds[kept.i] == kinds[kept.j]).all()
    assert (labels[kept.i] != labels[kept.j]).all()
    assert kinds[kept.i].any() and not kinds[kept.i].all()  # both kinds are mixed
    # One feature of each kind: no pair of one kind.
    assert mixup_virtual(h[2:4], labels[2:4], 50, (0.3, 0.7), gen, kinds[2:4]) is None


def test_norm_auc_by_hand():
    # Norms real (1, 3), virtual (2): one of two pairs has virtual > real -> 0.5, chance.
    assert norm_auc(torch.tensor([[1.0], [3.0]]), torch.tensor([[2.0]])) == 0.5
    # Every virtual norm above every real one, or below: 1.0 either way.
    assert norm_auc(torch.tensor([[1.0], [2.0]]), torch.tensor([[0.0, 3.0]])) == 1.0
    assert norm_auc(torch.tensor([[3.0], [4.0]]), torch.tensor([[1.0]])) == 1.0
    # A tie counts one half: real (1, 2), virtual (2) -> (1 + 0.5) / 2 = 0.75.
    assert norm_auc(torch.tensor([[1.0], [2.0]]), torch.tensor([[2.0]])) == 0.75


def test_virtual_features_have_no_norm_shortcut_on_layernorm_outputs():
    # Hidden states as the decoder gives them: LayerNorm outputs with a learned affine map, ten
    # classes of proposals around their own centres.
    torch.manual_seed(0)
    norm = torch.nn.LayerNorm(32)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.normal_(0, 0.1)
        centres = torch.randn(10, 32) * 3
        labels = torch.arange(10).repeat_interleave(20)
        h = norm(centres[labels] + torch.randn(200, 32))
    raw_i, raw_j = torch.arange(0, 100), torch.arange(100, 200)
    raw = 0.5 * h[raw_i] + 0.5 * h[raw_j]
    assert norm_auc(h, raw) > 0.95  # plain mixes: the norm alone gives them away
    mixed = mixup_virtual(h, labels, 400, (0.3, 0.7), torch.Generator().manual_seed(1))
    # Each virtual norm is exactly the norm of the real feature it was given...
    assert torch.allclose(mixed.features.norm(dim=-1), h[mixed.k].norm(dim=-1), atol=1e-5)
    # ... so a norm-only classifier does exactly as well as on real features against a
    # resample of themselves: the norm distribution of the virtual set is the real one's.
    # (Norms as (n, 1) features, rounded so float error in the rescaling does not break ties.)
    real_n = h.norm(dim=-1, keepdim=True).round(decimals=4)
    virt_n = mixed.features.norm(dim=-1, keepdim=True).round(decimals=4)
    assert norm_auc(real_n, virt_n) == norm_auc(real_n, real_n[mixed.k])
    assert norm_auc(h, mixed.features) < 0.55


def test_virtual_class_embeddings_and_loss_by_hand():
    seen = torch.tensor([[2.0, 0.0], [0.0, 1.0]])  # normalised inside
    t = virtual_class_embeddings(seen, torch.tensor([0]), torch.tensor([1]), torch.tensor([0.5]))
    assert torch.allclose(t, torch.tensor([[1.0, 1.0]]) / math.sqrt(2))
    # Seen logits (0, 0), background log 2, virtual logit log 4: softmax over
    # (1, 1, 4, 2) / 8 -> virtual_class target p = 0.5, loss log 2.
    logits = torch.tensor([[0.0, 0.0, math.log(2)]])
    vl = torch.tensor([math.log(4)])
    assert virtual_loss(logits, vl, "virtual_class").item() == pytest.approx(math.log(2))
    # Background target: softmax over (1, 1, 2) / 4 -> p(background) = 0.5, loss log 2; the
    # virtual logit plays no part.
    assert virtual_loss(logits, vl + 5, "background").item() == pytest.approx(math.log(2))
    with pytest.raises(ValueError, match="unknown virtual target"):
        virtual_loss(logits, vl, "seen")


def test_background_prototypes_no_object_scoring():
    clf = PrototypeClassifier(embed_dim=3, num_background=2, init_temperature=1.0)  # scale s = 1
    with torch.no_grad():
        clf.background.copy_(torch.tensor([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0]]))
    text = torch.tensor([[1.0, 0.0, 0.0]])
    e = torch.tensor([[0.0, 0.0, 2.0], [3.0, 0.0, 0.0]])
    logits = clf(e, text)
    # e0 = prototype 0: class cos 0, prototypes cos (1, 0) -> background logit log(e^1 + e^0).
    assert torch.allclose(logits[0], torch.tensor([0.0, math.log(math.e + 1)]), atol=1e-6)
    # e1 = the class: class cos 1, prototypes (0, 0) -> background log 2.
    assert torch.allclose(logits[1], torch.tensor([1.0, math.log(2)]), atol=1e-6)
    # The background softmax probability is the prototypes' summed probability over K + M.
    full = torch.tensor([0.0, 1.0, 0.0]).softmax(0)
    assert logits[0].softmax(0)[1].item() == pytest.approx(float(full[1:].sum()), abs=1e-6)


SMALL_MASK = MaskModelConfig(
    unet=SmallUNetConfig(widths=(8, 16, 16, 32), out_dim=16),
    hidden_dim=32,
    mask_dim=16,
    num_queries=6,
    layers=3,
    heads=2,
    ffn_dim=32,
)


def test_model_refinement_and_frozen_encoder_fusion_shapes():
    clip = VisionTransformer(
        CLIPVisionConfig(image_size=32, patch_size=8, width=16, layers=1, heads=2, output_dim=8)
    )
    model = AlignZegModel(
        SMALL_MASK, embed_dim=5, refine=True, background_prototypes=3, clip_encoder=clip
    )
    images = torch.randint(0, 255, (2, 3, 32, 32), dtype=torch.uint8)
    out = model(images)
    assert (
        out.masks.shape == (2, 6, 16, 16)
        and out.embeddings.shape == (2, 6, 5)
        and out.hidden.shape == (2, 6, 32)
    )
    assert len(out.aux) == 3
    assert model.classify(out.embeddings, torch.randn(4, 5)).shape == (2, 6, 5)
    assert model.indicator(out.hidden).shape == (2, 6)
    assert not any(p.requires_grad for p in model.clip.parameters())  # CLIP stays frozen
    # Refinement changes the masks (the features see the queries); without it they differ.
    torch.manual_seed(0)
    a = AlignZegModel(SMALL_MASK, embed_dim=5, refine=False)
    assert not hasattr(a, "mask_refiners")


def _tiny_cfg(world, method: str, **model):
    return load_config(
        {
            "method": method,
            "device": "cpu",
            "data": {
                "dataset": "shapeworld",
                "world": str(world),
                "protocol": "strict",
                "val_limit": 48,
            },
            "text": {"encoder": "attributes", "templates": "none"},
            "train": {"iters": 60, "batch_size": 8, "lr": 0.003, "warmup_iters": 10, "amp": "bf16"},
            "eval": {"batch_size": 48},
            "model": {
                "mask": FIT_MASK,
                "object_threshold": 0.5,
                "clip_fusion": False,
                "background_prototypes": 3,
                "virtual_per_batch": 32,
                **model,
            },
        }
    )


def test_tiny_fit_inductive_no_unseen_reaches_training(tiny_world, tmp_path, monkeypatch):
    torch.set_num_threads(1)
    stages: dict[str, int] = {}
    guard = trainer.assert_seen_only

    def spy(batch, split, *, stage):
        guard(batch, split, stage=stage)  # the production guard runs too
        stages[stage] = stages.get(stage, 0) + 1
        label = batch["label"]
        assert not np.isin(label.numpy(), split.unseen).any()
        assert not (label == split.ignore_index).any()  # strict: images with unseen pixels dropped
        for s in batch["segments"]:
            assert not np.isin(s[:, 1].numpy(), split.unseen).any()

    monkeypatch.setattr(trainer, "assert_seen_only", spy)
    cfg = _tiny_cfg(tiny_world, "alignzeg")
    data = runner.build_data(cfg, progress=False)
    result = runner.train(cfg, tmp_path / "alignzeg", progress=False, data=data)
    assert stages.get("alignzeg-model", 0) == 60
    # Inductive: all_embeddings (unseen names) is never called.
    assert not any("unseen class names" in n for n in result.notes)
    metrics, _, _ = runner.evaluate(
        result.method, cfg, data.val, data.split, result.embed, progress=False
    )
    extra = result.method.extra_metrics(cfg, data, result.embed, progress=False)
    for key in ("seen_pq", "unseen_pq", "hpq", "seen_ap50", "unseen_ap50"):
        assert key in extra and 0.0 <= extra[key] <= 100.0
    assert extra["hpq"] == pytest.approx(harmonic_mean(extra["seen_pq"], extra["unseen_pq"]))
    assert metrics["seen_miou"] > 25.0  # 60 steps already segment the seen classes

    # The no-bias-correction row reuses the same trained weights (shared stage, no training).
    stages.clear()
    nobc = runner.train(
        _tiny_cfg(tiny_world, "alignzeg-nobc", bias_correction=False),
        tmp_path / "nobc",
        progress=False,
        data=data,
    )
    assert "alignzeg-model" not in stages
    assert torch.equal(nobc.method.model.query_feat.weight, result.method.model.query_feat.weight)
    assert nobc.trained_stages == []
    assert nobc.notes == result.notes  # a reused stage is described as the trained one


@pytest.mark.parametrize("pairs", ["all", "things", "same_kind"])
def test_virtual_pairs_decides_which_proposals_are_mixed(tiny_world, tmp_path, monkeypatch, pairs):
    import zeroseg.methods.alignzeg as alignzeg

    mixed_labels, pair_labels = [], []
    real = alignzeg.mixup_virtual

    def spy(h, y, *args, **kwargs):
        mixed_labels.append(y.clone())
        out = real(h, y, *args, **kwargs)
        if out is not None:
            pair_labels.append(torch.stack([y[out.i], y[out.j]]))
        return out

    monkeypatch.setattr(alignzeg, "mixup_virtual", spy)
    cfg = _tiny_cfg(tiny_world, "alignzeg", virtual_pairs=pairs)
    cfg.train.iters = 12
    result = runner.train(cfg, tmp_path / pairs, progress=False)
    things = result.method.seen_things()
    split = result.method.split
    assert things.tolist() == [c in split.things for c in split.seen]
    assert 0 < int(things.sum()) < len(split.seen)  # the tiny world has seen shapes and grounds
    labels = torch.cat(mixed_labels)
    assert len(labels) > 0
    pairs_of = torch.cat(pair_labels, dim=1)  # (2, V) the classes of each mix
    if pairs == "things":
        assert things[labels].all()
    else:  # as before: a ground's proposals are mixed too (so the check above can fail)
        assert not things[labels].all()
    same = things[pairs_of[0]] == things[pairs_of[1]]
    if pairs == "same_kind":  # a thing with a thing, a ground with a ground, both kinds mixed
        assert same.all() and things[pairs_of[0]].any() and not things[pairs_of[0]].all()
    elif pairs == "all":  # ... where "all" mixes a thing with a ground (so the check can fail)
        assert not same.all()


def _fit_spying_on_l_vir(tiny_world, directory, monkeypatch, measure, **model):
    """Trains the tiny AlignZeg fit (``model`` options) for 3 steps with a spy on L_vir: each call
    appends ``measure(model, logits, virtual_logit)`` to the returned list before the real loss.
    Returns (that list, the training result)."""
    import zeroseg.methods.alignzeg as alignzeg

    holder, seen = {}, []
    real_losses, real_loss = alignzeg.AlignZeg.losses, alignzeg.virtual_loss

    def losses(self, *args, **kwargs):
        holder["model"] = self.model
        return real_losses(self, *args, **kwargs)

    def spy(logits, virtual_logit, target):
        seen.append(measure(holder["model"], logits, virtual_logit))
        return real_loss(logits, virtual_logit, target)

    monkeypatch.setattr(alignzeg.AlignZeg, "losses", losses)
    monkeypatch.setattr(alignzeg, "virtual_loss", spy)
    cfg = _tiny_cfg(tiny_world, "alignzeg", **model)
    cfg.train.iters = 3
    result = runner.train(cfg, directory, progress=False)
    assert seen
    return seen, result


def _reaches(output: torch.Tensor, weights: list) -> list[bool]:
    """Whether ``output.sum()``'s gradient reaches each of ``weights`` (non-zero)."""
    grads = torch.autograd.grad(output.float().sum(), weights, retain_graph=True, allow_unused=True)
    return [g is not None and bool(g.abs().sum() > 0) for g in grads]


@pytest.mark.parametrize("detach", [False, True])
def test_virtual_detach_keeps_l_vir_off_the_decoders_features(
    tiny_world, tmp_path, monkeypatch, detach
):
    # Does L_vir's input depend on the decoder's queries (through the mixed hidden states)?
    # And on the class-embedding map, which it trains either way?
    def measure(model, logits, _):
        return _reaches(logits, [model.query_feat.weight, next(model.class_embed.parameters())])

    reached, _ = _fit_spying_on_l_vir(
        tiny_world, tmp_path / str(detach), monkeypatch, measure, virtual_detach=detach
    )
    for to_queries, to_class_embed in reached:
        assert to_class_embed  # the classification branch always learns from L_vir
        assert to_queries is not detach  # the decoder's features only without the detach


@pytest.mark.parametrize("class_detach", [False, True])
def test_virtual_class_detach_keeps_l_vir_off_the_class_side(
    tiny_world, tmp_path, monkeypatch, class_detach
):
    import zeroseg.methods.alignzeg as alignzeg

    # Do L_vir's logits (seen classes and the virtual class) depend on the text-side map?
    def measure(model, logits, virtual):
        both = torch.cat([logits[:, :-1].flatten(), virtual.flatten()])
        return _reaches(both, [model.text_map.weight])[0]

    # The tiny fit has no foundation to copy the map from: it starts as the identity.
    monkeypatch.setattr(alignzeg.AlignZeg, "check_text_map", lambda self, cfg: None)
    reached, result = _fit_spying_on_l_vir(
        tiny_world,
        tmp_path / str(class_detach),
        monkeypatch,
        measure,
        mask={**FIT_MASK, "text_map": "learned"},
        virtual_class_detach=class_detach,
    )
    assert all(r is not class_detach for r in reached)
    weight = result.method.model.text_map.weight
    assert not torch.equal(weight, torch.eye(len(weight)))  # the set loss trains it either way


def test_virtual_class_detach_off_keeps_the_runs_before_it(neutral_default):
    neutral_default(
        "alignzeg_unet-small_1k_shapeworld",
        "model.virtual_class_detach",
        "model.virtual_class_detach=true",
    )


def test_rows_registered_and_flags_checked():
    for name in ("alignzeg", "alignzeg-norefine", "alignzeg-nogen", "alignzeg-nobc"):
        assert name in METHODS
    cfg = METHODS["alignzeg"].Config()
    cfg.refine = False
    from zeroseg.data.classes import ClassSplit

    split = ClassSplit(names=("a", "b", "c"), unseen=(2,))
    with pytest.raises(ValueError, match="ablation row"):
        METHODS["alignzeg"](cfg, split=split, embed_dim=4)
    bad = METHODS["alignzeg"].Config(virtual_target="seen")
    with pytest.raises(ConfigError, match="model.virtual_target must be one of"):
        METHODS["alignzeg"](bad, split=split, embed_dim=4)
    bad = METHODS["alignzeg"].Config(virtual_pairs="stuff")
    with pytest.raises(ConfigError, match="model.virtual_pairs must be one of"):
        METHODS["alignzeg"](bad, split=split, embed_dim=4)
    bad = METHODS["alignzeg"].Config(bias_strength=1.5)
    with pytest.raises(ConfigError, match=r"model.bias_strength must be in \[0, 1\]"):
        METHODS["alignzeg"](bad, split=split, embed_dim=4)
    bad = METHODS["alignzeg"].Config(indicator="oracle")
    with pytest.raises(ConfigError, match="model.indicator must be one of"):
        METHODS["alignzeg"](bad, split=split, embed_dim=4)


def test_coco_stuff_preset_parses_and_builds():
    from zeroseg.data.classes import ClassSplit

    cfg = load_config(
        "alignzeg_r50_60k_coco-stuff-156+15",
        [
            "model.mask.hidden_dim=32",
            "model.mask.mask_dim=32",
            "model.mask.num_queries=10",
            "model.mask.layers=3",
            "model.mask.ffn_dim=64",
            "model.mask.heads=2",
            "model.virtual_per_batch=8",
        ],
    )
    assert cfg.data.dataset == "coco_stuff" and cfg.method == "alignzeg"
    assert cfg.model["background_prototypes"] == 10 and cfg.model["clip_fusion"] is False
    split = ClassSplit(names=tuple(f"c{i}" for i in range(171)), unseen=tuple(range(156, 171)))
    method = runner.build_method(cfg, split, embed_dim=8)
    images = torch.randint(0, 255, (1, 3, 64, 64), dtype=torch.uint8)
    with torch.no_grad():
        s = method.scores(images, torch.randn(171, 8), torch.arange(171) < 156)
    assert s.shape == (1, 171, 64, 64)
