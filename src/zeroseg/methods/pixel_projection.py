"""The pixel-projection model (SPNet, Xian et al. CVPR 2019, eq. 1-2): a dense backbone's pixel
features projected into the class-embedding space and scored by scaled cosine similarity.

Shared by the projection baseline and the oracle (``methods/projection.py``) and SAZS
(``methods/sazs.py``), so none of those method modules imports another.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from zeroseg._checks import check_minimum
from zeroseg.engine.trainer import scaled_lr_groups
from zeroseg.methods.base import Method, StagePlan
from zeroseg.models.backbones.small import SmallUNet, SmallUNetConfig
from zeroseg.models.heads.projection import ProjectionHead
from zeroseg.models.upsample import bilinear


@dataclass
class ProjectionConfig:
    """Model options of the projection baseline / oracle."""

    backbone: SmallUNetConfig = field(default_factory=SmallUNetConfig)  # the dense CNN
    calibration: float = 0.0  # gamma of calibrated stacking (0 = off)
    foundation: str | None = None  # "shipped" (the ShapeWorld foundation), a path, or None
    freeze_backbone: bool = (
        False  # train the head only (ZegCLIP's baseline on the frozen foundation)
    )
    backbone_lr_mult: float = 1.0  # the backbone's learning rate relative to the head's
    # with a foundation: start the projection head (and its text-side map) from it too; False
    # starts the head at random on the foundation's backbone (an ablation: how much of the
    # baseline is the foundation's pixel-name alignment)
    foundation_head: bool = True
    # keep the head's text-side map as it starts (the foundation's), as SPNet keeps its word
    # embeddings fixed: only the visual side learns from the seen names (an ablation)
    freeze_text_map: bool = False
    # on the frozen foundation, keep the head's hidden layer (its 3x3 convolution and batch norm)
    # frozen too: only its last 1x1 layer and text-side map train, a linear readout of the pixel
    # features ZegCLIP's tokens are made of (ZegCLIP's second baseline, projection-probe)
    freeze_head_hidden: bool = False

    def __post_init__(self) -> None:
        check_minimum(self, ("backbone_lr_mult",), 0, strict=True)  # frozen: freeze_backbone
        if not self.foundation_head and not self.foundation:
            raise ValueError(
                "model.foundation_head: false starts the head at random on a foundation's "
                "backbone; set model.foundation (e.g. shipped) or drop foundation_head"
            )
        if self.freeze_head_hidden and not (
            self.freeze_backbone and self.foundation and self.foundation_head
        ):
            raise ValueError(
                "model.freeze_head_hidden keeps the foundation's head hidden layer frozen on its "
                "frozen backbone: set model.foundation, freeze_backbone: true and "
                "foundation_head: true, or drop freeze_head_hidden"
            )


def segmenter_stage_parts(
    ctx,
    backbone: SmallUNetConfig,
    foundation: str | None,
    *,
    classes: str,
    frozen: bool,
    backbone_lr_mult: float = 1.0,
    foundation_head: bool = True,
    freeze_text_map: bool = False,
    freeze_head_hidden: bool = False,
) -> dict:
    """The shared-stage key parts of the projection model's training on pixel labels.

    Every run that trains this model the same way (the projection baseline, and ZS3Net/ZS5Net's
    stage 1 with ``head: projection``) trains it once per output directory, in
    ``_shared/projection-segmenter-<digest>``. ``classes`` ("seen" or "all": the oracle) and
    ``frozen`` (the head alone on a frozen backbone) keep the other rows' weights apart; the
    model revision is written in, so the key does not depend on which method computes it.
    """
    return {
        "revision": PixelProjection.revision,
        "model": "pixel-projection",
        "backbone": backbone,
        "foundation": foundation,
        "classes": classes,
        "frozen": frozen,
        "backbone_lr_mult": backbone_lr_mult,  # left out of the key at 1 (NEUTRAL_DEFAULTS)
        "foundation_head": foundation_head,  # left out of the key when True (NEUTRAL_DEFAULTS)
        "freeze_text_map": freeze_text_map,  # left out of the key when False (NEUTRAL_DEFAULTS)
        "freeze_head_hidden": freeze_head_hidden,  # left out when False (NEUTRAL_DEFAULTS)
        "train": ctx.cfg.train,
        "text": ctx.cfg.text,
    }


# The shared directory name of that stage (``RunContext.run_stage(directory=...)``).
SEGMENTER_STAGE_DIR = "projection-segmenter"


def segmenter_plan(
    ctx,
    backbone: SmallUNet,
    head: ProjectionHead,
    foundation: str | None,
    class_embeddings: torch.Tensor,
    lookup: torch.Tensor,
    ignore_index: int,
    *,
    backbone_lr_mult: float = 1.0,
    foundation_head: bool = True,
    freeze_text_map: bool = False,
) -> StagePlan:
    """That stage's training: ``backbone`` and ``head`` (from ``foundation`` if set; the head from
    it only with ``foundation_head``, else at its random initialisation; its text-side map
    left as it starts with ``freeze_text_map``) trained with
    cross-entropy over ``class_embeddings`` on the run's loader, ``lookup`` mapping labels to
    their positions (the ignore index for labels outside them). The one step of the projection
    baseline, the oracle and ZS3Net/ZS5Net's stage 1."""
    emb = class_embeddings.to(ctx.device)
    lookup = lookup.to(ctx.device)
    cfg = ctx.cfg.train
    loader = ctx.loader(cfg)
    if foundation:
        ctx.start_from_foundation(foundation, backbone, head if foundation_head else None)

    def step(model, batch):
        out = head(backbone(batch["image"].to(ctx.device)), emb)
        labels = batch["label"].to(ctx.device)
        return {"loss": full_resolution_cross_entropy(out, labels, lookup, ignore_index)}

    frozen = set()
    if freeze_text_map and head.text_proj is not None:
        head.text_proj.requires_grad_(False)
        frozen = {id(p) for p in head.text_proj.parameters()}
    params = [*backbone.parameters(), *(p for p in head.parameters() if id(p) not in frozen)]
    return StagePlan(
        step, loader, cfg, params=scaled_lr_groups(params, backbone, cfg.lr, backbone_lr_mult)
    )


