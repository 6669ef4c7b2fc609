"""SAZS: shape-aware zero-shot semantic segmentation.

Liu et al., "Delving into Shape-aware Zero-shot Semantic Segmentation", CVPR 2023 (reference code
Liuxinyv/SAZS, whose training loss is GSCNN's ``JointEdgeSegLoss``). A dense vision-language
segmenter (pixel embeddings x class text embeddings, here the projection model of
``zeroseg.methods.projection``) gets a boundary head and is trained on seen classes with

    L = w_seg * L_ce + w_edge * L_edge + w_att * L_att                           (paper eq. 2-4)

* ``L_ce``: cross-entropy over the seen classes (unseen pixels are ignore).
* ``L_edge`` (:func:`balanced_edge_bce`): class-balanced binary cross-entropy of the boundary
  head's logits against boundaries taken from the segmentation labels (:func:`boundary_targets`),
  each edge pixel weighted by the share of non-edge pixels and each non-edge pixel by the share of
  edge pixels (``bce2d`` of the released code).
* ``L_att`` (:func:`edge_attention_loss`): the segmentation cross-entropy restricted to the pixels
  the boundary head *predicts* as edges (edge logit > 0.8, as the released code's
  ``edge_attention``), with GSCNN's image-based class weights ``1 + (1 - freq_c)``.

The released loss has a fourth term (InverseForm, weight 0.3), which needs a separately
pretrained distance regressor; it is left out (the paper's equations do not include it).

At inference the class scores are fused with the eigen-segments of the image's normalised graph
Laplacian (``zeroseg.shape.spectral``, ``zeroseg.shape.fusion``): every spatially connected
eigen-segment takes the class the majority of its pixels predict when enough of them agree. The
released test code (``test_sp``) instead keeps, per image, whichever of the prediction and five
binarised eigenvectors has the best IoU *with the ground truth*; no test-time method may look at
the labels, and this one never does. The affinity graph is built from the segmenter's own frozen
backbone features plus colour and position (or colour and position only).

Differences from the released code, all deliberate: boundaries are never drawn against ignore
pixels (unseen regions are ignore in training, so an edge there would reveal an unseen shape;
a pixel within the boundary radius of an ignore pixel carries no boundary target at all); image
borders are not boundaries; the balanced BCE is averaged over labelled pixels (not over all
pixels); the edge-attention loss is one weighted mean over the batch (the released code sums
per-image means) and is 0, not NaN, when no edge is predicted.

This module also provides the method-independent parts: :func:`spectral_post`, the same fusion as
a refinement of any method's scores (``zeroseg.runner.evaluate(..., post=...)``), and
:func:`precompute_command`, which fills an eigenvector cache for a dataset.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from zeroseg._checks import check_minimum
from zeroseg.data.labels import downsample_labels, seen_position_lookup
from zeroseg.engine.trainer import scaled_lr_groups
from zeroseg.methods.base import RunContext, Stage, StagePlan, calibrate, subtract_seen
from zeroseg.methods.pixel_projection import PixelProjection, full_resolution_cross_entropy
from zeroseg.models.backbones.small import SmallUNetConfig
from zeroseg.models.upsample import bilinear
from zeroseg.shape.fusion import RefineConfig, refine
from zeroseg.shape.refine import default_refine_config
from zeroseg.shape.spectral import spectral_decomposition

AFFINITY_FEATURES = ("backbone", "colour")


@dataclass
class SazsConfig:
    """Model, loss and inference-fusion options of SAZS."""

    backbone: SmallUNetConfig = field(default_factory=SmallUNetConfig)  # the dense CNN
    calibration: float = 0.0  # gamma of calibrated stacking (0 = off), applied before fusion
    seg_weight: float = 1.0  # w_seg: seen-class cross-entropy
    edge_weight: float = 0.3  # w_edge: class-balanced boundary BCE
    attention_weight: float = 0.1  # w_att: cross-entropy on predicted-edge pixels
    edge_radius: int = 1  # boundary band half-width, in feature pixels (stride 2)
    attention_logit: float = 0.8  # edge-attention pixels: edge logit above this (sigmoid > 0.69)
    affinity_features: str = "backbone"  # graph features at fusion: backbone | colour (none)
    refine: RefineConfig = field(default_factory=default_refine_config)  # eigen-segment fusion
    foundation: str | None = None  # "shipped" (the ShapeWorld foundation), a path, or None
    backbone_lr_mult: float = 1.0  # the U-Net's learning rate relative to the heads'

    def __post_init__(self) -> None:
        if self.affinity_features not in AFFINITY_FEATURES:
            raise ValueError(
                f"SazsConfig.affinity_features must be one of {AFFINITY_FEATURES}, "
                f"got {self.affinity_features!r}"
            )
        check_minimum(self, ("edge_radius",), 1)
        check_minimum(self, ("backbone_lr_mult",), 0, strict=True)
        check_minimum(self, ("seg_weight", "edge_weight", "attention_weight"), 0)


# ------------------------------------------------------------------------------------- losses


def _disk_offsets(radius: int) -> list[tuple[int, int]]:
    return [
        (dy, dx)
        for dy in range(-radius, radius + 1)
        for dx in range(-radius, radius + 1)
        if (dy, dx) != (0, 0) and dy * dy + dx * dx <= radius * radius
    ]


def boundary_targets(
    labels: torch.Tensor, *, radius: int = 1, ignore_index: int = 255
) -> torch.Tensor:
    """Boundary targets of label maps: 1 edge, 0 no edge, ``ignore_index`` unknown.

    A labelled pixel is an edge when a labelled pixel of another class lies within Euclidean
    distance ``radius`` (the released code's band: distance transform <= radius). Ignore pixels
    give no boundary information: they are never edges, never make a neighbour an edge, and a
    labelled pixel with no other-class neighbour but an ignore pixel within ``radius`` is
    ``ignore_index`` (its boundary may be exactly there, but the label cannot say). Outside the
    image is neither: borders are not edges.

    Args:
        labels: (B, H, W) integer labels, ``ignore_index`` for unlabelled pixels.
        radius: band half-width in pixels (>= 1).
        ignore_index: the unlabelled value.

    Returns:
        (B, H, W) int64 in {0, 1, ignore_index}.
    """
    if labels.ndim != 3:
        raise ValueError(f"boundary_targets: labels must be (B, H, W), got {tuple(labels.shape)}")
    if radius < 1:
        raise ValueError(f"boundary_targets: radius must be >= 1, got {radius}")
    lab = labels.long()
    B, H, W = lab.shape
    r = radius
    # -1 marks "outside the image", which is neither another class nor ignore.
    padded = F.pad(lab, (r, r, r, r), value=-1)
    valid = lab != ignore_index
    edge = torch.zeros_like(valid)
    near_ignore = torch.zeros_like(valid)
    for dy, dx in _disk_offsets(r):
        nb = padded[:, r + dy : r + dy + H, r + dx : r + dx + W]
        nb_valid = (nb != ignore_index) & (nb >= 0)
        edge |= nb_valid & (nb != lab)
        near_ignore |= nb == ignore_index
    edge &= valid
    out = edge.long()
    out[valid & ~edge & near_ignore] = ignore_index
    out[~valid] = ignore_index
    return out


def balanced_edge_weights(targets: torch.Tensor, *, ignore_index: int = 255) -> torch.Tensor:
    """Per-pixel weights of the class-balanced boundary BCE (``bce2d`` of the released code).

    Edge pixels get ``N_neg / (N_pos + N_neg)``, non-edge pixels ``N_pos / (N_pos + N_neg)``,
    unknown pixels 0; counts over the whole batch.

    Args:
        targets: (B, H, W) in {0, 1, ignore_index}.

    Returns:
        (B, H, W) float32 weights.
    """
    pos = targets == 1
    neg = targets == 0
    n_pos, n_neg = pos.sum().float(), neg.sum().float()
    total = (n_pos + n_neg).clamp(min=1.0)
    w = torch.zeros(targets.shape, dtype=torch.float32, device=targets.device)
    w = torch.where(pos, n_neg / total, w)
    return torch.where(neg, n_pos / total, w)


def balanced_edge_bce(
    edge_logits: torch.Tensor, targets: torch.Tensor, *, ignore_index: int = 255
) -> torch.Tensor:
    """Class-balanced BCE, averaged over the labelled (edge or non-edge) pixels.

    Args:
        edge_logits: (B, 1, H, W) or (B, H, W) boundary logits.
        targets: (B, H, W) in {0, 1, ignore_index} (see :func:`boundary_targets`).
    """
    logits = edge_logits.float().reshape(targets.shape)
    weights = balanced_edge_weights(targets, ignore_index=ignore_index)
    t = (targets == 1).float()
    per_pixel = F.binary_cross_entropy_with_logits(logits, t, reduction="none")
    labelled = (targets != ignore_index).sum().clamp(min=1)
    return (weights * per_pixel).sum() / labelled


def edge_attention_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    edge_logits: torch.Tensor,
    *,
    threshold: float = 0.8,
    ignore_index: int = 255,
) -> torch.Tensor:
    """Cross-entropy on the pixels predicted as edges, with image-based class weights.

    Pixels whose edge logit exceeds ``threshold`` keep their target, all others are ignored; the
    class weights are GSCNN's ``1 + (1 - freq_c)`` for classes present among the kept targets
    (1 for absent ones), and the loss is their weighted mean. The edge mask is a comparison, so no
    gradient flows into the boundary head through this term (as in the released code).

    Args:
        logits: (B, S, H, W) class logits.
        targets: (B, H, W) class positions in ``0..S-1`` or ``ignore_index``.
        edge_logits: (B, 1, H, W) or (B, H, W) boundary logits.
        threshold: edge-logit threshold.
    """
    B, S, H, W = logits.shape
    on_edge = edge_logits.detach().reshape(B, H, W) > threshold
    kept = torch.where(on_edge, targets, torch.full_like(targets, ignore_index))
    valid = kept != ignore_index
    if not bool(valid.any()):
        return logits.sum() * 0.0  # keeps the graph; the released code returns NaN here
    counts = torch.bincount(kept[valid], minlength=S).float()
    freq = counts / counts.sum()
    weight = torch.where(counts > 0, 2.0 - freq, torch.ones_like(freq))
    return F.cross_entropy(logits.float(), kept, weight=weight, ignore_index=ignore_index)


# ------------------------------------------------------------------------------------- method


class Sazs(PixelProjection):
    """Projection segmenter + boundary head, trained with SAZS's losses; eigen-segment fusion."""

    name = "sazs"
    Config = SazsConfig
    stages = (Stage("sazs-segmenter", "train"),)
    protocol = "inductive"
    fuse_at_inference: ClassVar[bool] = True
    tiny = ("model.refine.spectral.max_side=16",)

    def __init__(self, cfg: SazsConfig, *, split, embed_dim: int):
        super().__init__(cfg, split=split, embed_dim=embed_dim)
        c = self.backbone.out_dim
        self.edge_head = nn.Sequential(
            nn.Conv2d(c, c // 2, 3, padding=1, bias=False),
            nn.BatchNorm2d(c // 2),
            nn.ReLU(inplace=True),
            nn.Conv2d(c // 2, 1, 1),
        )

    def forward_train(
        self, images: torch.Tensor, class_embeddings: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(B,3,H,W) uint8, (S,D) -> class logits (B,S,h,w) and edge logits (B,1,h,w), stride 2."""
        feats = self.backbone(images)
        return self.head(feats, class_embeddings).float(), self.edge_head(feats).float()

    def stage_parts(self, ctx: RunContext) -> dict:
        """What decides the segmenter's weights (fusion settings excluded: shared by both rows)."""
        model = dataclasses.asdict(self.cfg)
        for k in ("refine", "affinity_features", "calibration"):
            model.pop(k)
        return {"text": ctx.cfg.text, "train": ctx.cfg.train, "model": model}

    def fit(self, ctx: RunContext) -> None:
        if self.cfg.foundation:
            ctx.uses_foundation(self.cfg.foundation)
        # Both SAZS rows (with and without fusion) start from this stage: trained once.
        stage = ctx.run_stage(
            "sazs-segmenter",
            model=self,
            key=self.stage_parts(ctx),
            prepare=lambda: self._plan(ctx),
            meta={"method": "sazs"},
        )
        ctx.notes.append(f"segmenter stage shared by sazs and sazs-nofusion: {stage.name}")

    def _plan(self, ctx: RunContext) -> StagePlan:
        emb = ctx.seen_embeddings().to(ctx.device)
        lookup = seen_position_lookup(self.split).to(ctx.device)
        cfg, mcfg = ctx.cfg.train, self.cfg
        ignore = self.split.ignore_index
        loader = ctx.loader(cfg)
        if mcfg.foundation:
            ctx.start_from_foundation(mcfg.foundation, self.backbone, self.head)

        def step(model, batch):
            logits, edge = model.forward_train(batch["image"].to(ctx.device), emb)
            full = batch["label"].to(ctx.device)
            labels = downsample_labels(full, logits.shape[-2:])
            # Boundaries from the seen-only labels (unseen pixels are ignore: no boundary there).
            edges = boundary_targets(labels, radius=mcfg.edge_radius, ignore_index=ignore)
            target = lookup[labels]
            # The segmentation term at the labels' full resolution, as the projection baseline's
            # (revision 2); the boundary terms stay at the logits' resolution.
            ce = full_resolution_cross_entropy(logits, full, lookup, ignore)
            bce = balanced_edge_bce(edge, edges, ignore_index=ignore)
            att = edge_attention_loss(
                logits, target, edge, threshold=mcfg.attention_logit, ignore_index=ignore
            )
            loss = mcfg.seg_weight * ce + mcfg.edge_weight * bce + mcfg.attention_weight * att
            return {
                "loss": loss,
                "ce": ce.detach(),
                "edge_bce": bce.detach(),
                "edge_att": att.detach(),
            }

        params = scaled_lr_groups(self.parameters(), self.backbone, cfg.lr, mcfg.backbone_lr_mult)
        return StagePlan(step, loader, cfg, params=params)

    def _logits(self, images, class_embeddings):
        feats = self.backbone(images)
        logits = self.head(feats, class_embeddings).float()
        logits = bilinear(logits, images.shape[-2:])
        return feats, logits

    def scores(self, images, class_embeddings, seen_mask):
        if not self.fuse_at_inference:
            logits = self._logits(images, class_embeddings)[1]
            return calibrate(logits, seen_mask, self.cfg.calibration)
        return self.calibrated_scores(images, class_embeddings, seen_mask, self.cfg.calibration)

    def calibration_scores(self, images, class_embeddings, seen_mask):
        """The classifier's probabilities before fusion: fusion decodes calibrated probabilities,
        so the shared rule's ``gamma`` (and the AUSUC sweep) acts before it."""
        return self._logits(images, class_embeddings)[1].softmax(1)

    def calibrated_scores(self, images, class_embeddings, seen_mask, gamma):
        feats, logits = self._logits(images, class_embeddings)
        probs = subtract_seen(logits.softmax(1), seen_mask, gamma)
        if not self.fuse_at_inference:
            return probs
        fused = self.fuse(images, probs, feats)
        # Scores whose argmax is the fused label and that keep the probabilities as tie-breakers:
        # probs lie in [-1, 1] (after calibration), so +3 on the fused class always wins.
        return probs + 3.0 * F.one_hot(fused, probs.shape[1]).permute(0, 3, 1, 2).to(probs)

    @torch.no_grad()
    def fuse(self, images: torch.Tensor, probs: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
        """Eigen-segment fusion of (B,K,H,W) scores; reads only the images and the model."""
        out = []
        for i in range(images.shape[0]):
            image = images[i].permute(1, 2, 0).cpu().numpy()
            graph_feats = None
            if self.cfg.affinity_features == "backbone":
                graph_feats = feats[i].detach().float().permute(1, 2, 0).cpu()  # (h, w, C)
            out.append(refine(probs[i].cpu(), image, graph_feats, self.cfg.refine))
        return torch.stack(out).to(probs.device)

    @classmethod
    def refinement(cls, cfg: SazsConfig) -> RefineConfig:
        return cfg.refine

    def bench_extra(self, spec) -> dict:
        """Time per image of the decomposition (and of the whole fusion) on rendered images."""
        from zeroseg.data.shapeworld.render import render

        images = [render(spec, "val", i).image for i in range(4)]
        batch = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
        with torch.no_grad():
            feats = self.backbone(batch)
        graph = [
            feats[i].permute(1, 2, 0) if self.cfg.affinity_features == "backbone" else None
            for i in range(len(images))
        ]
        spectral_decomposition(images[0], graph[0], self.cfg.refine.spectral)  # warm-up
        t = time.perf_counter()
        for im, g in zip(images, graph):
            spectral_decomposition(im, g, self.cfg.refine.spectral)
        spectral_ms = (time.perf_counter() - t) / len(images) * 1000
        probs = torch.rand(len(images), self.split.num_classes, *batch.shape[-2:])
        t = time.perf_counter()
        self.fuse(batch, probs, feats)
        fusion_ms = (time.perf_counter() - t) / len(images) * 1000
        return {"spectral_ms_per_image": spectral_ms, "fusion_ms_per_image": fusion_ms}


class SazsNoFusion(Sazs):
    """The same trained SAZS segmenter, scored without the eigen-segment fusion (ablation row)."""

    name = "sazs-nofusion"
    fuse_at_inference = False

    def bench_extra(self, spec) -> dict:
        return {}
