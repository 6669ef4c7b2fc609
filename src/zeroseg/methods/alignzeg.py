"""AlignZeg: mutually-refined proposals, generalisation-enhanced classification, bias correction.

Ge et al., "AlignZeg: Mitigating Objective Misalignment for Zero-shot Semantic Segmentation",
ECCV 2024 (arXiv 2404.05667; no public code). A mask-classification model in the PADing /
ZegFormer family (:mod:`zeroseg.methods.pading`'s mask-projection baseline is the starting
point) with three changes, one per part of the pipeline:

1. **Mutually-Refined Proposal Extraction** (Sec. 3.2): queries and visual features refine each
   other in every decoder layer, and a frozen CLIP-style encoder's patch features are fused
   with the learnable encoder's (:mod:`zeroseg.models.heads.alignzeg_decoder`). On ShapeWorld
   the frozen encoder is the stage-0 caption-contrastive ViT of :func:`zeroseg.pretrain.load_or_train`
   (``clip_fusion``); on real data no CLIP checkpoint is wired in yet, so the paper preset runs
   without fusion.
2. **Generalisation-Enhanced Proposal Classification** (Sec. 3.3): the paper's aim is a feature
   space that leaves room for unseen classes, through synthetic features and several background
   prototypes.
   - *virtual features*: feature-level mixes of the hidden states of real proposals matched to
     two different seen classes, ``v = r_k (g h_i + (1 - g) h_j) / ||g h_i + (1 - g) h_j||``,
     ``g ~ U(mix_range)``, each rescaled to the norm ``r_k`` of a real proposal ``k`` drawn from
     the batch (:func:`mixup_virtual`: a plain mix of LayerNorm outputs is shorter than any real
     feature, which would hand the indicator below a norm shortcut), passed through the rest of
     the classification branch (the two-layer class-embedding map);
   - ``L_vir`` trains each virtual feature to be *none of the seen classes*
     (:func:`virtual_loss`). With ``virtual_target: virtual_class`` (the preset) it is a
     cross-entropy over the seen classes, background and a *virtual class* whose embedding is
     the same mix of the two seen text embeddings, ``normalize(g t_i + (1 - g) t_j)``, with the
     virtual class as target: the space between two seen classes, where an unseen composition's
     proposals (and its text embedding) lie, is kept for a class between them rather than given
     to either seen class. ``virtual_target: background`` sends the virtual features to the
     background prototypes instead;
   - M learned *background prototypes* instead of one no-object embedding (the no-object
     logit is the log-sum-exp of the prototypes' logits).
3. **Predictive Bias Correction** (Sec. 3.4): a class indicator (an MLP on the query hidden
   state) gives the probability ``u_q`` that proposal q is of a potential unseen class. It is
   trained by ``L_bc``, a binary cross-entropy with real matched seen proposals as negatives
   and the virtual features as positives (its input is detached: it is a probe and does not
   reshape the proposal features). As the virtual features have the real features' norms, it
   cannot tell them apart by norm (``norm_auc``, logged every step, is the best norm-only
   classifier's AUC: 0.5 is chance). At inference, proposals with ``u_q > bias_threshold`` have
   their seen-class probabilities multiplied by ``1 - bias_strength`` and the class
   probabilities renormalised to their previous total (the background probability is left
   alone), before Mask2Former's semantic / panoptic / instance assignment; the strength is
   chosen on ``val`` (docs/methods.md). ``indicator: unseen_mass`` flags by another score
   instead, with no training: the share of the proposal's class probability on the unseen names
   (:func:`unseen_mass`; the names are known at inference in the inductive setting). On
   ShapeWorld's ``val`` the learned indicator flags a few percent of the unseen proposals and
   the correction changes nothing, while the unseen-name mass separates them (AUC about 0.9),
   so the ShapeWorld preset uses it (threshold 0.1, strength 0.9; chosen on ``val``). This is a
   departure from the paper's learned indicator (docs/methods.md, AlignZeg).

Loss (deep supervision as Mask2Former for the set loss; the other terms on the last layer):

    L = L_bc + lambda1 L_ce + lambda2 L_mask + lambda3 L_vir,

lambda1 = 2 (``match.class_weight``), lambda2 = 5 for each of BCE and dice (``match.mask_weight``,
``match.dice_weight``): Mask2Former's weights, which the paper keeps. lambda3 = 1, ``mix_range``
(0.3, 0.7), M = 4 (ShapeWorld) / 10 (COCO preset), 64 virtual features per batch, the virtual
target, bias threshold 0.5 and the strength are **our choices**: the stored copy of the paper we
could read (abstract, introduction and a third-party summary) does not give them, nor the exact
form of L_vir / L_bc / the post-process, which are our reconstruction of the described method
(see docs/methods.md).

Protocol: inductive. Only seen class names (``ctx.seen_embeddings()``) and the strict
protocol's training set are used in training; the virtual features are made from seen
proposals, so no unseen name is needed (the paper evaluates in the inductive setting of its
ZegFormer/ZegCLIP baselines).

Ablation rows: ``alignzeg-norefine`` (no mutual refinement), ``alignzeg-nogen`` (no virtual
features in the classifier's losses and a single background class; the indicator still learns
from virtual features, detached, so part 3 is unchanged), ``alignzeg-nobc`` (no bias correction:
the same trained weights as ``alignzeg``, shared, evaluated without the post-process).
"""

