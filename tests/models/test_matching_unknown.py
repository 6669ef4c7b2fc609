"""Unknown (ignore-index) pixels in the mask model's matching and set loss (the ``ignore``
protocol): they are neither foreground nor background of any mask."""

from __future__ import annotations

import torch

from zeroseg.models.matching import (
    MatchWeights,
    Target,
    batch_targets,
    hungarian_match,
    set_loss,
)

# A 4x4 image: segment 1 (class 4) top-left, segment 2 (class 7) top-right, segment 3 (class 9)
# bottom; class 9 is not in the training vocabulary (an unseen class under ``ignore``): its
# pixels carry label 255 and, as :class:`zeroseg.data.protocol.SeenOnly` writes them, id 0.
LOOKUP = torch.full((256,), 255, dtype=torch.int64)
LOOKUP[4], LOOKUP[7] = 0, 1
PAN = torch.tensor([[[1, 1, 2, 2], [1, 1, 2, 2], [0, 0, 0, 0], [0, 0, 0, 0]]])
LABEL = torch.tensor([[[4, 4, 7, 7], [4, 4, 7, 7], [255] * 4, [255] * 4]])
UNKNOWN = LABEL == 255
SEGS = [torch.tensor([[1, 4, 1], [2, 7, 0]])]


def _batch(pan=PAN, label=LABEL, segs=SEGS) -> dict:
    return {"panoptic": pan, "segments": segs, "label": label}


def _loss(
    batch: dict, logits: torch.Tensor, masks: torch.Tensor, w: MatchWeights | None = None
) -> tuple[list, dict]:
    w = w or MatchWeights()
    targets = batch_targets(batch, LOOKUP, (4, 4), "cpu")
    matches = hungarian_match(logits, masks, targets, w)
    return matches, set_loss(logits, masks, targets, matches, w)


