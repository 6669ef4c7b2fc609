"""PADing and its mask-projection baseline: universal zero-shot panoptic / instance / semantic segmentation.

He et al., "Primitive Generation and Semantic-related Alignment for Universal Zero-Shot
Segmentation", CVPR 2023 (reference code heshuting555/PADing, on Mask2Former).

Stage 1 (both methods, trained once and shared): a Mask2Former-style mask-classification model
(:mod:`zeroseg.models.heads.mask_decoder`) trained on the seen classes under the *strict*
protocol (training images with any unseen pixel are dropped), queries classified by cosine
similarity with the seen classes' text embeddings, Hungarian-matched set loss
(:mod:`zeroseg.models.matching`).

``mask-projection`` (the baseline row, ZegFormer-seg style) stops there: at test time the queries
are classified against the text embeddings of every class, unseen names included.

``pading`` continues with

Stage 2, the primitive generator (Sec. 3.2): a bank of P learnable primitives (400); per layer the
primitives attend to each other (self-attention), the class's projected semantic embedding plus
Gaussian noise attends to them (cross-attention, the class as query, the primitives as keys and
values), then an FFN; 3 layers. It is trained with the multi-kernel MMD (Eq. 3; :mod:`zeroseg.generators.mmd`)
between its samples and the real query embeddings matched to each seen class. On top:

- feature disentanglement (Sec. 3.3, Eq. 4-6): encoders E_R (semantic-related) and E_U
  (semantic-unrelated) and a decoder D on the generated features;
  ``L_R = CE(cos(E_R(x), t_k) / tau, c)`` over every class embedding t_k, ``L_U = KL(q(E_U(x)) ||
  N(0, I))`` (q the batch's diagonal Gaussian), ``L_recon = |D([E_R(x), E_U(x)]) - x|_1``;
- relationship alignment (Sec. 3.4, Eq. 7-8): for the class prototypes r_c (the mean of E_R of
  a class's generated features; of the features themselves without disentanglement) the
  distribution ``softmax_j(cos(r_i, r_j) / tau)`` is pulled toward ``softmax_j(cos(t_i, t_j) / tau)``
  by a KL divergence, within the seen group, within the unseen group and from seen to unseen
  (tau = 0.1; the diagonal is left out, a class is trivially related to itself);
- total ``L = MMD + lambda · (L_R + L_U + L_recon + L_align)``, lambda = 0.002.

Stage 3, classifier retraining: a cosine classifier over every class + no-object (initialised
from the text embeddings and the stage-1 no-object embedding) is trained by cross-entropy on real
query embeddings of the seen training images (matched: their class; unmatched: no-object, weight
0.1) and generated embeddings of the unseen classes.

Ablations (the paper's Table 4): ``pading-g`` (a plain GMMN generator, as ZS3Net), ``pading-p``
(primitive generator), ``pading-pa`` (+ alignment), ``pading`` (+ alignment + disentanglement).

Protocol: stages 1-3 see only the strict training set; the generator and classifier use unseen
class *names* (their embeddings), the published setting, recorded in the report.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from zeroseg.data.loader import iterate_eval, size_groups
from zeroseg.data.protocol import assert_seen_only
from zeroseg.engine import distributed as dist
from zeroseg.engine.trainer import TrainConfig, load_stage, stage_done
from zeroseg.generators.gmmn import GMMN, GMMNConfig
from zeroseg.generators.mmd import mmd_loss
from zeroseg.methods.base import Method, RunContext, seen_position_lookup
from zeroseg.metrics.instance import InstanceEvaluator
from zeroseg.metrics.panoptic import PanopticEvaluator, crowd_flags
from zeroseg.models.heads.mask_decoder import (
    MaskClassifier,
    MaskModelConfig,
    instance_inference,
    panoptic_inference,
    semantic_inference,
)
from zeroseg.models.matching import MatchWeights, batch_targets, hungarian_match, set_loss

# Kernel variances for MMD between unit-norm query embeddings (squared distances lie in [0, 4]);
# ZS3's (2 ... 80) suit unnormalised 256-d features and would make every kernel flat here.
UNIT_BANDWIDTHS: tuple[float, ...] = (0.02, 0.05, 0.1, 0.2, 0.5, 1.0)


@dataclass
class MaskProjectionConfig:
    """The mask model and its test-time rules."""

    mask: MaskModelConfig = field(default_factory=MaskModelConfig)  # architecture
    match: MatchWeights = field(default_factory=MatchWeights)  # matching cost and loss weights
    object_threshold: float = 0.8  # panoptic: min class prob. of a kept query (Mask2Former 0.8)
    overlap_threshold: float = 0.8  # panoptic: min kept share of a query's mask (Mask2Former 0.8)
    topk: int = 100  # instance: (query, class) pairs kept per image
    foundation: str | None = None  # "shipped" (the ShapeWorld foundation), a path, or None


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


class MaskProjection(Method):
    """The mask model trained on seen classes, queries classified by text similarity at test time."""

    name = "mask-projection"
    Config = MaskProjectionConfig
    # sum over queries of class probability x mask, for the shared calibration rule
    score_kind = "evidence"
    protocol = "inductive"
    produces_segments = True

    def __init__(self, cfg: MaskProjectionConfig, *, split, embed_dim: int):
        super().__init__(cfg, split=split, embed_dim=embed_dim)
        self.model = MaskClassifier(cfg.mask, embed_dim=embed_dim)
        is_thing = torch.zeros(split.num_classes, dtype=torch.bool)
        is_thing[list(split.things)] = True
        self.register_buffer("is_thing", is_thing, persistent=False)

    # stage 1 ---------------------------------------------------------------------------------------
    def mask_stage_key(self, ctx: RunContext) -> dict:
        """Everything that decides the mask model's weights (methods with the same key share it)."""
        return {
            "data": ctx.data_key(),
            "mask": dataclasses.asdict(self.cfg.mask),
            "match": dataclasses.asdict(self.cfg.match),
            "train": dataclasses.asdict(ctx.cfg.train),
            "text": dataclasses.asdict(ctx.cfg.text),
            "foundation": self.cfg.foundation,
        }

    def fit_mask_model(self, ctx: RunContext):
        """Stage 1 (shared): trains ``self.model`` on the protocol's training set, or loads it."""
        stage = ctx.shared_stage_dir("mask-model", self.mask_stage_key(ctx))
        if self.cfg.foundation:
            ctx.uses_foundation(self.cfg.foundation)
        if stage_done(stage):
            load_stage(self.model, stage)
            return stage
        if ctx.cfg.data.protocol != "strict":
            ctx.notes.append(
                f"mask model trained under the {ctx.cfg.data.protocol!r} protocol (PADing uses strict)"
            )
        emb = ctx.seen_embeddings().to(ctx.device)
        lookup = seen_position_lookup(self.split).to(ctx.device)
        cfg = ctx.cfg.train
        loader = ctx.loader(cfg)
        model, weights = self.model, self.cfg.match
        if self.cfg.foundation:
            if self.cfg.mask.backbone != "unet-small":
                raise ValueError(
                    f"model.foundation needs mask.backbone 'unet-small' (the foundation's), "
                    f"got {self.cfg.mask.backbone!r}"
                )
            ctx.start_from_foundation(self.cfg.foundation, self.model.backbone.unet)

        def step(m, batch):
            return _flat_losses(model, batch["image"].to(ctx.device), batch, emb, lookup, weights)

        ctx.train_stage(
            stage="mask-model",
            model=self.model,
            step_fn=step,
            batches=loader,
            cfg=cfg,
            directory=stage,
            meta={"method": "mask-model"},
        )
        return stage

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
        self, images: torch.Tensor, class_embeddings: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(B,3,H,W) uint8 -> class probabilities (B,N,K+1) and mask logits (B,N,H,W) at image size."""
        out = self.model(images)
        probs = self.query_logits(out.embeddings, class_embeddings).float().softmax(-1)
        masks = F.interpolate(
            out.masks.float(), size=images.shape[-2:], mode="bilinear", align_corners=False
        )
        return probs, masks

    def scores(self, images, class_embeddings, seen_mask):
        probs, masks = self.predict(images, class_embeddings)
        return semantic_inference(probs[..., :-1], masks.sigmoid())

    @torch.no_grad()
    def extra_metrics(self, cfg, data, embed, *, progress: bool = True) -> dict:
        """Panoptic PQ/SQ/RQ and instance AP50/recall over ``data.test`` (percent)."""
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
            data.test, cfg.eval.batch_size, rank=dist.rank(), world_size=dist.world_size()
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


# -- stage 2: generators, disentanglement, alignment ------------------------------------------------


@dataclass
class GeneratorConfig:
    """The feature generator of stage 2."""

    kind: str = "primitive"  # primitive (PADing) | gmmn (the plain GMMN of ZS3Net, ablation "G")
    primitives: int = 400  # size of the primitive bank (paper: 400)
    dim: int = 128  # width of the primitive / attention space (paper: 256)
    layers: int = 3  # generator layers (paper: 3)
    heads: int = 4  # attention heads (paper: 8)
    ffn_dim: int = 256  # FFN width (paper: 1024)
    noise_std: float = 1.0  # std of the Gaussian noise added to the class query in each layer
    gmmn_hidden: int = 256  # hidden width of the GMMN ablation
    gmmn_noise_dim: int = 300  # noise dimension of the GMMN ablation (ZS3: 300)


class PrimitiveLayer(nn.Module):
    """Self-attention among primitives, noisy class-query cross-attention to them, FFN."""

    def __init__(self, dim: int, heads: int, ffn_dim: int):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.cross = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.ffn = nn.Sequential(
            nn.Linear(dim, ffn_dim), nn.ReLU(inplace=True), nn.Linear(ffn_dim, dim)
        )
        self.norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(3))

    def forward(
        self, q: torch.Tensor, prims: torch.Tensor, noise_std: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """q (1,n,d) class queries, prims (1,P,d) -> updated (q, prims).

        The n queries sit in one sequence: cross-attention treats each query independently and
        the primitives are projected to keys/values once, not once per query.
        """
        prims = self.norms[0](prims + self.self_attn(prims, prims, prims, need_weights=False)[0])
        q = q + noise_std * torch.randn_like(q)
        q = self.norms[1](q + self.cross(q, prims, prims, need_weights=False)[0])
        return self.norms[2](q + self.ffn(q)), prims


class PrimitiveGenerator(nn.Module):
    """Class semantic embedding (+ noise) -> a synthetic query embedding, through a primitive bank.

    Args:
        cfg: sizes, see :class:`GeneratorConfig`.
        embed_dim: dimension of the class (text) embeddings.
        feature_dim: dimension of the generated query embeddings.
    """

    def __init__(self, cfg: GeneratorConfig, *, embed_dim: int, feature_dim: int):
        super().__init__()
        self.cfg = cfg
        self.proj = nn.Linear(embed_dim, cfg.dim)
        self.primitives = nn.Parameter(torch.randn(cfg.primitives, cfg.dim) * 0.5)
        self.layers = nn.ModuleList(
            PrimitiveLayer(cfg.dim, cfg.heads, cfg.ffn_dim) for _ in range(cfg.layers)
        )
        self.out = nn.Linear(cfg.dim, feature_dim)

    def forward(self, semantic: torch.Tensor) -> torch.Tensor:
        """(n, embed_dim) class embeddings -> (n, feature_dim) unit-norm features (a new noise draw)."""
        q = self.proj(semantic)[None]  # (1, n, d)
        prims = self.primitives[None]
        for layer in self.layers:
            q, prims = layer(q, prims, self.cfg.noise_std)
        return F.normalize(self.out(q[0]), dim=-1)


class GMMNGenerator(nn.Module):
    """The ablation "G": ZS3Net's GMMN (embedding ⊕ noise -> MLP), unit-norm output."""

    def __init__(self, cfg: GeneratorConfig, *, embed_dim: int, feature_dim: int):
        super().__init__()
        self.gmmn = GMMN(
            GMMNConfig(
                embed_dim=embed_dim,
                feature_dim=feature_dim,
                noise_dim=cfg.gmmn_noise_dim,
                hidden=cfg.gmmn_hidden,
            )
        )

    def forward(self, semantic: torch.Tensor) -> torch.Tensor:
        noise = self.gmmn.sample_noise(len(semantic), device=semantic.device)
        return F.normalize(self.gmmn(semantic, noise), dim=-1)


