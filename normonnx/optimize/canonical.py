"""Canonical forms of the statistics, so that every norm spelling meets the fusion rules in one shape.

Hand-written norms reach ONNX through torch's decompositions in several equivalent forms; these
rules rewrite each into the form the fusions match, and only when the two forms are the same
function (up to rounding):

- ``canonical.sum_to_mean``: ``ReduceSum(x, A) / N`` (or ``· 1/N``) with ``N`` the static number of
  elements over ``A`` is ``ReduceMean(x, A)`` (what ``torch.var_mean`` / ``x.sum(d) / n`` give).
- ``canonical.reshape_keepdims``: the same with a Reshape that restores the reduced axes as 1s.
- ``canonical.noop_shape``: an Expand / Reshape to the value's own (symbolic) shape is removed.
- ``canonical.unsqueeze_keepdims``: ``Unsqueeze(…Unsqueeze(Reduce(x, A, keepdims=0), U1)…, Uk)``
  putting back exactly the reduced axes is ``Reduce(x, A, keepdims=1)`` (``var_mean(...,
  keepdim=False)`` followed by ``[:, None, None, None]``, which torch exports as two Unsqueezes).

Both produce a new reduction that reads the same ``x`` with the same axes constant as its sibling,
so the mean subtracted from ``x`` and the mean inside the variance are provably one value.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..rejection import OK, CheckResult, Rejection
from ._shapes import dims_of, shape_value, static_scalar
from .graph import _AXES_AS_INPUT as AXES_AS_INPUT
from .graph import GraphView, attr, norm_axes, reduced_count, reduction_of
from .patterns import check_restore
from .rewriter import Rewrite
from .rule import Match, Rule


def _reduce_node(g: GraphView, red_node: onnx.NodeProto, op: str, keepdims: int, out: str) -> list[onnx.NodeProto]:
    """``op`` over the same input and axes as ``red_node`` with ``keepdims``, producing ``out``.

    The axes move between input and attribute as the opset wants them for ``op`` (ReduceSum takes
    them as an input from opset 13, ReduceMean only from 18)."""
    red = reduction_of(g, red_node)
    assert red is not None
    inputs, nodes = [red.input], []
    attrs = [a for a in red_node.attribute if a.name not in ("keepdims", "axes")]
    if red.axes is not None and g.opset >= AXES_AS_INPUT[op]:
        axes_in = red_node.input[1] if len(red_node.input) > 1 else ""
        if not axes_in:  # the axes were an attribute of red_node: make them a constant input
            t = numpy_helper.from_array(np.asarray(red.axes, np.int64), name=g.fresh(f"{out}/axes"))
            nodes.append(helper.make_node("Constant", [], [t.name], value=t))
            axes_in = t.name
        inputs.append(axes_in)
    elif red.axes is not None:
        attrs.append(helper.make_attribute("axes", list(red.axes)))
    n = helper.make_node(op, inputs, [out], name=g.fresh(f"{red_node.name or out}/{op}"))
    n.attribute.extend(attrs)
    n.attribute.append(helper.make_attribute("keepdims", keepdims))
    n.metadata_props.extend(red_node.metadata_props)
    return [*nodes, n]


class SumToMean(Rule):
    name = "canonical.sum_to_mean"
    anchor_ops = ("Div", "Mul")
    check_interior = False  # the ReduceSum stays for its other readers; dead-node removal drops it

    def match(self, g: GraphView, node: onnx.NodeProto) -> Match | Rejection:
        for data, other in ((node.input[0], node.input[1]), (node.input[1], node.input[0])):
            p = g.op(data, "ReduceSum")
            if p is not None and (node.op_type == "Mul" or data == node.input[0]):
                return Match(node, [node], node.output[0], {"sum": p, "other": other})
        return Rejection("no ReduceSum operand")

    def check(self, g: GraphView, m: Match) -> CheckResult:
        red = reduction_of(g, m.facts["sum"])
        assert red is not None
        rank = g.rank(red.input)
        axes = norm_axes(red.axes, rank) if red.dynamic_axes is None else None
        if axes is None or not axes:
            return Rejection("the ReduceSum's axes or its input's rank are not known", red.node.output[0])
        if attr(red.node, "noop_with_empty_axes", 0):
            return Rejection("ReduceSum with noop_with_empty_axes", red.node.output[0])
        n = reduced_count(g, red.input, axes)
        c = static_scalar(g, m.facts["other"])  # a constant, or a count computed from static dims
        if n is None or c is None:
            return Rejection("the count or the divisor is not static", m.facts["other"])
        want = float(n) if m.anchor.op_type == "Div" else 1.0 / n
        if not np.isclose(c, want, rtol=1e-6, atol=0.0):
            return Rejection(f"divides the sum by {c:.7g}, not by its count {n}", m.facts["other"])
        if g.elem_type(red.input) != g.elem_type(m.output):
            return Rejection("the division changes the element type", m.output)
        return OK

    def rewrite(self, g: GraphView, m: Match) -> Rewrite:
        red = m.facts["sum"]
        return Rewrite([m.anchor], _reduce_node(g, red, "ReduceMean", int(attr(red, "keepdims", 1)), m.output))


class UnsqueezeKeepdims(Rule):
    name = "canonical.unsqueeze_keepdims"
    anchor_ops = ("Unsqueeze",)
    check_interior = False

    def match(self, g: GraphView, node: onnx.NodeProto) -> Match | Rejection:
        chain = [node]  # Unsqueeze(Unsqueeze(R, U1), U2): torch's [:, None, None, None] in steps
        p = g.producer.get(node.input[0])
        while p is not None and p.op_type == "Unsqueeze" and p.domain in ("", "ai.onnx") and len(chain) < 8:
            chain.append(p)
            p = g.producer.get(p.input[0])
        red = reduction_of(g, p) if p is not None else None
        if red is None:
            return Rejection("input is not a reduction")
        if red.keepdims:
            return Rejection("the reduction keeps its dims")
        nxt = g.single_user(node.output[0])
        if nxt is not None and nxt.op_type == "Unsqueeze" and nxt.domain in ("", "ai.onnx"):
            return Rejection("part of a longer Unsqueeze chain (matched at its end)")
        return Match(node, [node], node.output[0], {"red": red, "chain": chain[::-1]})

    def check(self, g: GraphView, m: Match) -> CheckResult:
        red = m.facts["red"]
        rank = g.rank(red.input)
        axes = norm_axes(red.axes, rank) if red.dynamic_axes is None else None
        if axes is None or not axes or rank is None:
            return Rejection("the reduction's axes or its input's rank are not known", red.node.output[0])
        # replay the inserts: the kept axes keep their order, so only where the new 1s land matters
        dims: list[bool] = [False] * (rank - len(axes))  # True = an inserted 1
        for u in m.facts["chain"]:
            if len(u.input) > 1:
                c = g.const(u.input[1])
                if c is None:
                    return Rejection("Unsqueeze axes computed at run time", u.input[1])
                u_axes = [int(a) for a in c.reshape(-1)]
            else:
                u_axes = [int(a) for a in attr(u, "axes", [])]
            out_rank = len(dims) + len(u_axes)
            pos = norm_axes(u_axes, out_rank)
            if pos is None or len(pos) != len(u_axes):
                return Rejection(f"Unsqueeze axes {u_axes} are invalid", u.output[0])
            kept = iter(dims)
            dims = [True if i in pos else next(kept) for i in range(out_rank)]
        back = tuple(i for i, new in enumerate(dims) if new)
        if back != axes:
            return Rejection(
                f"the Unsqueezes put back axes {list(back)}, the reduction removed {list(axes)}", m.anchor.output[0]
            )
        return OK

    def rewrite(self, g: GraphView, m: Match) -> Rewrite:
        node = m.facts["red"].node
        return Rewrite([m.anchor], _reduce_node(g, node, node.op_type, 1, m.output))


class NoOpReshape(Rule):
    """``Expand(v, s)`` / ``Reshape(v, s)`` where ``s`` is provably ``v``'s own shape (a dynamic
    export's ``broadcast_in_dim`` of a value that already has that shape) is ``v``."""

    name = "canonical.noop_shape"
    anchor_ops = ("Expand", "Reshape")
    check_interior = False

    def match(self, g: GraphView, node: onnx.NodeProto) -> Match | Rejection:
        if node.output[0] in g.graph_outputs:
            return Rejection("the result is a graph output")
        dims = dims_of(g, node.input[0])
        target = shape_value(g, node.input[1])
        out = dims_of(g, node.output[0])
        if dims is not None and out == dims and not any(str(d).startswith("?") for d in dims):
            # the exporter's own symbolic shapes (torch proved them for every size) say nothing changes
            return Match(node, [node], node.output[0])
        if dims is None or target is None:
            return Rejection("shape or target not known symbolically")
        if node.op_type == "Expand":
            same = len(target) <= len(dims) and all(t in (1, d) for t, d in zip(target[::-1], dims[::-1]))
        else:
            same = target == dims and not any(str(d).startswith("?") for d in dims)
        if not same:
            return Rejection(f"target {target} changes the shape {dims}")
        return Match(node, [node], node.output[0])

    def rewrite(self, g: GraphView, m: Match) -> Rewrite:
        return Rewrite([m.anchor], [], rename={m.output: m.anchor.input[0]})