from __future__ import annotations

import dataclasses
import zlib
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from zeroseg.config import ConfigError
from zeroseg.data.labels import seen_position_lookup
from zeroseg.foundation.model import FoundationEncoder
from zeroseg.methods.base import Method, RunContext, Stage, StagePlan
from zeroseg.methods.mask_model import (
    INFERENCE_FIELDS,
    MASK_MODEL_QUICK,
    MaskModelMethod,
    MaskProjectionConfig,
)
from zeroseg.models.heads.alignzeg_decoder import AlignZegModel
from zeroseg.models.heads.mask_decoder import semantic_inference
from zeroseg.models.matching import batch_targets, hungarian_match, set_loss
from zeroseg.models.upsample import bilinear
from zeroseg.pretrain import PretrainConfig

__all__ = [
    "AlignZeg",
    "AlignZegConfig",
    "AlignZegNoBC",
    "AlignZegNoGen",
    "AlignZegNoRefine",
    "INDICATORS",
    "VIRTUAL_TARGETS",
    "VirtualFeatures",
    "correct_bias",
    "mixup_virtual",
    "norm_auc",
    "unseen_mass",
    "virtual_class_embeddings",
    "virtual_loss",
]


@dataclass
class AlignZegConfig(MaskProjectionConfig):
    """AlignZeg on the mask model; ``refine`` / ``generalise`` / ``bias_correction`` select the row."""

    refine: bool = True  # part 1: mutual refinement of queries and visual features
    generalise: bool = True  # part 2: L_vir on virtual features, M background prototypes
    bias_correction: bool = True  # part 3: indicator-driven correction at inference
    clip_fusion: bool = True  # fuse a frozen CLIP-like encoder's patch tokens (ShapeWorld only)
    clip_encoder: str = (
        "stage0"  # the frozen encoder fused: "foundation" (model.foundation) | "stage0"
    )
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)  # the stage-0 encoder fused
    background_prototypes: int = 4  # M (used when generalise; otherwise one no-object class)
    virtual_per_batch: int = 64  # virtual features mixed per training batch
    mix_range: tuple[float, float] = (0.3, 0.7)  # range of the mixing coefficient g
    # L_vir's target for a virtual feature (see virtual_loss): "virtual_class" | "background"
    virtual_target: str = "virtual_class"
    # which matched proposals the virtual features mix: "all" (any two seen classes, grounds
    # included) | "things" (only the countable classes' proposals, never a ground's) |
    # "same_kind" (two things or two grounds, never a thing with a ground)
    virtual_pairs: str = "all"
    # L_vir's gradient: False, it reaches the real proposals' hidden states the virtual features
    # mix (so it also reshapes the decoder's features); True, the mixes are made of detached
    # hidden states and L_vir trains only the classification branch (class-embedding map,
    # classifier, background prototypes)
    virtual_detach: bool = False
    # L_vir's class side: False, its gradient reaches the class vectors it compares with (with
    # ``mask.text_map: learned`` the text-side map every class, unseen ones too, is matched
    # through); True, they are detached in L_vir, as the paper's frozen CLIP text tower would be,
    # and only the set loss trains the map
    virtual_class_detach: bool = False
    bc_weight: float = 1.0  # weight of L_bc
    vir_weight: float = 1.0  # lambda3, weight of L_vir
    # What flags a proposal for the correction (inference only): "learned", the class indicator
    # trained by L_bc; "unseen_mass", the share of the proposal's class probability on the unseen
    # names (no training; see unseen_mass)
    indicator: str = "learned"
    bias_threshold: float = 0.5  # a proposal with indicator probability above this is corrected
    bias_strength: float = 0.5  # fraction of a flagged proposal's seen-class probability removed


