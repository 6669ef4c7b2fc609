"""Stage 0 for ShapeWorld: CLIP-style contrastive pretraining of a small ViT image encoder.

Radford et al., "Learning Transferable Visual Models From Natural Language Supervision" (ICML
2021), Fig. 3: image embeddings I_e and text embeddings T_e of a batch of N pairs give the logits
``exp(t) * cos(I_e^i, T_e^j)``, and the loss is the symmetric InfoNCE

    L = (CE(logits, diag) + CE(logits^T, diag)) / 2,   t a learned log inverse temperature.

As for real CLIP, the supervision is image-level text only (a caption naming every class in the
image, unseen classes included), never masks, and the images are the world's separate
``caption`` split, disjoint from the segmentation training and validation images (as CLIP's web
data is disjoint from COCO). Unlike CLIP the text tower is frozen: it is all-MiniLM-L6-v2, the
encoder that gives ShapeWorld's class embeddings, so the image encoder learns to land in the
space the zero-shot methods match against. The result, a ``clip.VisionTransformer``, is cached
under ``cache_dir()/pretrain/<world>-<content key>-<config hash>`` and reused by every method
that starts from it (:func:`load_or_train`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zeroseg.data.loader import StepLoader, StepSampler, hflip
from zeroseg.data.shapeworld import ShapeWorldDataset
from zeroseg.engine.rundir import without_neutral
from zeroseg.engine.trainer import TrainConfig, load_stage, stage_done, train_stage
from zeroseg.models.backbones.clip import CLIP_MEAN, CLIP_STD, CLIPVisionConfig, VisionTransformer
from zeroseg.paths import cache_dir
from zeroseg.text.cache import cached_encode

__all__ = [
    "CaptionContrastive",
    "PretrainConfig",
    "caption_embeddings",
    "dense_encoder_report",
    "encoder_report",
    "load_or_train",
    "pretrain_dir",
    "retrieval_top_k",
]


def _pretrain_schedule() -> TrainConfig:
    return TrainConfig(
        iters=250,
        batch_size=128,
        lr=2e-3,
        weight_decay=0.05,
        scheduler="cosine",
        warmup_iters=25,
        amp="bf16",
        log_every=50,
        seed=0,
    )


@dataclass
class PretrainConfig:
    """The stage-0 encoder and its contrastive schedule."""

    image_size: int = 64  # side of the stored position grid (other input sizes are resampled)
    patch_size: int = 8  # patch side: 64 px -> an 8 x 8 token grid
    width: int = 128  # token dimension
    layers: int = 4  # transformer blocks
    heads: int = 4  # attention heads
    output_dim: int = 384  # joint space = the MiniLM text dimension
    text_encoder: str = "minilm"  # the frozen text tower (a zeroseg text encoder name)
    logit_scale_init: float = math.log(1 / 0.07)  # CLIP's initial log inverse temperature
    logit_scale_max: float = math.log(100.0)  # CLIP clips the temperature at 100
    train: TrainConfig = field(default_factory=_pretrain_schedule)  # the contrastive schedule

    def vision_config(self) -> CLIPVisionConfig:
        return CLIPVisionConfig(
            image_size=self.image_size,
            patch_size=self.patch_size,
            width=self.width,
            layers=self.layers,
            heads=self.heads,
            output_dim=self.output_dim,
        )

    def key(self) -> str:
        """Hash of every field (architecture and schedule decide the weights; options at their
        neutral default are left out, ``zeroseg.engine.rundir``). Unlike the foundation's key it
        keeps the cadence fields, as it always has: dropping them would orphan cached stage-0
        encoders for no change in their weights."""
        blob = json.dumps(without_neutral(dataclasses.asdict(self)), sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:10]


class CaptionContrastive(nn.Module):
    """The image tower plus CLIP's learned temperature; the text side is precomputed and frozen.

    Args:
        visual: the image encoder; its ``output_dim`` must equal the text dimension.
        logit_scale_init: initial log inverse temperature.
        logit_scale_max: upper clip of the log inverse temperature.
    """

    def __init__(
        self, *, visual: VisionTransformer, logit_scale_init: float, logit_scale_max: float
    ):
        super().__init__()
        self.visual = visual
        self.logit_scale = nn.Parameter(torch.tensor(float(logit_scale_init)))
        self.logit_scale_max = logit_scale_max
        self.register_buffer(
            "mean", torch.tensor(CLIP_MEAN).view(1, 3, 1, 1) * 255, persistent=False
        )
        self.register_buffer("std", torch.tensor(CLIP_STD).view(1, 3, 1, 1) * 255, persistent=False)

    def normalise(self, images: Tensor) -> Tensor:
        """(B, 3, H, W) uint8 -> the encoder's input (CLIP's mean and std)."""
        return (images.float() - self.mean) / self.std

    def encode_image(self, images: Tensor) -> Tensor:
        """(B, 3, H, W) uint8 -> (B, D) unit image embeddings."""
        return F.normalize(self.visual(self.normalise(images)).float(), dim=-1)

    def loss(self, images: Tensor, text: Tensor) -> dict[str, Tensor]:
        """Symmetric InfoNCE of a batch of (image, caption embedding) pairs.

        Args:
            images: (B, 3, H, W) uint8.
            text: (B, D) unit caption embeddings (frozen).
        """
        img = self.encode_image(images)
        scale = self.logit_scale.clamp(max=self.logit_scale_max).exp()
        logits = scale * img @ text.t()  # (B, B)
        target = torch.arange(len(img), device=img.device)
        loss = (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target)) / 2
        return {"loss": loss, "temperature": 1 / scale.detach()}


class _CaptionPairs(torch.utils.data.Dataset):
    """Caption-split images with the row of their caption's embedding (no labels, no masks)."""

    def __init__(self, dataset: ShapeWorldDataset, caption_rows: list[int]):
        self.dataset, self.rows = dataset, caption_rows

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> dict:
        image = self.dataset[i]["image"]
        return {"image": image, "caption_row": torch.tensor(self.rows[i]), "id": f"caption/{i}"}