class ReshapeKeepdims(Rule):
    """``Reshape(Reduce(x, A, keepdims=0), s)`` with ``s`` provably x's shape with 1s at ``A`` is
    ``Reduce(x, A, keepdims=1)`` (``var_mean(..., keepdim=True)`` exports its sum this way)."""

    name = "canonical.reshape_keepdims"
    anchor_ops = ("Reshape",)
    check_interior = False

    def match(self, g: GraphView, node: onnx.NodeProto) -> Match | Rejection:
        p = g.producer.get(node.input[0])
        red = reduction_of(g, p) if p is not None else None
        if red is None or red.keepdims:
            return Rejection("input is not a keepdims=0 reduction")
        return Match(node, [node], node.output[0], {"red": red})

    def check(self, g: GraphView, m: Match) -> CheckResult:
        red = m.facts["red"]
        rank = g.rank(red.input)
        axes = norm_axes(red.axes, rank) if red.dynamic_axes is None else None
        if axes is None or not axes:
            return Rejection("the reduction's axes or its input's rank are not known", red.node.output[0])
        red.restore = m.anchor
        return check_restore(g, red, red.input, axes)

    def rewrite(self, g: GraphView, m: Match) -> Rewrite:
        node = m.facts["red"].node
        return Rewrite([m.anchor], _reduce_node(g, node, node.op_type, 1, m.output))


RULES: list[Rule] = [SumToMean(), UnsqueezeKeepdims(), ReshapeKeepdims(), NoOpReshape()]
