"""The text-encoder interface: ``encode(names, templates) -> (K, D)`` unit vectors.

Kept apart from :mod:`zeroseg.text.encoders` (the factory) so that encoders in their own modules
(``clip_text``, ``wordvec``) subclass it without importing the factory that imports them.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from zeroseg.data.classes import validate_class_names
from zeroseg.text.prompts import apply_templates


class TextEncoder:
    """Base class: subclasses implement :meth:`_embed` for a flat list of sentences."""

    name: str = "base"
    dim: int = 0

    def _embed(self, sentences: list[str]) -> torch.Tensor:  # (N, D)
        raise NotImplementedError

    def encode(self, names: Sequence[str], templates: Sequence[str] | None = None) -> torch.Tensor:
        """Embeds class names averaged over templates.

        Args:
            names: K class names.
            templates: format strings with one ``{}``; None means the bare names.

        Returns:
            (K, D) float32 unit vectors.
        """
        names = validate_class_names(names)
        sentences, k, t = apply_templates(names, templates)
        emb = F.normalize(self._embed(sentences).float(), dim=-1).view(k, t, -1).mean(1)
        return F.normalize(emb, dim=-1)