def caption_embeddings(captions: list[str], encoder: str = "minilm") -> tuple[Tensor, list[int]]:
    """Frozen embeddings of the distinct captions, cached on disk.

    Returns:
        (U, D) unit embeddings of the U distinct captions (in first-seen order) and, per
        input caption, its row in that table.
    """
    unique = list(dict.fromkeys(captions))
    row = {c: i for i, c in enumerate(unique)}

    def build():
        from zeroseg.text.encoders import build_text_encoder

        return build_text_encoder(encoder)

    emb = cached_encode(build, unique, None, name=f"{encoder}-captions")
    return F.normalize(emb.float(), dim=-1), [row[c] for c in captions]


def pretrain_dir(spec, cfg: PretrainConfig) -> Path:
    """Where the stage-0 encoder of world ``spec`` and config ``cfg`` is cached."""
    return cache_dir() / "pretrain" / f"{spec.name}-{spec.content_key()}-{cfg.key()}"


def _build(cfg: PretrainConfig) -> CaptionContrastive:
    return CaptionContrastive(
        visual=VisionTransformer(cfg.vision_config()),
        logit_scale_init=cfg.logit_scale_init,
        logit_scale_max=cfg.logit_scale_max,
    )


def train_contrastive(
    spec,
    cfg: PretrainConfig,
    directory: Path,
    *,
    progress: bool = True,
    device: torch.device | None = None,
) -> CaptionContrastive:
    """Trains (or resumes, or loads) the contrastive model of ``spec``'s caption split into ``directory``."""
    device = device or torch.device("cpu")
    model = _build(cfg)
    if stage_done(directory):
        load_stage(model, directory)
        return model.eval()
    data = ShapeWorldDataset(spec, "caption", progress=progress)  # the caption split only
    text, rows = caption_embeddings(list(data.data.captions), cfg.text_encoder)
    if text.shape[1] != cfg.output_dim:
        raise ValueError(
            f"PretrainConfig.output_dim is {cfg.output_dim} but the {cfg.text_encoder!r} caption "
            f"embeddings are {text.shape[1]}-d; they must match"
        )
    text = text.to(device)
    pairs = _CaptionPairs(data, rows)
    batch = min(cfg.train.batch_size, len(pairs))
    train_cfg = dataclasses.replace(cfg.train, batch_size=batch)
    loader = StepLoader(pairs, StepSampler(len(pairs), batch, train_cfg.seed), transform=hflip)

    def step(m, b):
        return m.loss(b["image"].to(device), text[b["caption_row"].to(device)])

    train_stage(
        stage="pretrain",
        model=model,
        step_fn=step,
        batches=loader,
        cfg=train_cfg,
        directory=directory,
        device=device,
        progress=progress,
        meta={
            "world": spec.name,
            "world_key": spec.content_key(),
            "pretrain": dataclasses.asdict(cfg),
        },
    )
    return model.eval()


