"""zeroseg.models.attention: parity with nn.MultiheadAttention and SDPA, fp32 inside bf16."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from zeroseg.models.attention import CHUNKED_MIN_TOKENS, MultiheadAttention, attention


def _pair(dim=16, heads=4, **kwargs):
    torch.manual_seed(0)
    ref = nn.MultiheadAttention(dim, heads, batch_first=True, **kwargs)
    ours = MultiheadAttention(dim, heads, **kwargs)
    ours.load_state_dict(ref.state_dict())  # strict: the same keys and shapes
    return ref.eval(), ours.eval()


def test_same_state_dict_keys_as_torch():
    ref, ours = _pair(kdim=8, vdim=12)
    assert list(ref.state_dict()) == list(ours.state_dict())
    ref, ours = _pair()
    assert list(ref.state_dict()) == list(ours.state_dict())


@pytest.mark.parametrize("kdims", [{}, {"kdim": 8, "vdim": 12}])
def test_matches_torch_multihead_attention(kdims):
    ref, ours = _pair(**kdims)
    g = torch.Generator().manual_seed(1)
    q = torch.randn(3, 5, 16, generator=g)
    k = torch.randn(3, 7, kdims.get("kdim", 16), generator=g)
    v = torch.randn(3, 7, kdims.get("vdim", 16), generator=g)
    want = ref(q, k, v, need_weights=False)[0]
    got, weights = ours(q, k, v, need_weights=False)
    assert weights is None
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)


def test_bool_mask_per_head_means_blocked_as_in_torch():
    ref, ours = _pair()
    g = torch.Generator().manual_seed(2)
    q, mem = torch.randn(2, 5, 16, generator=g), torch.randn(2, 9, 16, generator=g)
    mask = torch.rand(2 * 4, 5, 9, generator=g) > 0.5  # True = not attended
    mask[..., 0] = False  # every query attends to something
    want = ref(q, mem, mem, attn_mask=mask, need_weights=False)[0]
    got = ours(q, mem, mem, attn_mask=mask, need_weights=False)[0]
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)
    # The mask matters: without it the output differs.
    assert not torch.allclose(ours(q, mem, mem, need_weights=False)[0], got, atol=1e-3)


def test_additive_float_mask_matches_torch():
    ref, ours = _pair()
    g = torch.Generator().manual_seed(3)
    q, mem = torch.randn(2, 5, 16, generator=g), torch.randn(2, 9, 16, generator=g)
    mask = torch.randn(5, 9, generator=g)
    want = ref(q, mem, mem, attn_mask=mask, need_weights=False)[0]
    got = ours(q, mem, mem, attn_mask=mask, need_weights=False)[0]
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)


def test_dropout_only_in_training():
    _, ours = _pair(dropout=0.5)
    x = torch.randn(2, 6, 16)
    a, b = ours(x, x, x)[0], ours(x, x, x)[0]
    torch.testing.assert_close(a, b)  # eval: no dropout
    ours.train()
    torch.manual_seed(0)
    assert not torch.allclose(ours(x, x, x)[0], a)


def test_bf16_on_cpu_is_computed_in_fp32():
    g = torch.Generator().manual_seed(4)
    q, k, v = (torch.randn(2, 4, 33, 8, generator=g).bfloat16() for _ in range(3))
    got = attention(q, k, v)
    assert got.dtype == torch.bfloat16
    want = F.scaled_dot_product_attention(q.float(), k.float(), v.float()).bfloat16()
    assert torch.equal(got, want)
    causal = attention(q, k, v, is_causal=True)
    want = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), is_causal=True)
    assert torch.equal(causal, want.bfloat16())


def test_fp32_inside_cpu_autocast():
    # Autocast lists SDPA among its bf16 ops: without switching it off, the upcast is undone.
    g = torch.Generator().manual_seed(6)
    q, k, v = (torch.randn(2, 4, 33, 8, generator=g) for _ in range(3))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = attention(q.bfloat16(), k.bfloat16(), v.bfloat16())
        plain = F.scaled_dot_product_attention(q.bfloat16(), k.bfloat16(), v.bfloat16())
    want = F.scaled_dot_product_attention(
        q.bfloat16().float(), k.bfloat16().float(), v.bfloat16().float()
    )
    assert torch.equal(got, want.bfloat16())
    assert not torch.equal(plain, got)  # the bf16 kernel rounds differently


def _blocked_reference(q, k, v):
    """The long-sequence path's arithmetic on the whole sequence at once: bf16 logits."""
    logits = torch.matmul(q * q.shape[-1] ** -0.5, k.transpose(-1, -2))
    return torch.matmul(logits.softmax(-1), v)


