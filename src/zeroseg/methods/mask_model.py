"""The shared mask model of the mask methods (Mask2Former-style mask classification, queries
classified by cosine similarity to class text embeddings): its stage 1, inference and the
panoptic / instance metrics. The mask-projection baseline, PADing and AlignZeg build on it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from zeroseg.config import ConfigError
from zeroseg.data.labels import seen_position_lookup
from zeroseg.data.loader import iterate_eval, size_groups
from zeroseg.engine import distributed as dist
from zeroseg.methods.base import Method, RunContext, Stage, StagePlan
from zeroseg.metrics.instance import InstanceEvaluator
from zeroseg.metrics.panoptic import PanopticEvaluator, crowd_flags
from zeroseg.models.heads.mask_decoder import (
    MaskClassifier,
    MaskModelConfig,
    instance_inference,
    panoptic_inference,
    semantic_inference,
)
from zeroseg.models.heads.mask_pooling import PooledClassifier, PooledConfig, geometric_ensemble
from zeroseg.models.matching import MatchWeights, batch_targets, hungarian_match, set_loss
from zeroseg.models.upsample import bilinear


@dataclass
class MaskProjectionConfig:
    """The mask model and its test-time rules."""

    mask: MaskModelConfig = field(default_factory=MaskModelConfig)  # architecture
    match: MatchWeights = field(default_factory=MatchWeights)  # matching cost and loss weights
    object_threshold: float = 0.8  # panoptic: min class prob. of a kept query (Mask2Former 0.8)
    overlap_threshold: float = 0.8  # panoptic: min kept share of a query's mask (Mask2Former 0.8)
    topk: int = 100  # instance: (query, class) pairs kept per image
    foundation: str | None = None  # "shipped" (the ShapeWorld foundation), a path, or None
    # inference only: proposals classified by the frozen foundation's mask-pooled embeddings too
    pooled: PooledConfig = field(default_factory=PooledConfig)


# The config fields that act at inference only: left out of the keys of the stages they do not
# change, so rows differing only in them share one training.
INFERENCE_FIELDS = ("object_threshold", "overlap_threshold", "topk", "pooled")


# -- stage 1: the shared mask model ----------------------------------------------------------------


def _flat_losses(model: MaskClassifier, images, batch, class_emb, lookup, weights: MatchWeights):
    """Deep-supervised set loss of one batch: every layer's prediction matched and supervised."""
    out = model(images)
    targets = batch_targets(batch, lookup, out.masks.shape[-2:], images.device)
    total, logs = 0.0, {}
    for masks, emb in out.aux + [(out.masks, out.embeddings)]:
        logits = model.classify(emb, class_emb)
        matches = hungarian_match(logits, masks, targets, weights)
        losses = set_loss(logits, masks, targets, matches, weights)
        total = total + losses["loss"]
    logs.update(ce=losses["ce"], bce=losses["bce"], dice=losses["dice"])  # last layer's terms
    return {"loss": total, **logs}


# The share of its 1000 steps the mask family's main stage (mask-projection/PADing's `mask-model`,
# AlignZeg's `alignzeg-model`) runs under --quick: 500, not the default quarter, which left every
# mask row under-trained. On val (500 images, seeds 0 / 1) hIoU at 250 -> 500 steps:
# mask-projection 19.0/29.8 -> 33.8/44.9, PADing 33.2/39.1 -> 43.8/49.0, AlignZeg 23.9/32.7 ->
# 47.0/50.4 (docs/methods.md, "The whole mask family at 250 and 500 stage-1 steps"). Re-checked
# with session 24's learning rates (the U-Net at a tenth): mask-projection 30.1/37.5 at 250 steps,
# 55.1/53.1 at 500.
MASK_MODEL_QUICK = 0.5