def load_or_train(
    spec, cfg: PretrainConfig | None = None, *, progress: bool = True
) -> VisionTransformer:
    """The stage-0 image encoder of ShapeWorld ``spec``: trained once, then read from the cache.

    Returns:
        A frozen ``VisionTransformer`` in eval mode (inputs normalised with ``CLIP_MEAN/STD``).
    """
    cfg = cfg or PretrainConfig()
    model = train_contrastive(spec, cfg, pretrain_dir(spec, cfg), progress=progress)
    visual = model.visual.cpu().eval()
    for p in visual.parameters():
        p.requires_grad_(False)
    return visual


@torch.no_grad()
def retrieval_top_k(
    model: CaptionContrastive, images: Tensor, caption_rows: Tensor, text: Tensor, k: int = 5
) -> float:
    """Image -> caption retrieval: fraction of images whose caption is among the top ``k``.

    Args:
        images: (N, 3, H, W) uint8.
        caption_rows: (N,) the row of each image's caption in ``text``.
        text: (U, D) unit embeddings of the distinct captions (the retrieval gallery).
    """
    model.eval()
    img = torch.cat([model.encode_image(images[i : i + 256]) for i in range(0, len(images), 256)])
    top = (img @ text.t()).topk(min(k, len(text)), dim=1).indices  # (N, k)
    return float((top == caption_rows[:, None]).any(1).float().mean())


def _split_tensors(dataset: ShapeWorldDataset, count: int) -> tuple[Tensor, Tensor]:
    """The first ``count`` images (N, 3, H, W) uint8 and semantic labels (N, H, W) of a split."""
    items = [dataset[i] for i in range(count)]
    return torch.stack([it["image"] for it in items]), torch.stack([it["label"] for it in items])


# The linear probe's schedule, chosen on the default world's val images with the shipped
# foundation (seen-class probe mIoU; training loss on a tenth of the fit pixels;
# `python benchmarks/probe_schedule.py` reproduces these):
#   300 steps, lr 1e-2 constant (the earlier probe): 55.4 (loss 0.56)
#   1000 steps, lr 1e-2 cosine: 61.8 (0.43);  3000, 1e-2: 68.3 (0.29);  3000, 3e-2: 70.7 (0.24)
#   L-BFGS, 200k pixels, L2 1e-5: 58.6 (0.40)
# The figure rises as long as the fit does: the probe measures linear separability, so it is
# trained as far as the budget allows (about 4 minutes at one thread on a busy machine).
PROBE_STEPS = 3000
PROBE_LR = 3e-2


def encoder_report(
    visual: VisionTransformer,
    spec,
    class_embeddings: Tensor,
    *,
    train_images: int = 2000,
    val_images: int = 500,
    probe_steps: int = PROBE_STEPS,
    seed: int = 0,
    text_encoder: str = "minilm",
) -> dict:
    """:func:`dense_encoder_report` of a frozen stage-0 ViT (its projected patch tokens)."""
    model = CaptionContrastive(visual=visual, logit_scale_init=0.0, logit_scale_max=0.0)

    def features(images: Tensor) -> Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model.visual.forward_features(model.normalise(images))
        return F.normalize(out["patch_proj"].float(), dim=-1)

    return dense_encoder_report(
        features,
        model.encode_image,
        spec,
        F.normalize(class_embeddings.float(), dim=-1),
        train_images=train_images,
        val_images=val_images,
        probe_steps=probe_steps,
        seed=seed,
        text_encoder=text_encoder,
    )


@torch.no_grad()
def _dense_features(features, images: Tensor, labels: Tensor, batch_size: int = 100):
    """``features`` over ``images`` in batches, with the labels nearest-sampled to its grid."""
    from zeroseg.data.labels import downsample_labels

    feats, small = [], []
    for start in range(0, len(images), batch_size):
        out = features(images[start : start + batch_size])  # (b, h, w, D)
        feats.append(out)
        small.append(downsample_labels(labels[start : start + batch_size], tuple(out.shape[1:3])))
    return torch.cat(feats), torch.cat(small)