@pytest.mark.parametrize("shape", [(1, 12, 1035, 1035, 64), (4, 16, 600, 520, 8)])
def test_long_bf16_inference_goes_a_query_block_at_a_time(shape):
    # the second: 32-query blocks, the last one partial (600 = 18 x 32 + 24)
    b, h, n, length, d = shape
    g = torch.Generator().manual_seed(7)
    q = torch.randn(b, h, n, d, generator=g).bfloat16()
    k, v = (torch.randn(b, h, length, d, generator=g).bfloat16() for _ in range(2))
    with torch.inference_mode():
        got = attention(q, k, v)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert torch.equal(attention(q, k, v), got)
    assert got.dtype == torch.bfloat16 and got.shape == (b, h, n, d)
    torch.testing.assert_close(got, _blocked_reference(q, k, v), atol=8e-3, rtol=1e-2)
    fp32 = F.scaled_dot_product_attention(q.float(), k.float(), v.float())
    torch.testing.assert_close(got.float(), fp32, atol=3e-2, rtol=3e-2)
    assert not torch.equal(got, fp32.bfloat16())  # not the fp32 path


def test_long_sequences_keep_the_fp32_path_below_the_threshold_or_with_autograd():
    g = torch.Generator().manual_seed(8)
    q, k, v = (torch.randn(1, 2, CHUNKED_MIN_TOKENS, 8, generator=g) for _ in range(3))
    short = [t[..., :-1, :].bfloat16() for t in (q, k, v)]
    want = F.scaled_dot_product_attention(*(t.float() for t in short)).bfloat16()
    assert torch.equal(attention(*short), want)
    # few queries over many keys (the mask decoder's 16 over 1024) or the reverse: fp32
    few, many = q[..., :16, :].bfloat16(), k.repeat(1, 1, 2, 1).bfloat16()
    want = F.scaled_dot_product_attention(few.float(), many.float(), many.float()).bfloat16()
    assert torch.equal(attention(few, many, many), want)
    want = F.scaled_dot_product_attention(many.float(), few.float(), few.float()).bfloat16()
    assert torch.equal(attention(many, few, few), want)
    grads = [t.bfloat16().requires_grad_() for t in (q, k, v)]
    want = F.scaled_dot_product_attention(*(t.float() for t in grads)).bfloat16()
    assert torch.equal(attention(*grads), want)
    mask = torch.ones(CHUNKED_MIN_TOKENS, CHUNKED_MIN_TOKENS, dtype=torch.bool).tril()
    with torch.no_grad():
        got = attention(*grads, attn_mask=mask)
    assert torch.equal(got, attention(*grads, is_causal=True).detach())


def test_fp32_is_sdpa_unchanged():
    g = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(2, 4, 6, 8, generator=g) for _ in range(3))
    assert torch.equal(attention(q, k, v), F.scaled_dot_product_attention(q, k, v))


def test_gradients_flow_through_the_upcast():
    q, k, v = (torch.randn(1, 2, 5, 4, requires_grad=True) for _ in range(3))
    attention(q.bfloat16(), k.bfloat16(), v.bfloat16()).float().sum().backward()
    assert all(t.grad is not None and t.grad.abs().sum() > 0 for t in (q, k, v))


@pytest.mark.parametrize(
    "kwargs, match",
    [({"batch_first": False}, "batch_first"), ({"add_bias_kv": True}, "add_bias_kv")],
)
def test_unsupported_options_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MultiheadAttention(16, 4, **kwargs)


def test_need_weights_is_refused():
    _, ours = _pair()
    x = torch.randn(1, 3, 16)
    with pytest.raises(ValueError, match="need_weights"):
        ours(x, x, x, need_weights=True)
