"""Whole-image and sliding-window inference, bounded-memory tiling, and the evaluation loop.

Sliding windows (as mmsegmentation's ``slide`` mode, used by ZegCLIP at crop 512 / stride 426):
windows of ``crop`` pixels every ``stride`` pixels, the last one flush with the border, scores
averaged where windows overlap. Images smaller than a crop are padded and the padding cropped off.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from zeroseg.data.loader import iterate_eval, size_groups
from zeroseg.engine import distributed as dist

ScoreFn = Callable[[torch.Tensor], torch.Tensor]  # (B,3,h,w) uint8 -> (B,K,h,w) scores

# Images with a side above WHOLE_MAX are labelled tile by tile (predict, and evaluation without a
# score-level refinement), so memory is bounded by a tile, not by the image: cells of TILE pixels,
# each scored with TILE_MARGIN pixels of context around it.
WHOLE_MAX = 1024
TILE = 512
TILE_MARGIN = 64


def scored_whole(dataset) -> bool:
    """Whether every image of ``dataset`` is known to be scored whole in evaluation (its
    ``max_image_side``, where the dataset states one, is at most :data:`WHOLE_MAX`)."""
    side = getattr(dataset, "max_image_side", None)
    return side is not None and side <= WHOLE_MAX


@dataclass
class InferenceConfig:
    """How a model is applied to an image at test time."""

    mode: str = "whole"  # whole | slide
    crop: int = 512  # slide window size (pixels)
    stride: int = 426  # slide step (pixels)
    batch_size: int = 16  # images per forward pass in evaluation
    # Convolution weights in NHWC at test time (see ``inference_layout``); the saved weights keep
    # the usual layout either way.
    channels_last: bool = False
    # none | bf16: the forward under bf16 autocast (``inference_autocast``), scores returned in
    # fp32. Faster where the device multiplies bf16 natively (ZegCLIP ViT-B/16 at 512 px:
    # benchmarks/bench_zegclip.py); emulated bf16 is slower than fp32.
    amp: str = "none"


def inference_layout(model: torch.nn.Module, cfg: InferenceConfig) -> torch.nn.Module:
    """``model`` with its 4-d weights in the layout ``cfg`` evaluates in (in place).

    NHWC convolutions are faster in fp32 on the CPU, and fp32 is what evaluation runs in: the
    foundation U-Net's forward on 50 64-pixel images took 382 ms against 542 ms at one thread
    (``benchmarks/bench_layouts.py``, medians of three runs, session 34). Kernels of the two
    layouts sum in other orders, so scores differ in their last bits; a row evaluates the same
    whether trained or loaded, since both go through here (``runner.train`` after saving,
    ``runner.load_model``).
    """
    fmt = torch.channels_last if cfg.channels_last else torch.contiguous_format
    return model.to(memory_format=fmt)


def _starts(length: int, crop: int, stride: int) -> list[int]:
    if length <= crop:
        return [0]
    starts = list(range(0, length - crop, stride))
    return starts + [length - crop]


def slide_scores(fn: ScoreFn, images: torch.Tensor, crop: int, stride: int) -> torch.Tensor:
    """Scores of (B, 3, H, W) images by overlapping ``crop``-sized windows.

    Returns:
        (B, K, H, W) scores averaged over the windows covering each pixel.
    """
    if stride <= 0 or crop <= 0 or stride > crop:
        raise ValueError(
            f"slide inference needs 0 < stride <= crop, got crop={crop} stride={stride}"
        )
    b, _, h, w = images.shape
    ph, pw = max(h, crop), max(w, crop)
    if (ph, pw) != (h, w):
        images = F.pad(images, (0, pw - w, 0, ph - h))
    total = count = None
    for y in _starts(ph, crop, stride):
        for x in _starts(pw, crop, stride):
            s = fn(images[:, :, y : y + crop, x : x + crop]).float()
            if total is None:
                total = s.new_zeros(b, s.shape[1], ph, pw)
                count = s.new_zeros(1, 1, ph, pw)
            total[:, :, y : y + crop, x : x + crop] += s
            count[:, :, y : y + crop, x : x + crop] += 1
    return (total / count)[:, :, :h, :w]


def tiled_labels(
    fn: ScoreFn,
    image: torch.Tensor,
    *,
    tile: int = 512,
    margin: int = 64,
    dtype: np.dtype = np.dtype(np.int64),
) -> np.ndarray:
    """Label map of one large image with memory bounded by the tile, not the image.

    The image is cut into ``tile``-sized cells; each is scored with ``margin`` pixels of context
    on every side (clipped at the border) and only its own cell's argmax is kept. Peak memory is
    one window's scores (K x (tile + 2 margin)^2 floats) plus the label map, whatever the size
    of the image; the margin keeps predictions at cell seams from lacking context.

    Args:
        fn: maps (1, 3, h, w) uint8 to (1, K, h, w) scores.
        image: (1, 3, H, W) uint8.
        dtype: the label map's type (e.g. uint8 / uint16 from :func:`zeroseg.viz.label_dtype`).

    Returns:
        (H, W) labels.
    """
    if tile <= 0 or margin < 0:
        raise ValueError(f"tiling needs tile > 0 and margin >= 0, got {tile} and {margin}")
    _, _, h, w = image.shape
    out = np.empty((h, w), dtype)
    for y0 in range(0, h, tile):
        for x0 in range(0, w, tile):
            y1, x1 = min(y0 + tile, h), min(x0 + tile, w)
            ya, yb = max(0, y0 - margin), min(h, y1 + margin)
            xa, xb = max(0, x0 - margin), min(w, x1 + margin)
            scores = fn(image[:, :, ya:yb, xa:xb])[0]
            cell = scores[:, y0 - ya : y1 - ya, x0 - xa : x1 - xa].argmax(0)
            out[y0:y1, x0:x1] = cell.cpu().numpy()
            del scores
    return out


def inference_autocast(cfg: InferenceConfig, device: torch.device):
    """The autocast context of ``cfg.amp`` on ``device`` (the trainer's, a no-op for ``none``)."""
    from zeroseg.engine.trainer import autocast

    if cfg.amp not in ("none", "bf16"):
        raise ValueError(f"unknown eval.amp {cfg.amp!r}; valid: none, bf16")
    return autocast(cfg.amp, device)


def infer_scores(fn: ScoreFn, images: torch.Tensor, cfg: InferenceConfig) -> torch.Tensor:
    if cfg.mode not in ("whole", "slide"):
        raise ValueError(f"unknown inference mode {cfg.mode!r}; valid: whole, slide")
    with inference_autocast(cfg, images.device):
        if cfg.mode == "whole":
            scores = fn(images)
        else:
            scores = slide_scores(fn, images, cfg.crop, cfg.stride)
    return scores if cfg.amp == "none" else scores.float()  # .float(): a no-op on fp32


@torch.no_grad()
def evaluate_semantic(
    fn: ScoreFn,
    dataset,
    evaluator,
    cfg: InferenceConfig,
    *,
    progress: bool = True,
    desc: str = "eval",
    post: Callable[[torch.Tensor, dict], torch.Tensor] | None = None,
    keep: int = 0,
    extras: tuple = (),
) -> tuple[dict, float, list[torch.Tensor]]:
    """Runs a score function over a labelled dataset into a semantic evaluator.

    Args:
        fn: maps (B,3,H,W) uint8 images to (B,K,H,W) scores.
        post: optional refinement ``post(scores, batch) -> labels (B,H,W)`` (e.g. spectral fusion).
        keep: how many predictions (in dataset order) to return for figures.
        extras: more evaluators with ``reset/process(pred, label)/evaluate() -> dict`` (and
            ``state()/merge()`` for distributed runs), e.g. the boundary F-score.

    Returns:
        (metrics, seconds per image, kept predictions).
    """
    evaluator.reset()
    for ex in extras:
        ex.reset()
    kept: list[torch.Tensor] = []
    n, seconds = 0, 0.0
    bar = tqdm(total=len(dataset), desc=desc, disable=not progress, leave=False)
    for batch in iterate_eval(
        dataset, cfg.batch_size, rank=dist.rank(), world_size=dist.world_size()
    ):
        # Images of different sizes (real datasets) arrive as lists: run them one at a time.
        for part in size_groups(batch):
            t = time.perf_counter()
            if post is None and max(part["image"].shape[-2:]) > WHOLE_MAX:
                pred = torch.stack(
                    [
                        torch.from_numpy(
                            tiled_labels(
                                lambda w: infer_scores(fn, w, cfg),
                                image[None],
                                tile=TILE,
                                margin=TILE_MARGIN,
                            )
                        )
                        for image in part["image"]
                    ]
                )
            else:
                scores = infer_scores(fn, part["image"], cfg)
                pred = post(scores, part) if post is not None else scores.argmax(1)
            seconds += time.perf_counter() - t
            evaluator.process(pred, part["label"])
            for ex in extras:
                ex.process(pred, part["label"])
            n += len(pred)
            if len(kept) < keep:
                kept.extend(pred[: keep - len(kept)])
            bar.update(len(pred))
    bar.close()
    if dist.is_dist():
        dist.all_reduce_sum(evaluator.conf)
        for ex in extras:
            ex.merge({k: dist.all_reduce_sum(v.clone()) - v for k, v in ex.state().items()})
    metrics = evaluator.evaluate()
    for ex in extras:
        metrics.update(ex.evaluate())
    return metrics, seconds / max(1, n), kept
