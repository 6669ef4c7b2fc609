"""Maximum Mean Discrepancy with a sum of Gaussian kernels, the GMMN training loss (Li et al.,
"Generative Moment Matching Networks", ICML 2015) as used by ZS3Net (Bucher et al., NeurIPS 2019,
the per-class GMMN loss of Sec. 3):

    MMD^2(X, Y) = 1/n^2 sum_ij k(x_i, x_j) + 1/m^2 sum_ij k(y_i, y_j) - 2/(nm) sum_ij k(x_i, y_j)
    k(a, b)     = sum_s exp(-||a - b||^2 / (2 s))

This is the biased (V-statistic) estimator: the diagonal terms k(x_i, x_i) = 1 are included,
as in the reference. Each bandwidth ``s`` divides ``||a - b||^2 / 2``, i.e. it plays the role of
the kernel's *variance* sigma^2, not of sigma: the reference ``GMMNLoss`` (valeoai/ZS3,
``utils/loss.py``) computes ``exp((a.b - |a|^2/2 - |b|^2/2) / s)`` with s in (2, 5, 10, 20, 40, 80),
so a Gaussian written exp(-||a - b||^2 / (2 sigma^2)) has sigma^2 = s here; we follow the code.
The reference then returns the square root of the sum over bandwidths; :func:`mmd_loss` returns
the squared value unless ``root=True``. The reference weights the two sets' terms correctly only
when n == m (the one case its training uses); here n and m may differ.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["ZS3_BANDWIDTHS", "class_conditional_mmd", "mmd_loss"]

# The reference's bandwidths (kernel variances) for 256-d DeepLab features.
ZS3_BANDWIDTHS: tuple[float, ...] = (2.0, 5.0, 10.0, 20.0, 40.0, 80.0)


def _sq_dists(a: Tensor, b: Tensor) -> Tensor:
    """Pairwise squared Euclidean distances (..., n, m) of (..., n, d) and (..., m, d), from two
    matrix products, clamped at 0 because |a|^2 + |b|^2 - 2 a.b can come out slightly negative
    in floating point."""
    a2 = a.pow(2).sum(dim=-1, keepdim=True)  # (..., n, 1)
    b2 = b.pow(2).sum(dim=-1, keepdim=True)  # (..., m, 1)
    return (a2 + b2.mT - 2.0 * (a @ b.mT)).clamp_min_(0.0)


def _kernel_mean(sq: Tensor, bandwidths: Sequence[float]) -> Tensor:
    """Mean over all pairs (the last two dimensions) of the summed Gaussian kernels."""
    return sum(torch.exp(sq / (-2.0 * s)).mean((-2, -1)) for s in bandwidths)  # type: ignore[return-value]


def mmd_loss(
    x: Tensor,
    y: Tensor,
    bandwidths: Sequence[float] = ZS3_BANDWIDTHS,
    *,
    root: bool = False,
) -> Tensor:
    """Biased squared MMD between two samples with a sum of Gaussian kernels, or between C pairs
    of samples at once (one batched matrix product instead of a loop over classes).

    Args:
        x: Samples (n, d), e.g. generated features; or (C, n, d), C sets.
        y: Samples (m, d), e.g. real features; n and m may differ; or (C, m, d).
        bandwidths: Kernel variances s in exp(-||a - b||^2 / (2 s)), summed.
        root: Return sqrt(MMD^2) as the ZS3 reference does (clamped away from 0 so the
            gradient stays finite) instead of MMD^2.

    Returns:
        A scalar tensor, or (C,) for C pairs; >= 0 up to rounding, and 0 when x and y are the
        same set.
    """
    if (
        x.ndim not in (2, 3)
        or y.ndim != x.ndim
        or x.shape[-1] != y.shape[-1]
        or x.shape[:-2] != y.shape[:-2]
    ):
        raise ValueError(
            f"mmd_loss expects (n, d) and (m, d), or (C, n, d) and (C, m, d), with the same d "
            f"(and C), got {tuple(x.shape)} and {tuple(y.shape)}"
        )
    if x.shape[-2] == 0 or y.shape[-2] == 0:
        raise ValueError(f"mmd_loss needs non-empty samples, got {x.shape[-2]} and {y.shape[-2]}")
    if len(bandwidths) == 0 or any(s <= 0 for s in bandwidths):
        raise ValueError(f"bandwidths must be positive and non-empty, got {list(bandwidths)}")
    # MMD is translation invariant; centring first keeps |a|^2 + |b|^2 - 2 a.b from cancelling
    # catastrophically in float32 when features sit far from the origin.
    center = torch.cat([x, y], dim=-2).mean(dim=-2, keepdim=True).detach()
    x, y = x - center, y - center
    mmd2 = (
        _kernel_mean(_sq_dists(x, x), bandwidths)
        + _kernel_mean(_sq_dists(y, y), bandwidths)
        - 2.0 * _kernel_mean(_sq_dists(x, y), bandwidths)
    )
    if root:
        return mmd2.clamp_min(1e-12).sqrt()
    return mmd2


def class_conditional_mmd(
    fake: Tensor,
    fake_labels: Tensor,
    real: Tensor,
    real_labels: Tensor,
    bandwidths: Sequence[float] = ZS3_BANDWIDTHS,
    *,
    root: bool = False,
) -> Tensor:
    """Mean over classes of the MMD between the fake and the real features of that class.

    ZS3 matches each class's generated features to the real features of the same class; pooling
    all classes into one MMD would let the generator trade one class's mode for another's.
    Classes present in only one of the two sets are skipped (e.g. fakes generated for every seen
    class while a batch shows only some of them); at least one class must be in both.

    Args:
        fake: Generated features (n, d).
        fake_labels: Class index of each fake feature (n,).
        real: Real features (m, d).
        real_labels: Class index of each real feature (m,).
        bandwidths: Kernel variances, as in :func:`mmd_loss`.
        root: Use sqrt(MMD^2) per class, as in :func:`mmd_loss`.

    Returns:
        A scalar tensor, the unweighted mean over the shared classes.
    """
    if fake_labels.shape != fake.shape[:1] or real_labels.shape != real.shape[:1]:
        raise ValueError(
            f"labels must be (n,) for features (n, d): fake {tuple(fake.shape)} with labels "
            f"{tuple(fake_labels.shape)}, real {tuple(real.shape)} with labels "
            f"{tuple(real_labels.shape)}"
        )
    fake_classes = set(torch.unique(fake_labels).tolist())
    real_classes = set(torch.unique(real_labels).tolist())
    shared = sorted(fake_classes & real_classes)
    if not shared:
        raise ValueError(
            f"no class is in both sets: fake classes {sorted(fake_classes)}, "
            f"real classes {sorted(real_classes)}"
        )
    losses = [
        mmd_loss(fake[fake_labels == c], real[real_labels == c], bandwidths, root=root)
        for c in shared
    ]
    return torch.stack(losses).mean()
