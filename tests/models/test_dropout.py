"""zeroseg's CPU dropout: the mask is the stated function of torch's random stream."""

from __future__ import annotations

import pytest
import torch

from zeroseg.models.dropout import Dropout, dropout


def _expected(x: torch.Tensor, p: float, seed: int) -> torch.Tensor:
    # by hand: one int32 draw per element, uniform on [0, 2^31); kept iff >= p * 2^31
    torch.manual_seed(seed)
    draws = torch.empty(x.shape, dtype=torch.int32).random_()
    return torch.where(draws >= round(p * 2**31), x / (1 - p), torch.zeros_like(x))


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_dropout_keeps_exactly_the_elements_whose_draw_clears_p(p):
    x = torch.arange(1, 4097, dtype=torch.float32).view(4, 32, 32)
    torch.manual_seed(3)
    got = dropout(x, p)
    want = _expected(x, p, seed=3)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=0)
    dropped = (got == 0).float().mean().item()
    assert 0 < dropped < 1  # both kinds occur: the comparison above tested something
    # the same seed repeats the run exactly; the next call draws a new mask
    torch.manual_seed(3)
    again, other = dropout(x, p), dropout(x, p)
    assert torch.equal(again, got) and not torch.equal(other, got)


def test_dropout_gradient_is_the_forward_mask_times_the_scale():
    x = torch.randn(2, 3, 50, requires_grad=True)
    torch.manual_seed(0)
    out = dropout(x, 0.25)
    out.backward(torch.ones_like(out))
    kept = (_expected(torch.ones_like(x), 0.25, seed=0) != 0).float()
    assert torch.equal(x.grad, kept / 0.75)


def test_dropout_in_bf16_keeps_the_dtype_and_the_mask():
    x = torch.randn(3, 64).bfloat16()
    torch.manual_seed(1)
    got = dropout(x, 0.1)
    assert got.dtype == torch.bfloat16
    want = _expected(x.float(), 0.1, seed=1)
    assert torch.equal(got == 0, want == 0)


def test_dropout_is_the_identity_in_eval_mode_and_at_p_zero_and_zero_at_p_one():
    x = torch.randn(5, 7)
    assert dropout(x, 0.3, training=False) is x
    assert dropout(x, 0.0) is x
    assert torch.equal(dropout(x, 1.0), torch.zeros_like(x))
    layer = Dropout(0.3).eval()
    assert layer(x) is x
    layer.train()
    torch.manual_seed(4)
    torch.testing.assert_close(layer(x), _expected(x, 0.3, seed=4), rtol=1e-6, atol=0)


def test_dropout_rejects_a_probability_outside_zero_one_and_in_place_mode():
    with pytest.raises(ValueError, match=r"dropout probability must be in \[0, 1\], got 1.5"):
        dropout(torch.ones(2), 1.5)
    with pytest.raises(ValueError, match="no in-place mode"):
        Dropout(0.1, inplace=True)(torch.ones(2))