# -- the parts, as pure functions -------------------------------------------------------------------


@dataclass
class VirtualFeatures:
    """Virtual proposal features made by :func:`mixup_virtual`.

    Attributes:
        features: (V, C) ``r_k (g h_i + (1 - g) h_j) / ||g h_i + (1 - g) h_j||``.
        i, j: (V,) the real features mixed (always of two different classes).
        g: (V,) the mixing coefficients (the weight of ``h_i``).
        k: (V,) the real feature whose norm ``r_k = ||h_k||`` each virtual feature is given.
    """

    features: Tensor
    i: Tensor
    j: Tensor
    g: Tensor
    k: Tensor


def mixup_virtual(
    hidden: Tensor,
    labels: Tensor,
    count: int,
    mix_range: tuple[float, float],
    generator: torch.Generator,
    kinds: Tensor | None = None,
) -> VirtualFeatures | None:
    """Virtual features between two seen classes, at the norms of real features.

    A mix of two LayerNorm outputs is shorter than either (on the trained model 99.95% of raw
    mixes were below the smallest real norm), so a classifier told "mixes are unseen" could learn
    "short is unseen". Each mix is therefore rescaled to the norm of a real feature drawn at
    random from the same batch: the virtual features' norms are a resample of the real ones, and
    the norm alone says nothing about which set a feature came from.

    Args:
        hidden: (n, C) real features (hidden states of matched proposals).
        labels: (n,) their classes.
        count: pairs drawn (those with equal classes are discarded).
        mix_range: (lo, hi) of the uniform mixing coefficient g.
        generator: CPU random generator (a pure function of the step, for exact resume).
        kinds: optional (n,) kind of each feature (e.g. thing or ground): only pairs of one kind
            are kept. None: any two features of different classes.

    Returns:
        :class:`VirtualFeatures`, or None when no pair of different classes (of one kind) exists.
    """
    n = len(labels)
    if n < 2:
        return None
    i = torch.randint(n, (count,), generator=generator)
    j = torch.randint(n, (count,), generator=generator)
    k = torch.randint(n, (count,), generator=generator)
    lo, hi = mix_range
    g = lo + (hi - lo) * torch.rand(count, generator=generator)
    keep = labels.cpu()[i] != labels.cpu()[j]
    if kinds is not None:
        keep &= kinds.cpu()[i] == kinds.cpu()[j]
    if not keep.any():
        return None
    dev = hidden.device
    i, j, k, g = (x[keep].to(dev) for x in (i, j, k, g))
    gc = g.to(hidden.dtype)[:, None]
    mixed = gc * hidden[i] + (1 - gc) * hidden[j]
    target = hidden[k].norm(dim=-1, keepdim=True)
    features = mixed * (target / mixed.norm(dim=-1, keepdim=True).clamp_min(1e-12))
    return VirtualFeatures(features, i, j, g, k)


def virtual_class_embeddings(seen_emb: Tensor, yi: Tensor, yj: Tensor, g: Tensor) -> Tensor:
    """(V, D) unit embeddings of the virtual classes: ``normalize(g t_yi + (1 - g) t_yj)``.

    Args:
        seen_emb: (S, D) seen-class text embeddings.
        yi, yj: (V,) the seen classes mixed (positions in ``seen_emb``).
        g: (V,) mixing coefficients.
    """
    t = F.normalize(seen_emb.float(), dim=-1)
    gc = g.float().to(t.device)[:, None]
    return F.normalize(gc * t[yi.to(t.device)] + (1 - gc) * t[yj.to(t.device)], dim=-1)


