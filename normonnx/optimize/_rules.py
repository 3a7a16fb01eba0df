"""Rule classes shared by several norm families (one instance per family in each family's RULES).

- :class:`NormAffine`: a normonnx norm followed by Mul γ / Add β with constants that vary only along
  the normalised (or channel) axes → the same norm with weight / bias.
- :class:`CastWrapper`: ``Cast(x_low → fp32) → norm(fp32) → Cast(→ low)`` → the norm in the low
  dtype, whose contract is exactly that (statistics in fp32, result rounded once to fp16/bf16).
- :class:`DecomposedNorm`: the base of ``layer_norm.decomposed`` / ``rms_norm.decomposed``, one
  normalising Div/Mul (:func:`~normonnx.optimize.patterns.match_normalize`) with / without the mean.
- :class:`NativeNorm`: the base of the ``<family>.native`` rules, an ONNX norm op (LayerNormalization,
  GroupNormalization, RMSNormalization) lifted into the portable op; its helpers read the
  ``axis``/``stash_type`` attributes and the per-element parameters the same way for every family.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import onnx
from onnx import helper

from ..rejection import OK, CheckResult, Rejection
from ..spec import NormSpec
from .graph import FLOAT_TYPES, LOW_PRECISION, GraphView, attr, dtype_name, norm_node_params, spec_of_node
from .patterns import affine_param, decomposed_rewrite, match_normalize
from .rewriter import Rewrite, norm_rewrite
from .rule import Match, Rule

DOMAIN = "normonnx"


class NormAffine(Rule):
    """Absorb a following Mul γ / Add β into a normonnx node (shared by layer, group, rms).

    ``(n·w + b)·γ = n·(w·γ) + b·γ`` and ``(n·w + b) + β = n·w + (b + β)``, so a Mul is absorbed
    whatever parameters the node has as long as those are constants (a corrected-ε rewrite leaves
    a constant weight), and an Add when the bias is absent or constant. Products and sums are
    formed in float64 and rounded to the norm's dtype once.
    """

    name = ""
    anchor_domain = DOMAIN
    op = ""
    allow_bias = True

    def match(self, g: GraphView, node: onnx.NodeProto) -> Match | Rejection:
        if node.op_type != self.op:
            return Rejection(f"not a {self.op}")
        if attr(node, "activation", ""):
            return Rejection("an activation follows the affine")
        if attr(node, "modulation", 0):
            return Rejection("a modulation follows the norm: an affine after it is not the norm's own")
        u = g.single_user(node.output[0])
        if u is None or u.domain not in ("", "ai.onnx"):
            return Rejection("output has several users or none")
        if len(u.input) == 2 and u.input[0] == u.input[1]:
            return Rejection(f"{u.op_type} of the output with itself")
        if u.op_type == "Mul":
            slot = "weight"
        elif u.op_type == "Add" and self.allow_bias:
            slot = "bias"
        else:
            return Rejection(f"followed by {u.op_type}, not an absorbable Mul/Add")
        operand = u.input[1] if u.input[0] == node.output[0] else u.input[0]
        if g.const(operand) is None and not g.is_graph_input(operand):
            # a residual sum or a data-dependent modulation, not a parameter (see fuse_modulated)
            return Rejection(f"followed by {u.op_type} with a run-time value, not a parameter")
        return Match(node, [node, u], u.output[0], {"slot": slot, "operand": operand})

    def layout(self, g: GraphView, spec: NormSpec, x: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """(axes the parameter may vary along, its target shape)."""
        r = g.rank(x) or 0
        if spec.kind in ("layer", "rms") and not spec.channels_first:
            ns = spec.normalized_shape or ()
            return tuple(range(r - len(ns), r)), ns
        return (1,), (spec.channels if spec.channels is not None else (spec.normalized_shape or (0,))[0],)

    def check(self, g: GraphView, m: Match) -> CheckResult:
        node = m.anchor
        spec = spec_of_node(g, node)
        if spec is None:
            return Rejection("the norm's input type is unknown", node.input[0])
        x = node.input[0]
        r = g.rank(x)
        if r is None:
            return Rejection(f"rank of {x!r} is unknown", x)
        slot, operand = m.facts["slot"], m.facts["operand"]
        what = "γ" if slot == "weight" else "β"
        if g.elem_type(operand) != spec.onnx_dtype:
            return Rejection(f"{what} is {dtype_name(g.elem_type(operand))}, the norm {spec.dtype}", operand)
        axes, target = self.layout(g, spec, x)
        arr, v = affine_param(g, operand, rank=r, axes=axes, target=target, what=what)
        if not v:
            return v
        present = norm_node_params(node)
        # the parameters the new one combines with must be constants (folded in float64)
        touched = ("weight", "bias") if slot == "weight" else ("bias",)
        params: dict[str, object] = dict(present)
        for s in touched:
            if s not in present:
                continue
            c = g.const(present[s])
            if c is None:
                return Rejection(
                    f"the norm's {s} {present[s]!r} is not a constant, so {what} cannot be combined with it", present[s]
                )
            c64 = c.astype(np.float64).reshape(target)
            params[s] = c64 * arr if slot == "weight" else c64 + arr
        if slot not in present:
            params[slot] = arr
        m.facts["spec"] = spec.replace(**{"has_weight" if slot == "weight" else "has_bias": True})
        m.facts["params"] = params
        return OK

    def rewrite(self, g: GraphView, m: Match) -> Rewrite:
        return norm_rewrite(
            g, m.nodes, m.output, m.facts["spec"], m.anchor.input[0], m.facts["params"], m.anchor, m.facts["slot"]
        )  # type: ignore[arg-type]


class CastWrapper(Rule):
    """``Cast(x_low → fp32) → <norm, fp32> → Cast(→ low)`` becomes the norm in the low dtype."""

    anchor_domain = DOMAIN

    def __init__(self, name: str, op: str) -> None:
        self.name = name  # type: ignore[misc]
        self.op = op
        self.anchor_ops = (op,)  # type: ignore[misc]

    def match(self, g: GraphView, node: onnx.NodeProto) -> Match | Rejection:
        cin = g.op(node.input[0], "Cast")
        if cin is None:
            return Rejection("input is not a Cast")
        cout = g.single_user(node.output[0])
        if cout is None or cout.op_type != "Cast" or cout.domain not in ("", "ai.onnx"):
            return Rejection("output is not read by a single Cast")
        return Match(node, [cin, node, cout], cout.output[0], {"cin": cin, "cout": cout})

    def check(self, g: GraphView, m: Match) -> CheckResult:
        cin, node, cout = m.facts["cin"], m.anchor, m.facts["cout"]
        low = g.elem_type(cin.input[0])
        if low not in LOW_PRECISION:
            return Rejection(f"the Cast is from {dtype_name(low)}, not float16/bfloat16", cin.input[0])
        spec = spec_of_node(g, node)
        if spec is None or spec.dtype != "float32" or int(attr(cin, "to")) != onnx.TensorProto.FLOAT:
            return Rejection("the norm between the Casts does not compute in float32", node.output[0])
        if int(attr(cout, "to")) != low:
            return Rejection(
                f"casts back to {dtype_name(int(attr(cout, 'to')))}, not {dtype_name(low)}", cout.output[0]
            )
        np_low = helper.tensor_dtype_to_np_dtype(low)
        params: dict[str, object] = {}
        for slot, value in norm_node_params(node).items():
            c = g.const(value)
            if c is None:
                return Rejection(
                    f"{slot} {value!r} is not a constant, so it cannot be converted to {dtype_name(low)}", value
                )
            if not np.array_equal(c.astype(np_low).astype(c.dtype), c):
                return Rejection(
                    f"{slot} (float32) is not exactly representable in {dtype_name(low)}: absorbing the casts would round it",
                    c,
                )
            params[slot] = c
        m.facts["params"] = params
        m.facts["spec"] = spec.replace(dtype=FLOAT_TYPES[low])
        return OK

    def rewrite(self, g: GraphView, m: Match) -> Rewrite:
        return norm_rewrite(
            g, m.nodes, m.output, m.facts["spec"], m.facts["cin"].input[0], m.facts["params"], m.anchor, "cast_wrapped"
        )


class DecomposedNorm(Rule):
    """``(x − μ)/√(σ² + ε)`` (``centered``) or ``x/√(mean(x²) + ε)`` anchored at its Div/Mul: the
    match is :func:`~normonnx.optimize.patterns.match_normalize`'s, ``check`` (per family) proves it
    and leaves the spec, the rewrite is :func:`~normonnx.optimize.patterns.decomposed_rewrite`."""

    anchor_ops = ("Div", "Mul")
    skip_lowered = True
    centered: ClassVar[bool] = True
    #: the name hint of new initializers ("layer_norm", ...)
    hint: ClassVar[str] = ""

    def match(self, g: GraphView, node: onnx.NodeProto) -> Match | Rejection:
        nm = match_normalize(g, node)
        if isinstance(nm, Rejection):
            return nm
        if nm.centered != self.centered:
            return Rejection(
                "no mean is subtracted (an RMS norm?)" if self.centered else "x − mean(x) is subtracted (a LayerNorm)"
            )
        return Match(node, nm.nodes, nm.output, {"nm": nm})

    def rewrite(self, g: GraphView, m: Match) -> Rewrite:
        return decomposed_rewrite(g, m, m.facts["nm"].x, self.hint)


class NativeNorm(Rule):
    """An ONNX norm op lifted into the portable ``normonnx`` op: the match is the node itself,
    ``check`` leaves ``spec`` and ``params`` in the facts, the rewrite is the same.

    The default ``check`` is LayerNormalization's and RMSNormalization's: the norm of ``kind`` over
    axes ``axis … r−1``, inputs 1 and 2 (when given) its weight and bias; GroupNormalization
    has its own."""

    skip_lowered = True
    #: the spec's kind ("layer", "rms")
    kind: ClassVar[str] = ""
    #: the name hint of new initializers ("layer_norm", ...)
    hint: ClassVar[str] = ""

    def match(self, g: GraphView, node: onnx.NodeProto) -> Match | Rejection:
        return Match(node, [node], node.output[0])

    def check(self, g: GraphView, m: Match) -> CheckResult:
        node = m.anchor
        x = node.input[0]
        v, axes, ns = self.trailing_axes(g, node)
        if not v:
            return v
        v, params = self.params(g, node, dict(zip(("weight", "bias"), node.input[1:])), axes, ns)
        if not v:
            return v
        m.facts["params"] = params
        m.facts["spec"] = NormSpec(
            self.kind,
            eps=float(attr(node, "epsilon", 1e-5)),
            normalized_shape=ns,
            has_weight="weight" in params,
            has_bias="bias" in params,
            dtype=FLOAT_TYPES[g.elem_type(x)],  # type: ignore[index]
            rank=g.rank(x),
        )
        return OK

    def rewrite(self, g: GraphView, m: Match) -> Rewrite:
        return norm_rewrite(
            g, m.nodes, m.output, m.facts["spec"], m.anchor.input[0], m.facts["params"], m.anchor, self.hint
        )

    @staticmethod
    def float32_stats(g: GraphView, node: onnx.NodeProto) -> CheckResult:
        """fp16/bf16 statistics must be in float32 (``stash_type=1``), as normonnx computes them."""
        x = node.input[0]
        et = g.elem_type(x)
        if et in LOW_PRECISION and int(attr(node, "stash_type", 1)) != 1:
            return Rejection(
                f"stash_type={attr(node, 'stash_type')}: statistics in {dtype_name(et)}; normonnx computes them in float32",
                x,
            )
        return OK

    @classmethod
    def trailing_axes(cls, g: GraphView, node: onnx.NodeProto) -> tuple[CheckResult, tuple[int, ...], tuple[int, ...]]:
        """(verdict, axes ``axis … r−1``, their static dims) of LayerNormalization / RMSNormalization
        over a float input of known shape, its statistics in float32."""
        x = node.input[0]
        et = g.elem_type(x)
        if et not in FLOAT_TYPES:
            return Rejection(f"input element type {dtype_name(et)} is not a float type", x), (), ()
        shape = g.shape(x)
        if shape is None:
            return Rejection(f"shape of {x!r} is unknown", x), (), ()
        r = len(shape)
        axis = int(attr(node, "axis", -1))
        axis = axis + r if axis < 0 else axis
        if not 0 <= axis < r:
            return Rejection(f"axis {attr(node, 'axis', -1)} out of range for rank {r}", x), (), ()
        v = cls.float32_stats(g, node)
        if not v:
            return v, (), ()
        dims = shape[axis:]
        if not all(isinstance(d, int) for d in dims):
            return Rejection(f"normalised dims {list(dims)} of {x!r} are not static", x), (), ()
        return OK, tuple(range(axis, r)), tuple(int(d) for d in dims)  # type: ignore[arg-type]

    @staticmethod
    def params(
        g: GraphView, node: onnx.NodeProto, slots: dict[str, str], axes: tuple[int, ...], target: tuple[int, ...]
    ) -> tuple[CheckResult, dict[str, object]]:
        """(verdict, params) of ``slots`` ("weight"/"bias" → value name, "" when absent): a value of
        the ``target`` shape and the input's type as it is (constant or not), else a constant that
        varies only along ``axes`` (:func:`~normonnx.optimize.patterns.affine_param`)."""
        et, r = g.elem_type(node.input[0]), g.rank(node.input[0]) or 0
        params: dict[str, object] = {}
        for slot, value in slots.items():
            if not value:
                continue
            if g.shape(value) == target and g.elem_type(value) == et:
                params[slot] = value  # usable as is (constant or not)
                continue
            arr, v = affine_param(
                g, value, rank=r, axes=axes, target=target, what="scale" if slot == "weight" else "bias"
            )
            if not v:
                return v, {}
            params[slot] = arr
        return OK, params
