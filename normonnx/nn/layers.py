"""normonnx's norm layers: torch modules whose every forward is one norm op for torch's exporter.

Where an aten op has exactly the semantics (trailing LayerNorm, RMSNorm, GroupNorm, BatchNorm,
InstanceNorm) the layer calls it; the rest are the custom ops of :mod:`normonnx.nn.ops`. Either
way :func:`normonnx.exporter.export` writes one ``normonnx`` norm node per layer and lowers it
through the selector; a :class:`WSConv2d`'s weight standardization folds into a constant.

Layout and statistics dtype are parameters, not class names: ``LayerNorm(C, channel_axis=1)`` is
ConvNeXt's channels-first LayerNorm, ``GroupNorm(32, C, activation="silu",
stats_dtype=torch.float32)`` a fused GroupNorm + SiLU that keeps float32 statistics inside a
half-precision model (the input is cast to ``stats_dtype``, normalised, and cast back once).

State dicts: parameters and buffers have torch's names (``weight``, ``bias``, ``running_mean``…),
and a stored parameter of another shape with the same number of elements (a tutorial's
``[1, C, 1, 1]`` affine) is reshaped on load.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.instancenorm import _InstanceNorm

from ..errors import SpecError
from ..norms.base import ACTIVATIONS
from . import ops

__all__ = [
    "AdaLayerNorm",
    "BatchNorm",
    "GlobalResponseNorm",
    "GroupNorm",
    "InstanceNorm",
    "LayerNorm",
    "RMSNorm",
    "WSConv2d",
]


def _channels_first(channel_axis: int, data_format: str | None, what: str) -> bool:
    """``channel_axis`` -1 (trailing, "channels_last") or 1 (N,C,..., "channels_first")."""
    if data_format is not None:
        if data_format not in ("channels_last", "channels_first"):
            raise SpecError(
                f"{what}: unknown data_format {data_format!r}", note="use 'channels_last' or 'channels_first'"
            )
        return data_format == "channels_first"
    if channel_axis not in (-1, 1):
        raise SpecError(
            f"{what}: channel_axis={channel_axis} is not supported", note="use -1 (trailing) or 1 (N, C, ...)"
        )
    return channel_axis == 1


def _activation(activation: str | None) -> str:
    act = activation or ""
    if act and act not in ACTIVATIONS:
        raise SpecError(
            f"unknown activation {activation!r}", note=f"valid: None or {', '.join(map(repr, ACTIVATIONS))}"
        )
    return act


class _Reshaping:
    """Load a stored parameter of another shape but the same size (``[1, C, 1, 1]`` → ``[C]``)."""

    _aliases: dict[str, str] = {}

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        for old, new in self._aliases.items():
            if prefix + old in state_dict and prefix + new not in state_dict:
                state_dict[prefix + new] = state_dict.pop(prefix + old)
        for name, p in self._parameters.items():  # type: ignore[attr-defined]
            t = state_dict.get(prefix + name)
            if p is not None and t is not None and t.shape != p.shape and t.numel() == p.numel():
                state_dict[prefix + name] = t.reshape(p.shape)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)  # type: ignore[misc]


class _StatsDtype:
    """Cast input and parameters to ``stats_dtype`` around the norm, and the output back once."""

    stats_dtype: torch.dtype | None

    def _in(self, x: torch.Tensor, *params: torch.Tensor | None) -> tuple[Any, ...]:
        sd = self.stats_dtype
        if sd is None or x.dtype == sd:
            return (x, *params)
        return (x.to(sd), *(p.to(sd) if p is not None else None for p in params))

    @staticmethod
    def _out(y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return y if y.dtype == x.dtype else y.to(x.dtype)


def _normalized_shape(normalized_shape: int | Sequence[int]) -> tuple[int, ...]:
    """torch's ``normalized_shape`` argument (one size or several) as a tuple of ints."""
    shape = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
    return tuple(int(d) for d in shape)


def _affine(module: nn.Module, shape: Sequence[int], weight: bool, bias: bool, fill: float, **factory: Any) -> None:
    module.register_parameter("weight", nn.Parameter(torch.full(tuple(shape), fill, **factory)) if weight else None)
    module.register_parameter("bias", nn.Parameter(torch.zeros(tuple(shape), **factory)) if bias else None)


