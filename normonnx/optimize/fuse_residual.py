"""Residual Add + norm: ``s = a + b; y = N(s)`` → one norm node with a residual input, ``y = N(a + b)``,
whose optional second output is ``s`` (the residual stream of a pre-norm transformer reads it).

- ``residual.layer`` / ``residual.rms``: ``N`` a normonnx LayerNorm over trailing axes / RMSNorm
  whose input is a plain ``Add``.

Proof (``check``): the fused node computes ``a + b`` in the norm's dtype, then the norm, so it is the
same function exactly when
- the Add does not broadcast: both operands have the Add's full static shape (equal ints or equal
  symbolic dims; an unknown dim refuses) — a bias ``Add(x, β)`` is the norm's affine, not a residual;
- both operands have the norm's dtype;
- the graph stays in topological order: the fused node is placed at the norm when every other
  reader of the sum comes after the norm, else at the Add when every other input of the norm
  (γ, β, a modulation's scale/shift) is computed before the Add; otherwise it refuses.

Every other reader of ``s`` (and a graph output ``s``) reads the node's second output, which keeps
the name ``s``. What this saves: one write and one read of the activation per norm, and a node.

- ``residual.gate_layer`` / ``residual.gate_rms``: a residual norm ``N(a + b)`` (fused above) whose
  operand ``b`` (or ``a``: the sum commutes exactly) is a plain ``Mul(g, r)`` read by nothing else,
  with ``r`` of the sum's full shape and ``g`` a gate ``[N or 1, 1, …, 1, *normalized_shape]`` —
  AdaLN-Zero's ``x + gate·attn(…)`` — → the same node with ``has_gate=1``, residual ``r``, gate ``g``.
  Proof: the kernel and the function body compute ``fl(a + fl(g·r))`` (the product rounded apart,
  never contracted into an fma), bitwise the Mul and Add they replace; ``g``'s shape (checked
  statically, as a modulation's scale) broadcasts only over the tokens, so the product has
  ``r``'s shape and the kernel's per-sample row indexing holds. Both operands have the norm's
  dtype. The Mul sits before the norm, so the fused node keeps the norm's place.
"""

from __future__ import annotations

import onnx

from ..rejection import OK, CheckResult, Rejection
from .graph import GraphView, dtype_name, norm_node_params, spec_of_node
from .rewriter import Rewrite, norm_rewrite
from .rule import Match, Rule

DOMAIN = "normonnx"


class _OnNorm(Rule):
    """A rule anchored at one normonnx norm op, one instance per family (``name``, ``op``)."""

    anchor_domain = DOMAIN

    def __init__(self, name: str, op: str) -> None:
        self.name = name  # type: ignore[misc]
        self.anchor_ops = (op,)  # type: ignore[misc]


class ResidualNorm(_OnNorm):
    #: the Add's output stays produced (as the fused node's second output): not an interior value
    check_interior = False

    def match(self, g: GraphView, node: onnx.NodeProto) -> Match | Rejection:
        add = g.op(node.input[0], "Add")
        if add is None:
            return Rejection("input is not produced by an Add")
        if len(add.input) != 2 or not all(add.input):
            return Rejection("the Add does not have two operands")
        if any(p.key == "normonnx.strategy" for p in node.metadata_props):
            return Rejection("already lowered")
        if any(a.name == "has_residual" and a.i for a in node.attribute):
            return Rejection("already has a residual input")
        return Match(node, [add, node], node.output[0], {"add": add})

    def check(self, g: GraphView, m: Match) -> CheckResult:
        node, add = m.anchor, m.facts["add"]
        spec = spec_of_node(g, node)
        if spec is None:
            return Rejection("the norm's input type is unknown", node.input[0])
        if spec.channels_first:
            return Rejection("a channels-first LayerNorm has no fused residual form", node.input[0])
        s = add.output[0]
        out = g.shape(s)
        for v in add.input:
            if g.elem_type(v) != spec.onnx_dtype:
                return Rejection(f"operand {v!r} is {dtype_name(g.elem_type(v))}, the norm {spec.dtype}", v)
            sv = g.shape(v)
            if sv is None or out is None or None in sv or None in out:
                return Rejection(f"the static shape of {v!r} or of the sum is unknown", v)
            if tuple(sv) != tuple(out):
                if all(isinstance(d, int) for d in (*sv, *out)):
                    return Rejection(f"the Add broadcasts {list(sv)} to {list(out)}: a residual has the sum's shape", v)
                return Rejection(f"{list(sv)} and the sum's {list(out)} are not provably the same shape", v)
        m.facts["spec"] = spec.replace(residual=True)
        m.facts["at"] = self._placement(g, add, node)
        if m.facts["at"] is None:
            readers = [u for u in g.users(s) if u is not node and g.index[id(u)] < g.index[id(node)]]
            late = [v for v in node.input[1:] if v and _produced_after(g, v, add)]
            return Rejection(
                f"the sum is read by {readers[0].op_type} node {readers[0].name!r} before the norm, and the norm's "
                f"input {late[0]!r} is computed after the Add: no position for the fused node keeps the order",
                late[0],
            )
        return OK

    @staticmethod
    def _placement(g: GraphView, add: onnx.NodeProto, node: onnx.NodeProto) -> onnx.NodeProto | None:
        """Where the fused node can go: the norm's place, the Add's, or None."""
        s = add.output[0]
        if all(g.index[id(u)] > g.index[id(node)] for u in g.users(s) if u is not node):
            return node
        if not any(v and _produced_after(g, v, add) for v in node.input[1:]):
            return add
        return None

    def rewrite(self, g: GraphView, m: Match) -> Rewrite:
        node, add = m.anchor, m.facts["add"]
        params = {**norm_node_params(node), "residual": add.input[1]}
        rw = norm_rewrite(g, m.nodes, m.output, m.facts["spec"], add.input[0], params, node, "residual")  # type: ignore[arg-type]
        s = add.output[0]
        if s in g.graph_outputs or any(u is not node for u in g.users(s)):
            rw.add[0].output.append(s)  # the residual stream reads the sum: the node's second output
        rw.at = m.facts["at"]
        return rw


