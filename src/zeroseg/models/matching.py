"""Bipartite matching and the set loss of mask-classification models.

DETR (Carion et al., ECCV 2020) / MaskFormer (Cheng et al., NeurIPS 2021) / Mask2Former (CVPR 2022):
predictions (N queries) and ground-truth segments (M <= N) are matched one-to-one by the Hungarian
algorithm (``scipy.optimize.linear_sum_assignment``) on the cost

    C(q, j) = w_class · (-p_q(c_j)) + w_mask · BCE(m_q, g_j) + w_dice · (1 - dice(m_q, g_j)),

and the set loss is, for the matched pairs, ``w_mask · BCE + w_dice · dice`` (averaged over the
ground-truth segments) plus ``w_class ·`` cross-entropy of *all* queries, unmatched ones toward
the no-object class whose weight is ``no_object_weight`` (0.1). Mask2Former's weights are
w_class 2, w_mask 5, w_dice 5. Masks are compared at the prediction's resolution (64 px images
give 32x32 masks, small enough that no point sampling is needed).

Unknown pixels: a pixel whose training label is the ignore index (under the ``ignore`` protocol,
every unseen-class pixel) is unknown, not background. A target may carry a ``valid`` map; the
mask cost and the BCE / dice terms are then computed over the valid pixels only, so an ignored
pixel is neither foreground nor background of any mask, and what the ignored region holds (or
what a query predicts there) changes neither the matching nor the loss. With no ignored pixel
(``valid`` None: the strict protocol on ShapeWorld) the terms are exactly Mask2Former's.
``MatchWeights.skip_unknown_queries`` also leaves out of the class loss the unmatched queries whose
masks lie mostly on unknown pixels, which Mask2Former's loss pushes to no-object.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import Tensor

__all__ = [
    "MatchWeights",
    "Target",
    "hungarian_match",
    "set_loss",
    "targets_from_panoptic",
]


@dataclass
class MatchWeights:
    """Weights of the matching cost and of the loss (Mask2Former's defaults)."""

    class_weight: float = 2.0  # class term
    mask_weight: float = 5.0  # sigmoid BCE term
    dice_weight: float = 5.0  # dice term
    no_object_weight: float = 0.1  # CE weight of the no-object class
    # An unmatched query whose mask (logit > 0) lies mostly on unknown pixels: False pushes it to
    # no-object like every unmatched query (Mask2Former); True leaves it out of the class loss, so
    # an object in the ignored region (under `ignore`: an unseen one) is not taught to be nothing.
    skip_unknown_queries: bool = False


@dataclass
class Target:
    """Ground-truth segments of one image.

    Attributes:
        labels: (M,) int64 class positions.
        masks: (M, h, w) float.
        valid: (h, w) float, 1 where the pixel is labelled, 0 where it is unknown (ignore index);
            None when every pixel is labelled.
    """

    labels: Tensor
    masks: Tensor
    valid: Tensor | None = None


def _subsample(maps: Tensor, size: tuple[int, int]) -> Tensor:
    """(B, H, W) integer maps -> (B, h, w), nearest (no id or label is mixed)."""
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    return F.interpolate(maps[:, None].float(), size=size, mode="nearest")[:, 0].long()


def valid_maps(
    labels: Tensor | None, size: tuple[int, int], *, ignore_index: int = 255
) -> list[Tensor | None]:
    """Per-image (h, w) float maps of the labelled pixels at the mask resolution, None for an
    image without an ignored pixel (and for every image when there are no labels)."""
    if labels is None:
        return []
    known = _subsample(labels.long(), size) != ignore_index
    return [None if bool(k.all()) else k.float() for k in known]


def targets_from_panoptic(
    panoptic: Tensor,
    segments,
    lookup: Tensor,
    size: tuple[int, int],
    *,
    ignore_index: int = 255,
    labels: Tensor | None = None,
) -> list[Target]:
    """Per-image targets from panoptic maps and segment rows.

    Args:
        panoptic: (B, H, W) segment ids (0 = void).
        segments: B tensors (n, >=2) of rows ``(segment_id, class, ...)`` (or one (B, n, >=2) tensor).
        lookup: (256,) class index -> position in the training vocabulary; ``ignore_index`` drops
            a segment (e.g. an unseen class, which the protocol has removed already).
        size: (h, w) of the predicted masks; the map is subsampled there (nearest: no id is mixed).
        labels: (B, H, W) training labels; their ``ignore_index`` pixels become the targets'
            unknown pixels (``Target.valid``). None: every pixel is labelled.
    """
    pan = _subsample(panoptic, size)
    lab = labels.to(pan.device) if labels is not None else None
    valid = valid_maps(lab, size, ignore_index=ignore_index)
    out = []
    for b in range(pan.shape[0]):
        segs = segments[b]
        ids, cls = segs[:, 0].to(pan.device), segs[:, 1].long().clamp(0, 255)
        pos = lookup.to(pan.device)[cls.to(pan.device)]
        keep = pos != ignore_index
        masks = (pan[b][None] == ids[keep][:, None, None]).float()
        v = valid[b] if valid else None
        if v is not None:
            masks = masks * v  # a segment's own void pixels (a crowd, say) are unknown too
        present = masks.flatten(1).sum(1) > 0  # a tiny segment may vanish at mask resolution
        out.append(Target(labels=pos[keep][present], masks=masks[present], valid=v))
    return out


def _batch_costs(logits: Tensor, masks: Tensor, targets: list[Target], w: MatchWeights) -> Tensor:
    """(B, N, M_max) matching costs of a batch, the targets zero-padded to the most segments.

    The cost of the module docstring, for every image in one pass of batched operations (a
    training step matches every decoder layer's predictions; image by image, the ~20 small
    operations per image cost more in dispatch than in arithmetic). Column ``j >= M_b`` of
    image ``b`` is padding. ``tests/models/test_matching_batched.py`` checks it against a
    per-image implementation.
    """
    b, n = logits.shape[:2]
    size = masks.shape[-2:]
    m_max = max(len(t.labels) for t in targets)
    device = masks.device
    labels = torch.zeros(b, m_max, dtype=torch.int64, device=device)
    g = masks.new_zeros((b, m_max, size[0] * size[1]), dtype=torch.float32)
    v = masks.new_ones((b, size[0] * size[1]), dtype=torch.float32)
    for i, t in enumerate(targets):
        labels[i, : len(t.labels)] = t.labels.to(device)
        g[i, : len(t.labels)] = t.masks.float().flatten(1).to(device)
        if t.valid is not None:
            v[i] = t.valid.float().flatten().to(device)
    prob = logits.float().softmax(-1)  # (B, N, K+1)
    cost_class = -prob.gather(2, labels[:, None, :].expand(b, n, m_max))
    x = masks.float().flatten(2)  # (B, N, P)
    vx = v[:, None, :]
    # Unknown pixels (v = 0) count neither as foreground nor as background.
    pos = F.binary_cross_entropy_with_logits(x, torch.ones_like(x), reduction="none") * vx
    neg = F.binary_cross_entropy_with_logits(x, torch.zeros_like(x), reduction="none") * vx
    s = x.sigmoid() * vx
    g = g * vx
    gt = g.transpose(1, 2)  # (B, P, M)
    p = v.sum(1).clamp(min=1.0)[:, None, None]
    cost_mask = (pos @ gt + neg @ (v[:, :, None] - gt)) / p
    dice = (2 * s @ gt + 1) / (s.sum(2)[:, :, None] + g.sum(2)[:, None, :] + 1)
    return w.class_weight * cost_class + w.mask_weight * cost_mask + w.dice_weight * (1 - dice)


@torch.no_grad()
def hungarian_match(
    logits: Tensor, masks: Tensor, targets: list[Target], weights: MatchWeights | None = None
) -> list[tuple[Tensor, Tensor]]:
    """Optimal one-to-one assignment of queries to ground-truth segments, per image.

    Args:
        logits: (B, N, K+1) class logits (last: no-object).
        masks: (B, N, h, w) mask logits.
        targets: B targets with masks at (h, w).

    Returns:
        B pairs ``(query_idx, target_idx)`` of int64 tensors of length min(N, M_b).
    """
    w = weights or MatchWeights()
    empty = torch.zeros(0, dtype=torch.int64)
    if not any(len(t.labels) for t in targets):
        return [(empty, empty) for _ in targets]
    costs = np.nan_to_num(_batch_costs(logits, masks, targets, w).cpu().numpy(), nan=1e6)
    out = []
    for c, t in zip(costs, targets, strict=True):
        if len(t.labels) == 0:
            out.append((empty, empty))
            continue
        qi, ti = linear_sum_assignment(c[:, : len(t.labels)])
        out.append((torch.as_tensor(qi, dtype=torch.int64), torch.as_tensor(ti, dtype=torch.int64)))
    return out


def set_loss(
    logits: Tensor,
    masks: Tensor,
    targets: list[Target],
    matches: list[tuple[Tensor, Tensor]],
    weights: MatchWeights | None = None,
) -> dict[str, Tensor]:
    """The weighted set loss of one layer's predictions.

    Args:
        logits: (B, N, K+1) class logits.
        masks: (B, N, h, w) mask logits.
        targets: B targets.
        matches: from :func:`hungarian_match`.

    Returns:
        ``ce``, ``bce``, ``dice`` (unweighted) and ``loss`` (weighted sum).
    """
    w = weights or MatchWeights()
    b, n, k1 = logits.shape
    device = logits.device
    target_cls = torch.full((b, n), k1 - 1, dtype=torch.int64, device=device)
    src_masks, tgt_masks, valid = [], [], []
    for i, (t, (qi, ti)) in enumerate(zip(targets, matches)):
        target_cls[i, qi.to(device)] = t.labels[ti.to(t.labels.device)].to(device)
        src_masks.append(masks[i, qi.to(device)])
        tgt_masks.append(t.masks[ti.to(t.masks.device)].to(device))
        v = t.valid if t.valid is not None else torch.ones(masks.shape[-2:], device=device)
        valid.append(v.to(device).float().flatten()[None].expand(len(qi), -1))
    any_unknown = any(t.valid is not None for t in targets)
    class_w = torch.ones(k1, device=device)
    class_w[-1] = w.no_object_weight
    if w.skip_unknown_queries and any_unknown:
        target_cls = _skip_unknown_queries(target_cls, masks, targets, k1 - 1)
    if w.skip_unknown_queries and not bool((target_cls >= 0).any()):
        ce = logits.float().sum() * 0.0  # every query skipped: no class term, not NaN
    else:  # (skipped queries carry cross_entropy's ignore index, -100)
        ce = F.cross_entropy(logits.float().reshape(-1, k1), target_cls.reshape(-1), weight=class_w)
    num = max(1, sum(len(qi) for qi, _ in matches))
    if num and src_masks and sum(len(s) for s in src_masks):
        x = torch.cat(src_masks).float().flatten(1)
        g = torch.cat(tgt_masks).float().flatten(1)
        bce = F.binary_cross_entropy_with_logits(x, g, reduction="none")
        s = x.sigmoid()
        if any_unknown:  # means over each image's labelled pixels; unknown pixels weigh nothing
            v = torch.cat(valid)
            bce = ((bce * v).sum(1) / v.sum(1).clamp(min=1.0)).sum() / num
            s, g = s * v, g * v
        else:
            bce = bce.mean(1).sum() / num
        dice = (1 - (2 * (s * g).sum(1) + 1) / (s.sum(1) + g.sum(1) + 1)).sum() / num
    else:
        bce = dice = masks.sum() * 0.0
    loss = w.class_weight * ce + w.mask_weight * bce + w.dice_weight * dice
    return {"loss": loss, "ce": ce.detach(), "bce": bce.detach(), "dice": dice.detach()}


def _skip_unknown_queries(
    target_cls: Tensor, masks: Tensor, targets: list[Target], no_object: int
) -> Tensor:
    """``target_cls`` with -100 (no class loss) for every unmatched query whose predicted mask
    (logit > 0) has more than half of its pixels on unknown ones. The choice is made on the
    detached masks: it passes no gradient, and what the unknown pixels hold is never read."""
    device = masks.device
    unknown = torch.stack(
        [
            (t.valid.to(device) == 0).flatten()
            if t.valid is not None
            else torch.zeros(masks.shape[-2:].numel(), dtype=torch.bool, device=device)
            for t in targets
        ]
    )
    fg = masks.detach().flatten(2) > 0  # (B, N, h*w)
    area = fg.sum(-1)
    on_unknown = (fg & unknown[:, None, :]).sum(-1)
    skip = (target_cls == no_object) & (2 * on_unknown > area) & (area > 0)
    return target_cls.masked_fill(skip, -100)


def targets_from_semantic(
    labels: Tensor, lookup: Tensor, size: tuple[int, int], *, ignore_index: int = 255
) -> list[Target]:
    """Per-image targets from semantic label maps: one mask per class present (Mask2Former's
    semantic-segmentation training targets, for datasets without panoptic annotations); the
    ``ignore_index`` pixels are the targets' unknown pixels."""
    lab = _subsample(labels.long().clamp(0, 255), size)
    valid = valid_maps(lab, size, ignore_index=ignore_index)
    out = []
    for b in range(lab.shape[0]):
        classes = [c for c in torch.unique(lab[b]).tolist() if c != ignore_index]
        pos = lookup.to(lab.device)[torch.tensor(classes, dtype=torch.long, device=lab.device)]
        keep = pos != ignore_index
        cls = torch.tensor(classes, device=lab.device)[keep]
        masks = (lab[b][None] == cls[:, None, None]).float()
        out.append(Target(labels=pos[keep], masks=masks, valid=valid[b]))
    return out


def batch_targets(batch: dict, lookup: Tensor, size: tuple[int, int], device) -> list[Target]:
    """Targets of a training batch: from panoptic segments when the dataset has them, else from
    the semantic labels (COCO-Stuff, VOC, Context)."""
    labels = batch["label"].to(device) if "label" in batch else None
    if "panoptic" in batch and "segments" in batch:
        return targets_from_panoptic(
            batch["panoptic"].to(device), batch["segments"], lookup, size, labels=labels
        )
    return targets_from_semantic(labels, lookup, size)
