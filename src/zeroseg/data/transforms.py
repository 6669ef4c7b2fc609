"""Training augmentations of the segmentation papers, as reproducible ``f(sample, rng)`` functions.

ZS3Net, ZegCLIP, PADing and AlignZeg all train with mmseg/detectron2's pipeline: a random resize
with a ratio in [0.5, 2.0] of a base scale (mmseg ``Resize(img_scale=(2048, 512),
ratio_range=(0.5, 2.0))``), a random crop (mmseg ``RandomCrop(cat_max_ratio=0.75)``: re-draw a crop
up to 10 times while one class covers >= 75 % of its labelled pixels), a horizontal flip with
probability 0.5, mmseg's ``PhotoMetricDistortion`` (brightness, contrast, saturation, hue), and a
pad to the crop size (image 0, label 255). Each is a callable ``f(sample, rng) -> sample`` whose
randomness comes only from ``rng``, a numpy Generator that
:class:`zeroseg.data.loader.StepLoader` seeds from ``(seed, step, index)``; so an augmented batch
is a pure function of the step, and resuming replays it exactly.

Samples are dicts with ``image`` (3, H, W) uint8, ``label`` (H, W) int64 and optionally
``panoptic`` (H, W) int64 segment ids and ``segments`` (n, 3) int64 rows ``(id, class, is_thing)``.
Geometric transforms move image, label and panoptic map together; segments left without a pixel
after a crop are dropped. Labels and segment ids are never interpolated (nearest sampling).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from zeroseg.data.loader import hflip

Transform = Callable[[dict, np.random.Generator], dict]
MAP_KEYS = ("label", "panoptic")  # per-pixel integer maps that move with the image
PAD_VALUES = {"image": 0, "label": 255, "panoptic": 0}


def compose(*transforms: Transform) -> Transform:
    """Applies transforms in order, all drawing from the same generator."""

    def apply(sample: dict, rng: np.random.Generator) -> dict:
        for t in transforms:
            sample = t(sample, rng)
        return sample

    return apply


def _drop_empty_segments(sample: dict) -> dict:
    if "segments" in sample and "panoptic" in sample and len(sample["segments"]):
        present = torch.isin(sample["segments"][:, 0], torch.unique(sample["panoptic"]))
        sample["segments"] = sample["segments"][present]
    return sample


def resize(sample: dict, size: tuple[int, int]) -> dict:
    """Resizes a sample to ``size = (H, W)``: bilinear image, nearest label and panoptic maps."""
    h, w = sample["image"].shape[-2:]
    if (h, w) == tuple(size):
        return sample
    out = dict(sample)
    img = sample["image"][None].float()
    out["image"] = (
        F.interpolate(img, size=size, mode="bilinear", align_corners=False)[0]
        .round()
        .clamp(0, 255)
        .to(torch.uint8)
    )
    # nearest sampling by index, exact for any integer value (segment ids can exceed float
    # precision); the source pixel is the one under the output pixel's centre, as in the bilinear
    # image resize, so label and image stay aligned to half a pixel
    rows = ((2 * torch.arange(size[0]) + 1) * h // (2 * size[0])).clamp(max=h - 1)
    cols = ((2 * torch.arange(size[1]) + 1) * w // (2 * size[1])).clamp(max=w - 1)
    for key in MAP_KEYS:
        if key in sample:
            out[key] = sample[key][rows][:, cols]
    return _drop_empty_segments(out)


@dataclass
class RandomResize:
    """mmseg ``Resize(img_scale, ratio_range, keep_ratio=True)``.

    A ratio ``r`` is drawn uniformly from ``ratio_range``; the image is rescaled, keeping its
    aspect, to the largest size whose long side is at most ``r * base_size[0]`` and short side at
    most ``r * base_size[1]``.
    """

    base_size: tuple[int, int] = (2048, 512)  # (long side, short side) bound at ratio 1
    ratio_range: tuple[float, float] = (0.5, 2.0)  # random ratio range

    def __call__(self, sample: dict, rng: np.random.Generator) -> dict:
        r = rng.uniform(*self.ratio_range)
        long_max, short_max = int(self.base_size[0] * r), int(self.base_size[1] * r)
        h, w = sample["image"].shape[-2:]
        scale = min(long_max / max(h, w), short_max / min(h, w))
        return resize(sample, (max(1, int(h * scale + 0.5)), max(1, int(w * scale + 0.5))))


@dataclass
class RandomCrop:
    """mmseg ``RandomCrop``: a crop of at most ``size``; re-drawn while one class dominates it.

    With ``cat_max_ratio < 1`` a crop is accepted only when it holds at least two classes and the
    most frequent covers less than ``cat_max_ratio`` of its non-ignored pixels; after ``tries``
    draws the last one is kept. Ignore pixels (255) are not counted, so under the zero-shot
    protocols the choice never looks at where unseen pixels are.
    """

    size: tuple[int, int]  # (H, W) crop size
    cat_max_ratio: float = 1.0  # 1.0 disables the class-balance test; the papers use 0.75
    ignore_index: int = 255  # label value not counted by the balance test
    tries: int = 10  # crops drawn before giving up on the balance test

    def _draw(self, h: int, w: int, rng: np.random.Generator) -> tuple[int, int, int, int]:
        ch, cw = min(self.size[0], h), min(self.size[1], w)
        top = int(rng.integers(0, h - ch + 1))
        left = int(rng.integers(0, w - cw + 1))
        return top, left, ch, cw

    def __call__(self, sample: dict, rng: np.random.Generator) -> dict:
        h, w = sample["image"].shape[-2:]
        box = self._draw(h, w, rng)
        if self.cat_max_ratio < 1.0 and "label" in sample:
            for _ in range(self.tries - 1):
                top, left, ch, cw = box
                crop = sample["label"][top : top + ch, left : left + cw]
                _, counts = torch.unique(crop[crop != self.ignore_index], return_counts=True)
                if (
                    len(counts) > 1
                    and counts.max().item() / counts.sum().item() < self.cat_max_ratio
                ):
                    break
                box = self._draw(h, w, rng)
        top, left, ch, cw = box
        out = dict(sample)
        for key in ("image", *MAP_KEYS):
            if key in sample:
                out[key] = sample[key][..., top : top + ch, left : left + cw]
        return _drop_empty_segments(out)


@dataclass
class Pad:
    """Pads bottom/right up to ``size`` (image 0, label 255, panoptic 0 = void), as mmseg ``Pad``."""

    size: tuple[int, int]  # (H, W) minimum size

    def __call__(self, sample: dict, rng: np.random.Generator | None = None) -> dict:
        h, w = sample["image"].shape[-2:]
        ph, pw = max(self.size[0] - h, 0), max(self.size[1] - w, 0)
        if not ph and not pw:
            return sample
        out = dict(sample)
        for key, value in PAD_VALUES.items():
            if key in sample:
                out[key] = F.pad(sample[key], (0, pw, 0, ph), value=value)
        return out


def random_flip(sample: dict, rng: np.random.Generator) -> dict:
    """Horizontal flip with probability 0.5 (the loader's :func:`~zeroseg.data.loader.hflip`)."""
    return hflip(sample, rng)


@dataclass
class PhotometricDistortion:
    """mmseg ``PhotoMetricDistortion``; each step applies with probability 0.5, in mmseg's order.

    Brightness ``+U(-delta, delta)``; contrast ``x U(range)`` (before or after the HSV steps, at
    random); saturation ``x U(range)`` in HSV; hue shifted by ``U{-delta, delta}`` in OpenCV's
    0-180 hue units. Each step rounds and clips to uint8, as mmcv does.
    """

    brightness_delta: int = 32  # max brightness offset, in 0-255 units
    contrast_range: tuple[float, float] = (0.5, 1.5)  # contrast factor range
    saturation_range: tuple[float, float] = (0.5, 1.5)  # saturation factor range
    hue_delta: int = 18  # max hue shift, in OpenCV units (180 = full circle)

    @staticmethod
    def _affine(img: np.ndarray, alpha: float = 1.0, beta: float = 0.0) -> np.ndarray:
        return np.clip(img.astype(np.float32) * alpha + beta, 0, 255).round().astype(np.uint8)

    def __call__(self, sample: dict, rng: np.random.Generator) -> dict:
        img = sample["image"].permute(1, 2, 0).numpy()  # (H, W, 3) uint8
        if rng.integers(2):
            img = self._affine(img, beta=rng.uniform(-self.brightness_delta, self.brightness_delta))
        contrast_first = bool(rng.integers(2))
        if contrast_first and rng.integers(2):
            img = self._affine(img, alpha=rng.uniform(*self.contrast_range))
        do_sat, do_hue = bool(rng.integers(2)), bool(rng.integers(2))
        if do_sat or do_hue:
            hsv = np.asarray(Image.fromarray(img, "RGB").convert("HSV")).copy()
            if do_sat:
                hsv[..., 1] = self._affine(hsv[..., 1], alpha=rng.uniform(*self.saturation_range))
            if do_hue:
                shift = int(rng.integers(-self.hue_delta, self.hue_delta))
                # PIL's hue spans 0-255 where OpenCV's spans 0-180
                hsv[..., 0] = (hsv[..., 0].astype(np.int64) + round(shift * 256 / 180)) % 256
            img = np.asarray(Image.fromarray(hsv, "HSV").convert("RGB"))
        if not contrast_first and rng.integers(2):
            img = self._affine(img, alpha=rng.uniform(*self.contrast_range))
        out = dict(sample)
        out["image"] = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))
        return out


