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

Stage 2, the primitive generator (Sec. 3.2; :mod:`zeroseg.generators.primitive`): a bank of P
learnable primitives (400) is the memory of a 3-layer transformer decoder whose query is the
class's projected semantic embedding; Gaussian noise is added after each cross-attention, as
released. It is trained with the multi-kernel MMD (Eq. 3; :mod:`zeroseg.generators.mmd`)
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
0.1) and generated embeddings of the unseen classes (weight ``unseen_weight``, 5 as released).
Both stages' logged loss curves are checked for a plateau (:mod:`zeroseg.engine.plateau`).

Ablations (the paper's Table 4): ``pading-g`` (a plain GMMN generator, as ZS3Net), ``pading-p``
(primitive generator), ``pading-pa`` (+ alignment), ``pading`` (+ alignment + disentanglement).

Protocol: stages 1-3 see only the strict training set; the generator and classifier use unseen
class *names* (their embeddings), the published setting, recorded in the report.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from zeroseg.data.labels import seen_position_lookup
from zeroseg.data.loader import iterate_eval
from zeroseg.data.protocol import assert_seen_only
from zeroseg.engine.plateau import Plateau, find_plateau, read_curve, write_plateau
from zeroseg.engine.trainer import TrainConfig
from zeroseg.generators.disentangle import Disentangler, alignment_loss, class_means
from zeroseg.generators.mmd import mmd_loss
from zeroseg.generators.primitive import GeneratorConfig, GMMNGenerator, PrimitiveGenerator
from zeroseg.methods.base import GENERATIVE_STAGES, RunContext, StagePlan
from zeroseg.methods.mask_model import MaskModelMethod, MaskProjectionConfig
from zeroseg.models.matching import batch_targets, hungarian_match

# Kernel variances for MMD between unit-norm query embeddings (squared distances lie in [0, 4]);
# ZS3's (2 ... 80) suit unnormalised 256-d features and would make every kernel flat here.
UNIT_BANDWIDTHS: tuple[float, ...] = (0.02, 0.05, 0.1, 0.2, 0.5, 1.0)


# -- stage 2: generators, disentanglement, alignment ------------------------------------------------


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
    unseen_weight: float = 5.0  # stage-3 CE weight of unseen classes (release: CLASS_ECO 5.0)
    plateau_window: int = (
        4  # logged points per mean of the plateau criterion (zeroseg.engine.plateau)
    )
    plateau_tol: float = 0.02  # relative fall that still counts as falling


class PADing(MaskModelMethod):
    """Mask model + primitive generator + disentanglement + alignment + retrained classifier."""

    name = "pading"
    Config = PADingConfig
    # The ablation row this class stands for: (generator kind, alignment, disentangle).
    row: tuple[str, bool, bool] = ("primitive", True, True)
    stages = (*MaskModelMethod.stages, *GENERATIVE_STAGES)
    tiny = (
        *MaskModelMethod.tiny,
        "model.generator.primitives=16",
        "model.generator.dim=32",
        "model.generator.heads=2",
        "model.generator.ffn_dim=64",
        "model.classifier_train.batch_size=8",
    )

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
        meta = {"method": self.name}
        plans = {"generator": self.generator_plan, "classifier": self.classifier_plan}
        # A finished classifier stage holds the generator too: stage 2 is then not needed (its
        # logged curve is still reported, so a reused row's notes equal a trained one's).
        if ctx.stage_finished("classifier"):
            del plans["generator"]
            self.report_plateau(ctx, "generator", ctx.stage_dir("generator"))
        else:
            self.model.requires_grad_(False)
        for stage, plan in plans.items():
            where = ctx.run_stage(
                stage,
                model=self,
                prepare=lambda plan=plan: plan(ctx, feats, labels, all_emb),
                meta=meta,
            )
            self.report_plateau(ctx, stage, where)

    def report_plateau(self, ctx: RunContext, stage: str, where) -> Plateau | None:
        """Whether a stage's logged loss plateaued (:mod:`zeroseg.engine.plateau`): written to
        the stage's ``plateau.json`` and, with the curve's ends, to the report's notes."""
        log = where / "log.csv"
        if not log.is_file():  # trained on another rank or before logs existed: nothing to read
            return None
        steps, losses = read_curve(log)
        p = find_plateau(
            steps, losses, window=self.cfg.plateau_window, rel_tol=self.cfg.plateau_tol
        )
        write_plateau(where / "plateau.json", p, steps, losses)
        state = (
            f"plateaued at step {p.step}"
            if p.reached
            else f"still falling at step {p.final_step} (raise {stage}_train.iters)"
        )
        ctx.notes.append(
            f"{stage} loss {p.start_loss:.4g} -> {p.final_loss:.4g} over {p.final_step} steps, "
            f"{state} (criterion: the mean of {p.window} logged points falls by < "
            f"{p.rel_tol:.0%} afterwards)"
        )
        return p

    def _gen_params(self):
        params = list(self.generator.parameters())
        if self.disentangler is not None:
            params += list(self.disentangler.parameters())
        return params

    def generator_plan(self, ctx, feats, labels, all_emb) -> StagePlan:
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
            # one batched MMD over the seen classes instead of a loop over them: the demo's
            # generator and classifier trained to bit-identical weights both ways
            per_class = fake_seen.view(len(seen), g, -1)  # (S, g, D), classes in seen order
            mmd = mmd_loss(per_class, real, cfg.bandwidths, root=True).mean()
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

        return StagePlan(step, batches, tc, params=self._gen_params())

    def classifier_plan(self, ctx, feats, labels, all_emb) -> StagePlan:
        cfg, split = self.cfg, self.split
        k = split.num_classes
        with torch.no_grad():  # start from the mask model's own classifier (the baseline row)
            self.classifier.weight[:k] = F.normalize(
                self.model.class_vectors(all_emb).float(), dim=-1
            )
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

        return StagePlan(step, batches, tc, params=self.classifier.parameters())

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
