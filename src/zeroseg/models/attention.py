"""Scaled dot-product attention that stays fast under bf16 autocast on the CPU.

Under CPU autocast every projection runs in bf16, so ``F.scaled_dot_product_attention`` gets
bf16 queries, keys and values. Its CPU flash kernel is slow in bf16, above all backwards:
forward + backward under bf16 autocast of 16 x 4 heads x 1024 queries over 16 keys (AlignZeg's
feature refiner) took 32.3 ms with bf16 inputs and 13.1 ms computed in fp32 (the casts
included); 9.8 against 2.4 ms for 65 tokens attending to 65, 18.2 against 15.4 ms for 16 queries
over 1024 keys (the mask decoder); ``benchmarks/bench_attention.py``, one thread, medians of 15,
session 34. :func:`attention` therefore computes the attention itself in fp32 on the CPU and
returns the input dtype, while the projections around it keep running in bf16. Elsewhere (and for fp32
inputs) it is ``F.scaled_dot_product_attention`` unchanged.

Long sequences at inference (bf16 inputs, no autograd, no mask, dropout or causality, at least
``CHUNKED_MIN_TOKENS`` queries and keys: a ViT-B/16 at 512 px has 1025) take a third path: the
logits of a block of queries as one bf16 matmul, their softmax, and the weighted sum into the
block's slice of the output, block after block, so each block's logits stay in cache. ViT-B/16's
12 heads of 64 over 1035 tokens took 14.8-16.3 ms against 24.3-25.3 ms for SDPA in fp32 (21.6-22.2
in bf16), 1.52-1.64x; over 577 tokens 1.45-1.68x (``benchmarks/bench_attention.py --inference
--threads 2``, three runs, session 35). The logits are rounded to bf16 before the softmax, as
autocast's own matmul (and ``transformers``' eager attention) rounds them: about 3 significant
digits, the precision of bf16 inference everywhere else. Shorter sequences keep the fp32 path,
and with them every ShapeWorld model (self-attention over at most 257 tokens; the mask decoder's
16 queries and AlignZeg's 16 keys), whose figures therefore do not move.

:class:`MultiheadAttention` is ``nn.MultiheadAttention`` (same parameters, same state-dict keys,
``batch_first=True``) whose forward routes through :func:`attention`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["CHUNKED_MIN_TOKENS", "MultiheadAttention", "attention"]

_UPCAST = (torch.bfloat16, torch.float16)  # computed in fp32 on the CPU
CHUNKED_MIN_TOKENS = 512  # from this many queries and keys on, bf16 inference goes by query blocks
# logits per query block: 2.5 MiB of bf16, 96 queries of ViT-B/16 at 512 px
_BLOCK_LOGITS = 5 << 18


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
        if (
            q.dtype == torch.bfloat16
            and min(q.shape[-2], k.shape[-2]) >= CHUNKED_MIN_TOKENS
            and attn_mask is None
            and not dropout_p
            and not is_causal
            and not (torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v)))
        ):
            return _query_blocks(q, k, v)  # long sequences at bf16 inference
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


def _query_blocks(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """softmax(q k^T / sqrt(d)) v without autograd, a block of queries at a time (bf16 logits)."""
    q = (q * q.shape[-1] ** -0.5).contiguous()
    k_t = k.contiguous().transpose(-1, -2)
    v = v.contiguous()
    out = q.new_empty(*q.shape[:-1], v.shape[-1])
    n, rows = q.shape[-2], math.prod(q.shape[:-2])  # queries; batch x heads
    block = max(16, _BLOCK_LOGITS // (rows * k.shape[-2]) // 16 * 16)
    with torch.autocast("cpu", enabled=False):
        for start in range(0, n, block):
            logits = torch.matmul(q[..., start : start + block, :], k_t)
            torch.matmul(logits.softmax(-1), v, out=out[..., start : start + block, :])
    return out


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
