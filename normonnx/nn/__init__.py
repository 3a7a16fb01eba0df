"""Norm layers as torch modules, each one norm op to torch's exporter and one norm node in ONNX.

::

    from normonnx import nn as nnx

    norm = nnx.LayerNorm(96, eps=1e-6, channel_axis=1)        # ConvNeXt's channels-first LN
    gn = nnx.GroupNorm(32, 320, activation="silu", stats_dtype=torch.float32)
    model = nnx.convert(model)                                 # swap recognised norms in place

See :mod:`normonnx.nn.layers` for the layers, :mod:`normonnx.nn.ops` for the custom ops and
:mod:`normonnx.nn.convert` for the swap. Importing this package imports torch.
"""

from __future__ import annotations

from . import layers
from .convert import Swap, convert, plan
from .layers import *  # noqa: F403 -- the layers are listed once, in layers.__all__

__all__ = [*layers.__all__, "Swap", "convert", "plan"]
