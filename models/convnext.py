"""ConvNeXt-style image classifier (exercises the "layer" norm kind, channels-first and -last).

Architecture (Liu et al., "A ConvNet for the 2020s", 2022), at reduced size: a patchify stem
(``Conv2d 4x4 stride 4`` + channels-first LayerNorm), four stages (depths 2/2/4/2, widths
32/64/128/256) separated by downsampling layers (channels-first LayerNorm + ``Conv2d 2x2 stride
2``), global average pool, LayerNorm and a linear head.

Each block is ``depthwise Conv 7x7 -> permute to NHWC -> LayerNorm -> Linear(4x) -> GELU ->
Linear -> layer scale (gamma) -> permute back``, plus the residual.

Two LayerNorm flavours occur, both normalising the channel dimension:

- :class:`LayerNorm2d`, the channels-first LayerNorm of the stem and downsampling layers: an
  ``nn.LayerNorm`` subclass that permutes NCHW to NHWC, calls ``F.layer_norm`` over the last dim
  and permutes back (as timm's ``LayerNorm2d`` does);
- plain ``nn.LayerNorm`` inside the blocks (which already work in NHWC) and before the head.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ._common import build, randn

SEED = 4


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channel dimension (dim 1) of an NCHW tensor."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class Block(nn.Module):
    """ConvNeXt block: dwconv 7x7, LN, pointwise MLP (4x, GELU), layer scale, residual."""

    def __init__(self, dim: int, layer_scale: float = 0.5) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(4 * dim, dim)
        # ConvNeXt initialises gamma to 1e-6; a larger, seeded random value keeps every block's
        # contribution (and so any lowering error in it) visible in the output.
        self.gamma = nn.Parameter(layer_scale * (1.0 + 0.1 * torch.randn(dim)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.dwconv(x).permute(0, 2, 3, 1)  # NCHW -> NHWC
        h = self.pwconv2(self.act(self.pwconv1(self.norm(h))))
        return x + (self.gamma * h).permute(0, 3, 1, 2)


class ConvNeXt(nn.Module):
    """ConvNeXt: patchify stem, 4 stages with downsampling, global pool, LayerNorm, head."""

    def __init__(
        self,
        in_ch: int = 3,
        depths: tuple[int, ...] = (2, 2, 4, 2),
        dims: tuple[int, ...] = (32, 64, 128, 256),
        num_classes: int = 10,
    ) -> None:
        super().__init__()
        self.downsample_layers = nn.ModuleList(
            [nn.Sequential(nn.Conv2d(in_ch, dims[0], 4, stride=4), LayerNorm2d(dims[0], eps=1e-6))]
        )
        for i in range(len(dims) - 1):
            norm = LayerNorm2d(dims[i], eps=1e-6)
            conv = nn.Conv2d(dims[i], dims[i + 1], 2, stride=2)
            self.downsample_layers.append(nn.Sequential(norm, conv))
        self.stages = nn.ModuleList(
            nn.Sequential(*(Block(d) for _ in range(n))) for d, n in zip(dims, depths, strict=True)
        )
        self.norm = nn.LayerNorm(dims[-1], eps=1e-6)
        self.head = nn.Linear(dims[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for down, stage in zip(self.downsample_layers, self.stages, strict=True):
            x = stage(down(x))
        return self.head(self.norm(x.mean(dim=(-2, -1))))


def convnext() -> nn.Module:
    """ConvNeXt (depths 2/2/4/2, widths 32-256) on 64x64 images, in eval mode."""
    return build(ConvNeXt, SEED)


def example_inputs() -> tuple[torch.Tensor, ...]:
    """One 64x64 RGB image."""
    return (randn(1, 3, 64, 64, seed=140),)


def second_size_inputs() -> tuple[torch.Tensor, ...]:
    """Two 96x64 images (dynamic batch, height and width)."""
    return (randn(2, 3, 96, 64, seed=141),)