class LayerNorm(_Reshaping, _StatsDtype, nn.Module):
    """``y = (x − E[x])/√(Var[x] + ε)·γ + β`` over the trailing ``normalized_shape`` or, with
    ``channel_axis=1`` (``data_format="channels_first"``), over axis 1 of an N,C,... tensor.

    Arguments as ``torch.nn.LayerNorm`` (``elementwise_affine``, ``bias``, ``device``, ``dtype``).
    """

    #: the normonnx norm kind (models/ counts and randomises norms by it)
    norm_kind: ClassVar[str] = "layer"

    def __init__(
        self,
        normalized_shape: int | Sequence[int],
        eps: float = 1e-5,
        elementwise_affine: bool = True,
        bias: bool = True,
        *,
        channel_axis: int = -1,
        data_format: str | None = None,
        stats_dtype: torch.dtype | None = None,
        device: Any = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.normalized_shape = _normalized_shape(normalized_shape)
        self.channels_first = _channels_first(channel_axis, data_format, "LayerNorm")
        if self.channels_first and len(self.normalized_shape) != 1:
            raise SpecError("a channels-first LayerNorm normalises axis 1 only: give normalized_shape=C")
        self.eps = float(eps)
        self.elementwise_affine = elementwise_affine
        self.stats_dtype = stats_dtype
        _affine(
            self,
            self.normalized_shape,
            elementwise_affine,
            elementwise_affine and bias,
            1.0,
            device=device,
            dtype=dtype,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xs, w, b = self._in(x, self.weight, self.bias)
        if self.channels_first:
            y = ops.layer_norm_cf(xs, w, b, self.eps)
        else:
            y = F.layer_norm(xs, self.normalized_shape, w, b, self.eps)
        return self._out(y, x)

    def extra_repr(self) -> str:
        layout = ", channel_axis=1" if self.channels_first else ""
        return f"{self.normalized_shape}, eps={self.eps}, elementwise_affine={self.elementwise_affine}{layout}"


class RMSNorm(_Reshaping, _StatsDtype, nn.Module):
    """``y = x/√(mean(x²) + ε)·(γ + weight_offset)`` over the trailing ``normalized_shape``.

    ``eps=None`` is torch's default (machine epsilon of the input dtype). ``weight_offset=1.0``
    stores the scale as an offset from one, as Gemma does (γ then starts at zero); at export the
    ``γ + 1`` is a constant and the node gets the sum.
    """

    #: the normonnx norm kind (models/ counts and randomises norms by it)
    norm_kind: ClassVar[str] = "rms"

    def __init__(
        self,
        normalized_shape: int | Sequence[int],
        eps: float | None = None,
        elementwise_affine: bool = True,
        *,
        weight_offset: float = 0.0,
        stats_dtype: torch.dtype | None = None,
        device: Any = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.normalized_shape = _normalized_shape(normalized_shape)
        self.eps = eps
        self.elementwise_affine = elementwise_affine
        self.weight_offset = float(weight_offset)
        self.weight_center = 1.0 - self.weight_offset  # the stored weight of a unit scale
        self.stats_dtype = stats_dtype
        fill = 1.0 - self.weight_offset
        _affine(self, self.normalized_shape, elementwise_affine, False, fill, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        if w is not None and self.weight_offset:
            w = w + self.weight_offset
        xs, w = self._in(x, w)
        return self._out(F.rms_norm(xs, self.normalized_shape, w, self.eps), x)

    def extra_repr(self) -> str:
        off = f", weight_offset={self.weight_offset}" if self.weight_offset else ""
        return f"{self.normalized_shape}, eps={self.eps}, elementwise_affine={self.elementwise_affine}{off}"


class GroupNorm(_Reshaping, _StatsDtype, nn.Module):
    """``torch.nn.GroupNorm`` (per-channel γ, β), optionally followed by ``activation="silu"`` or
    ``"relu"``, which makes the pair one op and one ONNX node."""

    #: the normonnx norm kind (models/ counts and randomises norms by it)
    norm_kind: ClassVar[str] = "group"

    def __init__(
        self,
        num_groups: int,
        num_channels: int,
        eps: float = 1e-5,
        affine: bool = True,
        *,
        activation: str | None = None,
        stats_dtype: torch.dtype | None = None,
        device: Any = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if num_groups < 1 or num_channels % num_groups:
            divisors = [d for d in range(1, num_channels + 1) if num_channels % d == 0]
            raise SpecError(
                f"GroupNorm: num_groups={num_groups} does not divide num_channels={num_channels}",
                note=f"valid num_groups: {divisors}",
            )
        self.num_groups, self.num_channels = int(num_groups), int(num_channels)
        self.eps = float(eps)
        self.affine = affine
        self.activation = _activation(activation)
        self.stats_dtype = stats_dtype
        _affine(self, (num_channels,), affine, affine, 1.0, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xs, w, b = self._in(x, self.weight, self.bias)
        if self.activation:
            y = ops.group_norm(xs, self.num_groups, w, b, self.eps, self.activation)
        else:
            y = F.group_norm(xs, self.num_groups, w, b, self.eps)
        return self._out(y, x)

    def extra_repr(self) -> str:
        act = f", activation={self.activation!r}" if self.activation else ""
        return f"{self.num_groups}, {self.num_channels}, eps={self.eps}, affine={self.affine}{act}"


class BatchNorm(_Reshaping, _BatchNorm):
    """``torch.nn.BatchNorm{1,2,3}d`` for any rank ≥ 2 (one class; training, momentum and running
    statistics are torch's). Eval exports as one BatchNorm node (foldable into a preceding conv)."""

    #: the normonnx norm kind (models/ counts and randomises norms by it)
    norm_kind: ClassVar[str] = "batch"

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"BatchNorm expects an N, C, ... input of rank >= 2, got rank {x.dim()}")


class InstanceNorm(_Reshaping, _InstanceNorm):
    """``torch.nn.InstanceNorm{1,2,3}d`` for batched N,C,... inputs of rank 3-5 (torch's defaults:
    no affine, no running statistics)."""

    #: the normonnx norm kind (models/ counts and randomises norms by it)
    norm_kind: ClassVar[str] = "instance"

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if not 3 <= x.dim() <= 5:
            raise ValueError(f"InstanceNorm expects a batched N, C, ... input of rank 3-5, got rank {x.dim()}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(x)
        if x.shape[1] != self.num_features and self.affine:
            raise ValueError(f"InstanceNorm expects {self.num_features} channels on axis 1, got {x.shape[1]}")
        return self._apply_instance_norm(x)


class WSConv2d(nn.Conv2d):
    """``nn.Conv2d`` whose weight is standardized per output channel before use (Qiao et al.;
    timm's ``StdConv2d``): ``W'[o] = (W[o] − mean W[o])/√(Var W[o] + ε)`` over ``I·kh·kw``,
    biased variance. That is a LayerNorm of the weight over its trailing three axes; at export
    the weight is a constant and the norm folds into it (computed in float64)."""

    def __init__(self, *args: Any, eps: float = 1e-6, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.eps = float(eps)

    def standardized_weight(self) -> torch.Tensor:
        return F.layer_norm(self.weight, self.weight.shape[1:], eps=self.eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.standardized_weight(), self.bias)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", eps={self.eps}"


class GlobalResponseNorm(_Reshaping, nn.Module):
    """Global response normalization (ConvNeXt-V2): ``G = ‖x‖₂`` over the spatial axes per
    channel, ``N = G/(mean_c G + ε)``, ``y = γ·(x·N) + β + x``. Channels last (N,H,W,C, as in
    ConvNeXt-V2's MLP) by default, or ``channel_axis=1``. γ and β start at zero (the identity), as
    in timm; ConvNeXt-V2's ``gamma``/``beta`` ``[1, 1, 1, C]`` load as ``weight``/``bias``."""

    #: the normonnx norm kind (models/ counts and randomises norms by it)
    norm_kind: ClassVar[str] = "grn"

    _aliases = {"gamma": "weight", "beta": "bias"}

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-6,
        affine: bool = True,
        bias: bool = True,
        *,
        channel_axis: int = -1,
        data_format: str | None = None,
        device: Any = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.num_features = int(num_features)
        self.eps = float(eps)
        self.channels_first = _channels_first(channel_axis, data_format, "GlobalResponseNorm")
        _affine(self, (num_features,), affine, affine and bias, 0.0, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ops.global_response_norm(x, self.weight, self.bias, self.eps, self.channels_first)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}" + (", channel_axis=1" if self.channels_first else "")


class AdaLayerNorm(nn.Module):
    """Adaptive (modulated) LayerNorm of diffusion transformers: ``LN(x)·(1 + scale(c)) + shift(c)``
    with ``shift, scale[, gate] = Linear(SiLU(c)).chunk(2 or 3)``, the LayerNorm non-affine.

    ``gate=True`` (AdaLN-Zero) also returns the gate ``[N, 1, ..., D]`` for the residual branch;
    ``zero_init=True`` zeroes the modulation Linear so that shift, scale and gate start at zero (a
    gated block is then the identity). ``x`` is ``[N, ..., D]``, ``c`` is ``[N, cond_dim]``.
    Exports as one LayerNorm node plus the Linear and the element-wise modulation.
    """

    def __init__(
        self,
        dim: int,
        cond_dim: int | None = None,
        eps: float = 1e-6,
        *,
        gate: bool = False,
        zero_init: bool = False,
        bias: bool = True,
        device: Any = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.dim, self.gate = int(dim), bool(gate)
        self.norm = LayerNorm(dim, eps=eps, elementwise_affine=False, device=device, dtype=dtype)
        self.act = nn.SiLU()
        self.linear = nn.Linear(cond_dim or dim, (3 if gate else 2) * dim, bias=bias, device=device, dtype=dtype)
        if zero_init:
            nn.init.zeros_(self.linear.weight)
            if self.linear.bias is not None:
                nn.init.zeros_(self.linear.bias)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        view = (c.shape[0], *([1] * (x.dim() - 2)), self.dim)
        chunks = [t.reshape(view) for t in self.linear(self.act(c)).chunk(3 if self.gate else 2, dim=-1)]
        y = self.norm(x) * (1 + chunks[1]) + chunks[0]
        return (y, chunks[2]) if self.gate else y