class Disentangler(nn.Module):
    """E_R, E_U (two-layer MLP encoders) and the decoder D of feature disentanglement."""

    def __init__(self, dim: int):
        super().__init__()

        def mlp(cin):
            return nn.Sequential(nn.Linear(cin, dim), nn.LeakyReLU(0.2), nn.Linear(dim, dim))

        self.related, self.unrelated, self.decoder = mlp(dim), mlp(dim), mlp(2 * dim)

    def losses(
        self, x: torch.Tensor, labels: torch.Tensor, class_emb: torch.Tensor, tau: float
    ) -> dict:
        """L_R, L_U, L_recon of features x (n, d) with class positions ``labels`` into class_emb (K, d)."""
        r, u = self.related(x), self.unrelated(x)
        logits = F.normalize(r, dim=-1) @ F.normalize(class_emb, dim=-1).T / tau
        l_r = F.cross_entropy(logits, labels)
        l_u = gaussian_kl(u)
        l_rec = F.l1_loss(self.decoder(torch.cat([r, u], -1)), x)
        return {"l_r": l_r, "l_u": l_u, "l_rec": l_rec, "related": r}


def gaussian_kl(u: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, diag sigma^2) || N(0, I)) / d for the batch statistics of u (n, d)."""
    mu, var = u.mean(0), u.var(0, unbiased=False) + 1e-6
    return 0.5 * (var + mu.pow(2) - 1 - var.log()).mean()


def relation_kl(
    feat_a: torch.Tensor,
    feat_b: torch.Tensor,
    sem_a: torch.Tensor,
    sem_b: torch.Tensor,
    tau: float,
    *,
    same: bool,
) -> torch.Tensor:
    """KL(softmax(cos(s_a, s_b)/tau) || softmax(cos(f_a, f_b)/tau)), mean over the rows of a.

    Args:
        feat_a, feat_b: (A, d), (B, d) class prototypes of the visual features.
        sem_a, sem_b: (A, e), (B, e) the classes' semantic embeddings.
        same: a and b are the same group; the diagonal (a class with itself) is left out.
    """
    fs = F.normalize(feat_a, dim=-1) @ F.normalize(feat_b, dim=-1).T / tau
    ss = F.normalize(sem_a, dim=-1) @ F.normalize(sem_b, dim=-1).T / tau
    if same:
        eye = torch.eye(len(fs), dtype=torch.bool, device=fs.device)
        fs, ss = fs.masked_fill(eye, -1e4), ss.masked_fill(eye, -1e4)
    return F.kl_div(fs.log_softmax(-1), ss.log_softmax(-1), log_target=True, reduction="batchmean")


def alignment_loss(seen_feat, unseen_feat, seen_sem, unseen_sem, tau: float) -> torch.Tensor:
    """Relationship alignment within seen, within unseen and across (seen -> unseen), averaged."""
    parts = [relation_kl(seen_feat, unseen_feat, seen_sem, unseen_sem, tau, same=False)]
    if len(seen_feat) > 1:
        parts.append(relation_kl(seen_feat, seen_feat, seen_sem, seen_sem, tau, same=True))
    if len(unseen_feat) > 1:
        parts.append(relation_kl(unseen_feat, unseen_feat, unseen_sem, unseen_sem, tau, same=True))
    return torch.stack(parts).mean()


def class_means(x: torch.Tensor, n_classes: int, per_class: int) -> torch.Tensor:
    """(C*m, d) class-major samples -> (C, d) class means."""
    return x.view(n_classes, per_class, -1).mean(1)


class RetrainedClassifier(nn.Module):
    """Stage 3: a cosine classifier over the K classes of the split + no-object."""

    def __init__(self, num_classes: int, embed_dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(num_classes + 1, embed_dim))
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        e = F.normalize(embeddings.float(), dim=-1)
        return (
            self.logit_scale.clamp(max=math.log(100.0)).exp()
            * e
            @ F.normalize(self.weight, dim=-1).T
        )


@dataclass
class PADingConfig(MaskProjectionConfig):
    """PADing's stages 2-3 on top of the mask model; the flags select the ablation row."""

    generator: GeneratorConfig = field(default_factory=GeneratorConfig)  # stage-2 generator
    alignment: bool = True  # relationship alignment (A)
    disentangle: bool = True  # feature disentanglement (D)
    lam: float = 0.002  # lambda: weight of disentanglement + alignment next to MMD
    tau: float = 0.1  # temperature of L_R and of the alignment's similarity distributions
    bandwidths: tuple[float, ...] = UNIT_BANDWIDTHS  # MMD kernel variances
    real_per_class: int = 32  # real matched embeddings per seen class per generator step
    fake_per_class: int = 32  # generated embeddings per class per generator step
    generator_train: TrainConfig = field(
        default_factory=lambda: TrainConfig(
            iters=300, batch_size=1, lr=1e-3, scheduler="constant", log_every=25
        )
    )  # stage-2 schedule (batch_size unused: a step takes every class)
    classifier_train: TrainConfig = field(
        default_factory=lambda: TrainConfig(
            iters=300, batch_size=512, lr=5e-3, scheduler="cosine", log_every=25
        )
    )  # stage-3 schedule; batch_size = real query embeddings per step
    fake_unseen_per_step: int = 16  # generated embeddings per unseen class per classifier step
    unseen_weight: float = 1.0  # stage-3 CE weight of unseen classes (reference: class_weight_eco)


