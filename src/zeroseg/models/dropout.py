"""Dropout whose random mask is cheap on the CPU.

``torch.dropout`` draws its mask with ``bernoulli_``, which on the CPU costs more than drawing one
uniform 32-bit integer per element (``benchmarks/bench_dropout.py`` times the two side by side).
ZegCLIP drops out a whole (batch, heads, queries, tokens) attention map per layer: with these
masks (and one token normalisation fewer) its training step ran 1.12x faster
(``zeroseg bench --train --methods zegclip``, docs/benchmarks.md).
:class:`Dropout` draws one integer ``r`` uniform on [0, 2^31) per element and keeps the element
when ``r >= round(p * 2^31)``, so an element is dropped with probability ``p`` to within 2^-31,
kept ones are scaled by ``1 / (1 - p)`` as inverted dropout, and the random numbers come from
torch's generator (``torch.manual_seed`` makes a run repeat exactly). On other devices it is
``torch.nn.functional.dropout``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["Dropout", "dropout"]

_RANGE = 2**31  # int32 ``random_()`` is uniform on [0, 2^31)


def dropout(x: Tensor, p: float, training: bool = True) -> Tensor:
    """Inverted dropout of ``x``: each element zeroed with probability ``p``, the others scaled
    by ``1 / (1 - p)``; the identity when not ``training`` or ``p == 0``."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout probability must be in [0, 1], got {p}")
    if not training or p == 0.0:
        return x
    if x.device.type != "cpu" or p == 1.0:
        return F.dropout(x, p, training=True)
    draws = torch.empty(x.shape, dtype=torch.int32).random_()
    keep = (draws >= round(p * _RANGE)).to(x.dtype)
    return x * keep.mul_(1.0 / (1.0 - p))


class Dropout(nn.Dropout):
    """``nn.Dropout`` (same ``p``, same state dict: none) with :func:`dropout`'s CPU mask."""

    def forward(self, x: Tensor) -> Tensor:
        if self.inplace:
            raise ValueError("zeroseg.models.dropout.Dropout has no in-place mode")
        return dropout(x, self.p, self.training)
