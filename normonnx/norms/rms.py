"""RMS normalization: ``y = x / √(mean(x²) + ε)·γ`` over the trailing ``normalized_shape``.

No mean is subtracted and there is no bias. torch's default ``eps=None`` means
``torch.finfo(x.dtype).eps`` of the *input* dtype; the spec always stores the resolved number.

Fused form ``residual``: normalise ``x + r`` (a pre-norm transformer's residual Add, whose sum
the node also outputs); ``params["residual"]`` holds r in :meth:`reference`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from onnx import TensorProto

from ..errors import SpecError
from ..spec import NormSpec
from . import onnx_blocks as ob
from .base import TRAILING_BENCH_SHAPES, TRAILING_QUICK_SHAPES, Example, NativeOp, NormKind, Params

_F = frozenset({"float32", "float16", "float64"})
NATIVE = NativeOp(
    "RMSNormalization",
    23,
    {"cpu": _F, "cuda": _F | {"bfloat16"}},  # CPU: no bf16 kernel, body's Mul has none either
    True,
    "RMSNormalization-23: onnxruntime accumulates in fp32, >2x torch's error past ~16K elements",
    stable_up_to=4096,
)

_FINFO_EPS = {
    "float32": float(np.finfo(np.float32).eps),
    "float16": float(np.finfo(np.float16).eps),
    "float64": float(np.finfo(np.float64).eps),
    "bfloat16": 2.0**-7,
}


def default_eps(dtype: str) -> float:
    """torch's ``rms_norm`` epsilon when none is given: machine epsilon of the input dtype."""
    return _FINFO_EPS[dtype]


