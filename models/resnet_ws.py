"""ResNet-style net with weight-standardized convolutions (BiT / timm ResNetV2 style) and GroupNorm.

Weight standardization (Qiao et al., 2019) normalises each conv filter before use: for output
channel ``o``, ``W'[o] = (W[o] - mean(W[o])) / sqrt(var(W[o]) + eps)`` over its ``I * kh * kw``
values (biased variance). It is a norm of *parameters*: at inference ``W'`` is a constant, so a
correct export folds it and it is not a norm node. Three parameter norms occur, in the spellings of
the libraries that use them:

- :class:`TimmStdConv2d` -- timm's ``StdConv2d`` (``timm/layers/std_conv.py``), eps 1e-6::

      weight = F.batch_norm(self.weight.reshape(1, self.out_channels, -1), None, None,
                            training=True, momentum=0., eps=self.eps).reshape_as(self.weight)

- :class:`BiTStdConv2d` -- Big Transfer's ``StdConv2d`` (google-research/big_transfer,
  ``bit_pytorch/models.py``), eps 1e-10::

      v, m = torch.var_mean(w, dim=[1, 2, 3], keepdim=True, unbiased=False)
      w = (w - m) / torch.sqrt(v + 1e-10)

- one 1x1 shortcut conv wrapped in ``torch.nn.utils.parametrizations.weight_norm``:
  ``W[o] = g[o] * V[o] / ||V[o]||`` (``g`` seeded ``||V[o]|| * (1 + 0.1 N(0, 1))``).

Layout (32x32 RGB input, 10 classes)::

    stem    TimmStdConv 3x3 3 -> 32          GroupNorm(8, 32), ReLU
    layer1  BasicBlock 32 -> 32               TimmStdConv x2, GroupNorm(8)
    layer2  BasicBlock 32 -> 64, stride 2     BiTStdConv x2, GroupNorm(16);
                                              shortcut weight_norm Conv1x1 + BatchNorm2d
    layer3  BasicBlock 64 -> 128, stride 2    TimmStdConv x2, GroupNorm(32);
                                              shortcut BiTStdConv 1x1 + GroupNorm(32)
    head    global average pool, Linear 128 -> 10

Norm nodes a correct export keeps: 8 GroupNorm, 1 eval BatchNorm (after a conv, so foldable); the
5 + 3 weight standardizations and the weight norm are folded into constants.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

from ._common import build, randn

SEED = 10


def get_padding(kernel_size: int, stride: int = 1, dilation: int = 1) -> int:
    """timm's "same"-style symmetric padding for a conv."""
    return ((stride - 1) + dilation * (kernel_size - 1)) // 2


class TimmStdConv2d(nn.Conv2d):
    """Conv2d with weight standardization, timm's spelling (``F.batch_norm`` on the weight)."""

    def __init__(
        self,
        in_channel: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        padding: int | None = None,
        dilation: int = 1,
        groups: int = 1,
        bias: bool = False,
        eps: float = 1e-6,
    ) -> None:
        if padding is None:
            padding = get_padding(kernel_size, stride, dilation)
        super().__init__(
            in_channel,
            out_channels,
            kernel_size,
            stride=stride,
            padding=padding,
            dilation=dilation,
            groups=groups,
            bias=bias,
        )
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = F.batch_norm(
            self.weight.reshape(1, self.out_channels, -1),
            None,
            None,
            training=True,
            momentum=0.0,
            eps=self.eps,
        ).reshape_as(self.weight)
        x = F.conv2d(x, weight, self.bias, self.stride, self.padding, self.dilation, self.groups)
        return x


class BiTStdConv2d(nn.Conv2d):
    """Conv2d with weight standardization, Big Transfer's spelling (``var_mean``, eps 1e-10)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        v, m = torch.var_mean(w, dim=[1, 2, 3], keepdim=True, unbiased=False)
        w = (w - m) / torch.sqrt(v + 1e-10)
        return F.conv2d(x, w, self.bias, self.stride, self.padding, self.dilation, self.groups)


def group_norm(channels: int) -> nn.GroupNorm:
    """``GroupNorm`` with 4 channels per group (8, 16, 32 groups for 32, 64, 128 channels)."""
    return nn.GroupNorm(channels // 4, channels)


def weight_norm_conv1x1(cin: int, cout: int, stride: int) -> nn.Conv2d:
    """A 1x1 conv under ``weight_norm`` (dim 0) whose magnitudes ``g`` differ from ``||V||``."""
    conv = weight_norm(nn.Conv2d(cin, cout, 1, stride=stride, bias=False))
    with torch.no_grad():
        g = conv.parametrizations.weight.original0
        g.mul_(1.0 + 0.1 * torch.randn_like(g))
    return conv


class BasicBlock(nn.Module):
    """ResNet basic block ``conv3x3 -> GN -> ReLU -> conv3x3 -> GN``, plus the (projected) shortcut."""

    def __init__(
        self,
        conv: type[nn.Conv2d],
        cin: int,
        cout: int,
        stride: int = 1,
        shortcut: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.conv1 = conv(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.norm1 = group_norm(cout)
        self.conv2 = conv(cout, cout, 3, padding=1, bias=False)
        self.norm2 = group_norm(cout)
        self.shortcut = shortcut if shortcut is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.norm1(self.conv1(x)))
        h = self.norm2(self.conv2(h))
        return F.relu(h + self.shortcut(x))


class ResNetWS(nn.Module):
    """Stem and three basic blocks with weight-standardized / weight-normed convs, pool, head."""

    def __init__(self, in_ch: int = 3, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(TimmStdConv2d(in_ch, 32, 3), group_norm(32), nn.ReLU())
        self.layer1 = BasicBlock(TimmStdConv2d, 32, 32)
        short2 = nn.Sequential(weight_norm_conv1x1(32, 64, 2), nn.BatchNorm2d(64))
        self.layer2 = BasicBlock(BiTStdConv2d, 32, 64, stride=2, shortcut=short2)
        short3 = nn.Sequential(BiTStdConv2d(64, 128, 1, stride=2, bias=False), group_norm(128))
        self.layer3 = BasicBlock(TimmStdConv2d, 64, 128, stride=2, shortcut=short3)
        self.head = nn.Linear(128, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer3(self.layer2(self.layer1(self.stem(x))))
        return self.head(x.mean(dim=(-2, -1)))


def resnet_ws() -> nn.Module:
    """The weight-standardized ResNet-style net, in eval mode."""
    return build(ResNetWS, SEED)


def example_inputs() -> tuple[torch.Tensor, ...]:
    """One 32x32 RGB image."""
    return (randn(1, 3, 32, 32, seed=210),)


def second_size_inputs() -> tuple[torch.Tensor, ...]:
    """Two 48x40 images (dynamic batch, height and width)."""
    return (randn(2, 3, 48, 40, seed=211),)
