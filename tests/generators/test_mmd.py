"""MMD with a sum of Gaussian kernels (the ZS3 / GMMN loss)."""

from __future__ import annotations

import math

import pytest
import torch

from zeroseg.generators.mmd import ZS3_BANDWIDTHS, class_conditional_mmd, mmd_loss


def _k(a: torch.Tensor, b: torch.Tensor, bandwidths) -> float:
    d2 = float(((a - b) ** 2).sum())
    return sum(math.exp(-d2 / (2.0 * s)) for s in bandwidths)


def _mmd_loop(x: torch.Tensor, y: torch.Tensor, bandwidths) -> float:
    """The biased estimator written as the O(n^2) double sums of its definition."""
    n, m = len(x), len(y)
    kxx = sum(_k(x[i], x[j], bandwidths) for i in range(n) for j in range(n)) / n**2
    kyy = sum(_k(y[i], y[j], bandwidths) for i in range(m) for j in range(m)) / m**2
    kxy = sum(_k(x[i], y[j], bandwidths) for i in range(n) for j in range(m)) / (n * m)
    return kxx + kyy - 2 * kxy


@pytest.mark.parametrize("n, m, d", [(5, 5, 3), (7, 4, 6), (1, 3, 2)])
def test_matches_double_loop(n, m, d):
    g = torch.Generator().manual_seed(n * 100 + m)
    x = torch.randn(n, d, generator=g) * 2
    y = torch.randn(m, d, generator=g) * 2 + 1
    got = mmd_loss(x, y).item()
    assert got == pytest.approx(_mmd_loop(x, y, ZS3_BANDWIDTHS), abs=1e-5)
    bw = (0.5, 3.0)
    assert mmd_loss(x, y, bw).item() == pytest.approx(_mmd_loop(x, y, bw), abs=1e-5)


def test_bandwidth_is_a_variance_as_in_the_reference():
    # One point each, distance^2 = 4, one bandwidth s = 2: k(x, y) = exp(-4 / (2 * 2)) = e^-1,
    # MMD^2 = 1 + 1 - 2 e^-1. (Treating s as sigma would give exp(-4 / 8).)
    x, y = torch.zeros(1, 2), torch.tensor([[2.0, 0.0]])
    assert mmd_loss(x, y, (2.0,)).item() == pytest.approx(2 - 2 * math.exp(-1), abs=1e-6)
    assert mmd_loss(x, y, (2.0,), root=True).item() == pytest.approx(
        math.sqrt(2 - 2 * math.exp(-1)), abs=1e-6
    )


def test_zero_for_identical_sets_and_grows_with_shift():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 16, generator=g)
    assert abs(mmd_loss(x, x).item()) < 1e-5
    # Same set in another order is the same empirical distribution.
    assert abs(mmd_loss(x, x[torch.randperm(64, generator=g)]).item()) < 1e-5
    losses = [mmd_loss(x, x + shift).item() for shift in (0.25, 1.0, 4.0)]
    assert 0 < losses[0] < losses[1] < losses[2]


def test_features_far_from_origin_keep_float32_accuracy():
    # |a|^2 ~ 2.6e8 here: without centring, float32 cancellation swamps the 0.3 shift.
    g = torch.Generator().manual_seed(1)
    x = torch.randn(32, 256, generator=g) * 3 + 1000
    exact = mmd_loss(x.double(), x.double() + 0.3).item()
    assert mmd_loss(x, x + 0.3).item() == pytest.approx(exact, rel=1e-3)
    assert abs(mmd_loss(x, x.clone()).item()) < 1e-6


def test_gradient_flows_and_root_is_finite_at_zero():
    x = torch.randn(8, 4, requires_grad=True)
    y = torch.randn(8, 4)
    mmd_loss(x, y).backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    z = y.clone().requires_grad_(True)
    mmd_loss(z, y, root=True).backward()
    assert torch.isfinite(z.grad).all()


def test_input_errors():
    with pytest.raises(ValueError, match=r"\(3, 2\) and \(3, 4\)"):
        mmd_loss(torch.zeros(3, 2), torch.zeros(3, 4))
    with pytest.raises(ValueError, match="non-empty"):
        mmd_loss(torch.zeros(0, 2), torch.zeros(3, 2))
    with pytest.raises(ValueError, match="positive"):
        mmd_loss(torch.zeros(1, 2), torch.zeros(3, 2), (0.0,))


