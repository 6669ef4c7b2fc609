"""Segmenting your own images with any vocabulary given at call time.

    >>> p = Predictor.from_checkpoint("runs/demo/runs/projection-.../model.safetensors")
    >>> labels = p.predict("photo.png", ["red circle", "blue square", "striped gray ground"])

Class names the model was trained on count as *seen* (for calibration and seen-score reduction);
every other name is unseen and is placed only through its text embedding.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from zeroseg.data.classes import validate_class_names
from zeroseg.data.io import read_image
from zeroseg.engine.inference import (
    TILE,
    TILE_MARGIN,
    WHOLE_MAX,
    infer_scores,
    inference_autocast,
    tiled_labels,
)
from zeroseg.runner import Embedder, load_model
from zeroseg.viz import label_dtype


class Predictor:
    """A trained method plus its text encoder, ready for new images and vocabularies."""

    def __init__(self, method, cfg, split, *, device: str = "cpu", embed: Embedder | None = None):
        self.method, self.cfg, self.split = method, cfg, split
        self.device = torch.device(device)
        # Several predictors (``zeroseg serve``) can share one embedder, hence one text encoder.
        self.embed = embed if embed is not None else Embedder(cfg.text)

    @classmethod
    def from_checkpoint(
        cls, path: str | Path, *, device: str = "cpu", embed: Embedder | None = None
    ) -> Predictor:
        method, cfg, split, _ = load_model(path, device=device)
        return cls(method, cfg, split, device=device, embed=embed)

    def seen_mask(self, names: Sequence[str]) -> torch.Tensor:
        trained = {n.lower() for n in self.split.seen_names}
        return torch.tensor(
            [n.lower() in trained for n in names], dtype=torch.bool, device=self.device
        )

    def _prepare(self, image, class_names: Sequence[str]):
        names = validate_class_names(class_names, what="--classes")
        if isinstance(image, (str, Path)):
            image = read_image(Path(image))
        arr = np.asarray(image)
        if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
            raise ValueError(f"expected an (H, W, 3) uint8 RGB image, got {arr.shape} {arr.dtype}")
        # A copy: arrays from PIL are read-only, which torch.from_numpy warns about.
        x = torch.from_numpy(arr.transpose(2, 0, 1).copy())[None].to(self.device)
        emb = self.embed(list(names)).to(self.device)
        mask = self.seen_mask(names)

        def fn(im: torch.Tensor) -> torch.Tensor:
            return infer_scores(lambda w: self.method.scores(w, emb, mask), im, self.cfg.eval)

        return x, emb, mask, fn

    @torch.no_grad()
    def scores(self, image, class_names: Sequence[str]) -> torch.Tensor:
        """(K, H, W) scores of one image (a path, a PIL image or an (H, W, 3) uint8 array).

        The whole image at once: memory grows with K x H x W (see :meth:`predict` for large
        images).
        """
        x, _, _, fn = self._prepare(image, class_names)
        return fn(x)[0]

    @torch.no_grad()
    def predict(self, image, class_names: Sequence[str]) -> np.ndarray:
        """(H, W) label map: index ``k`` means ``class_names[k]``.

        uint8 for up to 256 names, uint16 for more (ADE20K-847-size vocabularies), so no label
        ever wraps around. Images with a side above ``WHOLE_MAX`` pixels are labelled tile by tile
        (:func:`zeroseg.engine.inference.tiled_labels`), so memory stays bounded: a 4000 x 4000
        image needs well under 2 GiB.
        """
        dtype = label_dtype(len(class_names))
        x, emb, mask, fn = self._prepare(image, class_names)
        if max(x.shape[-2:]) <= WHOLE_MAX:
            if self.cfg.eval.mode == "whole":  # the method's own argmax (no K x H x W scores)
                with inference_autocast(self.cfg.eval, x.device):
                    labels = self.method.labels(x, emb, mask)
                return labels[0].cpu().numpy().astype(dtype)
            return fn(x)[0].argmax(0).cpu().numpy().astype(dtype)
        return tiled_labels(fn, x, tile=TILE, margin=TILE_MARGIN, dtype=dtype)