class MaskModelMethod(Method):
    """The mask model trained on seen classes, queries classified by text similarity at test time.

    Stage 1 (``fit_mask_model``), inference and the panoptic/instance metrics of every mask
    method; the mask-projection baseline is exactly this, PADing and AlignZeg add their stages.
    """

    Config = MaskProjectionConfig
    stages = (Stage("mask-model", "train", quick=MASK_MODEL_QUICK),)
    tiny = (
        "model.mask.backbone=unet-small",
        "model.mask.hidden_dim=32",
        "model.mask.mask_dim=32",
        "model.mask.num_queries=8",
        "model.mask.layers=2",
        "model.mask.heads=2",
        "model.mask.ffn_dim=64",
    )
    # sum over queries of class probability x mask, for the shared calibration rule
    score_kind = "evidence"
    protocol = "inductive"
    produces_segments = True

    def __init__(self, cfg: MaskProjectionConfig, *, split, embed_dim: int):
        super().__init__(cfg, split=split, embed_dim=embed_dim)
        self.check_text_map(cfg)
        self.model = MaskClassifier(cfg.mask, embed_dim=embed_dim)
        self.init_split_buffers(split)
        self.pooled = self.build_pooled(cfg)

    def check_text_map(self, cfg: MaskProjectionConfig) -> None:
        """``mask.text_map`` copies the foundation's class side: refused without a foundation."""
        if cfg.mask.text_map != "none" and not cfg.foundation:
            raise ConfigError(
                f"{self.name}: model.mask.text_map {cfg.mask.text_map!r} needs the ShapeWorld "
                "foundation (model.foundation: shipped or a path), got none"
            )

    def start_mask_model(self, ctx: RunContext) -> None:
        """Starts the mask model's pretrained parts before its stage trains: the U-Net from
        ``model.foundation`` and, with ``mask.text_map``, the class side from the foundation's
        text-side map."""
        if not self.cfg.foundation:
            return  # a text map needs the foundation (check_text_map)
        found = ctx.start_from_foundation(self.cfg.foundation, self.model.backbone.unet)
        if self.model.text_map is not None:
            source = found.head.text_proj
            if source is None:
                raise ConfigError(
                    f"model.mask.text_map: the foundation {self.cfg.foundation!r} has no "
                    "text-side map"
                )
            with torch.no_grad():
                self.model.text_map.weight.copy_(source.weight)

    def init_split_buffers(self, split) -> None:
        """``is_thing`` and ``split_seen``, (K,) bool each (not saved: the split gives them)."""
        self.register_buffer("is_thing", split.thing_mask(), persistent=False)
        self.register_buffer("split_seen", split.seen_mask(), persistent=False)

    def build_pooled(self, cfg, encoder=None) -> PooledClassifier | None:
        """The frozen foundation's proposal classifier when ``model.pooled.enabled`` (else None),
        loaded from ``model.foundation``; ``encoder``: a frozen foundation encoder the method
        already holds, pooled instead."""
        if not cfg.pooled.enabled:
            return None
        name = self.foundation_of(cfg)
        if not name:
            raise ConfigError(
                f"{self.name}: model.pooled.enabled needs the ShapeWorld foundation "
                "(model.foundation: shipped or a path), got none"
            )
        return PooledClassifier(name, encoder=encoder)

    def note_pooled(self, ctx: RunContext) -> None:
        """Says in the report that proposals are also classified by the pooled foundation (whose
        identity the fit has recorded: the mask model starts from the same foundation)."""
        if self.pooled is None:
            return
        p = self.cfg.pooled
        ctx.notes.append(
            "proposals also classified by the frozen foundation's mask-pooled pixel embeddings "
            f"(FC-CLIP's geometric ensemble, alpha {p.alpha} for seen classes, beta {p.beta} for "
            "unseen ones)"
        )

    # stage 1 ---------------------------------------------------------------------------------------
    def mask_stage_parts(self, ctx: RunContext) -> dict:
        """Everything but the data that decides the mask model's weights (methods with the same
        parts share it)."""
        return {
            "mask": self.cfg.mask,
            "match": self.cfg.match,
            "train": ctx.cfg.train,
            "text": ctx.cfg.text,
            "foundation": self.cfg.foundation,
        }

    def fit_mask_model(self, ctx: RunContext):
        """Stage 1 (shared): trains ``self.model`` on the protocol's training set, or loads it."""
        if self.cfg.foundation:
            ctx.uses_foundation(self.cfg.foundation)
        self.note_pooled(ctx)
        return ctx.run_stage(
            "mask-model",
            model=self.model,
            key=self.mask_stage_parts(ctx),
            prepare=lambda: self._mask_plan(ctx),
            meta={"method": "mask-model"},
        )

    def _mask_plan(self, ctx: RunContext) -> StagePlan:
        if ctx.cfg.data.protocol != "strict":
            ctx.notes.append(
                f"mask model trained under the {ctx.cfg.data.protocol!r} protocol (PADing uses strict)"
            )
        emb = ctx.seen_embeddings().to(ctx.device)
        lookup = seen_position_lookup(self.split).to(ctx.device)
        cfg = ctx.cfg.train
        loader = ctx.loader(cfg)
        model, weights = self.model, self.cfg.match
        if self.cfg.foundation and self.cfg.mask.backbone != "unet-small":
            raise ValueError(
                f"model.foundation needs mask.backbone 'unet-small' (the foundation's), "
                f"got {self.cfg.mask.backbone!r}"
            )
        self.start_mask_model(ctx)

        def step(m, batch):
            return _flat_losses(model, batch["image"].to(ctx.device), batch, emb, lookup, weights)

        return StagePlan(step, loader, cfg, params=model.param_groups(model.parameters(), cfg.lr))

    def fit(self, ctx: RunContext) -> None:
        self.fit_mask_model(ctx)

    # inference ------------------------------------------------------------------------------------
    def query_logits(
        self, embeddings: torch.Tensor, class_embeddings: torch.Tensor
    ) -> torch.Tensor:
        """(B,N,D) query embeddings -> (B,N,K+1) logits over the vocabulary + no-object."""
        return self.model.classify(embeddings, class_embeddings)

    @torch.no_grad()
    def predict(
        self, images: torch.Tensor, class_embeddings: torch.Tensor, seen_mask=None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(B,3,H,W) uint8 -> class probabilities (B,N,K+1) and mask logits (B,N,H,W) at image size.

        ``seen_mask`` (K,) bool: the classes training saw, for the pooled classifier's ensemble;
        the split's when the vocabulary is the split's K classes."""
        out = self.model(images)
        probs = self.class_probs(images, out, class_embeddings, seen_mask)
        masks = bilinear(out.masks.float(), images.shape[-2:])
        return probs, masks

    def class_probs(self, images, out, class_embeddings, seen_mask) -> torch.Tensor:
        """(B,N,K+1) probabilities of the decoder's output ``out``: the query classifier's,
        ensembled with the pooled classifier's when it is on."""
        probs = self.query_logits(out.embeddings, class_embeddings).float().softmax(-1)
        if self.pooled is None:
            return probs
        seen_mask = self.vocabulary_seen_mask(class_embeddings, seen_mask)
        # AlignZeg's decoder output carries the fused foundation's pixels: not computed twice
        pixels = getattr(out, "frozen_pixels", None)
        logits, valid = self.pooled(images, out.masks, class_embeddings, pixels)
        p = self.cfg.pooled
        return geometric_ensemble(probs, logits, valid, seen_mask, alpha=p.alpha, beta=p.beta)

    def vocabulary_seen_mask(self, class_embeddings, seen_mask) -> torch.Tensor:
        """``seen_mask``, or the split's when the vocabulary is the split's K classes."""
        if seen_mask is not None:
            return seen_mask
        if class_embeddings.shape[0] != self.split.num_classes:
            raise ValueError(
                f"{self.name}: a vocabulary of {class_embeddings.shape[0]} classes needs seen_mask "
                f"(the split has {self.split.num_classes})"
            )
        return self.split_seen

    def scores(self, images, class_embeddings, seen_mask):
        probs, masks = self.predict(images, class_embeddings, seen_mask)
        return semantic_inference(probs[..., :-1], masks.sigmoid())

    @torch.no_grad()
    def extra_metrics(
        self, cfg, data, embed, *, progress: bool = True, eval_split: str = "test"
    ) -> dict:
        """Panoptic PQ/SQ/RQ and instance AP50/recall over ``data.eval_split(eval_split)``
        (percent)."""
        split = data.split
        device = next(self.parameters()).device
        emb = embed(split.names).to(device)
        things = list(split.things)
        pq = PanopticEvaluator(
            split.num_classes,
            split.seen,
            split.unseen,
            things,
            split.ignore_index,
            names=split.names,
        )
        ap = InstanceEvaluator(
            split.num_classes, split.seen, split.unseen, things, names=split.names
        )
        self.eval()
        is_thing = self.is_thing.to(device)
        # Each rank takes every world_size-th image; the statistics are merged below.
        for batch in iterate_eval(
            data.eval_split(eval_split),
            cfg.eval.batch_size,
            rank=dist.rank(),
            world_size=dist.world_size(),
        ):
            for group in size_groups(batch):  # real images of different sizes: one at a time
                probs, masks = self.predict(group["image"].to(device), emb)
                gt_pans, gt_segments = group["panoptic"], group["segments"]
                for b in range(len(probs)):
                    pan, rows = panoptic_inference(
                        probs[b],
                        masks[b].sigmoid(),
                        is_thing,
                        object_threshold=self.cfg.object_threshold,
                        overlap_threshold=self.cfg.overlap_threshold,
                    )
                    gt_pan, gt_segs = gt_pans[b], gt_segments[b]
                    pq.process(pan.cpu(), rows, gt_pan, gt_segs)
                    m, s, lab = instance_inference(probs[b], masks[b], is_thing, topk=self.cfg.topk)
                    thing_rows = gt_segs[gt_segs[:, 2] == 1]
                    gt_masks = gt_pan[None] == thing_rows[:, 0][:, None, None]
                    crowd = crowd_flags(thing_rows)  # COCO: crowd regions absorb detections
                    ap.process(m.cpu(), s.cpu(), lab.cpu(), gt_masks, thing_rows[:, 1], crowd)
        if dist.is_dist():
            for evaluator in (pq, ap):
                states = [None] * dist.world_size()
                torch.distributed.all_gather_object(states, evaluator.state())
                for r, state in enumerate(states):
                    if r != dist.rank():
                        evaluator.merge(state)
        out = {k: v for k, v in pq.evaluate().items() if not k.startswith("per_class")}
        for k, v in ap.evaluate().items():
            if k.startswith("per_class"):
                continue
            # Both evaluators count classes in "n" keys: the instance counts become "ap_*n".
            out[f"ap_{k}" if k == "n" or k.endswith("_n") else k] = v
        return out
