"""RMSNorm fusions: ``y = x/√(mean(x²) + ε)·γ`` in every spelling becomes one ``normonnx.RMSNorm``.

Rules:

- ``rms_norm.decomposed``: (Pow 2 | Mul x·x) → ReduceMean(trailing axes) → Add ε → (Sqrt → Div |
  Sqrt → Reciprocal → Mul | 1/Sqrt → Mul | Pow −0.5 → Mul). Same proof as the LayerNorm's
  (:func:`normonnx.optimize.patterns.check_normalize`) without the mean.
- ``rms_norm.native``: RMSNormalization-23 lifted into the portable op.
- ``rms_norm.affine``: the following Mul by γ (before or after the cast back, see below).
- ``rms_norm.cast_wrapper``: ``Cast(x16 → fp32) → RMSNorm(fp32) → Cast(→ fp16)`` (what LLaMA-style
  code writes: ``x.float()`` … ``.to(dtype)``) becomes an fp16 RMSNorm: normonnx's fp16 contract *is*
  "statistics in fp32, result cast to fp16". A γ multiplied before the cast back must be exactly
  representable in fp16 (checked), else the casts stay. A γ multiplied in fp16 after the cast
  back (``weight * x.to(dtype)``) is then absorbed by ``rms_norm.affine``: the product is rounded
  once instead of twice (≤ 1 ulp of fp16 difference, inside the fp16 tolerance).
"""

from __future__ import annotations

from ..rejection import CheckResult, Rejection
from ._rules import CastWrapper, DecomposedNorm, NativeNorm, NormAffine
from .graph import FLOAT_TYPES, GraphView
from .patterns import check_normalize, decomposed_spec
from .rule import Match, Rule

DOMAIN = "normonnx"


class RMSNormDecomposed(DecomposedNorm):
    name = "rms_norm.decomposed"
    centered = False
    hint = "rms_norm"

    def check(self, g: GraphView, m: Match) -> CheckResult:
        nm = m.facts["nm"]
        v, mo = check_normalize(g, nm, want_centered=False)
        if not v:
            return v
        axes = mo.axes
        shape = g.shape(nm.x)
        assert shape is not None
        r = len(shape)
        if axes != tuple(range(r - len(axes), r)):
            return Rejection(f"mean square over axes {list(axes)} of a rank-{r} input, not the trailing axes", nm.x)
        ns = tuple(shape[a] for a in axes)
        if not all(isinstance(d, int) for d in ns):
            return Rejection(f"normalised dims {list(ns)} are not static", nm.x)
        return decomposed_spec(
            m,
            mo,
            "rms",
            ns,  # type: ignore[arg-type]
            dtype=FLOAT_TYPES[g.elem_type(nm.x)],  # type: ignore[index]
            rank=r,
            normalized_shape=ns,
        )


class RMSNormNative(NativeNorm):
    name = "rms_norm.native"
    anchor_ops = ("RMSNormalization",)
    hint = "rms_norm"
    kind = "rms"


class RMSNormAffine(NormAffine):
    name = "rms_norm.affine"
    anchor_ops = ("RMSNorm",)
    op = "RMSNorm"
    allow_bias = False


RULES: list[Rule] = [
    RMSNormDecomposed(),
    RMSNormNative(),
    RMSNormAffine(),
    CastWrapper("rms_norm.cast_wrapper", "RMSNorm"),
]