def dense_encoder_report(
    features,
    encode_image,
    spec,
    classes: Tensor,
    *,
    train_images: int = 2000,
    val_images: int = 500,
    probe_steps: int = PROBE_STEPS,
    seed: int = 0,
    text_encoder: str = "minilm",
    retrieval_k: tuple[int, ...] = (1, 5),
    eval_split: str = "test",
) -> dict:
    """How well a frozen dense encoder serves dense prediction (a diagnostic; no method uses it).

    - ``retrieval_top{k}``: image -> caption retrieval on the validation images (the global task
      pretraining trains for, on images it never saw);
    - ``zero_shot``: every feature labelled by its nearest class vector, all class names, no
      training (mIoU S / U / hIoU at the feature grid);
    - ``linear_probe``: a linear classifier over the *seen* classes trained on the frozen
      features of ``train_images`` training images (seen-class pixels only: unseen labels are
      never read), scored on the seen-class pixels of the evaluation images (mIoU over seen).
      It is trained close to convergence (Adam, cosine from ``PROBE_LR``, ``PROBE_STEPS``
      batches of 8192 pixels): unit features need large weights, and the earlier 300-step
      probe was under-fitted (see ``PROBE_STEPS``).

    Every figure is measured on ``val_images`` images of ``eval_split`` (``test``: reported figures;
    ``val``: for choices, such as the probe's schedule).

    Args:
        features: ``f(images (N, 3, H, W) uint8) -> (N, h, w, D)`` unit features.
        encode_image: ``f(images) -> (N, D)`` unit image embeddings in the caption space.
        classes: (K, D) unit class vectors of ``spec.class_names`` in the features' space.
    """
    from zeroseg.metrics.semantic import confusion_matrix, iou_per_class, summarize

    split = spec.class_split()
    seen, unseen, k = list(split.seen), list(split.unseen), spec.num_classes
    train = ShapeWorldDataset(spec, "train", progress=False)
    val = ShapeWorldDataset(spec, eval_split, progress=False)
    train_images, val_images = min(train_images, len(train)), min(val_images, len(val))
    images, labels = _split_tensors(val, val_images)
    vx, vy = _dense_features(features, images, labels)

    text, rows = caption_embeddings([val[i]["caption"] for i in range(val_images)], text_encoder)
    with torch.no_grad():
        img = torch.cat(
            [encode_image(images[i : i + 256]).float() for i in range(0, len(images), 256)]
        )
    order = (img @ text.t()).argsort(dim=1, descending=True)
    hit = order == torch.tensor(rows)[:, None]
    retrieval = {
        f"retrieval_top{r}": 100 * float(hit[:, :r].any(1).float().mean()) for r in retrieval_k
    }

    with torch.no_grad():
        zero_shot = (vx @ classes.float().t()).argmax(-1)
    zs = summarize(confusion_matrix(zero_shot, vy, k), seen, unseen)

    tx, ty = _dense_features(features, *_split_tensors(train, train_images))
    position = torch.full((256,), -1, dtype=torch.long)
    position[torch.tensor(seen)] = torch.arange(len(seen))
    tx, ty = tx.flatten(0, 2), position[ty.flatten().clamp(0, 255)]
    keep = ty >= 0  # seen-class pixels only
    tx, ty = tx[keep], ty[keep]
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng():  # a seeded probe, the caller's random state untouched
        torch.manual_seed(seed)
        probe = nn.Linear(tx.shape[1], len(seen))
    opt = torch.optim.Adam(probe.parameters(), lr=PROBE_LR)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, probe_steps))
    with torch.enable_grad():
        for _ in range(probe_steps):
            idx = torch.randint(0, len(tx), (min(8192, len(tx)),), generator=gen)
            loss = F.cross_entropy(probe(tx[idx]), ty[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    vpos = position[vy.clamp(0, 255)]
    seen_pixels = vpos >= 0
    with torch.no_grad():
        pred = probe(vx[seen_pixels]).argmax(-1)
    iou = iou_per_class(confusion_matrix(pred, vpos[seen_pixels], len(seen)))
    return {
        **retrieval,
        "zero_shot": {key: zs[key] for key in ("seen_miou", "unseen_miou", "hiou")},
        "linear_probe_seen_mIoU": 100 * float(np.nanmean(iou)),
        "train_images": train_images,
        "eval_images": val_images,
        "eval_split": eval_split,
        "probe": {"steps": probe_steps, "lr": PROBE_LR, "final_batch_loss": float(loss.detach())},
    }
