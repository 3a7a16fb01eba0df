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

from ..errors import SpecError
from ..spec import NormSpec
from .base import NormKind, Params

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
    native_op = "RMSNormalization"
    native_since = 23
    aten_ops = ("rms_norm",)
    min_rank, max_rank = 1, 8
    fused_forms = frozenset({"residual"})

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
        x = np.asarray(x, dtype=np.float64)
        if spec.residual:
            r = np.asarray(params["residual"], np.float64)
            x = x + (np.asarray(params["gate"], np.float64) * r if spec.gated else r)
        axes = self.axes(spec, x.ndim)
        if tuple(x.shape[a] for a in axes) != spec.normalized_shape:
            raise SpecError(f"rms norm over {spec.normalized_shape}: input shape {x.shape} does not end with it")
        y = x / np.sqrt((x * x).mean(axis=axes, keepdims=True) + spec.eps)
        if spec.has_weight:
            y = y * np.asarray(params["weight"], np.float64)
        return y

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
        spec = NormSpec(
            kind="rms",
            eps=float(eps) if eps is not None else default_eps(dtype),
            normalized_shape=tuple(int(d) for d in normalized_shape),
            has_weight=weight is not None,
            has_bias=False,
            dtype=dtype,
            rank=len(x_shape),
        )
        self.validate(spec)
        return spec


KIND = RMSNorm()
