"""Decomposed lowering: primitive ops only (opset >= 13), numerically stable.

Statistics are two-pass and accumulated in float64:

    μ  = mean(float64(x))                          (ReduceMean in double)
    c  = x − μ                                     (in the compute dtype, fp32 for fp32/fp16)
    σ² = sum(float64(c)²) / n                      (ReduceSumSquare in double; never E[x²] − E[x]²)
    y  = c · 1/√(σ² + ε) · γ + β

Why float64: onnxruntime's fp32 reductions accumulate sequentially, so a 1M-element group loses
~1e-3 of accuracy in fp32 whatever the formula (measured: 1.5e-3 with a pivot shift, torch 1e-6);
in float64 the same graph is at 1e-6 at offset 0 and 4e-5 at offset 1e3 (torch: 1e-4), because
the only fp32 rounding left is that of μ in ``x − μ``. Zero-variance inputs give exactly β.
fp16/bf16 inputs are computed in fp32 (stash_type) and cast back at the end. Channel-wise work
is done on an ``[N, C or G, −1]`` view so the graph is rank-agnostic and valid for dynamic shapes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from onnx import TensorProto, helper

from ..norms import KINDS
from ..spec import NormSpec
from .base import ALL_DTYPES, MIN_OPSET, Capability, Strategy, same_dtypes
from .builder import Builder

_DEC = Capability(MIN_OPSET, same_dtypes(ALL_DTYPES), True, "primitive ops, two-pass statistics in float64")


def moments_normalize(b: Builder, x: str, axes: Sequence[int], eps: float, compute: int) -> str:
    """``(x − μ)/√(σ² + ε)`` over ``axes`` (keepdims); statistics in float64, result in ``compute``."""
    f64 = TensorProto.DOUBLE
    to64 = (lambda v: v) if compute == f64 else (lambda v: b.cast(v, f64))
    back = (lambda v: v) if compute == f64 else (lambda v: b.cast(v, compute))
    mean = b.reduce("ReduceMean", to64(x), axes)
    c = b.op("Sub", [x, back(mean)])
    c64 = to64(c)
    ssq = b.reduce("ReduceSumSquare", c64, axes)
    # n = elements per group, dynamic: |c| / |ssq| (both Size outputs are int64 scalars)
    n = b.op("Div", [b.op("Size", [c]), b.op("Size", [ssq])])
    var = b.op("Div", [ssq, b.cast(n, f64)])
    inv = b.op("Reciprocal", [b.op("Sqrt", [b.op("Add", [var, b.const(eps, np.float64)])])])
    # scale in double and round once: (x − μ)·inv rounded to fp32 a single time
    return back(b.op("Mul", [c64, inv]))


def _eps(b: Builder, eps: float, compute: int) -> str:
    """ε as a constant of the compute dtype."""
    return b.const(eps, helper.tensor_dtype_to_np_dtype(compute))


def _compute_type(spec: NormSpec) -> int:
    return TensorProto.FLOAT if spec.stash_fp32 else spec.onnx_dtype


class Decomposed(Strategy):
    name = "decomposed"
    description = "primitive ONNX ops, two-pass statistics in float64"
    #: every kind: the five original ones are decomposed below, newer ones by their own ``decompose``
    capabilities = {k: _DEC for k in KINDS}
    builds_fused_forms = True

    def build(self, b: Builder, spec: NormSpec, x: str, params: Mapping[str, str]) -> str:
        return build_decomposed(b, spec, x, params)


def build_decomposed(b: Builder, spec: NormSpec, x: str, params: Mapping[str, str]) -> str:
    """The decomposition itself; also the body of the normonnx function strategy. A residual input
    is added and a modulation applied in the norm's dtype around it (:mod:`.fused`)."""
    from .fused import modulate, residual_sum

    plain = {k: v for k, v in params.items() if k not in ("residual", "scale", "shift", "gate")}
    y = _build_norm(b, spec.replace(residual=False, modulation=False), residual_sum(b, spec, x, params), plain)
    return modulate(b, spec, y, params)


def _build_norm(b: Builder, spec: NormSpec, x: str, params: Mapping[str, str]) -> str:
    ct = _compute_type(spec)
    cast_in = (lambda v: b.cast(v, ct)) if spec.stash_fp32 else (lambda v: v)
    p = {k: cast_in(v) for k, v in params.items()}
    xc = cast_in(x)
    own = KINDS[spec.kind].decompose
    if own is not None:
        y = own(b, spec, xc, p, ct)
    elif spec.kind in ("layer", "rms") and not spec.channels_first:
        assert spec.normalized_shape is not None
        axes = list(range(-len(spec.normalized_shape), 0))
        if spec.kind == "rms":
            # mean(x²) in float64 for the same reason as the moments above
            xd = xc if ct == TensorProto.DOUBLE else b.cast(xc, TensorProto.DOUBLE)
            ms = b.reduce("ReduceMean", b.op("Mul", [xd, xd]), axes)
            inv = b.op("Reciprocal", [b.op("Sqrt", [b.op("Add", [ms, b.const(spec.eps, np.float64)])])])
            y = b.op("Mul", [xc, inv if ct == TensorProto.DOUBLE else b.cast(inv, ct)])
        else:
            y = moments_normalize(b, xc, axes, spec.eps, ct)
        if "weight" in p:
            y = b.op("Mul", [y, p["weight"]])
        if "bias" in p:
            y = b.op("Add", [y, p["bias"]])
    else:
        y = _channelwise(b, spec, xc, p, ct)
    if spec.activation == "silu":
        y = b.op("Mul", [y, b.op("Sigmoid", [y])])
    return b.cast(y, spec.onnx_dtype) if spec.stash_fp32 else y


def _channelwise(b: Builder, spec: NormSpec, x: str, p: Mapping[str, str], ct: int) -> str:
    """Norms whose parameters live on axis 1: work on an ``[N, C, -1]`` view."""
    c = spec.channels if spec.channels is not None else (spec.normalized_shape or (0,))[0]
    shape = b.op("Shape", [x])
    col = b.ints([c, 1])  # per-channel parameter view, broadcasts against [N, C, S]
    view = lambda name: b.op("Reshape", [p[name], col])
    if spec.running_stats:  # batch in eval, instance with tracked stats: a per-channel affine map
        x3 = b.op("Reshape", [x, b.ints([0, c, -1])])
        inv = b.op("Reciprocal", [b.op("Sqrt", [b.op("Add", [view("var"), _eps(b, spec.eps, ct)])])])
        scale = b.op("Mul", [inv, view("weight")]) if "weight" in p else inv
        y = b.op("Mul", [b.op("Sub", [x3, view("mean")]), scale])
    else:
        if spec.kind == "group":
            assert spec.groups is not None
            xg = b.op("Reshape", [x, b.ints([0, spec.groups, -1])])
            y = b.op("Reshape", [moments_normalize(b, xg, [2], spec.eps, ct), b.ints([0, c, -1])])
        else:
            x3 = b.op("Reshape", [x, b.ints([0, c, -1])])
            axes = {"instance": [2], "batch": [0, 2], "layer": [1]}[spec.kind]
            y = moments_normalize(b, x3, axes, spec.eps, ct)
        if "weight" in p:
            y = b.op("Mul", [y, view("weight")])
    if "bias" in p:
        y = b.op("Add", [y, view("bias")])
    return b.op("Reshape", [y, shape])


STRATEGY = Decomposed()