class RMSNorm(NormKind):
    name = "rms"
    normonnx_op = "RMSNorm"
    native = NATIVE
    aten_ops = ("rms_norm",)
    min_rank, max_rank = 1, 8
    fused_forms = frozenset({"residual"})
    input_slots = ("weight", "residual", "gate")
    affine_slots = ("weight",)
    bench_shapes, quick_bench_shapes = TRAILING_BENCH_SHAPES, TRAILING_QUICK_SHAPES

    def validate(self, spec: NormSpec) -> None:
        super().validate(spec)
        ns = spec.normalized_shape
        if not ns or any(d < 1 for d in ns):
            raise SpecError(f"rms norm needs a non-empty normalized_shape of positive sizes, got {ns}")
        if spec.rank is not None and len(ns) > spec.rank:
            raise SpecError(f"normalized_shape {ns} has more axes than the rank-{spec.rank} input")
        if spec.has_bias:
            raise SpecError("rms norm has no bias")
        if spec.groups is not None or spec.running_stats or spec.channels_first:
            raise SpecError("rms norm takes no groups, running statistics or channels_first")

    def random_params(self, spec: NormSpec, rng: np.random.Generator) -> Params:
        return {"weight": 1.0 + 0.25 * rng.standard_normal(spec.affine_shape)} if spec.has_weight else {}

    def axes(self, spec: NormSpec, rank: int) -> tuple[int, ...]:
        assert spec.normalized_shape is not None
        return tuple(range(rank - len(spec.normalized_shape), rank))

    def reference(self, spec: NormSpec, x: np.ndarray, params: Mapping[str, np.ndarray]) -> np.ndarray:
        x = self._plus_residual(spec, x, params)
        axes = self.axes(spec, x.ndim)
        self._check_normalized(spec, x, axes)
        y = x / np.sqrt((x * x).mean(axis=axes, keepdims=True) + spec.eps)
        if spec.has_weight:
            y = y * np.asarray(params["weight"], np.float64)
        return y

    def build_native(self, b: Any, spec: NormSpec, x: str, params: Mapping[str, str]) -> str:
        ns = spec.normalized_shape or ()
        weight = ob.param_or_fill(b, spec, params, "weight", 1.0, ns)
        return b.op("RMSNormalization", [x, weight], axis=-len(ns), epsilon=spec.eps, stash_type=1)

    def decompose(self, b: Any, spec: NormSpec, x: str, p: Mapping[str, str], compute: int) -> str:
        """``x / √(mean(x²) + ε)·γ``, mean(x²) in float64 for the same reason as the moments."""
        assert spec.normalized_shape is not None
        axes = list(range(-len(spec.normalized_shape), 0))
        f64 = TensorProto.DOUBLE
        xd = x if compute == f64 else b.cast(x, f64)
        ms = b.reduce("ReduceMean", b.op("Mul", [xd, xd]), axes)
        inv = b.op("Reciprocal", [b.op("Sqrt", [b.op("Add", [ms, b.const(spec.eps, np.float64)])])])
        y = b.op("Mul", [x, inv if compute == f64 else b.cast(inv, compute)])
        return ob.trailing_affine(b, y, p)

    def examples(self) -> list[Example]:
        cases = [
            ("r3", NormSpec("rms", normalized_shape=(16,), has_bias=False), (2, 5, 16)),
            ("r2-b8", NormSpec("rms", normalized_shape=(12,), has_bias=False), (8, 12)),
            ("two-axes", NormSpec("rms", normalized_shape=(3, 4), has_bias=False), (2, 3, 4)),
            ("noweight", NormSpec("rms", normalized_shape=(10,), has_weight=False, has_bias=False), (1, 10)),
        ]
        return [(i, s.replace(rank=len(shape)), shape) for i, s, shape in cases]

    def example_specs(self) -> list[NormSpec]:
        return [NormSpec("rms", normalized_shape=(4096,), has_bias=False, rank=3)]

    def large_spec(self) -> NormSpec:
        return NormSpec("rms", normalized_shape=(1 << 20,), has_bias=False, rank=2)

    def large_shape(self, spec: NormSpec, elements: int = 1 << 20) -> tuple[int, ...]:
        return (2, elements)

    def bench_spec(self, shape: Sequence[int]) -> NormSpec:
        return NormSpec("rms", normalized_shape=(shape[-1],), has_bias=False, rank=len(shape))

    def torch_modules(self) -> tuple[type, ...]:
        import torch.nn as nn

        return (nn.RMSNorm,)

    def from_module(self, module: Any, rank: int | None = None) -> tuple[NormSpec, Params]:
        dtype = str(module.weight.dtype).removeprefix("torch.") if module.weight is not None else "float32"
        spec = NormSpec(
            kind="rms",
            eps=float(module.eps) if module.eps is not None else default_eps(dtype),
            normalized_shape=tuple(module.normalized_shape),
            has_weight=module.weight is not None,
            has_bias=False,
            rank=rank,
        )
        params = {"weight": module.weight.detach().double().numpy()} if module.weight is not None else {}
        return spec, params

    def torch_forward(self, spec: NormSpec, x: Any, params: Mapping[str, Any]) -> Any:
        import torch.nn.functional as F

        assert spec.normalized_shape is not None
        return F.rms_norm(x, spec.normalized_shape, params.get("weight"), spec.eps)

    def op_inputs(self, spec: NormSpec) -> list[str]:
        return ["weight" if spec.has_weight else ""]

    def aten_params(self, op: str, args: Sequence[Any]) -> dict[str, Any]:
        a = list(args) + [None] * 3
        return {"weight": a[1]}

    def from_aten(self, op: str, args: Sequence[Any], x_shape: Sequence[Any], dtype: str) -> NormSpec:
        # aten::rms_norm(input, normalized_shape, weight=None, eps=None)
        normalized_shape, weight, eps = (list(args) + [None] * 3)[:3]
        eps = eps if eps is not None else default_eps(dtype)  # not torch's 1e-5 of the other kinds
        return self._aten_spec(
            x_shape, dtype, weight, None, eps, normalized_shape=tuple(int(d) for d in normalized_shape)
        )


KIND = RMSNorm()
