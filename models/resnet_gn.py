"""ResNet-50-style network with GroupNorm instead of BatchNorm (exercises the "group" norm kind).

Architecture: the :class:`models.resnet.ResNet` skeleton with bottleneck blocks (``1x1-3x3-1x1``,
expansion 4, ResNet-50 v1.5 layout at reduced depth ``(2, 2, 2, 2)`` and base widths 32-256, so
128-1024 output channels), every norm layer, including the downsample shortcuts, a
``GroupNorm(32, C)`` as in Wu & He, "Group Normalization" (2018).

GroupNorm normalises over (C/G, H, W) per sample, so unlike BatchNorm it has no running statistics
and its output depends on the spatial size; the per-channel affine parameters are seeded random.
"""

from __future__ import annotations

import torch
from torch import nn

from ._common import build, randn
from .resnet import Bottleneck, ResNet

SEED = 1


def group_norm(channels: int, max_groups: int = 32) -> nn.GroupNorm:
    """``GroupNorm`` with the most groups (at most ``max_groups``) that divide ``channels``."""
    groups = next(g for g in range(min(max_groups, channels), 0, -1) if channels % g == 0)
    return nn.GroupNorm(groups, channels)


def resnet_gn() -> nn.Module:
    """ResNet-50-style bottleneck network with GroupNorm(32), in eval mode."""
    return build(lambda: ResNet(Bottleneck, (2, 2, 2, 2), norm=group_norm), SEED)


def example_inputs() -> tuple[torch.Tensor, ...]:
    """One 64x64 RGB image."""
    return (randn(1, 3, 64, 64, seed=110),)


def second_size_inputs() -> tuple[torch.Tensor, ...]:
    """Two 80x96 images (dynamic batch, height and width)."""
    return (randn(2, 3, 80, 96, seed=111),)
