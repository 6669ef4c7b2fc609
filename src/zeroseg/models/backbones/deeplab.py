"""DeepLabv3+ (Chen et al., "Encoder-Decoder with Atrous Separable Convolution for Semantic Image
Segmentation", ECCV 2018), the segmenter of ZS3Net (Bucher et al., NeurIPS 2019).

    ASPP(x) = proj([conv1x1(x), conv3x3_r1(x), conv3x3_r2(x), conv3x3_r3(x), up(pool(x))])
    feature = fuse([up(ASPP(layer4)), proj48(layer1)])            # (B, feature_dim, H/4, W/4)
    logits  = up(classifier(feature))                             # (B, K, H, W)

Atrous rates are (6, 12, 18) at output stride 16 and doubled at output stride 8 (DeepLabv3
Sec. 3.3). The layout follows the ZS3 reference (valeoai/ZS3, ``modeling/{aspp,decoder}.py``):
norm + ReLU after every convolution, the image-pooling branch normalised too, dropout 0.5 after
the ASPP projection, dropout 0.5 / 0.1 after the two decoder convolutions, and bilinear
upsampling with ``align_corners=True``. ``feature`` is what ZS3's generator learns to produce
(post-ReLU, so non-negative); the final 1x1 ``classifier`` is a separate module so ZS3 can
retrain it on real seen + generated unseen features (``reset_classifier`` / ``classify``).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, fields, replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zeroseg.models.backbones.resnet import RESNETS, NormLayer, ResNet, build_resnet, group_norm

__all__ = [
    "ASPP",
    "DEEPLAB_PRESETS",
    "DeepLabConfig",
    "DeepLabDecoder",
    "DeepLabV3Plus",
    "build_deeplab",
    "make_norm_layer",
]


@dataclass
class DeepLabConfig:
    """Architecture of a DeepLabv3+ segmenter."""

    backbone: str = "resnet101"  # a key of RESNETS
    output_stride: int = 16  # 8 or 16 (32 allowed); stride of the backbone's last stage
    num_classes: int = 21  # classifier outputs (the seen classes while training stage 1)
    aspp_channels: int = 256  # width of each ASPP branch and of its projection
    aspp_rates: tuple[int, int, int] = (6, 12, 18)  # atrous rates at output stride 16, rescaled
    decoder_channels: int = 256  # width of the decoder's first 3x3 convolution
    feature_dim: int = 256  # width of the second 3x3 convolution = the pre-classifier feature
    low_level_channels: int = 48  # projection of layer1's features before concatenation
    base_width: int = 64  # backbone stem width (64 = torchvision; smaller for CPU variants)
    multi_grid: tuple[int, ...] | None = None  # layer4 dilation multipliers, e.g. (1, 2, 4)
    norm: str = "batch"  # "batch" or "group" (GroupNorm for small batches)
    group_norm_groups: int = 32  # upper bound on groups when norm == "group"
    aspp_dropout: float = 0.5  # after the ASPP projection
    decoder_dropout: tuple[float, float] = (0.5, 0.1)  # after each decoder convolution


DEEPLAB_PRESETS: dict[str, DeepLabConfig] = {
    # The ZS3Net segmenter: ResNet-101, output stride 16, 256-d features.
    "deeplabv3plus-r101": DeepLabConfig(backbone="resnet101"),
    "deeplabv3plus-r50": DeepLabConfig(backbone="resnet50"),
    # For CPU training on 64x64 images: a ResNet-18 layout at a quarter of the width, stride 8
    # (8x8 deepest map), rates (1, 2, 3) at stride 16 -> (2, 4, 6) at 8 so the atrous taps stay
    # inside the 8x8 map, and 64-wide ASPP/decoder.
    "deeplabv3plus-small": DeepLabConfig(
        backbone="resnet18",
        output_stride=8,
        base_width=16,
        aspp_channels=64,
        aspp_rates=(1, 2, 3),
        decoder_channels=64,
        feature_dim=64,
        low_level_channels=16,
        norm="batch",
        group_norm_groups=8,
    ),
}


def make_norm_layer(norm: str, groups: int = 32) -> NormLayer:
    """The ``norm_layer`` factory named by a config: ``"batch"`` or ``"group"``."""
    if norm == "batch":
        return nn.BatchNorm2d
    if norm == "group":
        return group_norm(groups)
    raise ValueError(f"unknown norm {norm!r}; valid: 'batch', 'group'")


def _conv_norm_relu(
    in_ch: int, out_ch: int, kernel: int, norm_layer: NormLayer, dilation: int = 1
) -> list[nn.Module]:
    pad = dilation * (kernel // 2)
    return [
        nn.Conv2d(in_ch, out_ch, kernel, padding=pad, dilation=dilation, bias=False),
        norm_layer(out_ch),
        nn.ReLU(inplace=True),
    ]


def _init_head(module: nn.Module) -> None:
    # ZS3 / DeepLab reference initialisation of the head.
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d | nn.GroupNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class ASPP(nn.Module):
    """Atrous Spatial Pyramid Pooling (DeepLabv3 Sec. 3.3).

    Args:
        in_channels: Channels of the backbone's last stage.
        out_channels: Width of each branch and of the projection.
        rates: The three atrous rates at the backbone's actual output stride.
        norm_layer: Factory ``channels -> module``.
        dropout: Dropout after the projection.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        rates: tuple[int, int, int],
        *,
        norm_layer: NormLayer = nn.BatchNorm2d,
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        self.convs = nn.ModuleList(
            [nn.Sequential(*_conv_norm_relu(in_channels, out_channels, 1, norm_layer))]
            + [
                nn.Sequential(*_conv_norm_relu(in_channels, out_channels, 3, norm_layer, r))
                for r in rates
            ]
        )
        self.pool = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), *_conv_norm_relu(in_channels, out_channels, 1, norm_layer)
        )
        self.project = nn.Sequential(
            *_conv_norm_relu(5 * out_channels, out_channels, 1, norm_layer), nn.Dropout(dropout)
        )
        _init_head(self)

    def forward(self, x: Tensor) -> Tensor:
        """(B, C_in, h, w) -> (B, out_channels, h, w)."""
        branches = [conv(x) for conv in self.convs]
        pooled = F.interpolate(self.pool(x), size=x.shape[-2:], mode="bilinear", align_corners=True)
        return self.project(torch.cat([*branches, pooled], dim=1))