VIRTUAL_TARGETS = ("virtual_class", "background")
VIRTUAL_PAIRS = ("all", "things", "same_kind")


def virtual_loss(logits: Tensor, virtual_logit: Tensor, target: str) -> Tensor:
    """L_vir: cross-entropy that keeps a virtual feature off every seen class.

    Args:
        logits: (V, S+1) logits of the virtual features over the S seen classes and background.
        virtual_logit: (V,) each virtual feature's logit against its own virtual class.
        target: ``"virtual_class"``: softmax over seen classes, the virtual class and background,
            target the virtual class (the space between two seen classes goes to a class between
            them, as an unseen composition's would); ``"background"``: softmax over seen classes
            and background, target background (the space goes to the background prototypes).

    Returns:
        The mean loss over V.
    """
    logits = logits.float()
    if target == "virtual_class":
        full = torch.cat([logits[:, :-1], virtual_logit.float()[:, None], logits[:, -1:]], -1)
        return -full.log_softmax(-1)[:, -2].mean()
    if target == "background":
        return -logits.log_softmax(-1)[:, -1].mean()
    raise ValueError(f"unknown virtual target {target!r}; valid: {list(VIRTUAL_TARGETS)}")


def norm_auc(real: Tensor, virtual: Tensor) -> float:
    """AUC of the best norm-only classifier telling virtual (V, C) from real (n, C) features.

    The Mann-Whitney statistic of the norms, folded so that 0.5 is chance and 1.0 means the
    norm alone separates the two sets (in either direction); ties count one half.
    """
    a = real.float().norm(dim=-1)[:, None]
    b = virtual.float().norm(dim=-1)[None, :]
    u = ((b > a).float() + 0.5 * (b == a).float()).mean().item()
    return max(u, 1.0 - u)


def correct_bias(
    probs: Tensor, unseen_prob: Tensor, seen_mask: Tensor, threshold: float, strength: float
) -> Tensor:
    """Predictive bias correction of proposal class probabilities.

    Args:
        probs: (..., N, K+1) class probabilities, the last column background.
        unseen_prob: (..., N) indicator probabilities that a proposal is of an unseen class.
        seen_mask: (K,) bool, which vocabulary classes were seen in training.
        threshold: proposals with ``unseen_prob > threshold`` are corrected.
        strength: the fraction of their seen-class probabilities removed; the class
            probabilities are then rescaled to their previous total, so the removed mass goes
            to the unseen classes in proportion and the background probability is unchanged.

    Returns:
        Probabilities of the same shape.
    """
    cls, bg = probs[..., :-1].float(), probs[..., -1:].float()
    flag = (unseen_prob > threshold).float()[..., None]  # (..., N, 1)
    seen = seen_mask.to(probs.device).float()  # (K,)
    scaled = cls * (1 - strength * flag * seen)
    total = cls.sum(-1, keepdim=True)
    scaled = scaled * total / scaled.sum(-1, keepdim=True).clamp_min(1e-12)
    return torch.cat([scaled, bg], -1)


def unseen_mass(probs: Tensor, seen_mask: Tensor) -> Tensor:
    """(..., N, K+1) class probabilities (last column background) -> (..., N) the share of each
    proposal's class probability (background left out) on the classes not in ``seen_mask``."""
    cls = probs[..., :-1].float()
    unseen = (~seen_mask.to(cls.device)).float()
    return (cls * unseen).sum(-1) / cls.sum(-1).clamp_min(1e-12)


INDICATORS = ("learned", "unseen_mass")


def _batch_generator(batch: dict, seed: int) -> torch.Generator:
    """A generator seeded by the batch's sample ids: the same batch always mixes the same pairs."""
    ids = "|".join(str(i) for i in batch.get("id", []))
    return torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(ids.encode()))


# -- the method ---------------------------------------------------------------------------------------