def _predictions(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(1, 3, 3, generator=g), 3 * torch.randn(1, 3, 4, 4, generator=g)


def test_unknown_region_changes_neither_matching_nor_loss():
    logits, masks = _predictions()
    ref_matches, ref = _loss(_batch(), logits, masks)
    # What the ignored region holds: the dropped segment's own id instead of void, and any
    # predicted mask values there, from confident foreground to confident background.
    pan = PAN.clone()
    pan[UNKNOWN] = 3
    segs = [torch.tensor([[1, 4, 1], [2, 7, 0], [3, 9, 1]])]
    for fill in (-20.0, 20.0, None):
        other = masks.clone()
        region = UNKNOWN[:, None].expand_as(other)
        other[region] = torch.randn(int(region.sum())) * 5 if fill is None else fill
        for batch in (_batch(), _batch(pan=pan, segs=segs)):
            matches, out = _loss(batch, logits, other)
            for (qa, ta), (qb, tb) in zip(matches, ref_matches):
                assert qa.tolist() == qb.tolist() and ta.tolist() == tb.tolist()
            for k in ("loss", "bce", "dice", "ce"):
                torch.testing.assert_close(out[k], ref[k], rtol=0, atol=1e-6)


def test_labelled_pixels_still_count_and_old_rule_differs():
    logits, masks = _predictions(1)
    _, ref = _loss(_batch(), logits, masks)
    # A labelled pixel's prediction changes the mask terms (the invariance above is not vacuous).
    other = masks.clone()
    other[0, :, 0, 0] += 5.0
    _, out = _loss(_batch(), logits, other)
    assert abs(float(out["bce"] - ref["bce"])) > 1e-3
    # Without the labels the unknown pixels are background of every mask (Mask2Former's rule for
    # void): then the predictions there do change the loss.
    other = masks.clone()
    other[UNKNOWN[:, None].expand_as(other)] = 20.0
    no_label = {"panoptic": PAN, "segments": SEGS}
    _, a = _loss(no_label, logits, masks)
    _, b = _loss(no_label, logits, other)
    assert float(b["bce"]) > float(a["bce"]) + 1.0


def test_no_ignored_pixel_gives_mask2former_terms_exactly():
    # Fully labelled images (the strict protocol on ShapeWorld): the loss with labels is the
    # loss without them, bit for bit, so strict-protocol training (AlignZeg's too) is unchanged.
    pan = torch.tensor([[[1, 1, 2, 2], [1, 1, 2, 2], [1, 1, 2, 2], [2, 2, 2, 2]]])
    label = torch.where(pan == 1, 4, 7)
    logits, masks = _predictions(2)
    targets = batch_targets(_batch(pan=pan, label=label), LOOKUP, (4, 4), "cpu")
    assert all(t.valid is None for t in targets)
    _, with_labels = _loss(_batch(pan=pan, label=label), logits, masks)
    _, without = _loss({"panoptic": pan, "segments": SEGS}, logits, masks)
    for k in ("loss", "bce", "dice", "ce"):
        assert torch.equal(with_labels[k], without[k])


def test_unknown_pixels_hand_values():
    # One query, one target covering the 8 labelled pixels of the top half; the query predicts
    # +-20 logits that match the target on labelled pixels and are +20 (foreground) on the unknown
    # bottom half: BCE and dice ~ 0 (the unknown half is not background), CE = log 3.
    target_mask = torch.zeros(4, 4)
    target_mask[:2] = 1
    valid = (~UNKNOWN[0]).float()
    t = Target(labels=torch.tensor([0]), masks=target_mask[None], valid=valid)
    masks = torch.full((1, 1, 4, 4), 20.0)
    out = set_loss(torch.zeros(1, 1, 3), masks, [t], [(torch.tensor([0]), torch.tensor([0]))])
    assert out["bce"].item() < 1e-6 and out["dice"].item() < 1e-6
    # Without the valid map the bottom half is background: BCE = 8/16 * 20 (+ log terms) = 10.
    t_old = Target(labels=torch.tensor([0]), masks=target_mask[None])
    out = set_loss(torch.zeros(1, 1, 3), masks, [t_old], [(torch.tensor([0]), torch.tensor([0]))])
    assert abs(out["bce"].item() - 10.0) < 1e-3


def _three_queries(third: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Query 0 on segment 1, query 1 on segment 2, query 2 with mask logits ``third``."""
    masks = torch.full((1, 3, 4, 4), -6.0)
    masks[0, 0, :2, :2] = 6.0
    masks[0, 1, :2, 2:] = 6.0
    masks[0, 2] = third
    logits = torch.zeros(1, 3, 3)
    logits[0, 0, 0] = logits[0, 1, 1] = 4.0
    logits[0, 2] = torch.tensor([0.5, -0.3, 0.2])  # unmatched: not yet no-object
    return logits, masks


def _skip_loss(logits, masks, skip: bool, batch: dict | None = None) -> tuple[list, dict]:
    return _loss(batch or _batch(), logits, masks, MatchWeights(skip_unknown_queries=skip))


def test_skip_unknown_queries_leaves_an_unmatched_query_on_the_ignored_region_out_of_the_class_loss():
    on_unknown = torch.where(UNKNOWN[0], 6.0, -6.0)  # the third query covers the ignored rows
    logits, masks = _three_queries(on_unknown)
    matches, on = _skip_loss(logits, masks, True)
    assert sorted(matches[0][0].tolist()) == [0, 1]  # the third query is unmatched
    # exactly the CE of the two matched queries (no no-object term for the third)
    expected = torch.nn.functional.cross_entropy(
        logits[0, :2], torch.tensor([0, 1]), weight=torch.tensor([1.0, 1.0, 0.1])
    )
    torch.testing.assert_close(on["ce"], expected)
    _, off = _skip_loss(logits, masks, False)  # Mask2Former: pushed to no-object
    assert float(off["ce"]) > float(on["ce"]) + 1e-3
    # its class logits no longer matter; the mask terms are those of the rule without it
    other = logits.clone()
    other[0, 2] = torch.tensor([3.0, -2.0, -4.0])
    torch.testing.assert_close(_skip_loss(other, masks, True)[1]["ce"], on["ce"])
    for k in ("bce", "dice"):
        torch.testing.assert_close(on[k], off[k])


def test_skip_unknown_queries_still_pushes_queries_on_labelled_pixels_and_changes_nothing_without_unknown():
    # the third query mostly on labelled pixels (top rows, 8 of its 12 pixels): still no-object
    mostly_labelled = torch.full((4, 4), -6.0)
    mostly_labelled[:3] = 6.0
    logits, masks = _three_queries(mostly_labelled)
    torch.testing.assert_close(
        _skip_loss(logits, masks, True)[1]["ce"], _skip_loss(logits, masks, False)[1]["ce"]
    )
    # an empty mask (no pixel above 0) is pushed as before
    logits, masks = _three_queries(torch.full((4, 4), -6.0))
    torch.testing.assert_close(
        _skip_loss(logits, masks, True)[1]["ce"], _skip_loss(logits, masks, False)[1]["ce"]
    )
    # no unknown pixel (the strict protocol): the option changes nothing, bit for bit
    label = LABEL.clone()
    label[UNKNOWN] = 4
    pan = PAN.clone()
    pan[UNKNOWN] = 1
    strict = _batch(pan=pan, label=label)
    logits, masks = _three_queries(torch.where(UNKNOWN[0], 6.0, -6.0))
    a, b = _skip_loss(logits, masks, True, strict)[1], _skip_loss(logits, masks, False, strict)[1]
    for k in ("loss", "ce", "bce", "dice"):
        assert torch.equal(a[k], b[k])


def test_skip_unknown_queries_off_keeps_the_identities_recorded_before_it_existed(neutral_default):
    import dataclasses

    from zeroseg.engine.rundir import identity_view

    key = "model.match.skip_unknown_queries"
    for preset in ("mask-projection", "pading", "alignzeg"):
        neutral_default(f"{preset}_unet-small_1k_shapeworld", key, f"{key}=true")
    # the shared stages' keys (mask-projection's stage 1) follow the same rule
    off = identity_view({"match": dataclasses.asdict(MatchWeights())})
    assert "skip_unknown_queries" not in off["match"]
    on = identity_view({"match": dataclasses.asdict(MatchWeights(skip_unknown_queries=True))})
    assert on["match"]["skip_unknown_queries"] is True


def test_skip_unknown_queries_with_every_query_skipped_gives_no_class_term_not_nan():
    # an image whose pixels are all unknown (every object unseen): no target, and every query's
    # mask on the unknown pixels
    batch = _batch(
        pan=torch.zeros_like(PAN), label=torch.full_like(LABEL, 255), segs=[torch.zeros(0, 3)]
    )
    logits, masks = _three_queries(torch.full((4, 4), 6.0))
    masks[:] = 6.0
    matches, out = _skip_loss(logits, masks, True, batch)
    assert [len(q) for q, _ in matches] == [0]
    assert float(out["ce"]) == 0.0 and torch.isfinite(out["loss"])
    _, pushed = _skip_loss(logits, masks, False, batch)
    assert float(pushed["ce"]) > 0.0