class DeepLabDecoder(nn.Module):
    """The DeepLabv3+ decoder up to (not including) the classifier.

    Args:
        in_channels: ASPP output channels.
        low_level_in: Channels of the backbone's ``low_level`` (layer1) features.
        low_level_channels: Width of the low-level projection (48 in the paper).
        decoder_channels: Width of the first 3x3 convolution.
        feature_dim: Width of the second 3x3 convolution (the output feature).
        norm_layer: Factory ``channels -> module``.
        dropout: Dropout after the first and the second 3x3 convolution.
    """

    def __init__(
        self,
        in_channels: int,
        low_level_in: int,
        *,
        low_level_channels: int = 48,
        decoder_channels: int = 256,
        feature_dim: int = 256,
        norm_layer: NormLayer = nn.BatchNorm2d,
        dropout: tuple[float, float] = (0.5, 0.1),
    ) -> None:
        super().__init__()
        self.low_level_proj = nn.Sequential(
            *_conv_norm_relu(low_level_in, low_level_channels, 1, norm_layer)
        )
        self.fuse = nn.Sequential(
            *_conv_norm_relu(in_channels + low_level_channels, decoder_channels, 3, norm_layer),
            nn.Dropout(dropout[0]),
            *_conv_norm_relu(decoder_channels, feature_dim, 3, norm_layer),
            nn.Dropout(dropout[1]),
        )
        _init_head(self)

    def forward(self, x: Tensor, low_level: Tensor) -> Tensor:
        """ASPP output (B, C, h, w) and layer1 features (B, C_low, H/4, W/4) ->
        features (B, feature_dim, H/4, W/4)."""
        low = self.low_level_proj(low_level)
        x = F.interpolate(x, size=low.shape[-2:], mode="bilinear", align_corners=True)
        return self.fuse(torch.cat([x, low], dim=1))