class PADing(MaskProjection):
    """Mask model + primitive generator + disentanglement + alignment + retrained classifier."""

    name = "pading"
    Config = PADingConfig
    # The ablation row this class stands for: (generator kind, alignment, disentangle).
    row: tuple[str, bool, bool] = ("primitive", True, True)

    def __init__(self, cfg: PADingConfig, *, split, embed_dim: int):
        super().__init__(cfg, split=split, embed_dim=embed_dim)
        have = (cfg.generator.kind, cfg.alignment, cfg.disentangle)
        if have != self.row:
            raise ValueError(
                f"method {self.name!r} is the ablation row generator.kind={self.row[0]}, "
                f"alignment={self.row[1]}, disentangle={self.row[2]}; its config has {have}"
            )
        gens = {"primitive": PrimitiveGenerator, "gmmn": GMMNGenerator}
        if cfg.generator.kind not in gens:
            raise ValueError(
                f"unknown generator.kind {cfg.generator.kind!r}; valid: {sorted(gens)}"
            )
        self.generator = gens[cfg.generator.kind](
            cfg.generator, embed_dim=embed_dim, feature_dim=embed_dim
        )
        self.disentangler = Disentangler(embed_dim) if cfg.disentangle else None
        self.classifier = RetrainedClassifier(split.num_classes, embed_dim)

    # real query embeddings --------------------------------------------------------------------------
    @torch.no_grad()
    def real_queries(self, ctx: RunContext, mask_stage) -> tuple[torch.Tensor, torch.Tensor]:
        """Unit-norm query embeddings of the protocol's training images and their targets.

        Each image's queries are matched to its (seen) segments as in training; a matched query
        gets its segment's class (full index), the others ``num_classes`` (no-object). Computed
        once per mask model and kept beside it.
        """
        path = mask_stage / "queries.safetensors"
        if path.is_file():
            t = load_file(str(path))
            return t["embeddings"], t["labels"]
        emb_seen = ctx.seen_embeddings().to(ctx.device)
        lookup = seen_position_lookup(self.split).to(ctx.device)
        seen = torch.tensor(self.split.seen, device=ctx.device)
        feats, labels = [], []
        self.model.eval()
        for batch in iterate_eval(ctx.train_set, 64):
            assert_seen_only(batch, self.split, stage="pading-queries")
            out = self.model(batch["image"].to(ctx.device))
            targets = batch_targets(batch, lookup, out.masks.shape[-2:], ctx.device)
            logits = self.model.classify(out.embeddings, emb_seen)
            matches = hungarian_match(logits, out.masks, targets, self.cfg.match)
            for b, (t, (qi, ti)) in enumerate(zip(targets, matches)):
                lab = torch.full(
                    (out.embeddings.shape[1],),
                    self.split.num_classes,
                    dtype=torch.int64,
                    device=ctx.device,
                )
                lab[qi.to(ctx.device)] = seen[t.labels[ti.to(ctx.device)]]
                feats.append(F.normalize(out.embeddings[b].float(), dim=-1))
                labels.append(lab)
        feats_t, labels_t = torch.cat(feats).cpu(), torch.cat(labels).cpu()
        save_file({"embeddings": feats_t.contiguous(), "labels": labels_t}, str(path))
        return feats_t, labels_t

    # stages -----------------------------------------------------------------------------------------
    def fit(self, ctx: RunContext) -> None:
        mask_stage = self.fit_mask_model(ctx)
        feats, labels = self.real_queries(ctx, mask_stage)
        all_emb = ctx.all_embeddings(
            reason="PADing generates unseen query embeddings from unseen class names",
            stage="2-3",
        )
        all_emb = all_emb.to(ctx.device)
        gen_dir, cls_dir = ctx.stage_dir("generator"), ctx.stage_dir("classifier")
        if stage_done(cls_dir):
            load_stage(self, cls_dir)
            return
        self.model.requires_grad_(False)
        if stage_done(gen_dir):
            load_stage(self, gen_dir)
        else:
            self.train_generator(ctx, feats, labels, all_emb, gen_dir)
        self.train_classifier(ctx, feats, labels, all_emb, cls_dir)

    def _gen_params(self):
        params = list(self.generator.parameters())
        if self.disentangler is not None:
            params += list(self.disentangler.parameters())
        return params

    def train_generator(self, ctx, feats, labels, all_emb, directory) -> None:
        cfg = self.cfg
        split = self.split
        seen = [c for c in split.seen if (labels == c).any()]
        unseen = list(split.unseen)
        pools = {c: feats[labels == c] for c in seen}
        seen_t = torch.tensor(seen, device=ctx.device)
        unseen_t = torch.tensor(unseen, device=ctx.device)
        tc = cfg.generator_train
        r, g = cfg.real_per_class, cfg.fake_per_class

        def batches(start, stop):
            for step in range(start, stop):
                rng = torch.Generator().manual_seed(tc.seed * 1_000_003 + step)
                real = torch.stack(
                    [pools[c][torch.randint(len(pools[c]), (r,), generator=rng)] for c in seen]
                )
                yield step, {"real": real.to(ctx.device), "label": seen_t.repeat_interleave(r)}

        def step(model, batch):
            fake_seen = self.generator(all_emb[seen_t].repeat_interleave(g, 0))  # (S*g, D)
            real = batch["real"]  # (S, r, D)
            mmd = torch.stack(
                [
                    mmd_loss(fake_seen[i * g : (i + 1) * g], real[i], cfg.bandwidths, root=True)
                    for i in range(len(seen))
                ]
            ).mean()
            loss, logs = mmd, {"mmd": mmd.detach()}
            if cfg.alignment or cfg.disentangle:
                fake_unseen = self.generator(all_emb[unseen_t].repeat_interleave(g, 0))
                fakes = torch.cat([fake_seen, fake_unseen])
                classes = torch.cat([seen_t, unseen_t]).repeat_interleave(g)
                extra = 0.0
                rel = fakes
                if self.disentangler is not None:
                    d = self.disentangler.losses(fakes, classes, all_emb, cfg.tau)
                    extra = d["l_r"] + d["l_u"] + d["l_rec"]
                    rel = d["related"]
                    logs.update(
                        l_r=d["l_r"].detach(), l_u=d["l_u"].detach(), l_rec=d["l_rec"].detach()
                    )
                if cfg.alignment:
                    protos = class_means(rel, len(seen) + len(unseen), g)
                    align = alignment_loss(
                        protos[: len(seen)],
                        protos[len(seen) :],
                        all_emb[seen_t],
                        all_emb[unseen_t],
                        cfg.tau,
                    )
                    extra = extra + align
                    logs["align"] = align.detach()
                loss = loss + cfg.lam * extra
            return {"loss": loss, **logs}

        ctx.train_stage(
            stage="generator",
            model=self,
            step_fn=step,
            batches=batches,
            cfg=tc,
            directory=directory,
            params=self._gen_params(),
            meta={"method": self.name},
        )

    def train_classifier(self, ctx, feats, labels, all_emb, directory) -> None:
        cfg, split = self.cfg, self.split
        k = split.num_classes
        with torch.no_grad():  # start from the mask model's own classifier (the baseline row)
            self.classifier.weight[:k] = F.normalize(all_emb.float(), dim=-1)
            self.classifier.weight[k] = F.normalize(self.model.classifier.null.float(), dim=0)
            self.classifier.logit_scale.copy_(self.model.classifier.logit_scale)
        self.generator.eval()
        unseen_t = torch.tensor(split.unseen, device=ctx.device)
        tc = cfg.classifier_train
        n = min(tc.batch_size, len(feats))
        weight = torch.ones(k + 1, device=ctx.device)
        weight[unseen_t] = cfg.unseen_weight
        weight[k] = cfg.match.no_object_weight

        def batches(start, stop):
            for step in range(start, stop):
                rng = torch.Generator().manual_seed(tc.seed * 1_000_003 + step)
                idx = torch.randint(len(feats), (n,), generator=rng)
                yield step, {"real": feats[idx].to(ctx.device), "label": labels[idx].to(ctx.device)}

        def step(model, batch):
            with torch.no_grad():
                fake = self.generator(
                    all_emb[unseen_t].repeat_interleave(cfg.fake_unseen_per_step, 0)
                )
            x = torch.cat([batch["real"], fake])
            y = torch.cat([batch["label"], unseen_t.repeat_interleave(cfg.fake_unseen_per_step)])
            ce = F.cross_entropy(self.classifier(x), y, weight=weight)
            return {"loss": ce}

        ctx.train_stage(
            stage="classifier",
            model=self,
            step_fn=step,
            batches=batches,
            cfg=tc,
            directory=directory,
            params=self.classifier.parameters(),
            meta={"method": self.name},
        )

    # inference ----------------------------------------------------------------------------------------
    def query_logits(self, embeddings, class_embeddings):
        k = self.split.num_classes
        if class_embeddings.shape[0] != k:
            raise ValueError(
                f"{self.name}'s retrained classifier covers the {k} classes of its split in split order; "
                f"got a vocabulary of {class_embeddings.shape[0]} classes"
            )
        return self.classifier(embeddings)


class PADingG(PADing):
    """Ablation G: a plain GMMN generator, no alignment, no disentanglement."""

    name = "pading-g"
    row = ("gmmn", False, False)


class PADingP(PADing):
    """Ablation P: the primitive generator alone."""

    name = "pading-p"
    row = ("primitive", False, False)


class PADingPA(PADing):
    """Ablation P+A: primitive generator and relationship alignment."""

    name = "pading-pa"
    row = ("primitive", True, False)
