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
from zeroseg.engine.inference import infer_scores
from zeroseg.runner import Embedder, load_model


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

    @torch.no_grad()
    def scores(self, image, class_names: Sequence[str]) -> torch.Tensor:
        """(K, H, W) scores of one image (a path, a PIL image or an (H, W, 3) uint8 array)."""
        names = validate_class_names(class_names, what="--classes")
        if isinstance(image, (str, Path)):
            image = read_image(Path(image))
        arr = np.asarray(image)
        if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
            raise ValueError(f"expected an (H, W, 3) uint8 RGB image, got {arr.shape} {arr.dtype}")
        x = torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))[None].to(self.device)
        emb = self.embed(list(names)).to(self.device)
        mask = self.seen_mask(names)
        return infer_scores(lambda im: self.method.scores(im, emb, mask), x, self.cfg.eval)[0]

    def predict(self, image, class_names: Sequence[str]) -> np.ndarray:
        """(H, W) uint8 label map: index ``k`` means ``class_names[k]``."""
        return self.scores(image, class_names).argmax(0).to(torch.uint8).cpu().numpy()
