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

import onnx

from ..rejection import OK, CheckResult, Rejection
from ..spec import NormSpec
from ._rules import CastWrapper, NormAffine
from .graph import FLOAT_TYPES, LOW_PRECISION, GraphView, attr, dtype_name
from .patterns import affine_param, check_normalize, decomposed_rewrite, decomposed_spec, match_normalize
from .rewriter import Rewrite, norm_rewrite
from .rule import Match, Rule

DOMAIN = "normonnx"


class RMSNormDecomposed(Rule):
    name = "rms_norm.decomposed"
    anchor_ops = ("Div", "Mul")
    skip_lowered = True

    def match(self, g: GraphView, node: onnx.NodeProto) -> Match | Rejection:
        nm = match_normalize(g, node)
        if isinstance(nm, Rejection):
            return nm
        if nm.centered:
            return Rejection("x − mean(x) is subtracted (a LayerNorm)")
        return Match(node, nm.nodes, nm.output, {"nm": nm})

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

    def rewrite(self, g: GraphView, m: Match) -> Rewrite:
        return decomposed_rewrite(g, m, m.facts["nm"].x, "rms_norm")


class RMSNormNative(Rule):
    name = "rms_norm.native"
    anchor_ops = ("RMSNormalization",)
    skip_lowered = True

    def match(self, g: GraphView, node: onnx.NodeProto) -> Match | Rejection:
        return Match(node, [node], node.output[0])

    def check(self, g: GraphView, m: Match) -> CheckResult:
        node = m.anchor
        x = node.input[0]
        et = g.elem_type(x)
        shape = g.shape(x)
        if et not in FLOAT_TYPES or shape is None:
            return Rejection(f"input {x!r} type/shape unknown or not float ({dtype_name(et)})", x)
        r = len(shape)
        axis = int(attr(node, "axis", -1))
        axis = axis + r if axis < 0 else axis
        if et in LOW_PRECISION and int(attr(node, "stash_type", 1)) != 1:
            return Rejection("stash_type=0: statistics in low precision; normonnx computes them in float32", x)
        axes = tuple(range(axis, r))
        ns = tuple(shape[a] for a in axes)
        if not ns or not all(isinstance(d, int) for d in ns):
            return Rejection(f"normalised dims {list(ns)} are not static", x)
        scale = node.input[1]
        params: dict[str, object] = {}
        if g.shape(scale) == ns and g.elem_type(scale) == et:
            params["weight"] = scale
        else:
            arr, v = affine_param(g, scale, rank=r, axes=axes, target=ns, what="scale")
            if not v:
                return v
            params["weight"] = arr
        m.facts["params"] = params
        m.facts["spec"] = NormSpec(
            "rms",
            eps=float(attr(node, "epsilon", 1e-5)),
            normalized_shape=ns,
            has_bias=False,
            dtype=FLOAT_TYPES[et],
            rank=r,  # type: ignore[arg-type]
        )
        return OK

    def rewrite(self, g: GraphView, m: Match) -> Rewrite:
        return norm_rewrite(
            g, m.nodes, m.output, m.facts["spec"], m.anchor.input[0], m.facts["params"], m.anchor, "rms_norm"
        )


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
