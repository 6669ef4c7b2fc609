"""A frozen module's matmul weights cast to bf16 once, for inference under CPU bf16 autocast.

Autocast casts every fp32 weight a bf16 op reads (linear, conv, matmul) on every call. It keeps
the casts across calls only for leaf tensors that require grad, and only inside one autocast
region, so a frozen encoder (``requires_grad=False``, as ZegCLIP's CLIP) pays the cast of all its
weights on every image: at ViT-B/16's 86 M parameters, 344 MB read and 172 MB written per
forward. :class:`Bf16Weights` keeps bf16 copies of exactly the weights autocast would cast and
runs the module with them (``torch.func.functional_call``: the module itself is not changed).
Autocast rounds to nearest the same way, so outputs are bit-identical to the plain call (tested).

The copies live while their source parameters are unchanged: the version counters move with
every in-place update (optimiser steps, ``load_state_dict``), and a changed one rebuilds them.
They are not module state (never saved). Used only without autograd and under bf16 autocast;
elsewhere the module runs as it is.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["Bf16Weights", "autocast_bf16_inference", "matmul_weight_names"]

# Parameters of these modules feed autocast's bf16 ops (linear, convolution), biases included.
_MATMUL_MODULES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def autocast_bf16_inference(device: torch.device | str = "cpu") -> bool:
    """True when ops now run under bf16 autocast on ``device`` with autograd off."""
    kind = torch.device(device).type
    return (
        not torch.is_grad_enabled()
        and torch.is_autocast_enabled(kind)
        and torch.get_autocast_dtype(kind) == torch.bfloat16
    )


def matmul_weight_names(module: nn.Module, extra_leaves: tuple[str, ...] = ()) -> list[str]:
    """Names of ``module``'s fp32 parameters that autocast casts to bf16 when they are used:
    those of linear and convolution layers, and those whose last name part is in
    ``extra_leaves`` (parameters read by ``F.linear`` or ``@`` outside such layers, e.g. a fused
    ``in_proj_weight``)."""
    names = []
    for prefix, sub in module.named_modules():
        if isinstance(sub, _MATMUL_MODULES):
            names += [
                f"{prefix}.{n}" if prefix else n for n, _ in sub.named_parameters(recurse=False)
            ]
    params = dict(module.named_parameters())
    for leaf in extra_leaves:
        found = [n for n in params if n.rsplit(".", 1)[-1] == leaf]
        if not found:
            raise ValueError(
                f"Bf16Weights: {type(module).__name__} has no parameter named {leaf!r}"
            )
        names += found
    return [n for n in dict.fromkeys(names) if params[n].dtype == torch.float32]


class _Method(nn.Module):
    """Calls ``module.<method>`` as its forward, so ``functional_call`` can reach any method."""

    def __init__(self, module: nn.Module, method: str) -> None:
        super().__init__()
        self.module, self.method = module, method

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return getattr(self.module, self.method)(*args, **kwargs)


class Bf16Weights:
    """bf16 copies of a frozen module's matmul weights, kept across inference calls.

    Args:
        extra_leaves: last name parts of parameters read by bf16 ops outside linear and
            convolution layers (``matmul_weight_names``).
    """

    def __init__(self, extra_leaves: tuple[str, ...] = ()) -> None:
        self.extra_leaves = extra_leaves
        self._key: tuple[Any, ...] | None = None
        self._weights: dict[str, Tensor] = {}
        self.builds = 0  # for tests and benchmarks

    def clear(self) -> None:
        self._key, self._weights = None, {}

    def weights(self, module: nn.Module) -> dict[str, Tensor]:
        """``{"module.<name>": bf16 copy}`` of the matmul weights, rebuilt when one changed."""
        params = dict(module.named_parameters())
        names = matmul_weight_names(module, self.extra_leaves)
        key = (id(module), tuple((n, params[n]._version, params[n].data_ptr()) for n in names))
        if key != self._key:
            self.clear()  # the old copies go before the new ones are made
            with torch.no_grad():
                self._weights = {f"module.{n}": params[n].to(torch.bfloat16) for n in names}
            self._key = key
            self.builds += 1
        return self._weights

    def call(self, module: nn.Module, method: str, *args: Any, **kwargs: Any) -> Any:
        """``module.<method>(*args, **kwargs)``, with the bf16 copies under bf16 autocast
        inference (:func:`autocast_bf16_inference`), else as it is."""
        device = next(module.parameters()).device
        if not autocast_bf16_inference(device):
            return getattr(module, method)(*args, **kwargs)
        return torch.func.functional_call(
            _Method(module, method), self.weights(module), args, kwargs, strict=False
        )
