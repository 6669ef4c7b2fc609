"""A small encoder-decoder CNN for ShapeWorld-sized images (a U-Net with three downsamplings).

It is the dense backbone of the projection baseline and the oracle on this CPU: about 0.3M
parameters, output stride 2, trained in a couple of minutes at 64x64. Normalisation statistics
travel with the module (``pixel_mean``/``pixel_std`` buffers), so inputs are raw uint8 images.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class SmallUNetConfig:
    """Widths of the four resolution levels (strides 1, 2, 4, 8) and the output feature size."""

    widths: tuple[int, int, int, int] = (16, 32, 64, 128)
    out_dim: int = 64  # channels of the stride-2 output feature map


def _block(cin: int, cout: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride, padding=dilation, dilation=dilation, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, 1, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class SmallUNet(nn.Module):
    """Encoder (strides 1-8, dilated context at stride 8) and a decoder back to stride 2."""

    def __init__(self, cfg: SmallUNetConfig | None = None):
        super().__init__()
        cfg = cfg or SmallUNetConfig()
        w1, w2, w3, w4 = cfg.widths
        self.register_buffer(
            "pixel_mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1) * 255
        )
        self.register_buffer(
            "pixel_std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1) * 255
        )
        self.enc1 = _block(3, w1)
        self.enc2 = _block(w1, w2, stride=2)
        self.enc3 = _block(w2, w3, stride=2)
        self.enc4 = _block(w3, w4, stride=2)
        self.context = _block(w4, w4, dilation=2)
        self.dec3 = _block(w4 + w3, w3)
        self.dec2 = _block(w3 + w2, cfg.out_dim)
        self.out_dim = cfg.out_dim

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        return (images.float() - self.pixel_mean) / self.pixel_std

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) uint8 -> (B, out_dim, H/2, W/2) features (H, W multiples of 8)."""
        x = self.normalize(images)
        e1 = self.enc1(x)
        e2 = self.enc2(e1)
        e3 = self.enc3(e2)
        e4 = self.context(self.enc4(e3))
        d3 = self.dec3(
            torch.cat(
                [F.interpolate(e4, size=e3.shape[-2:], mode="bilinear", align_corners=False), e3], 1
            )
        )
        return self.dec2(
            torch.cat(
                [F.interpolate(d3, size=e2.shape[-2:], mode="bilinear", align_corners=False), e2], 1
            )
        )


class UNetSegmenter(nn.Module):
    """A SmallUNet with a separate 1x1 classifier: the DeepLabV3Plus segmenter interface
    (``forward_features``, ``classifier``, ``reset_classifier``, ``feature_dim``) on the ShapeWorld
    foundation's backbone, so ZS3Net can share the projection baseline's backbone.

    Inputs are raw images as float 0-255 (the U-Net normalises them itself).
    """

    def __init__(self, cfg: SmallUNetConfig | None = None, *, num_classes: int):
        super().__init__()
        self.backbone = SmallUNet(cfg)
        self.classifier = nn.Conv2d(self.backbone.out_dim, num_classes, 1)

    @property
    def feature_dim(self) -> int:
        return self.backbone.out_dim

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) 0-255 -> (B, out_dim, H/2, W/2) post-ReLU features."""
        return self.backbone(images)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.forward_features(images))

    def reset_classifier(self, num_classes: int) -> None:
        """A fresh classifier with ``num_classes`` outputs, on the old one's device and dtype."""
        old = self.classifier
        new = nn.Conv2d(old.in_channels, num_classes, 1)
        self.classifier = new.to(device=old.weight.device, dtype=old.weight.dtype)


class ProjectionSegmenter(nn.Module):
    """The projection baseline's model (a SmallUNet and a ``ProjectionHead``) behind the segmenter
    interface ZS3Net uses, so ZS3Net can be built on the baseline's text-aligned head.

    ``forward(images, class_embeddings)`` is the projection baseline's scoring (stage 1 trains it on
    the seen names); ``forward_features`` is the head's hidden map g (the features the GMMN
    imitates); ``classifier`` is a :class:`~zeroseg.models.heads.projection.CosineClassifier` over g
    whose class vectors :meth:`reset_classifier` sets from the trained head's text side.

    Args:
        cfg: the U-Net's widths.
        embed_dim: dimension of the class embeddings.
        num_classes: classes of the initial classifier (replaced by :meth:`reset_classifier`).
    """

    def __init__(self, cfg: SmallUNetConfig | None = None, *, embed_dim: int, num_classes: int):
        super().__init__()
        from zeroseg.models.heads.projection import CosineClassifier, ProjectionHead

        self.backbone = SmallUNet(cfg)
        self.head = ProjectionHead(self.backbone.out_dim, embed_dim)
        self.classifier = CosineClassifier(self.head, torch.zeros(num_classes, embed_dim))
        self.classifier.requires_grad_(False)  # a placeholder until reset_classifier

    @property
    def feature_dim(self) -> int:
        return self.backbone.out_dim

    def forward(self, images: torch.Tensor, class_embeddings: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) 0-255, (K, D) -> (B, K, H/2, W/2) the projection head's logits."""
        return self.head(self.backbone(images), class_embeddings)

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) 0-255 -> (B, C, H/2, W/2) the head's hidden map (post-ReLU)."""
        return self.head.proj[:-1](self.backbone(images))

    def reset_classifier(
        self, class_embeddings: torch.Tensor, *, train_shared: bool = True
    ) -> None:
        """A classifier over ``class_embeddings`` that scores exactly as the head does (see
        :class:`~zeroseg.models.heads.projection.CosineClassifier` for ``train_shared``)."""
        from zeroseg.models.heads.projection import CosineClassifier

        self.classifier = CosineClassifier(self.head, class_embeddings, train_shared=train_shared)
