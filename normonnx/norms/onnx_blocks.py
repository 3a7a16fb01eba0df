"""ONNX building blocks the kinds' decompositions and native ops share.

Each takes a builder ``b`` (:class:`normonnx.lowering.builder.Builder`, duck-typed here so that
``norms`` does not import ``lowering``) and value names, appends nodes and returns the output.

Statistics are two-pass and accumulated in float64:

    μ  = mean(float64(x))                          (ReduceMean in double)
    c  = x − μ                                     (in the compute dtype, fp32 for fp32/fp16)
    σ² = sum(float64(c)²) / n                      (ReduceSumSquare in double; never E[x²] − E[x]²)
    y  = c · 1/√(σ² + ε) · γ + β

Why float64: onnxruntime's fp32 reductions accumulate sequentially, so a 1M-element group loses
~1e-3 of accuracy in fp32 whatever the formula (measured: 1.5e-3 with a pivot shift, torch 1e-6);
in float64 the same graph is at 1e-6 at offset 0 and 4e-5 at offset 1e3 (torch: 1e-4), because
the only fp32 rounding left is that of μ in ``x − μ``. Zero-variance inputs give exactly β.
Channel-wise work is done on an ``[N, C or G, −1]`` view so the graph is rank-agnostic and valid
for dynamic shapes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from onnx import TensorProto, helper

from ..spec import NormSpec


def moments_normalize(b: Any, x: str, axes: Sequence[int], eps: float, compute: int) -> str:
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


def trailing_affine(b: Any, y: str, p: Mapping[str, str]) -> str:
    """``y·γ + β`` with γ, β of the trailing normalised shape (those present)."""
    if "weight" in p:
        y = b.op("Mul", [y, p["weight"]])
    if "bias" in p:
        y = b.op("Add", [y, p["bias"]])
    return y


def channelwise(b: Any, spec: NormSpec, x: str, p: Mapping[str, str], compute: int, axes: Sequence[int]) -> str:
    """A norm whose parameters live on axis 1, on an ``[N, C, -1]`` view of ``x``: statistics over
    ``axes`` of that view (``[2]`` per sample and channel, ``[0, 2]`` per channel, ``[1]`` per
    position), or the stored mean/var of a ``running_stats`` spec (a per-channel affine map)."""
    c = spec.channels if spec.channels is not None else (spec.normalized_shape or (0,))[0]
    shape = b.op("Shape", [x])
    b.ints([c, 1])  # the [C, 1] view's constant first: node order as the decompositions always had it
    x3 = b.op("Reshape", [x, b.ints([0, c, -1])])
    if spec.running_stats:
        var = channel_view(b, p["var"], c)
        inv = b.op("Reciprocal", [b.op("Sqrt", [b.op("Add", [var, eps_const(b, spec, compute)])])])
        scale = b.op("Mul", [inv, channel_view(b, p["weight"], c)]) if "weight" in p else inv
        y = b.op("Mul", [b.op("Sub", [x3, channel_view(b, p["mean"], c)]), scale])
    else:
        y = moments_normalize(b, x3, axes, spec.eps, compute)
        if "weight" in p:
            y = b.op("Mul", [y, channel_view(b, p["weight"], c)])
    return _bias_and_back(b, y, p, c, shape)


def grouped(b: Any, spec: NormSpec, x: str, p: Mapping[str, str], compute: int) -> str:
    """Statistics per (sample, group of C/G channels), γ/β per channel, on ``[N, G, -1]``."""
    assert spec.groups is not None
    c = spec.channels or 0
    shape = b.op("Shape", [x])
    b.ints([c, 1])
    xg = b.op("Reshape", [x, b.ints([0, spec.groups, -1])])
    y = b.op("Reshape", [moments_normalize(b, xg, [2], spec.eps, compute), b.ints([0, c, -1])])
    if "weight" in p:
        y = b.op("Mul", [y, channel_view(b, p["weight"], c)])
    return _bias_and_back(b, y, p, c, shape)


def _bias_and_back(b: Any, y: str, p: Mapping[str, str], c: int, shape: str) -> str:
    if "bias" in p:
        y = b.op("Add", [y, channel_view(b, p["bias"], c)])
    return b.op("Reshape", [y, shape])


def channel_view(b: Any, v: str, c: int) -> str:
    """A per-channel vector as ``[C, 1]``, broadcasting against ``[N, C, S]``."""
    return b.op("Reshape", [v, b.ints([c, 1])])


def eps_const(b: Any, spec: NormSpec, compute: int) -> str:
    """ε as a constant of the compute dtype."""
    return b.const(spec.eps, helper.tensor_dtype_to_np_dtype(compute))


def np_dtype(spec: NormSpec) -> np.dtype:
    """The NumPy dtype of ``spec``'s element type."""
    return np.dtype(helper.tensor_dtype_to_np_dtype(spec.onnx_dtype))


def param_or_fill(
    b: Any, spec: NormSpec, params: Mapping[str, str], name: str, fill: float, shape: Sequence[int]
) -> str:
    """The parameter ``name`` or, when the spec has none, a constant ``fill`` of ``shape`` (native
    ops require their optional scale and bias)."""
    return params[name] if name in params else b.const(np.full(tuple(shape), fill), np_dtype(spec))
