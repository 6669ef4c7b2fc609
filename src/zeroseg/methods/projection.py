"""The projection baseline and the oracle.

Projection (SPNet, Xian et al. CVPR 2019, eq. 1-2; ZegFormer-seg): a dense backbone's pixel
features are projected into the class-embedding space; the score of class k at pixel x is
``s · cos(W f(x), t_k)``, trained with cross-entropy over the *seen* classes only. At test time the
same head scores any vocabulary, unseen names included. Trained on seen classes, it is biased
toward them: that bias is what the later methods fix. Optional calibrated stacking subtracts
``gamma`` from seen probabilities at test time (Xian et al., eq. 4).

Oracle: the identical model trained with every class labelled, the supervised upper bound that a
zero-shot result is compared with (not a zero-shot method; reported as "supervised").
"""

from __future__ import annotations

import torch

from zeroseg.data.labels import seen_position_lookup
from zeroseg.methods.base import RunContext, Stage, StagePlan, calibrate
from zeroseg.methods.pixel_projection import (
    SEGMENTER_STAGE_DIR,
    PixelProjection,
    ProjectionConfig,
    segmenter_plan,
    segmenter_stage_parts,
)


class Projection(PixelProjection):
    """Pixel embeddings x class text embeddings, trained on seen classes."""

    name = "projection"
    Config = ProjectionConfig
    stages = (Stage("segmenter", "train"),)
    protocol = "inductive"
    # the labels the segmenter trains on: "seen" (the baseline), "all" (the oracle); part of the
    # shared stage's key, so a zero-shot row never loads weights trained on unseen labels
    label_classes = "seen"

    def training_classes(self, ctx: RunContext) -> tuple[torch.Tensor, torch.Tensor]:
        """Class embeddings the loss runs over and the label -> class-position table."""
        return ctx.seen_embeddings(), seen_position_lookup(self.split)

    def fit(self, ctx: RunContext) -> None:
        if self.cfg.foundation:
            ctx.uses_foundation(self.cfg.foundation)
        # Shared with every run in the output directory that trains this model the same way
        # (ZS3Net/ZS5Net's stage 1 with the projection head): trained once.
        ctx.run_stage(
            "segmenter",
            directory=SEGMENTER_STAGE_DIR,
            key=segmenter_stage_parts(
                ctx,
                self.cfg.backbone,
                self.cfg.foundation,
                classes=self.label_classes,
                frozen=self.frozen_backbone,
                backbone_lr_mult=self.cfg.backbone_lr_mult,
                foundation_head=self.cfg.foundation_head,
                freeze_text_map=self.cfg.freeze_text_map,
                freeze_head_hidden=self.cfg.freeze_head_hidden,
            ),
            model=self,
            prepare=lambda: self._plan(ctx),
            guard=self.guard_split() is not None,
            meta={"method": self.name},
        )

    def _plan(self, ctx: RunContext) -> StagePlan:
        emb, lookup = self.training_classes(ctx)
        return segmenter_plan(
            ctx,
            self.backbone,
            self.head,
            self.cfg.foundation,
            emb,
            lookup,
            self.split.ignore_index,
            backbone_lr_mult=self.cfg.backbone_lr_mult,
            foundation_head=self.cfg.foundation_head,
            freeze_text_map=self.cfg.freeze_text_map,
        )

    def guard_split(self):
        return self.split

    def scores(self, images, class_embeddings, seen_mask):
        return calibrate(self.logits(images, class_embeddings), seen_mask, self.cfg.calibration)


class Oracle(Projection):
    """The projection model trained with all classes labelled: the supervised upper bound."""

    name = "oracle"
    protocol = "supervised"
    label_classes = "all"

    def training_classes(self, ctx: RunContext):
        table = torch.full((256,), self.split.ignore_index, dtype=torch.int64)
        table[: self.split.num_classes] = torch.arange(self.split.num_classes)
        return ctx.embed(self.split.names), table

    def guard_split(self):
        return None  # the oracle sees every label by definition

    def scores(self, images, class_embeddings, seen_mask):
        return self.logits(images, class_embeddings)
