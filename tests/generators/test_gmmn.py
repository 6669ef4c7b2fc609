"""The GMMN feature generator of ZS3Net."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from zeroseg.generators.gmmn import GMMN, GMMNConfig
from zeroseg.generators.mmd import class_conditional_mmd


@pytest.fixture(autouse=True)
def one_thread():
    # Tiny matrices: one thread avoids OpenMP oversubscription on a shared 2-core machine.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_reference_architecture_and_defaults():
    g = GMMN(GMMNConfig(embed_dim=300, feature_dim=256))
    linears = [m for m in g.net if isinstance(m, nn.Linear)]
    # ZS3: Linear(300 + 300 -> 256), LeakyReLU(0.2), Dropout(0.5), Linear(256 -> 256), no
    # output activation.
    assert [(m.in_features, m.out_features) for m in linears] == [(600, 256), (256, 256)]
    assert isinstance(g.net[1], nn.LeakyReLU) and g.net[1].negative_slope == 0.2
    assert isinstance(g.net[2], nn.Dropout) and g.net[2].p == 0.5
    assert isinstance(g.net[-1], nn.Linear)
    assert all(torch.all(m.bias == 0.01) for m in linears)
    noise = g.sample_noise(1000, generator=torch.Generator().manual_seed(0))
    assert noise.min() >= 0 and noise.max() < 1  # uniform, as torch.rand in the reference


def test_options():
    g = GMMN(GMMNConfig(embed_dim=4, feature_dim=6, hidden=0, output_activation="relu"))
    assert [type(m) for m in g.net] == [nn.Linear, nn.ReLU]
    out, _ = g.generate(torch.randn(3, 4), 5)
    assert (out >= 0).all()
    normal = GMMN(GMMNConfig(embed_dim=4, feature_dim=6, noise="normal", noise_dim=2000))
    assert normal.sample_noise(4).min() < 0
    with pytest.raises(ValueError, match="'uniform' or 'normal'"):
        GMMN(GMMNConfig(embed_dim=4, feature_dim=6, noise="gauss"))
    with pytest.raises(ValueError, match="'none' or 'relu'"):
        GMMN(GMMNConfig(embed_dim=4, feature_dim=6, output_activation="tanh"))


def test_generate_shapes_and_labels():
    g = GMMN(GMMNConfig(embed_dim=8, feature_dim=12, noise_dim=5))
    feats, labels = g.generate(torch.randn(3, 8), 4)
    assert feats.shape == (12, 12)
    assert labels.tolist() == [0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2]
    assert labels.dtype == torch.int64
    assert g(torch.randn(2, 8), torch.rand(2, 5)).shape == (2, 12)
    with pytest.raises(ValueError, match="dimension 8"):
        g.generate(torch.randn(3, 7), 2)


def test_generate_is_deterministic_with_a_generator():
    torch.manual_seed(0)
    g = GMMN(GMMNConfig(embed_dim=8, feature_dim=12, noise_dim=5)).eval()
    emb = torch.randn(3, 8)
    a, _ = g.generate(emb, 6, generator=torch.Generator().manual_seed(7))
    b, _ = g.generate(emb, 6, generator=torch.Generator().manual_seed(7))
    c, _ = g.generate(emb, 6, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    # Different noise gives different features within a class (not a deterministic map).
    assert a[:6].std(0).mean() > 1e-3


def test_learns_class_conditional_features():
    # 8 classes whose real features are Gaussians around a fixed linear map of the embeddings.
    torch.manual_seed(0)
    k, e, f, n = 8, 16, 32, 32
    emb = nn.functional.normalize(torch.randn(k, e), dim=1)
    means = emb @ (torch.randn(e, f) * 0.8)  # (K, F), ~6.8 apart on average
    gen = GMMN(GMMNConfig(embed_dim=e, feature_dim=f, noise_dim=16, hidden=64))
    opt = torch.optim.Adam(gen.parameters(), lr=2e-3)
    real_labels = torch.arange(k).repeat_interleave(n)
    for _ in range(250):
        real = means[real_labels] + 0.5 * torch.randn(k * n, f)
        fake, fake_labels = gen.generate(emb, n)
        loss = class_conditional_mmd(fake, fake_labels, real, real_labels)
        opt.zero_grad()
        loss.backward()
        opt.step()

    gen.eval()
    with torch.no_grad():
        fake, labels = gen.generate(emb, 200, generator=torch.Generator().manual_seed(1))
    fake_means = torch.stack([fake[labels == c].mean(0) for c in range(k)])
    nearest = torch.cdist(fake_means, means).argmin(dim=1)
    assert (nearest == torch.arange(k)).float().mean() >= 0.8
