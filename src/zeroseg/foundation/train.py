"""Pretraining the ShapeWorld foundation on image-level text only.

Images come from the web world's ``caption`` split (:mod:`zeroseg.foundation.web`); the only
supervision is each image's caption. Two objectives, both read off the caption and never off a
mask:

- **Caption multi-label** (the names a caption mentions, as open-vocabulary models extract nouns
  from web captions): every pixel embedding is scored against every web class name's MiniLM
  embedding, ``L_k(x) = s * cos(z(x), t_k)``. Two pooled image-level terms supervise which names
  the caption contains: (i) sigmoid BCE on log-mean-exp pooling, ``LME_k = log mean_x exp L_k(x)
  + b`` (a soft max over pixels, as in weakly supervised segmentation); (ii) BCE on the max over
  pixels of the pixel-wise softmax over names, ``q_k = max_x softmax_k L(x)``, which makes every
  pixel choose among the names its caption mentions: the dense argmax the zero-shot methods use.
- **Caption contrastive** (CLIP, Radford et al. 2021, Fig. 3): the symmetric InfoNCE between the
  mean-pooled image embedding (through a linear map) and the caption's MiniLM embedding.

``--exclude WORLD`` pretrains the ablation whose captions never name WORLD's unseen classes: those
names leave the vocabulary (neither positive nor negative) and the captions, while the images that
show those objects stay in, unnamed (as web photos show things nobody captioned).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from zeroseg.data.loader import StepLoader, StepSampler, hflip
from zeroseg.data.shapeworld import ShapeWorldDataset
from zeroseg.data.shapeworld.render import make_caption
from zeroseg.data.shapeworld.spec import WorldSpec
from zeroseg.engine.rundir import identity_view
from zeroseg.engine.trainer import TrainConfig
from zeroseg.foundation.model import Foundation, FoundationModelConfig


def _schedule() -> TrainConfig:
    return TrainConfig(
        iters=2000,
        batch_size=64,
        lr=3e-3,
        weight_decay=1e-4,
        scheduler="cosine",
        warmup_iters=100,
        amp="bf16",
        log_every=50,
        ckpt_every=250,
        keep_ckpts=1,
        seed=0,
    )


@dataclass
class FoundationConfig:
    """The foundation's architecture, data and pretraining schedule."""

    model: FoundationModelConfig = field(default_factory=FoundationModelConfig)
    web: str | None = None  # the web world file (None: the shipped web.yaml)
    caption_images: int | None = None  # override the web file's image count (tests)
    text_encoder: str = "minilm"  # the frozen text tower
    templates: str = "shapeworld"  # prompt templates of the class names (as every preset)
    scales: tuple[int, ...] = (48, 56, 64, 72, 80, 88, 96)  # input side, drawn per batch
    lme_weight: float = 1.0  # sigmoid BCE on log-mean-exp pooled name scores
    softmax_weight: float = 1.0  # BCE on the max-pooled pixel-wise softmax over names
    contrastive_weight: float = 0.5  # CLIP's image-caption InfoNCE
    pool: int = 2  # name scores on pixel embeddings average-pooled by this (stride 4): 4x cheaper
    exclude: str | None = (
        None  # a world (shipped name or spec file) whose unseen names no caption says
    )
    train: TrainConfig = field(default_factory=_schedule)

    def key(self) -> str:
        """Hash of every field that decides the weights (``zeroseg.engine.rundir.identity_view``:
        logging and checkpoint cadence do not, nor options at their neutral default)."""
        blob = json.dumps(identity_view(dataclasses.asdict(self)), sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


class _WebImages(torch.utils.data.Dataset):
    """The caption split's images only (the rows of the caption tables are the indices)."""

    def __init__(self, dataset: ShapeWorldDataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> dict:
        images = self.dataset.data.images
        return {"image": torch.from_numpy(np.ascontiguousarray(images[i].transpose(2, 0, 1)))}


def caption_tables(
    web: WorldSpec, segments: np.ndarray, n_images: int, excluded: set[int]
) -> tuple[torch.Tensor, list[str]]:
    """What each caption says, as a name-presence table and as text.

    Args:
        segments: (M, 4) rows ``(image, segment id, class, is_thing)`` of the caption split.
        excluded: class indices the captions must not mention.

    Returns:
        (N, K) float presence of every web name in each caption (excluded columns all zero),
        and the N captions with the excluded names left out.
    """
    k = web.num_classes
    presence = torch.zeros(n_images, k)
    presence[
        torch.from_numpy(segments[:, 0].astype(np.int64)),
        torch.from_numpy(segments[:, 2].astype(np.int64)),
    ] = 1.0
    counts: list[dict[int, int]] = [{} for _ in range(n_images)]
    stuff: list[set[int]] = [set() for _ in range(n_images)]
    for img, _seg, cls, is_thing in segments.tolist():
        if cls in excluded:
            continue
        if is_thing:
            counts[img][cls] = counts[img].get(cls, 0) + 1
        else:
            stuff[img].add(cls)
    captions = [make_caption(web, counts[i], sorted(stuff[i])) for i in range(n_images)]
    if excluded:
        presence[:, sorted(excluded)] = 0.0
    return presence, captions


def foundation_losses(
    model: Foundation,
    images: torch.Tensor,
    presence: torch.Tensor,
    names: torch.Tensor,
    captions: torch.Tensor,
    cfg: FoundationConfig,
) -> dict[str, torch.Tensor]:
    """The pretraining objective of one batch.

    Args:
        images: (B, 3, H, W) uint8 or float 0-255.
        presence: (B, K) 1 where the caption names class k.
        names: (K, D) embeddings of the vocabulary (excluded names dropped by the caller).
        captions: (B, D) unit caption embeddings.
    """
    pixels = model.pixel_embeddings(images)  # (B, D, h, w)
    pooled = F.normalize(F.avg_pool2d(pixels, cfg.pool), dim=1) if cfg.pool > 1 else pixels
    logits = model.pixel_logits(pooled, names).flatten(2).float()  # (B, K, N)
    out: dict[str, torch.Tensor] = {}
    total = torch.zeros((), device=images.device)
    if cfg.lme_weight:
        lme = torch.logsumexp(logits, 2) - math.log(logits.shape[2]) + model.presence_bias
        bce = F.binary_cross_entropy_with_logits(lme, presence, reduction="none").sum(1).mean()
        out["lme"] = bce.detach()
        total = total + cfg.lme_weight * bce
    if cfg.softmax_weight:
        q = logits.softmax(1).amax(2).clamp(1e-6, 1 - 1e-6)  # (B, K)
        bce = F.binary_cross_entropy(q, presence, reduction="none").sum(1).mean()
        out["softmax"] = bce.detach()
        total = total + cfg.softmax_weight * bce
    if cfg.contrastive_weight:
        img = model.global_embedding(pixels)
        scale = model.global_log_scale.clamp(max=math.log(100.0)).exp()
        sim = scale * img @ captions.t()
        target = torch.arange(len(img), device=img.device)
        nce = (F.cross_entropy(sim, target) + F.cross_entropy(sim.t(), target)) / 2
        out["contrastive"] = nce.detach()
        total = total + cfg.contrastive_weight * nce
    out["loss"] = total
    return out


def excluded_classes(web: WorldSpec, exclude: WorldSpec | None) -> set[int]:
    """Web class indices named like an unseen class of ``exclude``."""
    if exclude is None:
        return set()
    unseen = {u.lower() for u in exclude.unseen}
    return {i for i, n in enumerate(web.class_names) if n.lower() in unseen}


def pretrain_batches(loader: StepLoader, scales: tuple[int, ...], seed: int):
    """``loader`` with one input side per step, drawn from ``scales`` (a function of the step)."""

    def batches(start: int, stop: int):
        for step, batch in loader(start, stop):
            rng = np.random.default_rng([seed, 7, step])
            batch["size"] = int(scales[int(rng.integers(len(scales)))])
            yield step, batch

    return batches


def resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """(B, 3, H, W) uint8 -> float 0-255 at ``size`` x ``size`` (bilinear), or unchanged."""
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    return F.interpolate(images.float(), size=(size, size), mode="bilinear", align_corners=False)


def make_loader(
    web: WorldSpec, cfg: FoundationConfig, *, progress: bool
) -> tuple[StepLoader, ShapeWorldDataset]:
    data = ShapeWorldDataset(web, "caption", progress=progress)
    loader = StepLoader(
        _WebImages(data),
        StepSampler(len(data), min(cfg.train.batch_size, len(data)), cfg.train.seed),
        transform=hflip,
    )
    return loader, data


def train_foundation(
    cfg: FoundationConfig,
    directory,
    *,
    progress: bool = True,
    device: torch.device | None = None,
) -> Foundation:
    """Pretrains (or resumes, or loads) the foundation of ``cfg`` in ``directory``."""
    from zeroseg.data.shapeworld import load_spec
    from zeroseg.engine.trainer import load_stage, stage_done, train_stage
    from zeroseg.foundation.web import web_spec, world_path
    from zeroseg.pretrain import caption_embeddings
    from zeroseg.text.cache import cached_encode
    from zeroseg.text.encoders import build_text_encoder

    device = device or torch.device("cpu")
    model = Foundation(cfg.model)
    if stage_done(directory):
        load_stage(model, directory)
        return model.eval()
    web = web_spec(cfg.web, caption_images=cfg.caption_images)
    excluded = excluded_classes(web, load_spec(world_path(cfg.exclude)) if cfg.exclude else None)
    loader, data = make_loader(web, cfg, progress=progress)
    presence, captions = caption_tables(web, data.data.segments, len(data), excluded)
    keep = [i for i in range(web.num_classes) if i not in excluded]
    names = cached_encode(
        lambda: build_text_encoder(cfg.text_encoder),
        [web.class_names[i] for i in keep],
        cfg.templates,
        name=cfg.text_encoder,
    ).to(device)
    presence = presence[:, keep].to(device)
    caption_emb, rows = caption_embeddings(captions, cfg.text_encoder)
    caption_emb, rows = caption_emb.to(device), torch.tensor(rows, device=device)

    def step(m, batch):
        m = getattr(m, "module", m)  # DDP
        idx = torch.as_tensor(batch["index"], device=device)
        images = resize(batch["image"].to(device), batch["size"])
        return foundation_losses(m, images, presence[idx], names, caption_emb[rows[idx]], cfg)

    train_stage(
        stage="foundation",
        model=model,
        step_fn=step,
        batches=pretrain_batches(loader, cfg.scales, cfg.train.seed),
        cfg=cfg.train,
        directory=directory,
        device=device,
        progress=progress,
        meta={
            "web": web.name,
            "web_key": web.content_key(),
            "excluded": [web.class_names[i] for i in sorted(excluded)],
            "foundation": dataclasses.asdict(cfg),
        },
    )
    return model.eval()


def foundation_report(
    model: Foundation,
    spec: WorldSpec,
    *,
    text_encoder: str = "minilm",
    templates: str = "shapeworld",
    **kwargs,
) -> dict:
    """:func:`zeroseg.pretrain.dense_encoder_report` of a foundation on benchmark world ``spec``."""
    from zeroseg.pretrain import dense_encoder_report
    from zeroseg.text.cache import cached_encode
    from zeroseg.text.encoders import build_text_encoder

    model = model.eval()
    emb = cached_encode(
        lambda: build_text_encoder(text_encoder),
        list(spec.class_names),
        templates,
        name=text_encoder,
    )

    @torch.no_grad()
    def features(images: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            pix = model.pixel_embeddings(images)
        return F.normalize(pix.float(), dim=1).permute(0, 2, 3, 1)

    @torch.no_grad()
    def encode(images: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return model.encode_image(images).float()

    with torch.no_grad():
        classes = model.class_side(emb)
    return dense_encoder_report(
        features, encode, spec, classes, text_encoder=text_encoder, **kwargs
    )