def full_resolution_cross_entropy(
    logits: torch.Tensor, labels: torch.Tensor, lookup: torch.Tensor, ignore_index: int
) -> torch.Tensor:
    """Cross-entropy of (B, K, h, w) logits upsampled bilinearly (in fp32) to the (B, H, W)
    labels' size, as inference upsamples them and as DeepLab and SPNet train; ``lookup`` maps a
    label to its logit's position (``ignore_index`` outside them).

    Until revision 2 of :class:`PixelProjection` the loss ran at the stride-2 feature resolution
    on nearest-subsampled labels; why it changed, with the `val` figures: docs/methods.md,
    "Projection baseline and oracle".
    """
    up = bilinear(logits.float(), labels.shape[-2:])
    return F.cross_entropy(up, lookup[labels.long().clamp(0, 255)], ignore_index=ignore_index)


class PixelProjection(Method):
    """A dense backbone whose pixel embeddings are scored against class text embeddings.

    The model part of the projection baseline, the oracle and SAZS (which adds a boundary head);
    each of them writes its own ``fit`` and ``scores``.
    """

    # 1: the head's scores computed in its hidden space (ProjectionHead.forward), equal to the
    # D-dim cosine up to rounding, which changes what a run trains.
    # 2: the training loss at the labels' full resolution (full_resolution_cross_entropy).
    revision = 2

    def __init__(self, cfg: ProjectionConfig, *, split, embed_dim: int):
        super().__init__(cfg, split=split, embed_dim=embed_dim)
        self.backbone = SmallUNet(cfg.backbone)
        self.head = ProjectionHead(self.backbone.out_dim, embed_dim)
        # SAZS builds on this class with its own config, which always fine-tunes.
        self.frozen_backbone = isinstance(cfg, ProjectionConfig) and cfg.freeze_backbone
        if self.frozen_backbone:
            self.backbone.requires_grad_(False)
        self.frozen_head_hidden = isinstance(cfg, ProjectionConfig) and cfg.freeze_head_hidden
        if self.frozen_head_hidden:  # left out of the optimiser as the frozen backbone is
            self.head.proj[:-1].requires_grad_(False)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.frozen_backbone:
            self.backbone.eval()  # frozen: its batch-norm statistics stay the pretrained ones
        if self.frozen_head_hidden:
            self.head.proj[:-1].eval()  # so do the head's hidden layer's
        return self

    def logits(
        self, images: torch.Tensor, class_embeddings: torch.Tensor, *, upsample: bool = True
    ) -> torch.Tensor:
        """(B,3,H,W) uint8, (K,D) -> (B,K,H,W) logits (at feature resolution if not ``upsample``)."""
        out = self.head(self.backbone(images), class_embeddings).float()
        if not upsample:
            return out
        return bilinear(out, images.shape[-2:])
