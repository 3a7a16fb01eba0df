"""Fast neural style transfer network (exercises the "instance" norm kind).

Architecture (Johnson et al., "Perceptual Losses for Real-Time Style Transfer", 2016, with
Ulyanov et al.'s InstanceNorm, laid out as PyTorch's ``examples/fast_neural_style``
``TransformerNet``):

- ``ConvLayer`` = ``ReflectionPad2d + Conv2d``; every conv except the last is followed by an
  ``InstanceNorm2d(affine=True)`` and ReLU;
- encoder: conv 9x9 (3 -> w), conv 3x3 stride 2 (w -> 2w), conv 3x3 stride 2 (2w -> 4w);
- three residual blocks at 4w channels (``conv-IN-ReLU-conv-IN`` + identity);
- decoder: two ``UpsampleConvLayer`` (``nn.Upsample(scale_factor=2, mode="nearest")`` + conv
  3x3; 4w -> 2w -> w), conv 9x9 (w -> 3).

The original uses w = 32 and five residual blocks; this one uses w = 16 and three, to keep CPU
inference well under 50 ms at 64x64.

Eval-mode InstanceNorm normally uses per-sample statistics; the norm after the second
downsampling conv is built with ``track_running_stats=True``, so in eval mode it normalises with
its (seeded random) running statistics instead, covering that path too.
"""

from __future__ import annotations

import torch
from torch import nn

from ._common import build, randn

SEED = 5


class ConvLayer(nn.Module):
    """Reflection padding followed by a convolution (keeps size for stride 1)."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int = 1) -> None:
        super().__init__()
        self.pad = nn.ReflectionPad2d(kernel // 2)
        self.conv = nn.Conv2d(in_ch, out_ch, kernel, stride=stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.pad(x))


class UpsampleConvLayer(nn.Module):
    """Nearest-neighbour x2 upsampling followed by a :class:`ConvLayer` (no transposed conv)."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, scale: int = 2) -> None:
        super().__init__()
        self.up = nn.Upsample(scale_factor=scale, mode="nearest")
        self.conv = ConvLayer(in_ch, out_ch, kernel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.up(x))


class ResidualBlock(nn.Module):
    """``conv3x3-IN-ReLU-conv3x3-IN`` plus the identity."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = ConvLayer(channels, channels, 3)
        self.in1 = nn.InstanceNorm2d(channels, affine=True)
        self.conv2 = ConvLayer(channels, channels, 3)
        self.in2 = nn.InstanceNorm2d(channels, affine=True)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.in1(self.conv1(x)))
        return x + self.in2(self.conv2(out))


class TransformerNet(nn.Module):
    """Johnson et al. image transformation network with InstanceNorm (see module doc)."""

    def __init__(self, width: int = 16, num_res: int = 3) -> None:
        super().__init__()
        w1, w2, w4 = width, 2 * width, 4 * width
        self.conv1 = ConvLayer(3, w1, 9)
        self.in1 = nn.InstanceNorm2d(w1, affine=True)
        self.conv2 = ConvLayer(w1, w2, 3, stride=2)
        self.in2 = nn.InstanceNorm2d(w2, affine=True, track_running_stats=True)
        self.conv3 = ConvLayer(w2, w4, 3, stride=2)
        self.in3 = nn.InstanceNorm2d(w4, affine=True)
        self.res = nn.Sequential(*(ResidualBlock(w4) for _ in range(num_res)))
        self.deconv1 = UpsampleConvLayer(w4, w2, 3)
        self.in4 = nn.InstanceNorm2d(w2, affine=True)
        self.deconv2 = UpsampleConvLayer(w2, w1, 3)
        self.in5 = nn.InstanceNorm2d(w1, affine=True)
        self.deconv3 = ConvLayer(w1, 3, 9)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu(self.in1(self.conv1(x)))
        y = self.relu(self.in2(self.conv2(y)))
        y = self.relu(self.in3(self.conv3(y)))
        y = self.res(y)
        y = self.relu(self.in4(self.deconv1(y)))
        y = self.relu(self.in5(self.deconv2(y)))
        return self.deconv3(y)


def style_transfer() -> nn.Module:
    """Fast style transfer network (16/32/64 channels, 3 residual blocks), in eval mode."""
    return build(TransformerNet, SEED)


def example_inputs() -> tuple[torch.Tensor, ...]:
    """One 64x64 RGB image."""
    return (randn(1, 3, 64, 64, seed=150),)


def second_size_inputs() -> tuple[torch.Tensor, ...]:
    """Two 48x80 images (dynamic batch, height and width)."""
    return (randn(2, 3, 48, 80, seed=151),)