def test_batched_sets_give_each_pair_its_own_mmd_and_gradient():
    """(C, n, d) against (C, m, d): C values, each the MMD of its own pair (PADing's generator
    loss over the seen classes), with the same gradients as the loop over pairs."""
    g = torch.Generator().manual_seed(7)
    x = (torch.randn(4, 6, 5, generator=g) * 2).requires_grad_()
    y = torch.randn(4, 3, 5, generator=g) + torch.arange(4.0).view(4, 1, 1)
    for root in (False, True):
        got = mmd_loss(x, y, root=root)
        assert got.shape == (4,)
        loop = torch.stack([mmd_loss(x[c], y[c], root=root) for c in range(4)])
        torch.testing.assert_close(got, loop, rtol=1e-6, atol=1e-7)
        assert got[0].item() == pytest.approx(
            math.sqrt(_mmd_loop(x[0].detach(), y[0], ZS3_BANDWIDTHS))
            if root
            else _mmd_loop(x[0].detach(), y[0], ZS3_BANDWIDTHS),
            abs=1e-5,
        )
        w = torch.tensor([1.0, -2.0, 0.5, 3.0])
        (grad_got,) = torch.autograd.grad((got * w).sum(), x)
        (grad_loop,) = torch.autograd.grad((loop * w).sum(), x)
        torch.testing.assert_close(grad_got, grad_loop, rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match=r"\(4, 6, 5\) and \(3, 3, 5\)"):
        mmd_loss(x, y[:3])
    with pytest.raises(ValueError, match=r"\(4, 6, 5\) and \(3, 5\)"):
        mmd_loss(x, y[0])


def test_class_conditional_is_mean_of_per_class_mmd():
    g = torch.Generator().manual_seed(2)
    real = torch.randn(10, 3, generator=g)
    real_labels = torch.tensor([0, 0, 0, 1, 1, 1, 1, 2, 2, 2])
    fake = torch.randn(7, 3, generator=g)
    fake_labels = torch.tensor([1, 0, 1, 0, 1, 3, 3])
    # Shared classes are 0 and 1; class 2 has no fake and class 3 no real: both skipped.
    expected = 0.5 * (
        _mmd_loop(fake[[1, 3]], real[[0, 1, 2]], ZS3_BANDWIDTHS)
        + _mmd_loop(fake[[0, 2, 4]], real[[3, 4, 5, 6]], ZS3_BANDWIDTHS)
    )
    got = class_conditional_mmd(fake, fake_labels, real, real_labels)
    assert got.item() == pytest.approx(expected, abs=1e-5)


def test_class_conditional_hand_checked_one_dimensional():
    # Class 0: fake {0}, real {0} -> MMD^2 = 0.
    # Class 1: fake {0}, real {2}; with s = 2: 2 - 2 exp(-4 / 4) = 2 - 2/e.
    fake = torch.tensor([[0.0], [0.0]])
    real = torch.tensor([[0.0], [2.0]])
    labels = torch.tensor([0, 1])
    got = class_conditional_mmd(fake, labels, real, labels, (2.0,))
    assert got.item() == pytest.approx((0 + 2 - 2 / math.e) / 2, abs=1e-6)


def test_class_conditional_differs_from_pooled_mmd():
    # Swapping which class each cluster belongs to leaves the pooled MMD at 0 but not the
    # class-conditional one: the reason ZS3 matches classes separately.
    a, b = torch.zeros(4, 2), torch.full((4, 2), 5.0)
    real, real_labels = torch.cat([a, b]), torch.tensor([0] * 4 + [1] * 4)
    fake, fake_labels = torch.cat([b, a]), torch.tensor([0] * 4 + [1] * 4)
    assert abs(mmd_loss(fake, real).item()) < 1e-6
    assert class_conditional_mmd(fake, fake_labels, real, real_labels).item() > 1.0


def test_class_conditional_errors_name_the_classes():
    with pytest.raises(ValueError, match=r"fake classes \[0\], real classes \[1\]"):
        class_conditional_mmd(
            torch.zeros(2, 3), torch.tensor([0, 0]), torch.zeros(2, 3), torch.tensor([1, 1])
        )
    with pytest.raises(ValueError, match="labels must be"):
        class_conditional_mmd(
            torch.zeros(2, 3), torch.tensor([0]), torch.zeros(2, 3), torch.tensor([0, 0])
        )
