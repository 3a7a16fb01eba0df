"""Conv net with GroupNorm written by hand, one block per "group norm from scratch" spelling.

Architecture (32x32 RGB input, 10 classes)::

    stem    Conv3x3  3 -> 64            32x32   GroupNormView     G=32  + SiLU
    block1  Conv3x3 64 -> 128 stride 2  16x16   GroupNormSplit    G=8   + SiLU
    block2  Conv3x3 128 -> 128          16x16   GroupNormUnbiased G=32  + SiLU, residual
    block3  Conv3x3 128 -> 256 stride 2  8x8    GroupNorm5d       G=32  + SiLU
    head    global average pool, Linear 256 -> 10

GroupNorm (Wu & He, 2018) normalises each sample over the ``n = (C / G) * H * W`` values of each
channel group: ``y = (x - mean) / sqrt(var + eps) * w_c + b_c`` with the biased variance. The four
modules are the spellings found in tutorials and re-implementations:

- :class:`GroupNormView` -- view into ``[N, G, -1]``, ``x.var(-1, unbiased=False)``, ``sqrt`` and
  divide, affine parameters shaped ``[1, C, 1, 1]``;
- :class:`GroupNormSplit` -- ``x.split(C // G, dim=1)``, ``torch.var_mean`` over ``[1, 2, 3]`` of
  each chunk, ``torch.cat``; affine applied after the cat. One chunk per group, so the graph grows
  with G: kept at G=8;
- :class:`GroupNormUnbiased` -- the widely copied tutorial module verbatim, whose ``x.var(-1,
  keepdim=True)`` is the *unbiased* variance ``var_u = var * n / (n - 1)``. It is not GroupNorm,
  but exactly a rescaled one: with ``eps' = eps * (n - 1) / n``,
  ``(x - mean) / sqrt(var_u + eps) = sqrt((n - 1) / n) * (x - mean) / sqrt(var + eps')``, so it is
  ``GroupNorm(eps')`` with weight ``w * sqrt((n - 1) / n)`` and the same bias. Here ``n = 4 * 16 *
  16 = 1024``, which stays fixed only while H and W do;
- :class:`GroupNorm5d` -- the paper's code: reshape into ``[N, G, C // G, H, W]``, moments over
  ``(2, 3, 4)`` with the variance spelled ``(x - mean) * (x - mean)``, eps 1e-6.

Only the batch axis is dynamic: the unbiased module's correction factor depends on H and W.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ._common import build, randn

SEED = 9


class GroupNormView(nn.Module):
    """GroupNorm: view into groups, biased ``var``, ``(var + eps).sqrt()`` and divide."""

    norm_kind: ClassVar[str] = "group"

    def __init__(self, num_features: int, num_groups: int = 32, eps: float = 1e-5) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(1, num_features, 1, 1))
        self.bias = nn.Parameter(torch.zeros(1, num_features, 1, 1))
        self.num_groups = num_groups
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        N, C, H, W = x.size()
        G = self.num_groups
        x = x.view(N, G, -1)
        mean = x.mean(-1, keepdim=True)
        var = x.var(-1, keepdim=True, unbiased=False)
        x = (x - mean) / (var + self.eps).sqrt()
        x = x.view(N, C, H, W)
        return x * self.weight + self.bias


class GroupNormSplit(nn.Module):
    """GroupNorm: split the channels into groups, ``var_mean`` per chunk, concatenate."""

    norm_kind: ClassVar[str] = "group"

    def __init__(self, num_features: int, num_groups: int = 8, eps: float = 1e-5) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))
        self.num_groups = num_groups
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        channels_per_group = x.shape[1] // self.num_groups
        out = []
        for t in x.split(channels_per_group, dim=1):
            var, mean = torch.var_mean(t, dim=[1, 2, 3], keepdim=True, unbiased=False)
            out.append((t - mean) / torch.sqrt(var + self.eps))
        x = torch.cat(out, 1)
        return x * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)


class GroupNormUnbiased(nn.Module):
    """The tutorial GroupNorm with the unbiased ``x.var(-1, keepdim=True)`` (not exactly GroupNorm)."""

    norm_kind: ClassVar[str] = "group"

    def __init__(self, num_features: int, num_groups: int = 32, eps: float = 1e-5) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(1, num_features, 1, 1))
        self.bias = nn.Parameter(torch.zeros(1, num_features, 1, 1))
        self.num_groups = num_groups
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        N, C, H, W = x.size()
        G = self.num_groups
        assert C % G == 0
        x = x.view(N, G, -1)
        mean = x.mean(-1, keepdim=True)
        var = x.var(-1, keepdim=True)
        x = (x - mean) / (var + self.eps).sqrt()
        x = x.view(N, C, H, W)
        return x * self.weight + self.bias


class GroupNorm5d(nn.Module):
    """GroupNorm as in Wu & He's paper: reshape to ``[N, G, C // G, H, W]``, moments over (2, 3, 4)."""

    norm_kind: ClassVar[str] = "group"

    def __init__(self, num_features: int, num_groups: int = 32, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(1, num_features, 1, 1))  # the paper's gamma
        self.bias = nn.Parameter(torch.zeros(1, num_features, 1, 1))  # and beta
        self.G = num_groups
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        N, C, H, W = x.shape
        x = x.view(N, self.G, C // self.G, H, W)
        mean = x.mean(dim=(2, 3, 4), keepdim=True)
        d = x - mean
        var = (d * d).mean(dim=(2, 3, 4), keepdim=True)
        x = (x - mean) / torch.sqrt(var + self.eps)
        x = x.view(N, C, H, W)
        return x * self.weight + self.bias


class ConvBlock(nn.Module):
    """``Conv3x3 -> norm -> SiLU``, with the residual when the shape is kept."""

    def __init__(self, cin: int, cout: int, stride: int, norm: nn.Module) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.norm = norm
        self.residual = cin == cout and stride == 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.silu(self.norm(self.conv(x)))
        return x + h if self.residual else h


class TutorialGN(nn.Module):
    """Four conv blocks, one per hand-written GroupNorm spelling, pool and linear head."""

    def __init__(self, in_ch: int = 3, num_classes: int = 10) -> None:
        super().__init__()
        self.blocks = nn.Sequential(
            ConvBlock(in_ch, 64, 1, GroupNormView(64, 32)),
            ConvBlock(64, 128, 2, GroupNormSplit(128, 8)),
            ConvBlock(128, 128, 1, GroupNormUnbiased(128, 32)),
            ConvBlock(128, 256, 2, GroupNorm5d(256, 32)),
        )
        self.head = nn.Linear(256, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(x).mean(dim=(-2, -1)))


def tutorial_gn() -> nn.Module:
    """The four-spelling GroupNorm conv net, in eval mode."""
    return build(TutorialGN, SEED)


def example_inputs() -> tuple[torch.Tensor, ...]:
    """One 32x32 RGB image."""
    return (randn(1, 3, 32, 32, seed=200),)


def second_size_inputs() -> tuple[torch.Tensor, ...]:
    """Three 32x32 images (only the batch is dynamic)."""
    return (randn(3, 3, 32, 32, seed=201),)
