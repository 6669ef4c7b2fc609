"""Generative Moment Matching Network (Li et al., ICML 2015) conditioned on class embeddings, the
feature generator of ZS3Net (Bucher et al., "Zero-Shot Semantic Segmentation", NeurIPS 2019):

    x_hat = G([a_c ; z]),   z ~ U[0, 1)^noise_dim   (or N(0, I))

where a_c is the semantic embedding of class c and x_hat imitates the DeepLab pixel features of
that class. G is trained by minimising the per-class MMD (``zeroseg.generators.mmd``) between
generated and real features of seen classes; it then produces features of unseen classes from
their embeddings alone.

Faithful to the reference (valeoai/ZS3, ``modeling/gmmn.py`` and ``train_pascal_GMMN.py``):
Linear(embed + noise -> 256), LeakyReLU(0.2), Dropout(0.5), Linear(256 -> feature_dim) with no
output activation, Xavier-uniform weights and biases 0.01, noise_dim 300 drawn with
``torch.rand`` (uniform on [0, 1), not Gaussian). The real DeepLab features are post-ReLU;
``output_activation="relu"`` makes the generator respect that, off by default as in the
reference.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from zeroseg.models.dropout import Dropout

__all__ = ["GMMN", "GMMNConfig"]


@dataclass
class GMMNConfig:
    """Architecture of the GMMN feature generator."""

    embed_dim: int  # dimension of the class embeddings (300 for word2vec in ZS3)
    feature_dim: int  # dimension of the generated features (DeepLab's feature_dim, 256)
    noise_dim: int = 300  # dimension of the noise concatenated to the embedding (ZS3: 300)
    hidden: int = 256  # hidden layer width; 0 makes the generator one linear map (ZS3: 256)
    dropout: float = 0.5  # after the hidden activation (ZS3: 0.5)
    leaky_slope: float = 0.2  # LeakyReLU negative slope (ZS3: 0.2)
    noise: str = "uniform"  # "uniform" on [0, 1) as the reference's torch.rand, or "normal"
    output_activation: str = "none"  # "none" as the reference, or "relu" for post-ReLU features


class GMMN(nn.Module):
    """Class-embedding-conditioned feature generator.

    Args:
        config: Sizes and options, see :class:`GMMNConfig`.
    """

    def __init__(self, config: GMMNConfig) -> None:
        super().__init__()
        if config.noise not in ("uniform", "normal"):
            raise ValueError(
                f"GMMNConfig.noise must be 'uniform' or 'normal', got {config.noise!r}"
            )
        if config.output_activation not in ("none", "relu"):
            raise ValueError(
                "GMMNConfig.output_activation must be 'none' or 'relu', "
                f"got {config.output_activation!r}"
            )
        self.config = config
        in_dim = config.embed_dim + config.noise_dim
        layers: list[nn.Module]
        if config.hidden:
            layers = [
                nn.Linear(in_dim, config.hidden),
                nn.LeakyReLU(config.leaky_slope),
                # nn.Dropout's rate and (empty) state dict, with a mask that is cheaper to draw on
                # the CPU than bernoulli_'s (docs/benchmarks.md, session 31: the step's time).
                Dropout(config.dropout),
                nn.Linear(config.hidden, config.feature_dim),
            ]
        else:
            layers = [nn.Linear(in_dim, config.feature_dim)]
        if config.output_activation == "relu":
            layers.append(nn.ReLU())
        self.net = nn.Sequential(*layers)
        for m in self.net:
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.constant_(m.bias, 0.01)

    def sample_noise(
        self,
        n: int,
        *,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
    ) -> Tensor:
        """Noise (n, noise_dim) from the configured distribution."""
        device = device if device is not None else self.net[0].weight.device
        shape = (n, self.config.noise_dim)
        if self.config.noise == "uniform":
            return torch.rand(shape, generator=generator, device=device)
        return torch.randn(shape, generator=generator, device=device)

    def forward(self, embeddings: Tensor, noise: Tensor) -> Tensor:
        """Features for embeddings (N, embed_dim) and noise (N, noise_dim) -> (N, feature_dim)."""
        if embeddings.shape[-1] != self.config.embed_dim:
            raise ValueError(
                f"GMMN expects embeddings of dimension {self.config.embed_dim}, "
                f"got {tuple(embeddings.shape)}"
            )
        return self.net(torch.cat([embeddings, noise.to(embeddings.dtype)], dim=1))

    def generate(
        self,
        embeddings: Tensor,
        n_per_class: int,
        *,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Generate ``n_per_class`` features for each class embedding.

        Gradients flow (this is also the training path); wrap in ``torch.no_grad()`` to
        synthesise. The noise is reproducible through ``generator``; dropout, active in training
        mode as in the reference, draws from the global RNG, so call ``eval()`` for output that
        depends on ``generator`` alone.

        Args:
            embeddings: Class embeddings (K, embed_dim).
            n_per_class: Features per class.
            generator: Optional RNG for the noise, on the module's device.

        Returns:
            features (K * n_per_class, feature_dim), class-major; labels (K * n_per_class,),
            the row index in ``embeddings`` of each feature (int64).
        """
        if embeddings.ndim != 2:
            raise ValueError(f"embeddings must be (K, embed_dim), got {tuple(embeddings.shape)}")
        k = embeddings.shape[0]
        labels = torch.arange(k, device=embeddings.device).repeat_interleave(n_per_class)
        noise = self.sample_noise(k * n_per_class, generator=generator, device=embeddings.device)
        return self(embeddings[labels], noise), labels