class DeepLabV3Plus(nn.Module):
    """DeepLabv3+ with the final classifier kept apart from the feature extractor.

    Args:
        backbone: A ResNet with ``forward_features`` returning ``low_level`` and ``out``.
        aspp: Applied to the backbone's ``out``.
        decoder: Fuses the ASPP output with ``low_level`` into the pixel features.
        classifier: A 1x1 ``nn.Conv2d`` from ``feature_dim`` to the class count.
    """

    def __init__(
        self,
        *,
        backbone: ResNet,
        aspp: ASPP,
        decoder: DeepLabDecoder,
        classifier: nn.Conv2d,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.aspp = aspp
        self.decoder = decoder
        self.classifier = classifier

    @classmethod
    def from_config(cls, cfg: DeepLabConfig) -> DeepLabV3Plus:
        """Build the backbone, ASPP, decoder and classifier that ``cfg`` describes."""
        if cfg.backbone not in RESNETS:
            raise KeyError(
                f"unknown DeepLab backbone {cfg.backbone!r}; valid: {', '.join(sorted(RESNETS))}"
            )
        scaled = [r * 16 / cfg.output_stride for r in cfg.aspp_rates]
        if any(s != int(s) or s < 1 for s in scaled):
            raise ValueError(
                f"aspp_rates {cfg.aspp_rates} (given at output stride 16) do not rescale to "
                f"positive integers at output stride {cfg.output_stride}"
            )
        rates = (int(scaled[0]), int(scaled[1]), int(scaled[2]))
        norm_layer = make_norm_layer(cfg.norm, cfg.group_norm_groups)
        backbone = build_resnet(
            cfg.backbone,
            output_stride=cfg.output_stride,
            norm_layer=norm_layer,
            base_width=cfg.base_width,
            multi_grid=cfg.multi_grid,
        )
        aspp = ASPP(
            backbone.out_channels,
            cfg.aspp_channels,
            rates,
            norm_layer=norm_layer,
            dropout=cfg.aspp_dropout,
        )
        decoder = DeepLabDecoder(
            cfg.aspp_channels,
            backbone.low_level_channels,
            low_level_channels=cfg.low_level_channels,
            decoder_channels=cfg.decoder_channels,
            feature_dim=cfg.feature_dim,
            norm_layer=norm_layer,
            dropout=cfg.decoder_dropout,
        )
        classifier = nn.Conv2d(cfg.feature_dim, cfg.num_classes, 1)
        _init_head(classifier)
        return cls(backbone=backbone, aspp=aspp, decoder=decoder, classifier=classifier)

    @property
    def feature_dim(self) -> int:
        return self.classifier.in_channels

    @property
    def num_classes(self) -> int:
        return self.classifier.out_channels

    def forward_features(self, images: Tensor) -> Tensor:
        """Pre-classifier pixel features, what ZS3's generator imitates.

        Args:
            images: (B, 3, H, W).

        Returns:
            (B, feature_dim, H/4, W/4) (sizes rounded up), non-negative (post-ReLU). In training
            mode the decoder's last Dropout(0.1) is applied; call ``eval()`` to extract the
            clean features a generator should match.
        """
        feats = self.backbone.forward_features(images)
        return self.decoder(self.aspp(feats["out"]), feats["low_level"])

    def classify(self, features: Tensor, size: tuple[int, int] | None = None) -> Tensor:
        """Apply the classifier to features, optionally upsampling the logits.

        Args:
            features: (B, feature_dim, h, w), real or generated.
            size: Output (H, W); ``None`` keeps (h, w).

        Returns:
            Logits (B, num_classes, H, W).
        """
        logits = self.classifier(features)
        if size is not None and tuple(logits.shape[-2:]) != tuple(size):
            logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=True)
        return logits

    def forward(self, images: Tensor) -> Tensor:
        """Logits (B, num_classes, H, W) at the input resolution, for images (B, 3, H, W)."""
        return self.classify(self.forward_features(images), size=tuple(images.shape[-2:]))

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the classifier by a freshly initialised one with ``num_classes`` outputs
        (ZS3 retrains it on seen + unseen classes), on the old one's device and dtype."""
        old = self.classifier
        new = nn.Conv2d(old.in_channels, num_classes, 1)
        _init_head(new)
        self.classifier = new.to(device=old.weight.device, dtype=old.weight.dtype)

    def backbone_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters of the pretrained backbone (ZS3 trains them at 1x the learning rate)."""
        return self.backbone.parameters()

    def head_parameters(self) -> Iterator[nn.Parameter]:
        """ASPP, decoder and classifier parameters (ZS3 trains them at 10x)."""
        for module in (self.aspp, self.decoder, self.classifier):
            yield from module.parameters()


def build_deeplab(preset: str | DeepLabConfig, **overrides) -> DeepLabV3Plus:
    """Build from a preset name of :data:`DEEPLAB_PRESETS` (or a config), with field overrides.

    Example: ``build_deeplab("deeplabv3plus-small", num_classes=9)``.
    """
    if isinstance(preset, str):
        if preset not in DEEPLAB_PRESETS:
            raise KeyError(
                f"unknown DeepLab preset {preset!r}; valid: {', '.join(sorted(DEEPLAB_PRESETS))}"
            )
        preset = DEEPLAB_PRESETS[preset]
    valid = {f.name for f in fields(DeepLabConfig)}
    unknown = sorted(set(overrides) - valid)
    if unknown:
        raise TypeError(f"unknown DeepLabConfig field(s) {unknown}; valid: {sorted(valid)}")
    cfg = replace(preset, **overrides)
    return DeepLabV3Plus.from_config(cfg)