class GatedResidualNorm(_OnNorm):
    #: the norm's sum output stays produced (other readers are expected): the Mul's single reader is
    #: checked in ``check`` instead
    check_interior = False

    def match(self, g: GraphView, node: onnx.NodeProto) -> Match | Rejection:
        if not any(a.name == "has_residual" and a.i for a in node.attribute):
            return Rejection("not a residual norm")
        if any(a.name == "has_gate" and a.i for a in node.attribute):
            return Rejection("already gated")
        if any(a.name == "sample_operands" and a.i for a in node.attribute):  # a [N or 1, 1, …, C] gate would not fit
            return Rejection("the node reads per-sample [N, C] operands (sample_operands=1)")
        if any(p.key == "normonnx.strategy" for p in node.metadata_props):
            return Rejection("already lowered")
        params = norm_node_params(node)
        for x, other in ((node.input[0], params.get("residual", "")), (params.get("residual", ""), node.input[0])):
            mul = g.op(other, "Mul") if other else None
            if mul is not None and mul.domain in ("", "ai.onnx") and len(mul.input) == 2 and all(mul.input):
                return Match(node, [mul, node], node.output[0], {"mul": mul, "x": x})
        return Rejection("neither operand of the residual sum is a Mul")

    def check(self, g: GraphView, m: Match) -> CheckResult:
        from .fuse_modulated import _modulation_shape

        node, mul = m.anchor, m.facts["mul"]
        spec = spec_of_node(g, node)
        if spec is None:
            return Rejection("the norm's input type is unknown", node.input[0])
        if g.single_user(mul.output[0]) is not node or list(node.input).count(mul.output[0]) != 1:
            return Rejection("the gated product is also read elsewhere (it would still be computed)", mul.output[0])
        out = g.shape(mul.output[0])
        ns = spec.normalized_shape or ()
        if out is None or None in out:
            return Rejection("the static shape of the gated product is unknown", mul.output[0])
        if len(out) <= len(ns):
            return Rejection("the input has no sample axis before the normalised ones", mul.output[0])
        why: dict[str, str] = {}
        for r, gate in ((mul.input[1], mul.input[0]), (mul.input[0], mul.input[1])):
            for v in (r, gate):
                if g.elem_type(v) != spec.onnx_dtype:
                    return Rejection(f"operand {v!r} is {dtype_name(g.elem_type(v))}, the norm {spec.dtype}", v)
            rs, gs = g.shape(r), g.shape(gate)
            if rs is None or gs is None or None in rs or None in gs:
                why[gate] = "a static shape is unknown"
                continue
            if tuple(rs) != tuple(out):
                why[gate] = f"the other operand {list(rs)} is not the product's shape {list(out)}"
                continue
            bad = _modulation_shape(tuple(gs), tuple(out), ns)
            if bad:
                why[gate] = f"shape {list(gs)}: {bad}"
                continue
            m.facts.update(r=r, gate=gate, spec=spec.replace(gated=True))
            return OK
        gate, reason = next(iter(why.items()))
        return Rejection(f"no operand of the Mul is a gate [N or 1, 1, ..., C] of the residual: {reason}", gate)

    def rewrite(self, g: GraphView, m: Match) -> Rewrite:
        node = m.anchor
        params = {**norm_node_params(node), "residual": m.facts["r"], "gate": m.facts["gate"]}
        return norm_rewrite(g, m.nodes, m.output, m.facts["spec"], m.facts["x"], params, node, "gated")  # type: ignore[arg-type]


def _produced_after(g: GraphView, value: str, ref: onnx.NodeProto) -> bool:
    p = g.op(value)
    return p is not None and g.index[id(p)] > g.index[id(ref)]


RULES: list[Rule] = [
    ResidualNorm("residual.layer", "LayerNorm"),
    ResidualNorm("residual.rms", "RMSNorm"),
    GatedResidualNorm("residual.gate_layer", "LayerNorm"),
    GatedResidualNorm("residual.gate_rms", "RMSNorm"),
]
