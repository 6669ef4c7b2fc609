"""The batched matching cost equals the cost computed image by image (the form it replaced)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment

from zeroseg.models.matching import MatchWeights, Target, _batch_costs, hungarian_match


def _pair_costs(logits, masks, t: Target, w: MatchWeights) -> torch.Tensor:
    """(N, M) cost of one image, written directly from the module docstring's formula."""
    prob = logits.float().softmax(-1)
    cost_class = -prob[:, t.labels]
    x = masks.float().flatten(1)  # (N, P)
    g = t.masks.float().flatten(1)  # (M, P)
    v = torch.ones(x.shape[1]) if t.valid is None else t.valid.float().flatten()
    pos = F.binary_cross_entropy_with_logits(x, torch.ones_like(x), reduction="none") * v
    neg = F.binary_cross_entropy_with_logits(x, torch.zeros_like(x), reduction="none") * v
    s, g = x.sigmoid() * v, g * v
    p = max(float(v.sum()), 1.0)
    cost_mask = (pos @ g.T + neg @ (v[:, None] - g.T)) / p
    dice = (2 * s @ g.T + 1) / (s.sum(1)[:, None] + g.sum(1)[None, :] + 1)
    return w.class_weight * cost_class + w.mask_weight * cost_mask + w.dice_weight * (1 - dice)


def _batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    b, n, k, h, w = 4, 6, 5, 8, 8
    logits = torch.randn(b, n, k + 1, generator=g)
    masks = 3 * torch.randn(b, n, h, w, generator=g)
    targets = []
    for i, m in enumerate([3, 0, 5, 1]):  # one image without a segment
        labels = torch.randint(0, k, (m,), generator=g)
        tm = (torch.rand(m, h, w, generator=g) > 0.6).float()
        valid = None if i % 2 == 0 else (torch.rand(h, w, generator=g) > 0.3).float()
        targets.append(Target(labels=labels, masks=tm, valid=valid))
    return logits, masks, targets


def test_batched_costs_equal_per_image_costs():
    logits, masks, targets = _batch()
    w = MatchWeights()
    costs = _batch_costs(logits, masks, targets, w)
    assert costs.shape == (4, 6, 5)
    for b, t in enumerate(targets):
        if len(t.labels):
            want = _pair_costs(logits[b], masks[b], t, w)
            torch.testing.assert_close(costs[b, :, : len(t.labels)], want, rtol=1e-5, atol=1e-6)


def test_matches_equal_per_image_assignment():
    w = MatchWeights(class_weight=1.0, mask_weight=3.0, dice_weight=2.0)
    for seed in range(5):
        logits, masks, targets = _batch(seed)
        got = hungarian_match(logits, masks, targets, w)
        for b, t in enumerate(targets):
            if not len(t.labels):
                assert got[b][0].numel() == got[b][1].numel() == 0
                continue
            c = _pair_costs(logits[b], masks[b], t, w).numpy()
            qi, ti = linear_sum_assignment(np.nan_to_num(c, nan=1e6))
            assert got[b][0].tolist() == qi.tolist() and got[b][1].tolist() == ti.tolist()


def test_no_segment_anywhere():
    logits, masks, _ = _batch()
    empty = [Target(labels=torch.zeros(0, dtype=torch.int64), masks=torch.zeros(0, 8, 8))] * 4
    assert all(q.numel() == 0 and t.numel() == 0 for q, t in hungarian_match(logits, masks, empty))
