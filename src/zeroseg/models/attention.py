"""Scaled dot-product attention that stays fast under bf16 autocast on the CPU.

Under CPU autocast every projection runs in bf16, so ``F.scaled_dot_product_attention`` gets
bf16 queries, keys and values. Its CPU flash kernel is slow in bf16, above all backwards:
forward + backward under bf16 autocast of 16 x 4 heads x 1024 queries over 16 keys (AlignZeg's
feature refiner) took 32.3 ms with bf16 inputs and 13.1 ms computed in fp32 (the casts
included); 9.8 against 2.4 ms for 65 tokens attending to 65, 18.2 against 15.4 ms for 16 queries
over 1024 keys (the mask decoder); ``benchmarks/bench_attention.py``, one thread, medians of 15,
session 34. :func:`attention` therefore computes the attention itself in fp32 on the CPU and returns the
input dtype, while the projections around it keep running in bf16. Elsewhere (and for fp32
inputs) it is ``F.scaled_dot_product_attention`` unchanged.

:class:`MultiheadAttention` is ``nn.MultiheadAttention`` (same parameters, same state-dict keys,
``batch_first=True``) whose forward routes through :func:`attention`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["MultiheadAttention", "attention"]

_UPCAST = (torch.bfloat16, torch.float16)  # computed in fp32 on the CPU


def attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    attn_mask: Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
) -> Tensor:
    """``softmax(q k^T / sqrt(d) + mask) v``, as ``F.scaled_dot_product_attention``.

    Args:
        q: (B, heads, N, d) queries.
        k: (B, heads, L, d) keys.
        v: (B, heads, L, d_v) values.
        attn_mask: broadcastable to (B, heads, N, L); bool (True = attended) or additive float.
        dropout_p: dropout on the attention weights.
        is_causal: query n attends to keys <= n only.

    Returns:
        (B, heads, N, d_v) in ``q``'s dtype.
    """
    if q.device.type == "cpu" and q.dtype in _UPCAST:
        dtype = q.dtype
        if attn_mask is not None and attn_mask.dtype != torch.bool:
            attn_mask = attn_mask.float()
        with torch.autocast("cpu", enabled=False):  # autocast would cast SDPA back to bf16
            out = F.scaled_dot_product_attention(
                q.float(),
                k.float(),
                v.float(),
                attn_mask=attn_mask,
                dropout_p=dropout_p,
                is_causal=is_causal,
            )
        return out.to(dtype)
    return F.scaled_dot_product_attention(
        q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal
    )


class MultiheadAttention(nn.MultiheadAttention):
    """``nn.MultiheadAttention(dim, heads, batch_first=True, ...)`` computed by :func:`attention`.

    The parameters are the parent's (``in_proj_weight`` or ``q/k/v_proj_weight`` when ``kdim`` or
    ``vdim`` differ, ``in_proj_bias``, ``out_proj``), so checkpoints load either way. Supported:
    ``attn_mask`` as the parent takes it (bool, True = not attended, or additive float; shape
    (N, L) or (B * heads, N, L)) with ``need_weights=False``; ``add_bias_kv``, ``add_zero_attn``
    and ``key_padding_mask`` are not.
    """

    def __init__(self, embed_dim: int, num_heads: int, **kwargs) -> None:
        if not kwargs.pop("batch_first", True):
            raise ValueError("MultiheadAttention: only batch_first=True is supported")
        for name in ("add_bias_kv", "add_zero_attn"):
            if kwargs.get(name):
                raise ValueError(f"MultiheadAttention: {name}=True is not supported")
        super().__init__(embed_dim, num_heads, batch_first=True, **kwargs)

    def forward(  # type: ignore[override]
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        key_padding_mask: Tensor | None = None,
        need_weights: bool = False,
        attn_mask: Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[Tensor, None]:
        """query (B, N, E), key (B, L, kdim), value (B, L, vdim) -> ((B, N, E), None)."""
        if need_weights or key_padding_mask is not None:
            raise ValueError(
                "MultiheadAttention: need_weights and key_padding_mask are not supported; "
                "call it with need_weights=False"
            )
        b, n, e = query.shape
        length, h = key.shape[1], self.num_heads
        if self._qkv_same_embed_dim:
            w_q, w_k, w_v = self.in_proj_weight.chunk(3)
        else:
            w_q, w_k, w_v = self.q_proj_weight, self.k_proj_weight, self.v_proj_weight
        b_q, b_k, b_v = (None,) * 3 if self.in_proj_bias is None else self.in_proj_bias.chunk(3)
        q = F.linear(query, w_q, b_q).view(b, n, h, self.head_dim).transpose(1, 2)  # (B,h,N,d)
        k = F.linear(key, w_k, b_k).view(b, length, h, self.head_dim).transpose(1, 2)
        v = F.linear(value, w_v, b_v).view(b, length, h, self.head_dim).transpose(1, 2)
        if attn_mask is not None:
            if attn_mask.dim() == 3:
                attn_mask = attn_mask.view(b, h, n, length)
            if attn_mask.dtype == torch.bool:
                attn_mask = ~attn_mask  # the parent's True = blocked; SDPA's True = attended
        out = attention(
            q,
            k,
            v,
            attn_mask=attn_mask,
            dropout_p=self.dropout if self.training else 0.0,
            is_causal=is_causal and attn_mask is None,
        )
        out = out.transpose(1, 2).reshape(b, n, e)  # (B, N, E)
        return self.out_proj(out), None
