"""ZegCLIP (Zhou et al., "ZegCLIP: Towards Adapting CLIP for Zero-shot Semantic Segmentation",
CVPR 2023): one-stage zero-shot segmentation on a frozen CLIP image encoder.

- **Deep visual prompt tuning** (DPT, Sec. 3.4, after Jia et al.'s VPT-deep): P learnable tokens
  per layer for the first ``prompt_depth`` layers of the frozen ViT; only they (and the decoder)
  are trained, the CLIP weights never.
- **Relationship descriptor** (RD, eq. 3): class query = W_q [t_k ⊙ g ; t_k] with g the image's
  CLS embedding (``zeroseg.models.heads.zegclip_decoder``).
- **Light decoder**: text queries cross-attend to the patch tokens; a layer's head-averaged
  attention logits are the class masks (Sec. 3.2).
- **Non-mutually-exclusive loss** (NEL, Sec. 3.5): every class is its own binary mask problem,
  ``L = 100 * focal + 1 * dice`` (sigmoid focal loss, alpha 0.25, gamma 2, averaged over pixels,
  summed over (image, class) masks and divided by the number of ground-truth masks; dice over the
  classes present in each image), on every decoder layer (deep supervision). The released code
  supervises the last layer only (``deep_supervision: false``); on ShapeWorld's ``val`` that
  reached less than half the hIoU at the demo's budget (docs/methods.md). NEL off = softmax
  cross-entropy over the classes (the ablation).
- **Seen-score reduction** at inference: scores = sigmoid(masks), minus ``seen_reduction`` (0.1)
  on the seen classes, for inductive models only; the released code applies no reduction after
  self-training (weight 0), and neither do we.

Inductive ``zegclip`` trains with the seen names only (``ctx.seen_embeddings()``).
Transductive ``zegclip-st`` then self-trains: each step adds a batch of *unlabelled* training
images whose pseudo-labels the current model gives over all class names: pixels predicted as an
unseen class (after the seen-score reduction), the top ``pseudo_percent`` % most confident per
class (with ``self_training.pseudo_seen``, the pixels predicted as seen classes too, so that their
loss pushes the unseen masks down there as well). The released code instead pseudo-labels exactly
the pixels whose ground truth is an unseen class (its ``st_mask`` / ``gt == -1``), i.e. it reads
where the unseen objects are; we never do.
Ignored pixels (255: void, and unseen pixels under the ``ignore`` protocol) are left out of both
loss terms; the release counts them as negatives of every class in the focal term.

On ShapeWorld the frozen encoder is the stage-0 encoder (``zeroseg.pretrain``), aligned to the
MiniLM class embeddings; on real data it is a CLIP checkpoint (``pretrained:``) with the CLIP
text encoder giving class embeddings (``text.encoder: clip:PATH``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zeroseg._checks import check_minimum
from zeroseg.data.labels import downsample_labels, seen_position_lookup, select_top_percent
from zeroseg.engine.trainer import TrainConfig, scaled_lr_groups
from zeroseg.foundation.model import FoundationEncoder
from zeroseg.methods.base import Method, RunContext, Stage, StagePlan
from zeroseg.models.backbones.clip import CLIP_MEAN, CLIP_PRESETS, CLIP_STD, VisionTransformer
from zeroseg.models.bf16_weights import Bf16Weights
from zeroseg.models.heads.mask_scores import sigmoid_labels, sigmoid_scores
from zeroseg.models.heads.zegclip_decoder import (
    TextSideCache,
    ZegCLIPDecoder,
    ZegCLIPDecoderConfig,
)
from zeroseg.models.upsample import bilinear
from zeroseg.pretrain import PretrainConfig

__all__ = [
    "SelfTrainingConfig",
    "ZegCLIP",
    "ZegCLIPConfig",
    "ZegCLIPNoDPT",
    "ZegCLIPNoNEL",
    "ZegCLIPNoRD",
    "ZegCLIPST",
    "dice_loss",
    "mask_losses",
    "reduce_seen",
    "sigmoid_focal_loss",
]

STAGE0_NOTE = "starts from the ShapeWorld CLIP-style encoder (stage 0)"


def _st_schedule() -> TrainConfig:
    return TrainConfig(
        iters=300, batch_size=16, lr=3e-4, scheduler="poly", amp="bf16", log_every=25
    )


@dataclass
class SelfTrainingConfig:
    """Transductive self-training (``zegclip-st`` only)."""

    train: TrainConfig = field(default_factory=_st_schedule)  # the self-training schedule
    pseudo_percent: float = 75.0  # top p% most confident pixels kept per unseen class
    pseudo_weight: float = 1.0  # weight of the unlabelled images' loss
    # also pseudo-label the pixels predicted as seen classes (top pseudo_percent % of each), so the
    # unlabelled images' loss also pushes the unseen masks down where the model sees seen classes,
    # as every pixel of the release's self-training images has a target (False: unseen only)
    pseudo_seen: bool = False


@dataclass
class ZegCLIPConfig:
    """Model options of ZegCLIP."""

    # "foundation" (the frozen ShapeWorld foundation), "shapeworld" (a stage-0 ViT trained on the
    # world's captions) or a CLIP preset name ("ViT-B/16")
    encoder: str = "shapeworld"
    foundation: str = "shipped"  # encoder "foundation": which file ("shipped" or a path)
    token_pool: int = 1  # encoder "foundation": pool its stride-2 pixel embeddings into tokens
    # encoder "foundation": train its projection head (and text-side map) with the decoder, as
    # projection-frozen trains them; the rest of the foundation stays frozen
    tune_head: bool = False
    # tune_head: the head's learning rate relative to the decoder's in every training stage (1: one
    # rate for both)
    head_lr_mult: float = 1.0
    # encoder "foundation": train the affine of every normalisation layer of the frozen
    # foundation (weights, running statistics and everything else stay as loaded): a CNN has no
    # token sequence for deep prompt tuning; a few parameters at every depth stand in for it
    norm_tuning: bool = False
    pretrained: str | None = None  # local CLIP checkpoint for a CLIP preset (None: random init)
    pretrain: PretrainConfig = field(
        default_factory=PretrainConfig
    )  # the stage-0 encoder (ShapeWorld)
    dpt: bool = True  # deep visual prompt tuning (False: the encoder runs unchanged)
    prompt_tokens: int = 10  # learnable prompt tokens per layer (paper: 10)
    prompt_depth: int = -1  # layers that get prompts, from the first (-1: all)
    rd: bool = True  # relationship descriptor (False: queries from text alone)
    nel: bool = True  # non-mutually-exclusive sigmoid focal + dice loss (False: softmax CE)
    decoder: ZegCLIPDecoderConfig = field(default_factory=ZegCLIPDecoderConfig)  # the light decoder
    # the loss on every decoder layer's masks (False: the last layer's only, as the released
    # code, whose head returns no auxiliary masks)
    deep_supervision: bool = True
    focal_weight: float = 100.0  # weight of the sigmoid focal loss (paper: 100)
    dice_weight: float = 1.0  # weight of the dice loss (paper: 1)
    focal_alpha: float = 0.25  # focal loss positive weight
    focal_gamma: float = 2.0  # focal loss focusing exponent
    loss_stride: int = (
        2  # the loss runs at (H, W) / loss_stride (masks upsampled, labels subsampled)
    )
    seen_reduction: float = 0.1  # subtracted from seen-class scores at inference (inductive only)
    # Images are resized by this factor before the encoder (2: a 64 px ShapeWorld image becomes
    # 128 px, a 16x16 token grid with patch 8), as the paper feeds 512 px crops to ViT-B/16 for a
    # 32x32 grid. Masks come back at the image's own size either way.
    input_scale: float = 1.0
    self_training: SelfTrainingConfig = field(default_factory=SelfTrainingConfig)  # zegclip-st only

    def __post_init__(self) -> None:
        check_minimum(self, ("head_lr_mult",), 0, strict=True)


def sigmoid_focal_loss(
    logits: Tensor, targets: Tensor, valid: Tensor, *, alpha: float, gamma: float
) -> Tensor:
    """Per-mask sigmoid focal loss (Lin et al. 2017), averaged over the valid pixels.

    Args:
        logits: (B, K, P) mask logits.
        targets: (B, K, P) {0, 1}.
        valid: (B, P) bool, pixels that count.

    Returns:
        (B, K) mean focal loss of each (image, class) mask.
    """
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p = logits.sigmoid()
    p_t = p * targets + (1 - p) * (1 - targets)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = loss * (alpha * targets + (1 - alpha) * (1 - targets))
    w = valid[:, None].to(loss)
    return (loss * w).sum(-1) / w.sum(-1).clamp_min(1)


def dice_loss(logits: Tensor, targets: Tensor, valid: Tensor) -> Tensor:
    """Per-mask dice loss 1 - (2|p t| + 1) / (|p| + |t| + 1) over the valid pixels.

    Args:
        logits / targets: (B, K, P); valid: (B, P) bool.

    Returns:
        (B, K).
    """
    w = valid[:, None].to(logits)
    p = logits.sigmoid() * w
    t = targets * w
    return 1 - (2 * (p * t).sum(-1) + 1) / (p.sum(-1) + t.sum(-1) + 1)


def mask_losses(
    logits: Tensor,
    labels: Tensor,
    *,
    num_classes: int,
    ignore_index: int,
    focal_weight: float,
    dice_weight: float,
    alpha: float,
    gamma: float,
) -> dict[str, Tensor]:
    """ZegCLIP's non-mutually-exclusive loss of one mask map.

    Args:
        logits: (B, K, h, w) mask logits.
        labels: (B, h, w) class positions in [0, K) or ``ignore_index``.

    Returns:
        ``focal`` and ``dice``, each summed over the (image, class) masks and divided by the
        number of ground-truth masks (classes present per image, at least 1); dice counts only
        present classes, focal every class.
    """
    b, k = logits.shape[:2]
    logits = logits.float().flatten(2)  # (B, K, P)
    labels = labels.flatten(1)  # (B, P)
    valid = labels != ignore_index
    onehot = F.one_hot(labels.clamp(0, num_classes - 1), num_classes).permute(0, 2, 1)
    # (B, K, P) laid out as such: every elementwise term below then runs on contiguous memory
    onehot = onehot.to(torch.float32, memory_format=torch.contiguous_format)
    onehot = onehot * valid[:, None]
    present = onehot.sum(-1) > 0  # (B, K)
    num_masks = present.sum().clamp_min(1).float()
    focal = sigmoid_focal_loss(logits, onehot, valid, alpha=alpha, gamma=gamma).sum() / num_masks
    dice = (dice_loss(logits, onehot, valid) * present).sum() / num_masks
    return {"focal": focal_weight * focal, "dice": dice_weight * dice}


def reduce_seen(
    logits: Tensor,
    seen_mask: Tensor,
    reduction: float,
    *,
    sigmoid: bool = True,
    inplace: bool = False,
) -> Tensor:
    """Inference scores: sigmoid (or softmax) of the masks, ``reduction`` subtracted on seen classes.

    Args:
        logits: (B, K, H, W) mask logits.
        seen_mask: (K,) bool.
        inplace: overwrite ``logits`` (fp32, no autograd): at 512 px with 171 classes each
            full-size temporary is 180 MB, and these element-wise passes are memory-bound.
    """
    x = logits.float()
    if sigmoid:
        probs = x.sigmoid_() if inplace else x.sigmoid()
    else:
        probs = x.softmax(1)
    if reduction == 0:
        return probs
    shift = (reduction * seen_mask.to(probs)).view(1, -1, 1, 1)
    return probs.sub_(shift) if inplace else probs - shift


class ZegCLIP(Method):
    """Frozen CLIP ViT + deep prompts + relationship-descriptor decoder, sigmoid mask loss."""

    name = "zegclip"
    Config = ZegCLIPConfig
    score_kind = (
        "probabilities"  # sigmoid (or softmax) mask scores, for the shared calibration rule
    )
    protocol = "inductive"
    # 1: the decoder's dropout masks from zeroseg.models.dropout (not bernoulli_), the
    # foundation's unit tokens not normalised a second time
    revision = 1
    tiny = (
        "model.encoder=tiny",
        "model.decoder.width=32",
        "model.decoder.heads=2",
        "model.decoder.layers=1",
    )
    loads_clip = True
    stages = (
        # stage 0, when the encoder is the ShapeWorld one (a cached encoder shared by presets);
        # quick=1.0: --quick has never shortened it, so the quick demo's numbers stay
        Stage("pretrain", "model.pretrain.train", quick=1.0),
        Stage("zegclip", "train"),
    )
    forced: dict = {}  # config fields an ablation fixes

    def __init__(self, cfg: ZegCLIPConfig, *, split, embed_dim: int):
        cfg = dataclasses.replace(cfg, **self.forced) if self.forced else cfg
        super().__init__(cfg, split=split, embed_dim=embed_dim)
        # options that need the ShapeWorld foundation: its projection head, its tokens aligned
        # with the class names at the token level (CLIP's are not)
        for key, on in (
            ("tune_head", cfg.tune_head),
            ("norm_tuning", cfg.norm_tuning),
            ("decoder.aligned_init", cfg.decoder.aligned_init),
        ):
            if on and cfg.encoder != "foundation":
                raise ValueError(
                    f"ZegCLIP model.{key} is for the ShapeWorld foundation (its projection head, "
                    f"tokens aligned with the class names); encoder {cfg.encoder!r} has neither: "
                    f"set model.encoder: foundation or {key}: false"
                )
        if cfg.head_lr_mult != 1 and not cfg.tune_head:
            raise ValueError(
                f"ZegCLIP model.head_lr_mult ({cfg.head_lr_mult}) sets the rate of the head that "
                "model.tune_head trains: set tune_head: true or head_lr_mult: 1"
            )
        self.encoder = self._build_encoder(cfg)
        self._freeze_encoder()
        self._text_cache = TextSideCache()  # inference: vocabulary-only work, across images
        # bf16 inference: the frozen CLIP encoder's matmul weights, cast once
        self._bf16_weights = Bf16Weights(extra_leaves=("in_proj_weight", "in_proj_bias", "proj"))
        if cfg.encoder == "foundation":
            if cfg.dpt:
                raise ValueError(
                    "ZegCLIP: deep prompt tuning inserts tokens into a ViT's layers; the "
                    "ShapeWorld foundation is a CNN: set model.dpt: false"
                )
            self.prompts = None
            self.decoder = ZegCLIPDecoder(
                cfg.decoder,
                visual_dim=self.encoder.output_dim,
                text_dim=embed_dim,
                relationship=cfg.rd,
            )
            if cfg.decoder.aligned_init:  # refused here, not after the foundation is loaded
                self.decoder.check_aligned(self.encoder.head.embedding_rank_bound)
            return
        vis = self.encoder.config
        depth = vis.layers if cfg.prompt_depth < 0 else cfg.prompt_depth
        if not 0 < depth <= vis.layers:
            raise ValueError(
                f"ZegCLIPConfig.prompt_depth {cfg.prompt_depth} must be -1 or in 1..{vis.layers}"
            )
        if cfg.dpt:
            if cfg.prompt_tokens < 1:
                raise ValueError(
                    f"ZegCLIPConfig.prompt_tokens must be >= 1 with dpt, got {cfg.prompt_tokens}"
                )
            # VPT's initialisation: uniform with the Xavier bound of the patch-embedding fan.
            bound = (6.0 / (3 * vis.patch_size**2 + vis.width)) ** 0.5
            self.prompts = nn.Parameter(
                torch.empty(depth, cfg.prompt_tokens, vis.width).uniform_(-bound, bound)
            )
        else:
            self.prompts = None
        if vis.output_dim != embed_dim and cfg.rd:
            raise ValueError(
                f"ZegCLIP: the image encoder's output_dim ({vis.output_dim}) must equal the class "
                f"embedding dimension ({embed_dim}) for the relationship descriptor"
            )
        self.decoder = ZegCLIPDecoder(
            cfg.decoder, visual_dim=vis.output_dim, text_dim=embed_dim, relationship=cfg.rd
        )
        self.register_buffer(
            "mean", torch.tensor(CLIP_MEAN).view(1, 3, 1, 1) * 255, persistent=False
        )
        self.register_buffer("std", torch.tensor(CLIP_STD).view(1, 3, 1, 1) * 255, persistent=False)

    @classmethod
    def stage0_config(cls, cfg: ZegCLIPConfig) -> PretrainConfig | None:
        return cfg.pretrain if cfg.encoder == "shapeworld" else None

    @classmethod
    def foundation_of(cls, cfg) -> str | None:
        return cfg.foundation if cfg.encoder == "foundation" else None

    @staticmethod
    def _build_encoder(cfg: ZegCLIPConfig) -> VisionTransformer | FoundationEncoder:
        if cfg.encoder == "foundation":
            return FoundationEncoder(token_pool=cfg.token_pool)
        if cfg.encoder == "shapeworld":
            if cfg.pretrained is not None:
                raise ValueError(
                    "ZegCLIPConfig.pretrained is for CLIP presets; the ShapeWorld encoder comes from stage 0"
                )
            return VisionTransformer(cfg.pretrain.vision_config())
        if cfg.encoder not in CLIP_PRESETS:
            raise ValueError(
                f"unknown ZegCLIP encoder {cfg.encoder!r}; valid: ['foundation', 'shapeworld', "
                f"{sorted(CLIP_PRESETS)}]"
            )
        # The CLIP weights are read when training starts (``_stage0``), not here: a trained
        # model's checkpoint holds the encoder, so evaluating or predicting needs no CLIP file.
        return VisionTransformer(CLIP_PRESETS[cfg.encoder].vision)

    def _freeze_encoder(self) -> None:
        """The encoder frozen, as CLIP; with ``tune_head`` the foundation's head trains."""
        self.encoder.requires_grad_(False)
        if self.cfg.tune_head:
            self.encoder.head.requires_grad_(True)
        if self.cfg.norm_tuning:
            for m in self.encoder.modules():
                if isinstance(m, nn.BatchNorm2d | nn.GroupNorm | nn.LayerNorm):
                    for p in m.parameters():
                        p.requires_grad_(True)

    def train(self, mode: bool = True):
        super().train(mode)
        self.encoder.eval()  # frozen: never in training mode
        if self.cfg.tune_head:
            self.encoder.head.train(mode)  # trained, as projection-frozen's head
        return self

    # ------------------------------------------------------------------ forward
    def _image_side(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """(B, 3, H, W) uint8 -> unit patch embeddings (B, h, w, D) and image embeddings (B, D)."""
        if isinstance(self.encoder, FoundationEncoder):
            grad = torch.is_grad_enabled()
            # frozen, as CLIP (but for norm_tuning's affines): unit tokens, unit global embedding
            with torch.set_grad_enabled(grad and self.cfg.norm_tuning):
                hidden = self.encoder.backbone(images.float())
            with torch.set_grad_enabled(grad and (self.cfg.tune_head or self.cfg.norm_tuning)):
                feats = self.encoder.tokens(hidden)  # the head trains only with tune_head
            return feats["patch_proj"].float(), feats["cls_proj"].float()
        x = (images.float() - self.mean) / self.std
        if self.cfg.input_scale != 1.0:
            x = F.interpolate(
                x, scale_factor=self.cfg.input_scale, mode="bilinear", align_corners=False
            )
        # Without autograd under bf16 autocast, the frozen encoder's weights are cast once
        # (Bf16Weights), not on every image; outputs are the same bits.
        if self.prompts is None:
            with torch.no_grad():  # nothing upstream of the decoder is trained
                feats = self._bf16_weights.call(self.encoder, "forward_features", x)
        else:
            feats = self._bf16_weights.call(
                self.encoder, "forward_features", x, prompts=self.prompts
            )
        patches = F.normalize(feats["patch_proj"].float(), dim=-1)
        return patches, F.normalize(feats["cls_proj"].float(), dim=-1)

    def _unit_text(self, class_embeddings: Tensor) -> Tensor:
        """(K, D) class embeddings -> the decoder's (K, D) unit text embeddings."""
        if isinstance(self.encoder, FoundationEncoder):
            # the foundation's text side is frozen with it, or trained with its head
            with torch.set_grad_enabled(torch.is_grad_enabled() and self.cfg.tune_head):
                return self.encoder.text_side(class_embeddings)
        return F.normalize(class_embeddings.float(), dim=-1)

    def mask_logits(self, images: Tensor, class_embeddings: Tensor) -> list[Tensor]:
        """(B, 3, H, W) uint8, (K, D) -> per decoder layer (B, K, h, w) mask logits."""
        patches, cls = self._image_side(images)
        return self.decoder(patches, cls, self._unit_text(class_embeddings))

    def predict_logits(self, images: Tensor, class_embeddings: Tensor) -> Tensor:
        """Inference: the last decoder layer's (B, K, h, w) mask logits, as ``mask_logits``'s
        last, with the vocabulary-only work cached across calls (``TextSideCache``)."""
        params = list(self.decoder.q_proj.parameters())
        if isinstance(self.encoder, FoundationEncoder) and self.encoder.head.text_proj is not None:
            params += list(self.encoder.head.text_proj.parameters())
        text_side = self._text_cache.get(
            class_embeddings,
            lambda t: self.decoder.text_side(self._unit_text(t)),
            params,
        )
        patches, cls = self._image_side(images)
        return self.decoder.predict(patches, cls, text_side)

    def reduction(self) -> float:
        return self.cfg.seen_reduction

    def seen_shift(self, seen_mask: Tensor) -> Tensor | None:
        """(K,) what inference subtracts from each class's sigmoid: the seen-score reduction on
        the seen classes (None when it is 0)."""
        return self.reduction() * seen_mask.float() if self.reduction() else None

    def scores(self, images, class_embeddings, seen_mask):
        if self.training or torch.is_grad_enabled():
            logits = self.mask_logits(images, class_embeddings)[-1]
            logits = F.interpolate(
                logits.float(), size=images.shape[-2:], mode="bilinear", align_corners=False
            )
            return reduce_seen(logits, seen_mask, self.reduction(), sigmoid=self.cfg.nel)
        logits = self.predict_logits(images, class_embeddings)
        if not self.cfg.nel:  # softmax couples the classes at each pixel: no per-class blocks
            logits = F.interpolate(
                logits.float(), size=images.shape[-2:], mode="bilinear", align_corners=False
            )
            return reduce_seen(logits, seen_mask, self.reduction(), sigmoid=False, inplace=True)
        return sigmoid_scores(logits, images.shape[-2:], self.seen_shift(seen_mask))

    def labels(self, images, class_embeddings, seen_mask):
        if self.training or torch.is_grad_enabled() or not self.cfg.nel:
            return super().labels(images, class_embeddings, seen_mask)
        logits = self.predict_logits(images, class_embeddings)
        return sigmoid_labels(logits, images.shape[-2:], self.seen_shift(seen_mask))

    # ------------------------------------------------------------------ training
    def loss(self, images: Tensor, labels: Tensor, class_embeddings: Tensor) -> dict[str, Tensor]:
        """The mask loss of the last decoder layer, and of every earlier one with
        ``deep_supervision``.

        Args:
            images: (B, 3, H, W) uint8.
            labels: (B, H, W) positions into ``class_embeddings`` or the ignore index.
            class_embeddings: (K, D).
        """
        cfg, ignore = self.cfg, self.split.ignore_index
        size = (images.shape[-2] // cfg.loss_stride, images.shape[-1] // cfg.loss_stride)
        target = downsample_labels(labels, size)
        total = 0
        masks = self.mask_logits(images, class_embeddings)
        if not cfg.deep_supervision:
            masks = masks[-1:]
        for m in masks:
            m = bilinear(m.float(), size)
            if cfg.nel:
                parts = mask_losses(
                    m,
                    target,
                    num_classes=len(class_embeddings),
                    ignore_index=ignore,
                    focal_weight=cfg.focal_weight,
                    dice_weight=cfg.dice_weight,
                    alpha=cfg.focal_alpha,
                    gamma=cfg.focal_gamma,
                )
            else:
                parts = {"ce": F.cross_entropy(m, target, ignore_index=ignore)}
            total = total + sum(parts.values())
        return {**parts, "loss": total}  # the named terms of the last layer, the summed loss

    def _stage0(self, ctx: RunContext) -> None:
        if self.cfg.encoder == "foundation":
            ctx.start_from_foundation(self.cfg.foundation, self.encoder.backbone, self.encoder.head)
            self._freeze_encoder()
            if self.cfg.decoder.aligned_init:  # the decoder starts as the foundation's match
                self.decoder.align(self.encoder.head.embedding_basis())
            return
        if self.cfg.encoder != "shapeworld":
            if self.cfg.pretrained is not None:  # the frozen CLIP image encoder
                from zeroseg.models.pretrained import load_clip

                visual = load_clip(
                    self.cfg.pretrained, config=CLIP_PRESETS[self.cfg.encoder]
                ).visual
                self.encoder.load_state_dict(visual.state_dict())
                self.encoder.to(ctx.device)
            return
        if ctx.world is None:
            raise ValueError(
                "ZegCLIP encoder 'shapeworld' needs a ShapeWorld dataset; use a CLIP preset for real data"
            )
        from zeroseg.pretrain import load_or_train

        visual = load_or_train(ctx.world, self.cfg.pretrain, progress=ctx.progress)
        self.encoder.load_state_dict(visual.state_dict(), strict=True)

    def inductive_parts(self, ctx: RunContext) -> dict:
        """What decides the inductive stage's weights (shared by zegclip and zegclip-st)."""
        model = dataclasses.asdict(self.cfg)
        for k in ("self_training", "seen_reduction"):  # do not decide the inductive weights
            model.pop(k)
        return {"model": model, "train": ctx.cfg.train, "text": ctx.cfg.text}

    def fit(self, ctx: RunContext) -> None:
        self.fit_inductive(ctx)

    def fit_inductive(self, ctx: RunContext) -> None:
        """Stage 1: seen classes, seen names only (the frozen encoder from stage 0 or CLIP first)."""
        if self.cfg.encoder == "shapeworld":
            ctx.notes.append(STAGE0_NOTE)
            ctx.pretrained_encoder("ShapeWorld stage-0 caption-contrastive encoder")
        elif self.cfg.encoder == "foundation":
            ctx.uses_foundation(self.cfg.foundation)
        else:
            ctx.pretrained_encoder(f"CLIP {self.cfg.encoder}")
        # the finished stage holds the frozen encoder too: stage 0 is not needed to load it
        ctx.run_stage(
            "zegclip",
            model=self,
            key=self.inductive_parts(ctx),
            prepare=lambda: self._inductive_plan(ctx),
            meta={"method": self.name},
        )

    def _inductive_plan(self, ctx: RunContext) -> StagePlan:
        self._stage0(ctx)
        seen_emb = ctx.seen_embeddings().to(ctx.device)
        lookup = seen_position_lookup(self.split).to(ctx.device)
        cfg = ctx.cfg.train
        loader = ctx.loader(cfg)

        def step(model, batch):
            labels = lookup[batch["label"].to(ctx.device).clamp(0, 255)]
            return model.loss(batch["image"].to(ctx.device), labels, seen_emb)

        return StagePlan(step, loader, cfg, params=self._param_groups(cfg.lr))

    def _param_groups(self, lr: float) -> list[dict] | None:
        """The optimiser groups of a training stage: the tuned head at ``lr * head_lr_mult``,
        the rest at ``lr`` (None: one group, every trainable parameter at ``lr``)."""
        if not self.cfg.tune_head:
            return None
        return scaled_lr_groups(self.parameters(), self.encoder.head, lr, self.cfg.head_lr_mult)


class ZegCLIPST(ZegCLIP):
    """ZegCLIP + transductive self-training on unlabelled training images (no unseen locations)."""

    name = "zegclip-st"
    protocol = "transductive"
    # quick=1.0: --quick has never shortened self-training; so the quick demo's numbers stay
    stages = (*ZegCLIP.stages, Stage("self-training", "model.self_training.train", quick=1.0))
    tiny = (*ZegCLIP.tiny, "model.self_training.train.batch_size=2")

    def reduction(self) -> float:
        return 0.0  # as the release: no seen-score reduction after self-training

    @torch.no_grad()
    def pseudo_labels(
        self, images: Tensor, class_embeddings: Tensor, seen_mask: Tensor, size
    ) -> Tensor:
        """Pseudo-labels of unlabelled images over all classes.

        Args:
            images: (B, 3, H, W) uint8, from the unlabelled training images.
            class_embeddings: (K, D) all class names; seen_mask (K,) bool.
            size: (h, w) of the returned map.

        Returns:
            (B, h, w) int64: an unseen class (any class with ``pseudo_seen``) where a pixel is
            among the top ``pseudo_percent`` % most confident of the pixels predicted as it,
            ``ignore_index`` elsewhere.
        """
        was = self.training
        self.eval()
        # the training-time path: pseudo-labels (hence training) stay bit-identical to before
        logits = self.mask_logits(images, class_embeddings)[-1]
        self.train(was)
        logits = F.interpolate(logits.float(), size=size, mode="bilinear", align_corners=False)
        probs = reduce_seen(logits, seen_mask, self.cfg.seen_reduction, sigmoid=self.cfg.nel)
        conf, pred = probs.max(1)
        st = self.cfg.self_training
        classes = [int(c) for c in torch.nonzero(~seen_mask | st.pseudo_seen).flatten()]
        return select_top_percent(pred, conf, classes, st.pseudo_percent, self.split.ignore_index)

    def fit(self, ctx: RunContext) -> None:
        self.fit_inductive(ctx)
        reason = "transductive self-training pseudo-labels over all class names"
        ctx.uses_unseen_names(reason=reason, stage="5")  # also when the stage is reused
        # a new directory name: stages trained with the all-class supervised term are not reused
        ctx.run_stage(
            "self-training",
            directory="self-training-seen-term",
            model=self,
            prepare=lambda: self._self_training_plan(ctx, reason),
            meta={"method": self.name, "transductive": True},
        )

    def _self_training_plan(self, ctx: RunContext, reason: str) -> StagePlan:
        st = self.cfg.self_training
        cfg = st.train
        all_emb = ctx.all_embeddings(reason=reason, stage="5").to(ctx.device)
        seen_emb = ctx.seen_embeddings().to(ctx.device)
        lookup = seen_position_lookup(self.split).to(ctx.device)
        seen_mask = self.split.seen_mask().to(ctx.device)
        labelled = ctx.loader(cfg)
        unlabelled = ctx.loader(cfg, ctx.train_images, seed_offset=1)  # same augmentation

        def batches(start: int, stop: int) -> Iterator[tuple[int, dict]]:
            for (step, lab), (_, unl) in zip(labelled(start, stop), unlabelled(start, stop)):
                yield (
                    step,
                    {"image": lab["image"], "label": lab["label"], "unlabelled": unl["image"]},
                )

        def step(model, batch):
            images = batch["image"].to(ctx.device)
            u_images = batch["unlabelled"].to(ctx.device)
            size = (
                images.shape[-2] // self.cfg.loss_stride,
                images.shape[-1] // self.cfg.loss_stride,
            )
            pseudo = self.pseudo_labels(u_images, all_emb, seen_mask, size)
            # The supervised term covers the seen classes only (as the inductive stage): over every
            # class its focal term would push the unseen masks down at each labelled pixel and
            # nowhere else, teaching where the ignored (= unseen) pixels are.
            labels = lookup[batch["label"].to(ctx.device).long().clamp(0, 255)]
            sup = model.loss(images, labels, seen_emb)
            uns = model.loss(
                u_images,
                F.interpolate(pseudo[:, None].float(), size=u_images.shape[-2:], mode="nearest")[
                    :, 0
                ].long(),
                all_emb,
            )
            return {
                "loss": sup["loss"] + st.pseudo_weight * uns["loss"],
                "pseudo_fraction": (pseudo != self.split.ignore_index).float().mean(),
            }

        return StagePlan(step, batches, cfg, params=self._param_groups(cfg.lr))


class ZegCLIPNoDPT(ZegCLIP):
    """Ablation: no deep prompt tuning (the frozen encoder runs unchanged)."""

    name = "zegclip-nodpt"
    forced = {"dpt": False}


class ZegCLIPNoRD(ZegCLIP):
    """Ablation: no relationship descriptor (queries from the text embeddings alone)."""

    name = "zegclip-nord"
    forced = {"rd": False}


class ZegCLIPNoNEL(ZegCLIP):
    """Ablation: mutually exclusive softmax cross-entropy instead of sigmoid focal + dice."""

    name = "zegclip-nonel"
    forced = {"nel": False}
