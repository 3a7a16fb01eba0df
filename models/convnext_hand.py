"""ConvNeXt with its LayerNorms written by hand, as the official repository writes them.

Same layout as :mod:`models.convnext` at a smaller depth (1/1/2/1, widths 32/64/128/256): a
patchify stem (``Conv2d 4x4 stride 4`` + channels-first LayerNorm), four stages separated by
downsampling layers (channels-first LayerNorm + ``Conv2d 2x2 stride 2``), global average pool,
``nn.LayerNorm`` and a linear head. Each block is ``dwconv 7x7 -> NHWC -> LayerNorm -> Linear(4x)
-> GELU -> Linear -> layer scale -> NCHW`` plus the residual.

:class:`LayerNorm` is the ``LayerNorm`` class of facebookresearch/ConvNeXt (``models/convnext.py``),
one class with a ``data_format`` parameter. Its channels-first branch is the repository's code
verbatim::

    u = x.mean(1, keepdim=True)
    s = (x - u).pow(2).mean(1, keepdim=True)
    x = (x - u) / torch.sqrt(s + self.eps)
    x = self.weight[:, None, None] * x + self.bias[:, None, None]

The official channels-last branch calls ``F.layer_norm``; here it is written out too, in the other
common hand spelling (biased ``var`` and ``rsqrt``)::

    u = x.mean(-1, keepdim=True)
    s = x.var(-1, keepdim=True, unbiased=False)
    x = (x - u) * torch.rsqrt(s + self.eps)
    x = x * self.weight + self.bias

Both compute ``y = (x - E[x]) / sqrt(Var[x] + eps) * w + b`` over the channel axis (biased
variance), i.e. ``F.layer_norm`` over channels. The norm before the head stays ``nn.LayerNorm``, as
in the official model, so the net mixes hand-written and aten LayerNorms: 4 channels-first + 5
channels-last hand-written, 1 ``nn.LayerNorm``.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from ._common import ConvNeXtTrunk, build, randn

SEED = 7


class LayerNorm(nn.Module):
    """ConvNeXt's LayerNorm over the channel axis, ``data_format`` "channels_last" (NHWC, ``[..., C]``)
    or "channels_first" (NCHW), written with primitive tensor ops."""

    norm_kind: ClassVar[str] = "layer"

    def __init__(self, normalized_shape: int, eps: float = 1e-6, data_format: str = "channels_last") -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(normalized_shape))
        self.bias = nn.Parameter(torch.zeros(normalized_shape))
        self.eps = eps
        self.data_format = data_format
        if self.data_format not in ["channels_last", "channels_first"]:
            raise NotImplementedError(data_format)
        self.normalized_shape = (normalized_shape,)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.data_format == "channels_last":
            u = x.mean(-1, keepdim=True)
            s = x.var(-1, keepdim=True, unbiased=False)
            x = (x - u) * torch.rsqrt(s + self.eps)
            return x * self.weight + self.bias
        u = x.mean(1, keepdim=True)
        s = (x - u).pow(2).mean(1, keepdim=True)
        x = (x - u) / torch.sqrt(s + self.eps)
        x = self.weight[:, None, None] * x + self.bias[:, None, None]
        return x


class Block(nn.Module):
    """ConvNeXt block: dwconv 7x7, channels-last LN, pointwise MLP (4x, GELU), layer scale, residual."""

    def __init__(self, dim: int, layer_scale: float = 0.5) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(4 * dim, dim)
        # the official init is 1e-6; a larger seeded value keeps each block's error visible
        self.gamma = nn.Parameter(layer_scale * (1.0 + 0.1 * torch.randn(dim)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.dwconv(x).permute(0, 2, 3, 1)  # NCHW -> NHWC
        h = self.pwconv2(self.act(self.pwconv1(self.norm(h))))
        return x + (self.gamma * h).permute(0, 3, 1, 2)


class ConvNeXt(ConvNeXtTrunk):
    """ConvNeXt with hand-written LayerNorms: stem, 4 stages with downsampling, pool, LN, head."""

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
            lambda d: LayerNorm(d, eps=1e-6, data_format="channels_first"),
            lambda d: nn.LayerNorm(d, eps=1e-6),
        )


def convnext_hand() -> nn.Module:
    """ConvNeXt (depths 1/1/2/1, widths 32-256) with hand-written LayerNorms, in eval mode."""
    return build(ConvNeXt, SEED)


def example_inputs() -> tuple[torch.Tensor, ...]:
    """One 64x64 RGB image."""
    return (randn(1, 3, 64, 64, seed=180),)


def second_size_inputs() -> tuple[torch.Tensor, ...]:
    """Two 96x64 images (dynamic batch, height and width)."""
    return (randn(2, 3, 96, 64, seed=181),)
