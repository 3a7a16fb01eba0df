"""Group normalization: C channels in G groups, statistics per (sample, group).

``y = (x − μ_ng)/√(σ²_ng + ε)·γ_c + β_c`` where the mean and biased variance of group g are
taken over its C/G channels and all spatial positions, and γ, β are **per channel** (as in
torch and in ONNX GroupNormalization-21; the deprecated opset-18 op had per-group scale and is
never emitted). ``activation="silu"`` fuses ``y·sigmoid(y)`` (diffusion UNets' GroupNorm+SiLU),
``activation="relu"`` ``max(y, 0)`` (ResNets with GroupNorm, BiT, detection heads).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..errors import SpecError
from ..spec import NormSpec
from . import onnx_blocks as ob
from .base import (
    NCHW_BENCH_SHAPES,
    NCHW_QUICK_SHAPES,
    Example,
    NativeOp,
    NormKind,
    Params,
    activate_onnx,
    activate_reference,
    activate_torch,
)

_F = frozenset({"float32", "float16", "float64"})
#: per-channel scale since 21; onnxruntime has no kernel and inlines the body (see the note)
NATIVE = NativeOp(
    "GroupNormalization",
    21,
    {"cpu": _F, "cuda": _F},
    False,
    "GroupNormalization-21: onnxruntime inlines its function body, σ²=E[x²]−E[x]² gives NaN at offset 1e3",
    low_precision_since=15,
)
#: groups of the benchmarked GroupNorms (SD / diffusion UNets)
BENCH_GROUPS = 32


class GroupNorm(NormKind):
    name = "group"
    normonnx_op = "GroupNorm"
    native = NATIVE
    aten_ops = ("group_norm",)
    min_rank, max_rank = 2, 5
    activations = frozenset({"silu", "relu"})
    bench_shapes, quick_bench_shapes = NCHW_BENCH_SHAPES, NCHW_QUICK_SHAPES

    def validate(self, spec: NormSpec) -> None:
        super().validate(spec)
        self._check_channels(spec)
        c, g = spec.channels or 0, spec.groups
        if g is None or g < 1 or c % g != 0:
            divisors = [d for d in range(1, c + 1) if c % d == 0]
            raise SpecError(
                f"group norm: num_groups={g} does not divide channels={c}",
                note=f"valid num_groups for C={c}: {divisors}",
            )
        if spec.channels_first or spec.normalized_shape is not None or spec.running_stats:
            raise SpecError("group norm takes no channels_first, normalized_shape or running statistics")

    def reference(self, spec: NormSpec, x: np.ndarray, params: Mapping[str, np.ndarray]) -> np.ndarray:
        self._check_shape(spec, x, "group norm")
        x = np.asarray(x, dtype=np.float64)
        assert spec.groups is not None
        xg = x.reshape(x.shape[0], spec.groups, -1)
        mean, var = self._moments(xg, (2,))
        y = self._channel_affine(spec, ((xg - mean) / np.sqrt(var + spec.eps)).reshape(x.shape), params)
        return activate_reference(spec, y)

    def build_native(self, b: Any, spec: NormSpec, x: str, params: Mapping[str, str]) -> str:
        c = spec.channels or 0
        y = b.op(
            "GroupNormalization",
            [
                x,
                ob.param_or_fill(b, spec, params, "weight", 1.0, (c,)),
                ob.param_or_fill(b, spec, params, "bias", 0.0, (c,)),
            ],
            num_groups=spec.groups,
            epsilon=spec.eps,
            stash_type=11 if spec.dtype == "float64" else 1,  # statistics in double for double inputs
        )
        return activate_onnx(b, spec, y)

    def decompose(self, b: Any, spec: NormSpec, x: str, p: Mapping[str, str], compute: int) -> str:
        """Statistics per (sample, group) on an ``[N, G, -1]`` view, γ/β per channel after."""
        return ob.grouped(b, spec, x, p, compute)

    def examples(self) -> list[Example]:
        cases = [
            ("r4", NormSpec("group", channels=8, groups=4), (2, 8, 5, 6)),
            ("g1", NormSpec("group", channels=6, groups=1), (2, 6, 4, 4)),
            ("gC", NormSpec("group", channels=6, groups=6), (2, 6, 4, 4)),
            ("c1", NormSpec("group", channels=1, groups=1), (3, 1, 4, 5)),
            ("r2", NormSpec("group", channels=8, groups=2), (8, 8)),
            ("r3", NormSpec("group", channels=4, groups=2), (1, 4, 10)),
            ("r5", NormSpec("group", channels=4, groups=2), (2, 4, 2, 3, 4)),
            ("hw1", NormSpec("group", channels=8, groups=4), (2, 8, 1, 1)),
            ("noaffine", NormSpec("group", channels=8, groups=2, has_weight=False, has_bias=False), (2, 8, 3, 3)),
            ("silu", NormSpec("group", channels=8, groups=4, activation="silu"), (2, 8, 4, 4)),
            ("relu", NormSpec("group", channels=8, groups=4, activation="relu"), (2, 8, 4, 4)),
        ]
        return [(i, s.replace(rank=len(shape)), shape) for i, s, shape in cases]

    def example_specs(self) -> list[NormSpec]:
        return [NormSpec("group", channels=320, groups=32, rank=4)]

    def large_spec(self) -> NormSpec:
        return NormSpec("group", channels=4, groups=2, rank=4)

    def large_shape(self, spec: NormSpec, elements: int = 1 << 20) -> tuple[int, ...]:
        side, c, g = 1024, spec.channels or 2, spec.groups or 1
        hw = max(1, elements * g // c)
        return (1, c, side, -(-hw // side))

    def bench_spec(self, shape: Sequence[int]) -> NormSpec:
        return NormSpec("group", channels=shape[1], groups=BENCH_GROUPS, rank=len(shape))

    def torch_modules(self) -> tuple[type, ...]:
        import torch.nn as nn

        return (nn.GroupNorm,)

    def from_module(self, module: Any, rank: int | None = None) -> tuple[NormSpec, Params]:
        return self._module_spec(module, rank, channels=int(module.num_channels), groups=int(module.num_groups))

    def torch_forward(self, spec: NormSpec, x: Any, params: Mapping[str, Any]) -> Any:
        import torch.nn.functional as F

        y = F.group_norm(x, spec.groups, params.get("weight"), params.get("bias"), spec.eps)
        return activate_torch(spec, y)

    def aten_params(self, op: str, args: Sequence[Any]) -> dict[str, Any]:
        a = list(args) + [None] * 4
        return {"weight": a[1], "bias": a[2]}

    def from_aten(self, op: str, args: Sequence[Any], x_shape: Sequence[Any], dtype: str) -> NormSpec:
        # aten::group_norm(input, num_groups, weight=None, bias=None, eps=1e-5, cudnn_enabled=True)
        num_groups, weight, bias, eps = (list(args) + [None] * 4)[:4]
        return self._aten_spec(x_shape, dtype, weight, bias, eps, channels=int(x_shape[1]), groups=int(num_groups))

    def attributes(self, spec: NormSpec) -> dict[str, Any]:
        attrs = super().attributes(spec)
        attrs["num_groups"] = int(spec.groups or 0)
        return attrs


KIND = GroupNorm()
