"""ZS3Net and ZS5Net (Bucher, Vu, Cord, Pérez, "Zero-Shot Semantic Segmentation", NeurIPS 2019).

ZS3Net turns zero-shot segmentation into supervised learning on synthetic features:

1. **Segmenter** (stage 1): DeepLabv3+ trained with cross-entropy on the seen classes; unseen pixels
   arrive as ``ignore`` through the protocol. Its pre-classifier pixel features ``f(x)`` are what
   the generator imitates.
2. **Generator** (stage 2, paper Sec. 3.1-3.2): a GMMN ``G(a_c, z)`` maps a class embedding ``a_c``
   and noise ``z`` to a pixel feature. It is trained by the per-class MMD (paper eq. 1-2)

       L_GMMN = sum_c MMD^2({G(a_c, z_i)}_i, {f(x_j) : y_j = c}_j)
       MMD^2(X, Y) = E k(x, x') + E k(y, y') - 2 E k(x, y),   k = sum_s exp(-||a - b||^2 / (2 s))

   between generated features and real features of *seen* classes. The real features come from
   the frozen segmenter in eval mode on the protocol's training set (labels nearest-downsampled to
   feature resolution, ignore pixels skipped), gathered once into a per-class feature bank, and
   each step draws the same number of them for every seen class (balanced classes).
3. **Classifier retraining** (stage 3, paper Sec. 3.2): the final 1x1 classifier is re-initialised
   over *all* classes and trained with (weighted) cross-entropy on real seen features + generated
   unseen features; ``unseen_weight`` and ``fake_per_unseen`` set how much the unseen classes count.

**On a text-aligned backbone** (``model.head: projection``, the ShapeWorld presets): stage 1 is the
projection baseline's model (the U-Net and the foundation's projection head, trained on the seen
names exactly as ``projection``); the GMMN imitates the head's hidden map g (the input of its last
1x1 embedding layer); and stage 3 retrains a cosine classifier over g (the head's last layer and
scale, and one vector per class) whose class vectors start from the head's text side of every name,
so the retrained classifier starts from the baseline's scores instead of from random weights; by
default only those vectors train (``cosine_train_shared``). The paper's DeepLab, trained with a
plain classifier, has no such head (``model.head: linear``).

Stages 2-3 use the unseen class *names* (their embeddings), never their pixels: the published
setting of generative methods, recorded in the report through ``ctx.all_embeddings(reason=...)``.
Stages 1-3 are shared between ``zs3net`` and ``zs5net`` (``ctx.shared_stage_dir``): trained once.

ZS5Net (paper Sec. 3.3, transductive) adds **self-training** (stage 5): the ZS3Net model labels the
*unlabelled* training images (``ctx.train_images``), and for every unseen class the top ``p`` % most
confident pixels predicted as that class become pseudo-labels (p = 75 in the paper). The segmenter
is then fine-tuned on the seen ground truth (``ctx.train_set``, seen labels only) plus those
pseudo-labels, as two cross-entropy terms over the all-class classifier.

**Difference from the released code.** The reference implementation (valeoai/ZS3) restricts
pseudo-labels to pixels whose ground truth is an unseen class or ignored, i.e. it consults where the
unseen objects are. We don't: pseudo-labels are ranked over *every* pixel of the unlabelled images,
and the seen ground truth is a separate loss term on its own batch, so neither the selection nor the
targets depend on the location of unseen pixels. Our ZS5Net numbers are therefore not inflated by
that leak (and may be lower than a leaky re-implementation's).

**Vocabulary at test time.** The retrained classifier is over the training vocabulary. ``scores``
uses it directly when every given class embedding matches a training-vocabulary row (any order,
any subset). For a vocabulary with new names it retrains a classifier on the fly (cached per
vocabulary): real features of the matching seen training classes from the stored feature bank, and
GMMN features for every other name, exactly as stage 3 does for the training vocabulary.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from functools import partial

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zeroseg._checks import check_minimum
from zeroseg.data.labels import downsample_labels, seen_position_lookup, select_top_percent
from zeroseg.data.loader import hflip, iterate_eval
from zeroseg.data.protocol import assert_seen_only
from zeroseg.engine.trainer import TrainConfig, autocast, scaled_lr_groups
from zeroseg.generators.gmmn import GMMN, GMMNConfig
from zeroseg.generators.mmd import ZS3_BANDWIDTHS
from zeroseg.methods.base import (
    GENERATIVE_STAGES,
    Method,
    RunContext,
    Stage,
    StagePlan,
    calibrate,
)
from zeroseg.methods.pixel_projection import (
    SEGMENTER_STAGE_DIR,
    segmenter_plan,
    segmenter_stage_parts,
)
from zeroseg.models.backbones.deeplab import DEEPLAB_PRESETS, DeepLabV3Plus, build_deeplab
from zeroseg.models.backbones.small import ProjectionSegmenter, SmallUNetConfig, UNetSegmenter
from zeroseg.models.heads.projection import CosineClassifier
from zeroseg.models.upsample import bilinear

__all__ = [
    "FeatureGenerator",
    "GeneratorConfig",
    "ZS3Net",
    "ZS3NetConfig",
    "ZS5Net",
    "ZS5NetConfig",
]

# How close two unit class embeddings must be to count as the same class (cosine similarity).
_SAME_CLASS_COS = 0.9999


@dataclass
class GeneratorConfig:
    """The GMMN and how it is trained against real seen features (stage 2)."""

    noise_dim: int = 300  # noise concatenated to the class embedding (ZS3: 300)
    hidden: int = 256  # hidden width (ZS3: one hidden layer of 256)
    dropout: float = 0.5  # after the hidden activation (ZS3: 0.5)
    leaky_slope: float = 0.2  # LeakyReLU slope (ZS3: 0.2)
    noise: str = "uniform"  # uniform on [0, 1) (ZS3's torch.rand) | normal
    output_activation: str = "none"  # none (ZS3) | relu (real features are post-ReLU)
    bandwidths: tuple[float, ...] = ZS3_BANDWIDTHS  # Gaussian kernel variances, chosen for 256-d
    root: bool = True  # per-class sqrt(MMD^2), as the reference's GMMNLoss
    pixels_per_class: int = 128  # real and generated features per seen class per step (ZS3: 128)
    bank_images: int = 1000  # training images whose features fill the real-feature bank
    bank_per_class: int = 512  # real features kept per seen class (also stored in the checkpoint)


def _stage(iters: int, lr: float, **kw) -> TrainConfig:
    return TrainConfig(iters=iters, lr=lr, **kw)


@dataclass
class ZS3NetConfig:
    """Model options of ZS3Net (the outer ``train:`` section is the segmenter's schedule)."""

    segmenter: str = "deeplabv3plus-small"  # a DEEPLAB_PRESETS name, or "unet-small"
    segmenter_overrides: dict = field(
        default_factory=dict
    )  # DeepLabConfig fields, e.g. feature_dim
    # linear: the paper's segmenter, a 1x1 classifier on the features, retrained from scratch in
    # stage 3. projection (unet-small only): the projection baseline's model, stage 1 trained as
    # the baseline on the seen names, the GMMN imitating its head's hidden map, and stage 3
    # retraining a cosine classifier whose class vectors start from the head's text side of
    # every name (so it starts from the baseline's scores).
    head: str = "linear"
    pretrained_backbone: str | None = None  # torchvision-format ResNet .pth for the backbone
    foundation: str | None = None  # "shipped" (the ShapeWorld foundation), a path, or None
    # stage 1's backbone learning rate relative to the head's (with head: projection, the
    # projection baseline's model.backbone_lr_mult: the two agree for the shared stage 1)
    backbone_lr_mult: float = 1.0
    # Images are resized by this factor before the segmenter (2: a 64 px ShapeWorld image gives a
    # 32x32 stride-4 feature map, as DeepLab's 513 px VOC crops give 33x33 at stride 16).
    input_scale: float = 1.0
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    generator_train: TrainConfig = field(  # stage 2 schedule (ZS3: Adam 2e-4)
        default_factory=lambda: _stage(
            1000, 2e-4, weight_decay=0.0, scheduler="constant", optimizer="adamw"
        )
    )
    classifier_train: TrainConfig = field(  # stage 3 schedule
        default_factory=lambda: _stage(
            500, 1e-2, weight_decay=0.0, scheduler="poly", optimizer="adamw"
        )
    )
    real_per_step: int = 2048  # real seen features per stage-3 step (drawn from the bank)
    fake_per_unseen: int = 128  # generated features per unseen class per stage-3 step
    unseen_weight: float = 1.0  # cross-entropy weight of unseen classes in stage 3 (ZS3 code: 100)
    # head: projection only. Stage 3 trains the class vectors (the classifier's weights); True also
    # trains the head's last 1x1 layer and logit scale, which every class shares (docs/methods.md:
    # on val the class vectors alone keep more of the seen classes).
    cosine_train_shared: bool = False
    calibration: float = 0.0  # calibrated stacking gamma at test time (0 = off)
    vocab_retrain_iters: int = 300  # steps of on-the-fly classifier retraining for a new vocabulary

    def __post_init__(self) -> None:
        check_minimum(self, ("backbone_lr_mult",), 0, strict=True)


@dataclass
class ZS5NetConfig(ZS3NetConfig):
    """ZS3Net options plus the self-training stage (stage 5)."""

    pseudo_percent: float = 75.0  # top p% most confident pixels kept per unseen class (paper: 75)
    # Also pseudo-label the top p% of each *seen* class's predicted pixels of the unlabelled
    # images, trained over every class: the leak-free stand-in for the released seen term, whose
    # all-class cross-entropy at the labelled pixels pushes the unseen scores down where a seen
    # class is (ours may not: at labelled pixels it would teach where the ignored, unseen, are).
    pseudo_seen: bool = False
    pseudo_images: int | None = None  # unlabelled training images to pseudo-label (None: all)
    self_train: TrainConfig = field(  # stage 5 schedule (fine-tunes the whole segmenter)
        default_factory=lambda: _stage(300, 3e-4, scheduler="poly", optimizer="adamw")
    )
    pseudo_loss_weight: float = 1.0  # weight of the pseudo-label term relative to the seen term
    self_train_backbone_lr_mult: float = 1.0  # stage 5's backbone lr relative to the head's

    def __post_init__(self) -> None:
        super().__post_init__()
        check_minimum(self, ("self_train_backbone_lr_mult",), 0, strict=True)


class FeatureGenerator(nn.Module):
    """The GMMN plus the bank of real seen features it was trained against.

    The bank travels with the weights so a new test vocabulary can be handled without the
    training data (see ``ZS3Net.scores``).

    Args:
        gmmn: The generator.
        num_seen: Number of seen classes S.
        bank_per_class: Features kept per seen class N.
    """

    def __init__(self, gmmn: GMMN, *, num_seen: int, bank_per_class: int):
        super().__init__()
        self.gmmn = gmmn
        dim = gmmn.config.feature_dim
        self.register_buffer("bank", torch.zeros(num_seen, bank_per_class, dim))  # (S, N, F)
        self.register_buffer("bank_count", torch.zeros(num_seen, dtype=torch.int64))  # (S,)

    def sample_real(self, positions: Tensor, n: int, generator: torch.Generator) -> Tensor:
        """(len(positions) * n, F) real features, ``n`` per seen position (with replacement)."""
        counts = self.bank_count[positions].clamp_min(1).cpu()
        idx = (torch.rand(len(positions), n, generator=generator) * counts[:, None]).long()
        return self.bank[positions.to(self.bank.device)[:, None], idx.to(self.bank.device)].flatten(
            0, 1
        )


def balanced_class_mmd(fake: Tensor, real: Tensor, bandwidths, *, root: bool = False) -> Tensor:
    """Mean over classes of MMD(fake_c, real_c) for class-balanced sets, all classes in one batch.

    Equal to :func:`zeroseg.generators.mmd.class_conditional_mmd` when every class has the same
    number of samples (the balanced sampling of stage 2), but one batched product instead of a
    Python loop over classes: on CPU the loop dominated a generator step.

    Args:
        fake: (C, n, F) generated features per class.
        real: (C, m, F) real features per class.
        bandwidths: kernel variances s in exp(-||a - b||^2 / (2 s)).
        root: per-class sqrt(MMD^2) as the ZS3 reference.

    Returns:
        A scalar tensor.
    """
    # MMD is translation invariant; centring per class avoids float32 cancellation.
    center = torch.cat([fake, real], 1).mean(1, keepdim=True).detach()
    x, y = fake - center, real - center

    def kmean(a: Tensor, b: Tensor) -> Tensor:
        sq = (
            a.pow(2).sum(-1)[:, :, None] + b.pow(2).sum(-1)[:, None, :] - 2 * a @ b.transpose(1, 2)
        ).clamp_min(0)
        return sum(torch.exp(sq / (-2.0 * s)).mean((1, 2)) for s in bandwidths)

    mmd2 = kmean(x, x) + kmean(y, y) - 2 * kmean(x, y)  # (C,)
    if root:
        mmd2 = mmd2.clamp_min(1e-12).sqrt()
    return mmd2.mean()


def _seeded(seed: int, step: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + step)


class ZS3Net(Method):
    """DeepLabv3+ whose last classifier is retrained on real seen + GMMN-generated unseen features."""

    name = "zs3net"
    Config = ZS3NetConfig
    protocol = "inductive"
    # 2: stage 1 (head: projection) is the pixel-projection model's, whose loss runs at full
    # resolution since its revision 2; the run's identity follows it.
    # 3: the GMMN's dropout masks drawn by zeroseg.models.dropout (another random stream than
    # nn.Dropout's, so the same config trains other weights).
    revision = 3
    # --quick runs half of the GMMN's steps (1000 of the preset's 2000): on val, at the quick
    # stage 1 over seeds 0 / 1 / 2, 1000 and 2000 steps gave the same hIoU for ZS3Net and ZS5Net
    # (docs/methods.md, the table of choices); the classifier keeps its full length.
    stages = (
        Stage("segmenter", "train"),
        replace(GENERATIVE_STAGES[0], quick=0.5),
        GENERATIVE_STAGES[1],
    )
    tiny = (
        "model.segmenter=deeplabv3plus-small",
        "model.pretrained_backbone=null",
        "model.generator.bank_images=2",
        "model.generator.bank_per_class=16",
        "model.real_per_step=32",
        "model.fake_per_unseen=4",
        "model.vocab_retrain_iters=2",
    )

    def __init__(self, cfg: ZS3NetConfig, *, split, embed_dim: int):
        super().__init__(cfg, split=split, embed_dim=embed_dim)
        if cfg.segmenter not in DEEPLAB_PRESETS and cfg.segmenter != "unet-small":
            raise KeyError(
                f"unknown segmenter preset {cfg.segmenter!r}; valid: "
                f"{sorted(DEEPLAB_PRESETS) + ['unet-small']}"
            )
        if cfg.head not in ("linear", "projection"):
            raise ValueError(f"model.head must be 'linear' or 'projection', not {cfg.head!r}")
        if cfg.head == "projection" and cfg.segmenter != "unet-small":
            raise ValueError("model.head 'projection' needs segmenter 'unet-small'")
        if cfg.head == "projection" and (cfg.input_scale != 1.0 or cfg.pretrained_backbone):
            # its stage 1 is the projection baseline's, which has neither
            raise ValueError(
                "model.head 'projection' needs input_scale 1 and no pretrained_backbone, got "
                f"{cfg.input_scale} and {cfg.pretrained_backbone!r}"
            )
        if cfg.foundation and cfg.segmenter != "unet-small":
            raise ValueError("model.foundation needs segmenter 'unet-small' (the foundation's)")
        overrides = dict(cfg.segmenter_overrides)
        if "num_classes" in overrides:
            raise ValueError(
                "model.segmenter_overrides.num_classes is set by the class split; remove it"
            )
        # The tuple fields of DeepLabConfig arrive from YAML as lists.
        overrides = {k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()}
        if cfg.head == "projection":
            self.unet_cfg = SmallUNetConfig(**overrides)
            self.segmenter: DeepLabV3Plus | UNetSegmenter | ProjectionSegmenter = (
                ProjectionSegmenter(
                    self.unet_cfg, embed_dim=embed_dim, num_classes=split.num_classes
                )
            )
        elif cfg.segmenter == "unet-small":
            self.segmenter = UNetSegmenter(
                SmallUNetConfig(**overrides), num_classes=split.num_classes
            )
        else:
            self.segmenter = build_deeplab(
                cfg.segmenter, num_classes=split.num_classes, **overrides
            )
        g = cfg.generator
        gmmn = GMMN(
            GMMNConfig(
                embed_dim=embed_dim,
                feature_dim=self.segmenter.feature_dim,
                noise_dim=g.noise_dim,
                hidden=g.hidden,
                dropout=g.dropout,
                leaky_slope=g.leaky_slope,
                noise=g.noise,
                output_activation=g.output_activation,
            )
        )
        self.feature_gen = FeatureGenerator(
            gmmn, num_seen=len(split.seen), bank_per_class=g.bank_per_class
        )
        self.register_buffer(
            "pixel_mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1) * 255
        )
        self.register_buffer(
            "pixel_std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1) * 255
        )
        # The training vocabulary's embeddings (all classes, split order), set by fit().
        self.register_buffer("train_embeddings", torch.zeros(split.num_classes, embed_dim))
        self._vocab_cache: dict[str, tuple[Tensor, Tensor]] = {}

    # ------------------------------------------------------------------ model
    def segmenter_input(self, images: Tensor) -> Tensor:
        """(B, 3, H, W) uint8 -> the normalised (and ``input_scale``-resized) segmenter input."""
        x = images.float()
        if isinstance(self.segmenter, DeepLabV3Plus):  # the U-Net normalises itself
            x = (x - self.pixel_mean) / self.pixel_std
        if self.cfg.input_scale != 1.0:
            x = F.interpolate(
                x, scale_factor=self.cfg.input_scale, mode="bilinear", align_corners=False
            )
        return x

    def features(self, images: Tensor) -> Tensor:
        """(B, 3, H, W) uint8 -> (B, F, h, w) pre-classifier features (h = H * input_scale / 4)."""
        return self.segmenter.forward_features(self.segmenter_input(images))

    @property
    def projection_head(self) -> bool:
        return isinstance(self.segmenter, ProjectionSegmenter)

    @property
    def seen_t(self) -> Tensor:
        return torch.tensor(self.split.seen, dtype=torch.int64)

    @property
    def unseen_t(self) -> Tensor:
        return torch.tensor(self.split.unseen, dtype=torch.int64)

    # ------------------------------------------------------------- stage keys
    # What decides each stage's weights besides the data (``ctx.stage_key``); each stage's parts
    # hold the ones before it, since it starts from their weights.
    def _parts1(self, ctx: RunContext) -> dict:
        c = self.cfg
        return {
            "segmenter": c.segmenter,
            "overrides": c.segmenter_overrides,
            "pretrained": c.pretrained_backbone,
            "train": ctx.cfg.train,
            **({"foundation": c.foundation} if c.foundation else {}),
            **({"input_scale": c.input_scale} if c.input_scale != 1.0 else {}),
            **({"head": c.head} if c.head != "linear" else {}),
            "backbone_lr_mult": c.backbone_lr_mult,  # left out of the key at 1 (NEUTRAL_DEFAULTS)
        }

    def _parts2(self, ctx: RunContext) -> dict:
        return {
            **self._parts1(ctx),
            "text": ctx.cfg.text,
            "generator": self.cfg.generator,
            "generator_train": self.cfg.generator_train,
        }

    def _parts3(self, ctx: RunContext) -> dict:
        c = self.cfg
        return {
            **self._parts2(ctx),
            "classifier_train": c.classifier_train,
            "real_per_step": c.real_per_step,
            "fake_per_unseen": c.fake_per_unseen,
            "unseen_weight": c.unseen_weight,
            # The key gains the field only where it acts, so linear-head stages keep their keys.
            **({"cosine_train_shared": c.cosine_train_shared} if self.projection_head else {}),
        }

    # ------------------------------------------------------------------ stages
    @staticmethod
    def _shared_stage(ctx: RunContext, stage: str, model: nn.Module, parts, plan) -> None:
        """Stages 1-3, shared by zs3net and zs5net: ``zs3-<stage>`` keyed by ``parts(ctx)``."""
        ctx.run_stage(
            stage,
            directory=f"zs3-{stage}",
            model=model,
            key=parts(ctx),
            prepare=lambda: plan(ctx),
            meta={"method": "zs3net"},
        )

    def fit(self, ctx: RunContext) -> None:
        emb = ctx.all_embeddings(
            reason="ZS3Net's generator makes unseen-class features from their names (stages 2-3); "
            "no unseen pixel label is used",
            stage="2-3",
        )
        self.train_embeddings.copy_(emb.to(self.train_embeddings))
        self.fit_segmenter(ctx)
        self.fit_generator(ctx)
        self.fit_classifier(ctx)

    def fit_segmenter(self, ctx: RunContext) -> None:
        """Stage 1: DeepLabv3+ with cross-entropy over the seen classes (or, with ``head:
        projection``, the projection baseline's model on the seen names)."""
        if not self.projection_head:
            self.segmenter.reset_classifier(len(self.split.seen))
        if self.cfg.foundation:
            ctx.uses_foundation(self.cfg.foundation)
        if self.projection_head:
            # The projection baseline's own stage (same key and training): one training per
            # output directory, the baseline row's weights (its backbone and head: the view).
            seg = self.segmenter
            ctx.run_stage(
                "segmenter",
                directory=SEGMENTER_STAGE_DIR,
                key=segmenter_stage_parts(
                    ctx,
                    self.unet_cfg,
                    self.cfg.foundation,
                    classes="seen",
                    frozen=False,
                    backbone_lr_mult=self.cfg.backbone_lr_mult,
                ),
                model=nn.ModuleDict({"backbone": seg.backbone, "head": seg.head}),
                prepare=lambda: segmenter_plan(
                    ctx,
                    seg.backbone,
                    seg.head,
                    self.cfg.foundation,
                    ctx.seen_embeddings(),
                    seen_position_lookup(self.split),
                    self.split.ignore_index,
                    backbone_lr_mult=self.cfg.backbone_lr_mult,
                ),
                meta={"method": "projection"},
            )
            return
        self._shared_stage(ctx, "segmenter", self.segmenter, self._parts1, self._segmenter_plan)

    def _segmenter_plan(self, ctx: RunContext) -> StagePlan:
        if self.cfg.pretrained_backbone:
            from zeroseg.models.backbones.resnet import load_torchvision_resnet

            load_torchvision_resnet(self.segmenter.backbone, self.cfg.pretrained_backbone)
        seg = self.segmenter
        if self.cfg.foundation:
            ctx.start_from_foundation(self.cfg.foundation, seg.backbone)
        lookup = seen_position_lookup(self.split).to(ctx.device)
        cfg = ctx.cfg.train
        loader = ctx.loader(cfg, transform=ctx.train_transform or hflip)

        def step(seg, batch):
            # Loss at feature resolution (labels nearest-subsampled): the K-channel upsampling
            # would otherwise dominate a CPU step.
            images = self.segmenter_input(batch["image"].to(ctx.device))
            out = seg.classifier(seg.forward_features(images)).float()
            target = lookup[downsample_labels(batch["label"].to(ctx.device), out.shape[-2:])]
            return {"loss": F.cross_entropy(out, target, ignore_index=self.split.ignore_index)}

        params = scaled_lr_groups(seg.parameters(), seg.backbone, cfg.lr, self.cfg.backbone_lr_mult)
        return StagePlan(step, loader, cfg, params=params)

    @torch.no_grad()
    def build_feature_bank(self, dataset, *, device: torch.device, seed: int = 0) -> None:
        """Fills the bank with real features of seen classes from the frozen segmenter (eval mode).

        Each seen class keeps ``bank_per_class`` of its pixels' features, drawn uniformly
        (``randperm`` over all of them, in image order). Drawing needs each class's pixel count
        first, so a first pass counts labels only (at the feature resolution, known from one
        image of each size) and a second computes the features and keeps just the drawn ones:
        the bank's memory, not every seen pixel's feature, with the same bank as gathering them
        all (docs/benchmarks.md, session 32: the demo row's peak 1919 -> 1098 MiB).

        Args:
            dataset: labelled data through the protocol (every batch is checked for unseen labels).
        """
        g = self.cfg.generator
        lookup = seen_position_lookup(self.split).to(device)
        n_img = min(len(dataset), g.bank_images)
        order = np.random.default_rng(seed).permutation(len(dataset))[:n_img]
        subset = torch.utils.data.Subset(dataset, order.tolist())
        self.segmenter.eval()
        feature_size: dict[tuple[int, int], tuple[int, int]] = {}

        def positions(batch) -> Tensor:
            """(B * h * w,) seen positions of the batch's labels at the feature resolution."""
            assert_seen_only(batch, self.split, stage="feature-bank")
            shape = tuple(batch["image"].shape[-2:])
            if shape not in feature_size:
                one = self.features(batch["image"][:1].to(device))
                feature_size[shape] = tuple(one.shape[-2:])
            labels = downsample_labels(batch["label"].to(device), feature_size[shape])
            return lookup[labels].reshape(-1)

        ignore = self.split.ignore_index
        count_all = torch.zeros(len(self.split.seen), dtype=torch.int64)
        for batch in iterate_eval(subset, 50):
            pos = positions(batch).cpu()
            count_all += torch.bincount(pos[pos != ignore], minlength=len(count_all))
        gen = torch.Generator().manual_seed(seed)
        bank = torch.zeros_like(self.feature_gen.bank, device="cpu")
        count = torch.zeros_like(self.feature_gen.bank_count, device="cpu")
        slot = []  # per class: each of its pixels' row in the bank, -1 if not drawn
        for p, n in enumerate(count_all.tolist()):
            keep = torch.randperm(n, generator=gen)[: bank.shape[1]] if n else None
            rows = torch.full((n,), -1, dtype=torch.int64)
            if keep is not None:
                rows[keep] = torch.arange(len(keep))
                count[p] = len(keep)
            slot.append(rows)
        seen_so_far = [0] * len(slot)
        for batch in iterate_eval(subset, 50):
            pos = positions(batch)
            feats = self.features(batch["image"].to(device)).float()  # (B, F, h, w)
            flat = feats.permute(0, 2, 3, 1).reshape(-1, feats.shape[1])
            for p in torch.unique(pos).tolist():
                if p == ignore:
                    continue
                mine = flat[pos == p].cpu()
                rows = slot[p][seen_so_far[p] : seen_so_far[p] + len(mine)]
                seen_so_far[p] += len(mine)
                drawn = rows >= 0
                bank[p, rows[drawn]] = mine[drawn]
        self.feature_gen.bank.copy_(bank)
        self.feature_gen.bank_count.copy_(count)

    def fit_generator(self, ctx: RunContext) -> None:
        """Stage 2: the GMMN, by class-conditional MMD against balanced real seen features."""
        self._shared_stage(ctx, "generator", self.feature_gen, self._parts2, self._generator_plan)

    def _generator_plan(self, ctx: RunContext) -> StagePlan:
        self.build_feature_bank(ctx.train_set, device=ctx.device, seed=ctx.cfg.seed)
        g, cfg = self.cfg.generator, self.cfg.generator_train
        present = torch.nonzero(self.feature_gen.bank_count.cpu() > 0).flatten()  # seen positions
        if len(present) == 0:
            raise RuntimeError(
                "zs3net: no seen-class pixel in the training images used for the feature bank"
            )
        classes = self.seen_t[present]  # full class ids
        emb = self.train_embeddings.to(ctx.device)

        def batches(start: int, stop: int) -> Iterator[tuple[int, dict]]:
            for step in range(start, stop):
                gen = _seeded(cfg.seed, step)
                real = self.feature_gen.sample_real(present, g.pixels_per_class, gen)
                yield (
                    step,
                    {"features": real, "label": classes.repeat_interleave(g.pixels_per_class)},
                )

        def step(fg, batch):
            label = batch["label"].to(ctx.device)
            noise = fg.gmmn.sample_noise(len(label), device=ctx.device)
            fake = fg.gmmn(emb[label], noise).float()
            real = batch["features"].to(ctx.device).float()
            n = g.pixels_per_class
            # Batches are class-major with n features per class (see ``batches``).
            loss = balanced_class_mmd(
                fake.view(-1, n, fake.shape[1]),
                real.view(-1, n, real.shape[1]),
                g.bandwidths,
                root=g.root,
            )
            return {"loss": loss}

        return StagePlan(step, batches, cfg)

    def _classifier_batch(
        self,
        classes_real: Tensor,
        positions: Tensor,
        classes_fake: Tensor,
        emb_fake: Tensor,
        n_real: int,
        n_fake: int,
        gen: torch.Generator,
    ) -> dict:
        """Real bank features of ``positions`` (labelled ``classes_real``) + generated ones."""
        per = max(1, n_real // max(1, len(positions)))
        real = self.feature_gen.sample_real(positions, per, gen)
        out = {"features": real, "label": classes_real.repeat_interleave(per)}
        if len(classes_fake):
            # Drawn as the released code draws them: the GMMN in train mode, its dropout on. In
            # eval mode the fakes came out about 3.5x narrower than real features (within-class
            # spread 2.0 vs 7.2). The dropout masks come from ``gen`` (forked global RNG), so a
            # batch stays a pure function of the step, for exact resume.
            was = self.feature_gen.training
            self.feature_gen.train()
            gmmn = self.feature_gen.gmmn
            noise = gmmn.sample_noise(len(classes_fake) * n_fake, generator=gen, device="cpu")
            e = emb_fake.cpu().repeat_interleave(n_fake, 0)
            seed = int(torch.randint(0, 2**31 - 1, (1,), generator=gen))
            with torch.no_grad(), torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                fake = gmmn(e.to(gmmn.net[0].weight.device), noise.to(gmmn.net[0].weight.device))
            self.feature_gen.train(was)
            out["fake"] = fake.float()
            out["fake_label"] = classes_fake.repeat_interleave(n_fake)
        return out

    def fit_classifier(self, ctx: RunContext) -> None:
        """Stage 3: the 1x1 classifier over all classes, on real seen + generated unseen features
        (with ``head: projection``, the cosine classifier starting from the head's text side)."""
        if self.projection_head:
            self.segmenter.reset_classifier(
                self.train_embeddings, train_shared=self.cfg.cosine_train_shared
            )
        else:
            self.segmenter.reset_classifier(self.split.num_classes)
        self._shared_stage(
            ctx, "classifier", self.segmenter.classifier, self._parts3, self._classifier_plan
        )

    def _classifier_plan(self, ctx: RunContext) -> StagePlan:
        c, cfg = self.cfg, self.cfg.classifier_train
        present = torch.nonzero(self.feature_gen.bank_count.cpu() > 0).flatten()
        unseen = self.unseen_t
        if self.projection_head and len(unseen):
            ctx.notes.append(self._start_agreement_note(unseen))
        emb_unseen = self.train_embeddings[unseen]
        weight = torch.ones(self.split.num_classes, device=ctx.device)
        weight[unseen.to(ctx.device)] = c.unseen_weight

        def batches(start: int, stop: int) -> Iterator[tuple[int, dict]]:
            for step in range(start, stop):
                gen = _seeded(cfg.seed + 1, step)
                yield (
                    step,
                    self._classifier_batch(
                        self.seen_t[present],
                        present,
                        unseen,
                        emb_unseen,
                        c.real_per_step,
                        c.fake_per_unseen,
                        gen,
                    ),
                )

        return StagePlan(
            lambda clf, batch: {"loss": _linear_ce(clf, batch, weight, ctx.device)}, batches, cfg
        )

    # --------------------------------------------------------------- inference
    def _match_training_rows(self, class_embeddings: Tensor) -> Tensor:
        """(K,) index of the training-vocabulary row each embedding equals, or -1."""
        a = F.normalize(class_embeddings.float(), dim=1)
        b = F.normalize(self.train_embeddings.float().to(a.device), dim=1)
        sim = a @ b.T  # (K, K_train)
        best, idx = sim.max(1)
        return torch.where(best >= _SAME_CLASS_COS, idx, torch.full_like(idx, -1))

    def classifier_for(
        self, class_embeddings: Tensor, seen_mask: Tensor
    ) -> Callable[[Tensor], Tensor]:
        """A classifier over the given vocabulary: (B, F, h, w) features -> (B, K, h, w) logits."""
        rows = self._match_training_rows(class_embeddings)
        if bool((rows >= 0).all()) and len(set(rows.tolist())) == len(rows):
            return partial(_classify, self.segmenter.classifier, rows)
        key = hashlib.sha256(class_embeddings.detach().float().cpu().numpy().tobytes()).hexdigest()
        key += hashlib.sha256(seen_mask.cpu().numpy().tobytes()).hexdigest()
        if key not in self._vocab_cache:
            self._vocab_cache[key] = self._retrain_for_vocabulary(class_embeddings, seen_mask, rows)
        return self._vocab_cache[key]

    @torch.enable_grad()
    def _retrain_for_vocabulary(
        self, class_embeddings: Tensor, seen_mask: Tensor, rows: Tensor
    ) -> Callable[[Tensor], Tensor]:
        """Stage 3 for a new vocabulary: real bank features for the classes that are seen training
        classes, GMMN features for all others."""
        device = class_embeddings.device
        seen_pos = {c: p for p, c in enumerate(self.split.seen)}
        real_cls, real_pos, fake_cls = [], [], []
        for k, (r, s) in enumerate(zip(rows.tolist(), seen_mask.tolist())):
            if s and r in seen_pos and int(self.feature_gen.bank_count[seen_pos[r]]) > 0:
                real_cls.append(k)
                real_pos.append(seen_pos[r])
            else:
                fake_cls.append(k)
        c = self.cfg
        kcls = len(rows)
        if self.projection_head:
            clf: nn.Module = CosineClassifier(
                self.segmenter.head, class_embeddings, train_shared=c.cosine_train_shared
            )
        else:
            clf = nn.Conv2d(self.segmenter.feature_dim, kcls, 1).to(device)
        trained = [p for p in clf.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(trained, lr=c.classifier_train.lr, weight_decay=0.0)
        weight = torch.ones(kcls, device=device)
        weight[torch.tensor(fake_cls, dtype=torch.int64, device=device)] = c.unseen_weight
        real_cls_t, real_pos_t = (
            torch.tensor(real_cls, dtype=torch.int64),
            torch.tensor(real_pos, dtype=torch.int64),
        )
        fake_t = torch.tensor(fake_cls, dtype=torch.int64)
        for step in range(c.vocab_retrain_iters):
            gen = _seeded(c.classifier_train.seed + 7, step)
            if len(real_pos):
                batch = self._classifier_batch(
                    real_cls_t,
                    real_pos_t,
                    fake_t,
                    class_embeddings[fake_t.to(device)],
                    c.real_per_step,
                    c.fake_per_unseen,
                    gen,
                )
            else:
                batch = self._fake_only_batch(
                    fake_t, class_embeddings[fake_t.to(device)], c.fake_per_unseen, gen
                )
            for g in opt.param_groups:
                g["lr"] = c.classifier_train.lr * (1 - step / c.vocab_retrain_iters) ** 0.9
            loss = _linear_ce(clf, batch, weight, device)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        clf.requires_grad_(False)
        return partial(_classify, clf, torch.arange(kcls, device=device))

    @torch.no_grad()
    def fakes_in_own_class(
        self, classifier: nn.Module, classes: Tensor, n: int = 512, seed: int = 0
    ) -> Tensor:
        """(len(classes),) the share of ``n`` generated features of each class, drawn as stage 3
        draws them (:meth:`_fake_only_batch`), that ``classifier`` (a 1x1 classifier over every
        training class) puts in their own class. Reads no label: only the names' embeddings."""
        batch = self._fake_only_batch(classes, self.train_embeddings[classes], n, _seeded(seed, 0))
        feats = batch["features"].float()
        device = next(classifier.parameters()).device
        predicted = classifier(feats[:, :, None, None].to(device))[:, :, 0, 0].argmax(1).cpu()
        own = (predicted == batch["label"]).float()
        return torch.stack([own[batch["label"] == c].mean() for c in classes.tolist()])

    def _start_agreement_note(self, unseen: Tensor) -> str:
        """The report note of stage 3's start (the head's text side, the projection baseline's
        scoring): what share of the generated unseen features it already classifies right."""
        share = 100 * self.fakes_in_own_class(self.segmenter.classifier, unseen)
        spread = f" ({share.min():.0f}-{share.max():.0f} % by class)" if len(share) > 1 else ""
        return (
            f"stage 3 starts from a classifier that already puts {share.mean():.1f} % of the "
            f"generated unseen features in their own class{spread}: what stage 3 can teach the "
            "unseen classes is the rest (docs/methods.md, ZS3Net, 'Why ZS3Net gains less on the "
            "drawn worlds')"
        )

    def _fake_only_batch(self, classes: Tensor, emb: Tensor, n: int, gen: torch.Generator) -> dict:
        out = self._classifier_batch(classes[:0], classes[:0], classes, emb, 0, n, gen)
        return {"features": out["fake"], "label": out["fake_label"]}

    def logits(
        self, images: Tensor, class_embeddings: Tensor, seen_mask: Tensor, *, upsample: bool = True
    ) -> Tensor:
        """(B, 3, H, W) uint8 -> (B, K, H, W) logits (feature resolution if not ``upsample``)."""
        classify = self.classifier_for(class_embeddings, seen_mask)
        out = classify(self.features(images).float())
        if upsample:
            # DeepLab's corner-aligned upsampling; the projection head upsamples as the baseline
            corners = not self.projection_head
            out = bilinear(out, images.shape[-2:], align_corners=corners)
        return out

    def scores(self, images, class_embeddings, seen_mask):
        return calibrate(
            self.logits(images, class_embeddings, seen_mask), seen_mask, self.cfg.calibration
        )


def _classify(clf: nn.Module, rows: Tensor, feats: Tensor) -> Tensor:
    """(B, F, h, w) features -> (B, len(rows), h, w) logits of classifier rows ``rows``."""
    if isinstance(clf, CosineClassifier):
        return clf(feats, rows)
    return F.conv2d(feats, clf.weight[rows].float(), clf.bias[rows].float())


def _linear_ce(clf: nn.Module, batch: dict, weight: Tensor, device: torch.device) -> Tensor:
    """Weighted cross-entropy of a 1x1 conv classifier on (N, F) features."""
    feats, labels = batch["features"], batch["label"]
    if "fake" in batch:
        feats = torch.cat([feats, batch["fake"]])
        labels = torch.cat([labels, batch["fake_label"]])
    feats = feats.to(device).float()
    logits = clf(feats[:, :, None, None])[:, :, 0, 0].float()  # (N, K)
    return F.cross_entropy(logits, labels.to(device), weight=weight)


class _PseudoLabelled(torch.utils.data.Dataset):
    """Unlabelled training images with their pseudo-label maps (the only targets they carry)."""

    def __init__(self, images, indices: list[int], pseudo: Tensor):
        self.images, self.indices, self.pseudo = images, indices, pseudo

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict:
        s = self.images[self.indices[i]]
        # Named "label" so the dataset's training transform (flip, crop) moves it with the image;
        # the self-training batches rename it "pseudo_label" before the protocol guard sees them.
        return {"image": s["image"], "label": self.pseudo[i]}


class ZS5Net(ZS3Net):
    """ZS3Net followed by transductive self-training on pseudo-labelled unlabelled images."""

    name = "zs5net"
    Config = ZS5NetConfig
    protocol = "transductive"
    # quick=1.0: --quick has never shortened self-training; so the quick demo's numbers stay
    stages = (*ZS3Net.stages, Stage("self_training", "model.self_train", quick=1.0))
    tiny = (*ZS3Net.tiny, "model.self_train.batch_size=2", "model.pseudo_images=2")

    def fit(self, ctx: RunContext) -> None:
        super().fit(ctx)  # stages 1-3, shared with zs3net
        self.fit_self_training(ctx)

    @torch.no_grad()
    def pseudo_label(
        self, images, *, device: torch.device, amp: str = "none"
    ) -> tuple[list[int], Tensor]:
        """Pseudo-labels of unlabelled images (no label is read: ``images`` carry none).

        Returns:
            the image indices used and their (N, H, W) pseudo-label maps: an unseen class (or,
            with ``pseudo_seen``, a seen class) where selected, 255 elsewhere.
        """
        c = self.cfg
        if self.split.num_classes >= 255:  # uint8 maps, 255 = not pseudo-labelled
            raise ValueError(
                f"ZS5Net's pseudo-label maps are uint8 with 255 as 'none': the split has "
                f"{self.split.num_classes} classes, at most 254 fit"
            )
        n = len(images) if c.pseudo_images is None else min(len(images), c.pseudo_images)
        indices = list(range(n))
        subset = torch.utils.data.Subset(images, indices)
        emb = self.train_embeddings
        seen_mask = torch.zeros(self.split.num_classes, dtype=torch.bool, device=emb.device)
        seen_mask[self.seen_t.to(emb.device)] = True
        preds, confs = [], []
        self.eval()
        for batch in iterate_eval(subset, 50):
            if "label" in batch:
                raise ValueError(
                    "pseudo-labelling must run on unlabelled images (ctx.train_images)"
                )
            with autocast(amp, device):
                logits = self.logits(batch["image"].to(device), emb, seen_mask)
            prob = logits.float().softmax(1)
            ranked = calibrate(logits.float(), seen_mask, c.calibration) if c.calibration else prob
            pred = ranked.argmax(1)
            confs.append(prob.gather(1, pred[:, None])[:, 0].half().cpu())
            preds.append(pred.to(torch.uint8).cpu())  # classes < 255 (checked above)
        classes = list(self.split.unseen) + (list(self.split.seen) if c.pseudo_seen else [])
        pseudo = select_top_percent(
            torch.cat(preds), torch.cat(confs), classes, c.pseudo_percent, dtype=torch.uint8
        )
        return indices, pseudo

    def fit_self_training(self, ctx: RunContext) -> None:
        """Stage 5: fine-tune the segmenter on seen ground truth + unseen pseudo-labels."""
        # a new directory name: stages trained with the all-class seen term are not reused
        ctx.uses_unseen_names(reason="pseudo-labels are predicted over all class names", stage="5")
        ctx.run_stage(
            "self_training",
            directory="self_training-seen-term",
            model=self.segmenter,
            prepare=lambda: self._self_training_plan(ctx),
            meta={"method": "zs5net"},
        )

    def _self_training_plan(self, ctx: RunContext) -> StagePlan:
        c, cfg = self.cfg, self.cfg.self_train
        indices, pseudo = self.pseudo_label(ctx.train_images, device=ctx.device, amp=cfg.amp)
        unseen = sum(int((pseudo == u).sum()) for u in self.split.unseen)
        seen = int((pseudo != 255).sum()) - unseen
        ctx.notes.append(
            f"zs5net pseudo-labelled {unseen} pixels of unseen classes "
            + (f"and {seen} of seen classes " if c.pseudo_seen else "")
            + f"(top {c.pseudo_percent:g}% per class) in {len(indices)} unlabelled training images"
        )
        half = max(1, cfg.batch_size // 2)
        seen_loader = ctx.loader(cfg, batch_size=half, transform=ctx.train_transform or hflip)
        pseudo_set = _PseudoLabelled(ctx.train_images, indices, pseudo)
        pseudo_loader = ctx.loader(
            cfg, pseudo_set, batch_size=half, seed_offset=1, transform=ctx.train_transform or hflip
        )

        def batches(start: int, stop: int) -> Iterator[tuple[int, dict]]:
            for step in range(start, stop):
                s, p = seen_loader.batch(step), pseudo_loader.batch(step)
                # "label" is the seen ground truth, checked by the protocol guard; pseudo-labels are
                # the model's own predictions on unlabelled images.
                yield (
                    step,
                    {
                        "image": s["image"],
                        "label": s["label"],
                        "pseudo_image": p["image"],
                        "pseudo_label": p["label"],
                    },
                )

        ignore = self.split.ignore_index
        seen_idx = self.seen_t.to(ctx.device)
        lookup = seen_position_lookup(self.split).to(ctx.device)

        def step(seg, batch):
            images = torch.cat([batch["image"], batch["pseudo_image"]]).to(ctx.device)
            out = seg.classifier(seg.forward_features(self.segmenter_input(images))).float()
            size = out.shape[-2:]
            n = len(batch["image"])
            seen_t = downsample_labels(batch["label"].to(ctx.device), size)
            pseudo_t = downsample_labels(batch["pseudo_label"].to(ctx.device), size)
            # The seen term is a softmax over the seen classes only: over every class it would
            # push the unseen scores down at each labelled pixel and nowhere else, teaching where
            # the ignored (= unseen) pixels are. The unseen classes learn from pseudo-labels only.
            loss_seen = F.cross_entropy(
                out[:n].index_select(1, seen_idx), lookup[seen_t], ignore_index=ignore
            )
            if bool((pseudo_t != ignore).any()):
                loss_pseudo = F.cross_entropy(out[n:], pseudo_t, ignore_index=ignore)
            else:
                loss_pseudo = out.sum() * 0
            loss = loss_seen + c.pseudo_loss_weight * loss_pseudo
            return {"loss": loss, "seen": loss_seen.detach(), "pseudo": loss_pseudo.detach()}

        seg, mult = self.segmenter, c.self_train_backbone_lr_mult
        params = scaled_lr_groups(seg.parameters(), seg.backbone, cfg.lr, mult)
        return StagePlan(step, batches, cfg, params=params)
