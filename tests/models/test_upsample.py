"""zeroseg.models.upsample.bilinear: F.interpolate's values bit for bit, in either layout."""

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from zeroseg.models.upsample import bilinear

# maps, output sizes and options both properties draw from
MAPS = {
    "c": st.integers(1, 50),
    "h": st.integers(1, 17),
    "w": st.integers(1, 17),
    "out_h": st.integers(1, 40),
    "out_w": st.integers(1, 40),
    "corners": st.booleans(),
    "bf16": st.booleans(),
    "seed": st.integers(0, 2**16),
}


@settings(max_examples=40, deadline=None)
@given(b=st.integers(1, 3), **MAPS)
def test_same_values_as_interpolate(b, c, h, w, out_h, out_w, corners, bf16, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, c, h, w, generator=g) * 5
    if bf16:
        x = x.to(torch.bfloat16)
    with torch.no_grad():
        got = bilinear(x, (out_h, out_w), align_corners=corners)
    want = F.interpolate(x, size=(out_h, out_w), mode="bilinear", align_corners=corners)
    assert got.dtype == want.dtype and got.is_contiguous()
    assert torch.equal(got, want)


def test_many_classes_upsampled_in_channels_last():
    # the eval shape that made the layout matter: 50 images, 44 classes, 32x32 -> 64x64
    x = torch.randn(50, 44, 32, 32)
    with torch.no_grad():
        got = bilinear(x, (64, 64))
    assert torch.equal(got, F.interpolate(x, size=(64, 64), mode="bilinear", align_corners=False))


@settings(max_examples=40, deadline=None)
@given(**MAPS)
def test_same_gradients_as_interpolate(c, h, w, out_h, out_w, corners, bf16, seed):
    # training (the projection loss, ZegCLIP's mask loss) backpropagates through it
    g = torch.Generator().manual_seed(seed)
    dtype = torch.bfloat16 if bf16 else torch.float32
    x = (torch.randn(2, c, h, w, generator=g) * 5).to(dtype).requires_grad_()
    y = torch.randn(2, c, out_h, out_w, generator=g).to(dtype)
    (bilinear(x, (out_h, out_w), align_corners=corners) * y).sum().backward()
    got = x.grad.clone()
    x.grad = None
    want = F.interpolate(x, size=(out_h, out_w), mode="bilinear", align_corners=corners)
    (want * y).sum().backward()
    assert torch.equal(got, x.grad)


def test_rejects_non_maps():
    with pytest.raises(ValueError, match=r"bilinear needs \(B, C, h, w\) maps, got shape \(3, 4\)"):
        bilinear(torch.zeros(3, 4), (2, 2))
