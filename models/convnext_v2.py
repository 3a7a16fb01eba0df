"""ConvNeXt-V2 built only from ``normonnx.nn`` layers: channels-first LayerNorm and GRN.

After facebookresearch/ConvNeXt-V2 (Woo et al., 2023), at toy size (depths 1/1/2/1, widths
32/64/128/256, 64x64 input, 10 classes). The V2 block adds global response normalization after
the MLP's GELU::

    dwconv 7x7 -> NHWC -> LayerNorm -> Linear(4x) -> GELU -> GRN -> Linear -> NCHW  (+ residual)

Every norm is a ``normonnx.nn`` layer: ``LayerNorm(C, channel_axis=1)`` for the stem and the
downsampling layers, ``LayerNorm(C)`` in the blocks and before the head, ``GlobalResponseNorm(4C)``
(channels last) in the blocks. Norm nodes a correct export keeps: 10 LayerNorm (4 channels-first),
5 GRN, one per layer, with no recognition needed (each layer is one op to torch's exporter).
ConvNeXt-V2 has no layer scale; its GRN γ/β start at zero (the identity), here they are seeded
(``1 + 0.1 N``, ``0.1 N``) like every model's norms so that a wrong lowering shows.
"""

from __future__ import annotations

import torch
from torch import nn

from normonnx import nn as nnx

from ._common import ConvNeXtTrunk, build, randn

SEED = 12


class Block(nn.Module):
    """ConvNeXt-V2 block: dwconv 7x7, LayerNorm, pointwise MLP (4x, GELU, GRN), residual."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = nnx.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.grn = nnx.GlobalResponseNorm(4 * dim)
        self.pwconv2 = nn.Linear(4 * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.dwconv(x).permute(0, 2, 3, 1)  # NCHW -> NHWC
        h = self.pwconv2(self.grn(self.act(self.pwconv1(self.norm(h)))))
        return x + h.permute(0, 3, 1, 2)


class ConvNeXtV2(ConvNeXtTrunk):
    """Stem, 4 stages with channels-first LayerNorm downsampling, pool, LayerNorm, head."""

    def __init__(
        self,
        in_ch: int = 3,
        depths: tuple[int, ...] = (1, 1, 2, 1),
        dims: tuple[int, ...] = (32, 64, 128, 256),
        num_classes: int = 10,
    ) -> None:
        super().__init__(
            in_ch,
            depths,
            dims,
            num_classes,
            Block,
            lambda d: nnx.LayerNorm(d, eps=1e-6, channel_axis=1),
            lambda d: nnx.LayerNorm(d, eps=1e-6),
        )


def convnext_v2() -> nn.Module:
    """ConvNeXt-V2 (depths 1/1/2/1, widths 32-256) of normonnx.nn layers, in eval mode."""
    return build(ConvNeXtV2, SEED)


def example_inputs() -> tuple[torch.Tensor, ...]:
    """One 64x64 RGB image."""
    return (randn(1, 3, 64, 64, seed=230),)


def second_size_inputs() -> tuple[torch.Tensor, ...]:
    """Two 96x64 images (dynamic batch, height and width)."""
    return (randn(2, 3, 96, 64, seed=231),)
