"""ResNet backbones (He et al., "Deep Residual Learning for Image Recognition", CVPR 2016).

The layout and parameter names follow torchvision's ``resnet18/34/50/101`` exactly (``conv1``,
``bn1``, ``layer1``..``layer4``, ``downsample.0/1``, optional ``fc``), so ImageNet weights
published by torchvision load without renaming. The Bottleneck is "ResNet v1.5": the stride sits
on the 3x3 convolution (``conv2``), not on the first 1x1.

For segmentation (DeepLab, Chen et al. 2017/2018) the output stride is reduced from 32 to 16 or 8
by replacing the stride of ``layer4`` (and ``layer3``) with dilation, as torchvision's
``replace_stride_with_dilation`` does: the first block of a dilated stage keeps the previous
dilation and the following blocks use the new one. ``multi_grid`` optionally multiplies the
dilation of each ``layer4`` block (DeepLabv3's "Multi-Grid"; the ZS3 reference uses (1, 2, 4)).

Differences from torchvision, all weight-compatible:
- ``BasicBlock`` accepts dilation > 1 (torchvision raises), so ResNet-18/34 can run at stride 8.
- ``base_width`` is the stem width (64 in every torchvision model); stage widths are
  ``base_width * (1, 2, 4, 8)``. Values below 64 give the tiny CPU variants. (torchvision's own
  ``width_per_group`` for ResNeXt is not supported.)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

__all__ = [
    "BasicBlock",
    "Bottleneck",
    "ResNet",
    "RESNETS",
    "TORCHVISION_WEIGHTS",
    "build_resnet",
    "group_norm",
    "load_torchvision_resnet",
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
]

NormLayer = Callable[[int], nn.Module]


def group_norm(num_groups: int = 32) -> NormLayer:
    """A ``norm_layer`` factory making GroupNorm, for batches too small for BatchNorm.

    The group count is reduced to ``gcd(num_groups, channels)`` so narrow layers of the tiny
    variants (e.g. 16 channels) still get a valid GroupNorm.

    Args:
        num_groups: Upper bound on the number of groups per layer.
    """

    def make(num_channels: int) -> nn.GroupNorm:
        return nn.GroupNorm(math.gcd(num_groups, num_channels), num_channels)

    return make


def _conv3x3(in_ch: int, out_ch: int, stride: int = 1, dilation: int = 1) -> nn.Conv2d:
    return nn.Conv2d(
        in_ch, out_ch, 3, stride=stride, padding=dilation, dilation=dilation, bias=False
    )


def _conv1x1(in_ch: int, out_ch: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with an identity shortcut (ResNet-18/34)."""

    expansion = 1

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        dilation: int = 1,
        norm_layer: NormLayer = nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        self.conv1 = _conv3x3(inplanes, planes, stride, dilation)
        self.bn1 = norm_layer(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(planes, planes, dilation=dilation)
        self.bn2 = norm_layer(planes)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (strided, v1.5) -> 1x1 with a 4x channel expansion (ResNet-50/101)."""

    expansion = 4

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        dilation: int = 1,
        norm_layer: NormLayer = nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        self.conv1 = _conv1x1(inplanes, planes)
        self.bn1 = norm_layer(planes)
        self.conv2 = _conv3x3(planes, planes, stride, dilation)
        self.bn2 = norm_layer(planes)
        self.conv3 = _conv1x1(planes, planes * self.expansion)
        self.bn3 = norm_layer(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


Block = type[BasicBlock] | type[Bottleneck]

# Which stages trade their stride for dilation, per output stride (torchvision's
# replace_stride_with_dilation for layer2, layer3, layer4).
_DILATE_STAGES: dict[int, tuple[bool, bool, bool]] = {
    32: (False, False, False),
    16: (False, False, True),
    8: (False, True, True),
}


class ResNet(nn.Module):
    """A torchvision-compatible ResNet with a dense-prediction feature interface.

    Args:
        block: ``BasicBlock`` or ``Bottleneck``.
        layers: Number of blocks in each of the four stages.
        output_stride: 8, 16 or 32; the stride of ``layer4``'s output w.r.t. the input.
        norm_layer: Factory ``channels -> module``; ``nn.BatchNorm2d`` by default, or
            ``group_norm(...)`` for small batches.
        base_width: Stem width; stage widths are ``base_width * (1, 2, 4, 8)`` (64 in torchvision).
        multi_grid: Optional per-block multipliers of ``layer4``'s dilation (one per block).
        num_classes: If given, keep an ImageNet head (``avgpool`` + ``fc``); segmentation
            models leave it ``None``.
        zero_init_residual: Zero the last norm of each residual branch (torchvision option).
    """

    def __init__(
        self,
        block: Block,
        layers: Sequence[int],
        *,
        output_stride: int = 32,
        norm_layer: NormLayer | None = None,
        base_width: int = 64,
        multi_grid: Sequence[int] | None = None,
        num_classes: int | None = None,
        zero_init_residual: bool = False,
    ) -> None:
        super().__init__()
        if output_stride not in _DILATE_STAGES:
            raise ValueError(
                f"ResNet output_stride must be one of {sorted(_DILATE_STAGES)}, got {output_stride}"
            )
        if len(layers) != 4:
            raise ValueError(f"ResNet needs 4 stage depths, got {list(layers)}")
        if multi_grid is not None and len(multi_grid) != layers[3]:
            raise ValueError(
                f"multi_grid needs one multiplier per layer4 block ({layers[3]}), "
                f"got {list(multi_grid)}"
            )
        norm_layer = norm_layer or nn.BatchNorm2d
        self._norm_layer = norm_layer
        self.output_stride = output_stride
        self.inplanes = base_width
        self.dilation = 1
        dilate = _DILATE_STAGES[output_stride]

        self.conv1 = nn.Conv2d(3, base_width, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = norm_layer(base_width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, base_width, layers[0])
        self.layer2 = self._make_layer(block, base_width * 2, layers[1], 2, dilate[0])
        self.layer3 = self._make_layer(block, base_width * 4, layers[2], 2, dilate[1])
        self.layer4 = self._make_layer(
            block, base_width * 8, layers[3], 2, dilate[2], multi_grid=multi_grid
        )

        self.low_level_channels = base_width * block.expansion
        self.out_channels = base_width * 8 * block.expansion
        if num_classes is not None:
            self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
            self.fc = nn.Linear(self.out_channels, num_classes)
        else:
            self.avgpool = None
            self.fc = None

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d | nn.GroupNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:
            # Each residual branch then starts as the identity (Goyal et al. 2017).
            for m in self.modules():
                if isinstance(m, Bottleneck):
                    nn.init.zeros_(m.bn3.weight)
                elif isinstance(m, BasicBlock):
                    nn.init.zeros_(m.bn2.weight)

    def _make_layer(
        self,
        block: Block,
        planes: int,
        blocks: int,
        stride: int = 1,
        dilate: bool = False,
        multi_grid: Sequence[int] | None = None,
    ) -> nn.Sequential:
        norm_layer = self._norm_layer
        previous_dilation = self.dilation
        if dilate:
            self.dilation *= stride
            stride = 1
        grid = list(multi_grid) if multi_grid is not None else [1] * blocks
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                _conv1x1(self.inplanes, planes * block.expansion, stride),
                norm_layer(planes * block.expansion),
            )
        # With multi-grid every block, the first included, uses the stage dilation times its
        # multiplier (DeepLabv3 Sec. 3.2); without it the first block keeps the previous
        # dilation exactly as torchvision does.
        first_dilation = self.dilation * grid[0] if multi_grid is not None else previous_dilation
        layers: list[nn.Module] = [
            block(self.inplanes, planes, stride, downsample, first_dilation, norm_layer)
        ]
        self.inplanes = planes * block.expansion
        for i in range(1, blocks):
            layers.append(
                block(
                    self.inplanes,
                    planes,
                    dilation=self.dilation * grid[i],
                    norm_layer=norm_layer,
                )
            )
        return nn.Sequential(*layers)

    def forward_features(self, x: Tensor) -> dict[str, Tensor]:
        """Dense features for a segmentation head.

        Args:
            x: Images, (B, 3, H, W).

        Returns:
            ``low_level``: ``layer1`` output, (B, low_level_channels, H/4, W/4);
            ``out``: ``layer4`` output, (B, out_channels, H/os, W/os) (sizes rounded up).
        """
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        low_level = self.layer1(x)
        out = self.layer4(self.layer3(self.layer2(low_level)))
        return {"low_level": low_level, "out": out}

    def forward(self, x: Tensor) -> Tensor:
        """ImageNet logits (B, num_classes); only for a model built with ``num_classes``."""
        if self.fc is None or self.avgpool is None:
            raise RuntimeError(
                "this ResNet has no classification head (built with num_classes=None); "
                "use forward_features(x) for dense features"
            )
        feats = self.forward_features(x)["out"]
        return self.fc(torch.flatten(self.avgpool(feats), 1))


def resnet18(**kwargs) -> ResNet:
    """ResNet-18 (BasicBlock, [2, 2, 2, 2]); keyword arguments as in :class:`ResNet`."""
    return ResNet(BasicBlock, [2, 2, 2, 2], **kwargs)


def resnet34(**kwargs) -> ResNet:
    """ResNet-34 (BasicBlock, [3, 4, 6, 3]); keyword arguments as in :class:`ResNet`."""
    return ResNet(BasicBlock, [3, 4, 6, 3], **kwargs)


def resnet50(**kwargs) -> ResNet:
    """ResNet-50 (Bottleneck, [3, 4, 6, 3]); keyword arguments as in :class:`ResNet`."""
    return ResNet(Bottleneck, [3, 4, 6, 3], **kwargs)


def resnet101(**kwargs) -> ResNet:
    """ResNet-101 (Bottleneck, [3, 4, 23, 3]); keyword arguments as in :class:`ResNet`."""
    return ResNet(Bottleneck, [3, 4, 23, 3], **kwargs)


RESNETS: dict[str, Callable[..., ResNet]] = {
    "resnet18": resnet18,
    "resnet34": resnet34,
    "resnet50": resnet50,
    "resnet101": resnet101,
}

# ImageNet weights torchvision publishes under https://download.pytorch.org/models/<file>
# (IMAGENET1K_V1, and IMAGENET1K_V2 where it exists). Named in errors so a user knows what to fetch.
TORCHVISION_WEIGHTS: dict[str, tuple[str, ...]] = {
    "resnet18": ("resnet18-f37072fd.pth",),
    "resnet34": ("resnet34-b627a593.pth",),
    "resnet50": ("resnet50-0676ba61.pth", "resnet50-11ad3fa6.pth"),
    "resnet101": ("resnet101-63fe2227.pth", "resnet101-cd907fc2.pth"),
}


def build_resnet(name: str, **kwargs) -> ResNet:
    """Build a ResNet by name (a key of :data:`RESNETS`); kwargs go to :class:`ResNet`."""
    if name not in RESNETS:
        raise KeyError(f"unknown ResNet {name!r}; valid names: {', '.join(RESNETS)}")
    return RESNETS[name](**kwargs)


# Keys a torchvision checkpoint may carry that a segmentation backbone has no use for.
_DROPPABLE_PREFIXES = ("fc.",)
# BatchNorm step counters: absent from checkpoints saved before PyTorch 0.4.1 (e.g. the original
# resnet101-5d3b4d8f.pth); they do not affect inference, so the model's own value is kept.
_OPTIONAL_SUFFIXES = (".num_batches_tracked",)


def load_torchvision_resnet(model: ResNet, path: str | Path) -> ResNet:
    """Load an ImageNet checkpoint in torchvision's format into ``model``, strictly.

    ``fc.*`` keys are dropped when ``model`` has no head (and only those); BatchNorm
    ``num_batches_tracked`` counters may be absent. Anything else missing, unexpected or
    misshaped raises a ``ValueError`` listing every such key with its shapes.

    Args:
        model: The ResNet to fill; its architecture must match the checkpoint.
        path: A ``.pth`` file holding a flat ``{name: tensor}`` state dict.

    Returns:
        ``model``, loaded.
    """
    path = Path(path)
    if not path.is_file():
        from zeroseg.sources import missing_file

        raise missing_file("resnet", path)
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, Mapping) or not all(
        isinstance(k, str) and isinstance(v, Tensor) for k, v in state.items()
    ):
        top = list(state)[:5] if isinstance(state, Mapping) else type(state).__name__
        raise ValueError(
            f"{path} is not a torchvision state dict (a flat mapping of names to tensors); "
            f"found {top}"
        )

    expected = model.state_dict()
    if model.fc is None:
        state = {k: v for k, v in state.items() if not k.startswith(_DROPPABLE_PREFIXES)}
    missing = [k for k in expected if k not in state and not k.endswith(_OPTIONAL_SUFFIXES)]
    unexpected = [k for k in state if k not in expected]
    misshaped = [
        k for k in state if k in expected and tuple(state[k].shape) != tuple(expected[k].shape)
    ]
    if missing or unexpected or misshaped:
        lines = [f"checkpoint {path} does not match the {type(model).__name__}:"]
        lines += [f"  missing: {k} (model {tuple(expected[k].shape)})" for k in missing]
        lines += [f"  unexpected: {k} (checkpoint {tuple(state[k].shape)})" for k in unexpected]
        lines += [
            f"  shape mismatch: {k} (checkpoint {tuple(state[k].shape)}, "
            f"model {tuple(expected[k].shape)})"
            for k in misshaped
        ]
        if any(k.startswith("module.") for k in unexpected):
            lines.append("  (keys start with 'module.': strip the DataParallel prefix first)")
        raise ValueError("\n".join(lines))

    full = dict(state)
    for k in expected:
        if k not in full:  # only allow-listed counters reach here
            full[k] = expected[k]
    model.load_state_dict(full, strict=True)
    return model
