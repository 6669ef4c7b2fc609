"""The mask-projection baseline: the shared mask model (:mod:`zeroseg.methods.mask_model`)
trained on seen classes only, its queries classified against any vocabulary's text embeddings.

It is PADing's and AlignZeg's like-for-like baseline (same mask model, data and budget).
"""

from __future__ import annotations

from zeroseg.methods.mask_model import MaskModelMethod


class MaskProjection(MaskModelMethod):
    """The mask model alone: stage 1 on seen classes, text-similarity classification at test."""

    name = "mask-projection"