class AlignZeg(MaskModelMethod):
    """AlignZeg (all three parts); subclasses are the ablation rows."""

    name = "alignzeg"
    Config = AlignZegConfig
    protocol = "inductive"
    produces_segments = True
    # The ablation row this class stands for: (refine, generalise, bias_correction).
    row: tuple[bool, bool, bool] = (True, True, True)
    tiny = (*MaskModelMethod.tiny, "model.background_prototypes=2", "model.virtual_per_batch=8")
    stages = (
        # stage 0, when the fused encoder is the stage-0 one (a cached encoder shared by
        # presets); quick=1.0: --quick has never shortened it, so the quick demo's numbers stay
        Stage("pretrain", "model.pretrain.train", quick=1.0),
        # the mask family's quick length (MASK_MODEL_QUICK, where the val figures are)
        Stage("alignzeg-model", "train", quick=MASK_MODEL_QUICK),
    )

    def __init__(self, cfg: AlignZegConfig, *, split, embed_dim: int):
        # Method.__init__, not MaskModelMethod.__init__: its plain mask model is replaced.
        Method.__init__(self, cfg, split=split, embed_dim=embed_dim)
        self.check_text_map(cfg)
        for key, choices in (
            ("virtual_target", VIRTUAL_TARGETS),
            ("virtual_pairs", VIRTUAL_PAIRS),
            ("indicator", INDICATORS),
        ):
            if getattr(cfg, key) not in choices:
                raise ConfigError(
                    f"model.{key} must be one of {list(choices)}, got {getattr(cfg, key)!r}"
                )
        if not 0.0 <= cfg.bias_strength <= 1.0:
            raise ConfigError(f"model.bias_strength must be in [0, 1], got {cfg.bias_strength}")
        have = (cfg.refine, cfg.generalise, cfg.bias_correction)
        if have != self.row:
            raise ValueError(
                f"method {self.name!r} is the ablation row refine={self.row[0]}, generalise={self.row[1]}, "
                f"bias_correction={self.row[2]}; its config has {have}"
            )
        clip = None
        if cfg.clip_fusion and cfg.clip_encoder == "foundation":
            clip = FoundationEncoder()
        elif cfg.clip_fusion:
            if cfg.clip_encoder != "stage0":
                raise ValueError(
                    f"AlignZegConfig.clip_encoder must be 'foundation' or 'stage0', got {cfg.clip_encoder!r}"
                )
            from zeroseg.models.backbones.clip import VisionTransformer

            clip = VisionTransformer(cfg.pretrain.vision_config())
        self.model = AlignZegModel(
            cfg.mask,
            embed_dim=embed_dim,
            refine=cfg.refine,
            background_prototypes=cfg.background_prototypes if cfg.generalise else 1,
            clip_encoder=clip,
        )
        self.init_split_buffers(split)
        # The pooled classifier pools the foundation AlignZeg fuses (no second copy).
        if cfg.pooled.enabled and not isinstance(clip, FoundationEncoder):
            raise ConfigError(
                f"{self.name}: model.pooled.enabled needs model.clip_fusion with clip_encoder "
                f"'foundation', got clip_fusion={cfg.clip_fusion}, clip_encoder={cfg.clip_encoder!r}"
            )
        self.pooled = self.build_pooled(cfg, encoder=clip)

    @classmethod
    def stage0_config(cls, cfg: AlignZegConfig) -> PretrainConfig:
        return cfg.pretrain

    @classmethod
    def foundation_of(cls, cfg) -> str | None:
        if cfg.foundation:
            return cfg.foundation
        return "shipped" if cfg.clip_fusion and cfg.clip_encoder == "foundation" else None

    # training ---------------------------------------------------------------------------------------
    def stage_parts(self, ctx: RunContext) -> dict:
        """What decides the trained weights; the inference-only settings (bias correction) are left
        out, so ``alignzeg`` and ``alignzeg-nobc`` share one training."""
        train_fields = {f.name for f in dataclasses.fields(AlignZegConfig)} - {
            "bias_correction",
            "indicator",
            "bias_threshold",
            "bias_strength",
            *INFERENCE_FIELDS,
        }
        return {
            "model": {k: v for k, v in dataclasses.asdict(self.cfg).items() if k in train_fields},
            "train": ctx.cfg.train,
            "text": ctx.cfg.text,
        }

    def seen_things(self) -> Tensor:
        """(S,) bool over the seen positions: which seen classes are things (countable)."""
        return self.split.thing_mask()[list(self.split.seen)]

    def losses(
        self,
        images: Tensor,
        batch: dict,
        seen_emb: Tensor,
        lookup: Tensor,
        generator: torch.Generator,
    ) -> dict:
        """L of one batch: deep-supervised set loss + L_vir (when generalising) + L_bc."""
        cfg, model = self.cfg, self.model
        device = images.device
        out = model(images)
        targets = batch_targets(batch, lookup, out.masks.shape[-2:], device)
        total = 0.0
        for masks, emb in out.aux + [(out.masks, out.embeddings)]:
            logits = model.classify(emb, seen_emb)
            matches = hungarian_match(logits, masks, targets, cfg.match)
            terms = set_loss(logits, masks, targets, matches, cfg.match)
            total = total + terms["loss"]
        logs = {"ce": terms["ce"], "bce": terms["bce"], "dice": terms["dice"]}
        # Matched proposals of the last layer: the real seen features the virtual ones mix.
        hs, ys = [], []
        for b, (t, (qi, ti)) in enumerate(zip(targets, matches)):
            hs.append(out.hidden[b, qi.to(device)])
            ys.append(t.labels[ti.to(t.labels.device)].to(device))
        h, y = torch.cat(hs), torch.cat(ys)
        kinds = None  # "all": any two seen classes' proposals
        if cfg.virtual_pairs != "all":
            things = self.seen_things().to(y.device)[y]
            if cfg.virtual_pairs == "things":  # mix the shapes' proposals only, never a ground's
                h, y = h[things], y[things]
            else:  # "same_kind": a shape's with a shape's, a ground's with a ground's
                kinds = things
        source = h.detach() if cfg.virtual_detach else h
        mixed = mixup_virtual(source, y, cfg.virtual_per_batch, cfg.mix_range, generator, kinds)
        if mixed is not None:
            v = mixed.features
            # Logged so a run shows the indicator has no norm shortcut (0.5: chance).
            logs["norm_auc"] = torch.tensor(norm_auc(h.detach(), v.detach()))
            if cfg.generalise:
                v_emb = model.class_embed(v)
                vectors = model.class_vectors(seen_emb)
                if cfg.virtual_class_detach:
                    vectors = vectors.detach()
                logits = model.classifier(v_emb, vectors)  # (V, S+1), as model.classify
                t_v = virtual_class_embeddings(vectors, y[mixed.i], y[mixed.j], mixed.g)
                cos_v = (F.normalize(v_emb.float(), dim=-1) * t_v).sum(-1)
                l_vir = virtual_loss(logits, model.classifier.scale() * cos_v, cfg.virtual_target)
                total = total + cfg.vir_weight * l_vir
                logs["l_vir"] = l_vir.detach()
            x = torch.cat([h.detach(), v.detach()])
            target = torch.cat(
                [torch.zeros(len(h), device=device), torch.ones(len(v), device=device)]
            )
            l_bc = F.binary_cross_entropy_with_logits(model.indicator(x), target)
            total = total + cfg.bc_weight * l_bc
            logs["l_bc"] = l_bc.detach()
        return {"loss": total, **logs}

    def _load_frozen_encoder(self, ctx: RunContext) -> None:
        if isinstance(self.model.clip, FoundationEncoder):
            found = self.cfg.foundation or "shipped"
            ctx.start_from_foundation(found, self.model.clip.backbone, self.model.clip.head)
            self.model.clip.requires_grad_(False)
            return
        if self.model.clip is None:
            return
        if ctx.world is None:
            raise ValueError(
                f"{self.name}: model.clip_fusion needs the ShapeWorld stage-0 encoder, but the dataset "
                f"is {ctx.cfg.data.dataset!r}; set model.clip_fusion=false"
            )
        from zeroseg.pretrain import load_or_train

        visual = load_or_train(ctx.world, self.cfg.pretrain, progress=ctx.progress)
        self.model.clip.load_state_dict(visual.state_dict(), strict=True)

    def fit(self, ctx: RunContext) -> None:
        if isinstance(self.model.clip, FoundationEncoder):
            ctx.notes.append(
                "fuses the frozen ShapeWorld foundation as the paper fuses frozen CLIP"
            )
        elif self.model.clip is not None:  # said of a reused stage too: it holds the encoder
            ctx.notes.append(
                "fuses the frozen stage-0 caption-contrastive encoder (image-level captions of the "
                "separate caption split, all class names, no masks) as the paper fuses frozen CLIP"
            )
            ctx.pretrained_encoder("ShapeWorld stage-0 caption-contrastive encoder (fused)")
        if isinstance(self.model.clip, FoundationEncoder) or self.cfg.foundation:
            ctx.uses_foundation(self.cfg.foundation or "shipped")
        self.note_pooled(ctx)
        ctx.run_stage(
            "alignzeg-model",
            model=self,
            key=self.stage_parts(ctx),
            prepare=lambda: self._plan(ctx),
            meta={"method": "alignzeg-model"},
        )

    def _plan(self, ctx: RunContext) -> StagePlan:
        if ctx.cfg.data.protocol != "strict":
            ctx.notes.append(f"AlignZeg trained under the {ctx.cfg.data.protocol!r} protocol")
        self._load_frozen_encoder(ctx)
        self.start_mask_model(ctx)  # the learnable branch's U-Net from the foundation too
        seen_emb = ctx.seen_embeddings().to(ctx.device)
        lookup = seen_position_lookup(self.split).to(ctx.device)
        tc = ctx.cfg.train
        loader = ctx.loader(tc)

        def step(m, batch):
            gen = _batch_generator(batch, tc.seed)
            return self.losses(batch["image"].to(ctx.device), batch, seen_emb, lookup, gen)

        return StagePlan(step, loader, tc, params=self.model.param_groups(self.parameters(), tc.lr))

    # inference -------------------------------------------------------------------------------------
    @torch.no_grad()
    def predict(
        self, images: Tensor, class_embeddings: Tensor, seen_mask: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """(B,3,H,W) uint8 -> corrected class probabilities (B,N,K+1) and mask logits (B,N,H,W).

        ``seen_mask`` defaults to the split's when the vocabulary is the split's K classes.
        """
        out = self.model(images)
        probs = self.class_probs(images, out, class_embeddings, seen_mask)
        if self.cfg.bias_correction:
            seen_mask = self.vocabulary_seen_mask(class_embeddings, seen_mask)
            u = self.indicator_scores(probs, out.hidden, seen_mask)
            probs = correct_bias(
                probs, u, seen_mask, self.cfg.bias_threshold, self.cfg.bias_strength
            )
        masks = bilinear(out.masks.float(), images.shape[-2:])
        return probs, masks

    def indicator_scores(self, probs: Tensor, hidden: Tensor, seen_mask: Tensor) -> Tensor:
        """(B, N) the score ``model.indicator`` flags proposals by (above ``bias_threshold``):
        the learned indicator's probability, or the unseen mass of the (B, N, K+1) ``probs``."""
        if self.cfg.indicator == "unseen_mass":
            return unseen_mass(probs, seen_mask)
        return self.model.indicator(hidden).sigmoid()

    def scores(self, images, class_embeddings, seen_mask):
        probs, masks = self.predict(images, class_embeddings, seen_mask)
        return semantic_inference(probs[..., :-1], masks.sigmoid())


class AlignZegNoRefine(AlignZeg):
    """Ablation: no mutual refinement (the visual features are not updated by the queries)."""

    name = "alignzeg-norefine"
    row = (False, True, True)


class AlignZegNoGen(AlignZeg):
    """Ablation: no generalisation-enhanced classification (no L_vir, one background class)."""

    name = "alignzeg-nogen"
    row = (True, False, True)


class AlignZegNoBC(AlignZeg):
    """Ablation: no predictive bias correction at inference (shares ``alignzeg``'s training)."""

    name = "alignzeg-nobc"
    row = (True, True, False)