def train_transform(
    crop_size: int | tuple[int, int],
    scale_range: tuple[float, float] = (0.5, 2.0),
    *,
    base_size: tuple[int, int] | None = None,
    cat_max_ratio: float = 0.75,
    photometric: bool = True,
    ignore_index: int = 255,
) -> Transform:
    """The papers' training pipeline: resize, crop, flip, photometric distortion, pad.

    Args:
        crop_size: training crop (an int for a square crop, or (H, W)).
        scale_range: random resize ratio range.
        base_size: (long, short) side bound at ratio 1; default ``(4 * crop, crop)``, which is
            mmseg's ``img_scale=(2048, 512)`` for the 512 crops of VOC / COCO-Stuff / Context.
        cat_max_ratio: the crop's class-balance threshold (1.0 disables it).
        photometric: whether to apply :class:`PhotometricDistortion`.
        ignore_index: label value for padding and ignored by the balance test.
    """
    size = (crop_size, crop_size) if isinstance(crop_size, int) else tuple(crop_size)
    base = base_size or (4 * max(size), min(size))
    steps: list[Transform] = [
        RandomResize(base, tuple(scale_range)),
        RandomCrop(size, cat_max_ratio, ignore_index),
        random_flip,
    ]
    if photometric:
        steps.append(PhotometricDistortion())
    steps.append(Pad(size))
    return compose(*steps)
