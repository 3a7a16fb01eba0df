"""Layer normalization: statistics per sample over the normalised features.

Trailing layout (``nn.LayerNorm(normalized_shape)``): reduce over the last
``len(normalized_shape)`` axes, ``y = (x − μ)/√(σ² + ε)·γ + β`` with γ, β of ``normalized_shape``.
Channels-first layout (ConvNeXt's ``LayerNorm2d``, ``channels_first=True``): reduce over axis 1
of an N,C,... tensor only, γ, β per channel. σ² is the biased variance (divide by the count).

Fused forms (trailing layout only): ``residual`` normalises ``x + r`` (the Add of a pre-norm
transformer's residual stream, whose sum the node also outputs); ``modulation`` (no γ/β) is
AdaLN's ``N(x)·(1 + scale) + shift`` with per-sample scale/shift. Their run-time operands are in
``params`` of :meth:`reference` as "residual", "scale", "shift".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..errors import SpecError
from ..spec import NormSpec
from . import onnx_blocks as ob
from .base import TRAILING_BENCH_SHAPES, TRAILING_QUICK_SHAPES, Example, NativeOp, NormKind, Params

_F = frozenset({"float32", "float16", "float64", "bfloat16"})
NATIVE = NativeOp(
    "LayerNormalization",
    17,
    {"cpu": _F, "cuda": _F},
    True,
    "LayerNormalization-17: onnxruntime accumulates in fp32, >2x torch's error past ~16K elements",
    stable_up_to=4096,
)


class LayerNorm(NormKind):
    name = "layer"
    normonnx_op = "LayerNorm"
    native = NATIVE
    aten_ops = ("layer_norm",)
    min_rank, max_rank = 1, 8
    fused_forms = frozenset({"residual", "modulation"})
    input_slots = ("weight", "bias", "residual", "scale", "shift", "gate")
    bench_shapes, quick_bench_shapes = TRAILING_BENCH_SHAPES, TRAILING_QUICK_SHAPES

    def validate(self, spec: NormSpec) -> None:
        super().validate(spec)
        if (spec.residual or spec.modulation) and spec.channels_first:
            raise SpecError("a residual input or modulation is supported on trailing-axes layer norm only")
        if spec.modulation and (spec.has_weight or spec.has_bias):
            raise SpecError("a modulated layer norm has no γ/β of its own (the modulation is its affine)")
        ns = spec.normalized_shape
        if not ns or any(d < 1 for d in ns):
            raise SpecError(f"layer norm needs a non-empty normalized_shape of positive sizes, got {ns}")
        if spec.channels_first:
            if len(ns) != 1:
                raise SpecError("channels-first layer norm normalises axis 1 only: normalized_shape=(C,)")
            if spec.rank is not None and spec.rank < 2:
                raise SpecError("channels-first layer norm needs an N,C,... input of rank >= 2")
        elif spec.rank is not None and len(ns) > spec.rank:
            raise SpecError(f"normalized_shape {ns} has more axes than the rank-{spec.rank} input")
        if spec.groups is not None or spec.running_stats:
            raise SpecError("layer norm takes no groups and no running statistics")

    def axes(self, spec: NormSpec, rank: int) -> tuple[int, ...]:
        """Reduced axes (non-negative) for an input of ``rank``."""
        assert spec.normalized_shape is not None
        if spec.channels_first:
            return (1,)
        return tuple(range(rank - len(spec.normalized_shape), rank))

    def reference(self, spec: NormSpec, x: np.ndarray, params: Mapping[str, np.ndarray]) -> np.ndarray:
        x = self._plus_residual(spec, x, params)
        axes = self.axes(spec, x.ndim)
        self._check_normalized(spec, x, axes)
        mean, var = self._moments(x, axes)
        y = (x - mean) / np.sqrt(var + spec.eps)

        def view(a: np.ndarray) -> np.ndarray:
            a = np.asarray(a, np.float64)
            return self._channel_view(a, x.ndim) if spec.channels_first else a

        if spec.has_weight:
            y = y * view(params["weight"])
        if spec.has_bias:
            y = y + view(params["bias"])
        if spec.modulation:
            scale, shift = (self._row_operand(spec, params[k], x.ndim) for k in ("scale", "shift"))
            y = y * (1.0 + scale) + shift
        return y

    def native_check(self, spec: NormSpec, opset: int, provider: str) -> str:
        if spec.channels_first:
            return "LayerNormalization normalises trailing axes; channels-first needs the decomposition"
        return ""

    def build_native(self, b: Any, spec: NormSpec, x: str, params: Mapping[str, str]) -> str:
        ns = spec.normalized_shape or ()
        # an absent bias is omitted, not passed as "": onnxruntime 1.32's graph optimizer (level
        # EXTENDED, so every default session) segfaults on LayerNormalization(x, γ, "") followed
        # by a Mul and an Add of run-time values (the unfused modulation), measured here
        return b.op(
            "LayerNormalization",
            [x, ob.param_or_fill(b, spec, params, "weight", 1.0, ns)] + ([params["bias"]] if "bias" in params else []),
            axis=-len(ns),
            epsilon=spec.eps,
            stash_type=1,
        )

    def decompose(self, b: Any, spec: NormSpec, x: str, p: Mapping[str, str], compute: int) -> str:
        """Moments over the trailing ``normalized_shape`` axes (channels-first: over axis 1 of an
        ``[N, C, -1]`` view), then γ, β."""
        if spec.channels_first:
            return ob.channelwise(b, spec, x, p, compute, [1])
        assert spec.normalized_shape is not None
        axes = list(range(-len(spec.normalized_shape), 0))
        return ob.trailing_affine(b, ob.moments_normalize(b, x, axes, spec.eps, compute), p)

    def examples(self) -> list[Example]:
        cases = [
            ("r3", NormSpec("layer", normalized_shape=(16,)), (2, 5, 16)),
            ("r2-b8", NormSpec("layer", normalized_shape=(12,)), (8, 12)),
            ("r4-two-axes", NormSpec("layer", normalized_shape=(3, 4)), (2, 5, 3, 4)),
            ("noaffine", NormSpec("layer", normalized_shape=(10,), has_weight=False, has_bias=False), (1, 3, 10)),
            ("nobias", NormSpec("layer", normalized_shape=(10,), has_bias=False), (2, 10)),
            ("cf-r4", NormSpec("layer", normalized_shape=(6,), channels_first=True), (2, 6, 3, 5)),
            ("cf-r4-hw1", NormSpec("layer", normalized_shape=(4,), channels_first=True), (1, 4, 1, 1)),
        ]
        return [(i, s.replace(rank=len(shape)), shape) for i, s, shape in cases]

    def example_specs(self) -> list[NormSpec]:
        return [
            NormSpec("layer", normalized_shape=(768,), rank=3),
            NormSpec("layer", normalized_shape=(96,), channels=96, channels_first=True, rank=4),  # ConvNeXt
        ]

    def large_spec(self) -> NormSpec:
        return NormSpec("layer", normalized_shape=(1 << 20,), rank=2)

    def large_shape(self, spec: NormSpec, elements: int = 1 << 20) -> tuple[int, ...]:
        # channels-first: statistics over C at each position
        return (1, elements, 1, 1) if spec.channels_first else (2, elements)

    def bench_spec(self, shape: Sequence[int]) -> NormSpec:
        return NormSpec("layer", normalized_shape=(shape[-1],), rank=len(shape))

    def torch_modules(self) -> tuple[type, ...]:
        import torch.nn as nn

        return (nn.LayerNorm,)

    def from_module(self, module: Any, rank: int | None = None) -> tuple[NormSpec, Params]:
        return self._module_spec(module, rank, normalized_shape=tuple(module.normalized_shape))

    def torch_forward(self, spec: NormSpec, x: Any, params: Mapping[str, Any]) -> Any:
        import torch.nn.functional as F

        assert spec.normalized_shape is not None
        if spec.channels_first:
            perm = [0, *range(2, x.ndim), 1]
            y = F.layer_norm(
                x.permute(*perm), spec.normalized_shape, params.get("weight"), params.get("bias"), spec.eps
            )
            inv = [0, x.ndim - 1, *range(1, x.ndim - 1)]
            return y.permute(*inv)
        return F.layer_norm(x, spec.normalized_shape, params.get("weight"), params.get("bias"), spec.eps)

    def aten_params(self, op: str, args: Sequence[Any]) -> dict[str, Any]:
        a = list(args) + [None] * 4
        return {"weight": a[1], "bias": a[2]}

    def from_aten(self, op: str, args: Sequence[Any], x_shape: Sequence[Any], dtype: str) -> NormSpec:
        # aten::layer_norm(input, normalized_shape, weight=None, bias=None, eps=1e-5, cudnn_enable=True)
        normalized_shape, weight, bias, eps = (list(args) + [None] * 4)[:4]
        return self._aten_spec(
            x_shape, dtype, weight, bias, eps, normalized_shape=tuple(int(d) for d in normalized_shape)
        )

    def attributes(self, spec: NormSpec) -> dict[str, Any]:
        attrs = super().attributes(spec)
        if spec.channels_first:
            attrs["channels_first"] = 1
        return attrs


KIND = LayerNorm()
