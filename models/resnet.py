"""ResNet-style image classifier with BatchNorm2d (exercises the "batch" norm kind).

Architecture (He et al., ResNet-18 layout at half width): stem ``conv7x7/2 + BN + ReLU +
maxpool3x3/2``, four stages of two basic blocks (widths 32/64/128/256, stride 2 from the second
stage on, ``conv1x1 + BN`` downsample shortcuts), global average pool and a linear head.

In eval mode every BatchNorm2d normalises with its running statistics, which are seeded random
values (not the identity), so a lowering that ignores or mis-broadcasts them fails numerically.

:class:`ResNet` is generic over the block type and the norm layer; ``models.resnet_gn`` reuses it
with bottleneck blocks and GroupNorm.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from ._common import build, randn

NormLayer = Callable[[int], nn.Module]
"""Builds a 2-d norm layer for a number of channels."""


def conv3x3(in_ch: int, out_ch: int, stride: int = 1) -> nn.Conv2d:
    """3x3 convolution with padding 1 and no bias (a norm follows)."""
    return nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)


def conv1x1(in_ch: int, out_ch: int, stride: int = 1) -> nn.Conv2d:
    """1x1 convolution without bias (a norm follows)."""
    return nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """ResNet basic block: ``conv3x3-norm-relu-conv3x3-norm`` + shortcut, then ReLU."""

    expansion = 1

    def __init__(self, in_ch: int, planes: int, stride: int, norm: NormLayer) -> None:
        super().__init__()
        out_ch = planes * self.expansion
        self.conv1 = conv3x3(in_ch, planes, stride)
        self.bn1 = norm(planes)
        self.conv2 = conv3x3(planes, out_ch)
        self.bn2 = norm(out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_ch != out_ch:
            self.downsample = nn.Sequential(conv1x1(in_ch, out_ch, stride), norm(out_ch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """ResNet bottleneck block (v1.5: stride on the 3x3): ``1x1-3x3-1x1`` with norms, x4 width."""

    expansion = 4

    def __init__(self, in_ch: int, planes: int, stride: int, norm: NormLayer) -> None:
        super().__init__()
        out_ch = planes * self.expansion
        self.conv1 = conv1x1(in_ch, planes)
        self.bn1 = norm(planes)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn2 = norm(planes)
        self.conv3 = conv1x1(planes, out_ch)
        self.bn3 = norm(out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_ch != out_ch:
            self.downsample = nn.Sequential(conv1x1(in_ch, out_ch, stride), norm(out_ch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """ResNet: stem, four stages of ``block``, global average pool, linear classifier."""

    def __init__(
        self,
        block: type[BasicBlock | Bottleneck],
        layers: Sequence[int],
        widths: Sequence[int] = (32, 64, 128, 256),
        norm: NormLayer = nn.BatchNorm2d,
        in_ch: int = 3,
        num_classes: int = 10,
    ) -> None:
        super().__init__()
        stem = widths[0]
        self.conv1 = nn.Conv2d(in_ch, stem, 7, stride=2, padding=3, bias=False)
        self.bn1 = norm(stem)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        stages: list[nn.Module] = []
        ch = stem
        for i, (planes, n) in enumerate(zip(widths, layers, strict=True)):
            blocks: list[nn.Module] = []
            for j in range(n):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(block(ch, planes, stride, norm))
                ch = planes * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(ch, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


SEED = 0


def resnet() -> nn.Module:
    """ResNet-18-layout classifier (basic blocks, widths 32-256) with BatchNorm2d, in eval mode."""
    return build(lambda: ResNet(BasicBlock, (2, 2, 2, 2)), SEED)


def example_inputs() -> tuple[torch.Tensor, ...]:
    """One 64x64 RGB image."""
    return (randn(1, 3, 64, 64, seed=100),)


def second_size_inputs() -> tuple[torch.Tensor, ...]:
    """Two 96x80 images (dynamic batch, height and width)."""
    return (randn(2, 3, 96, 80, seed=101),)
