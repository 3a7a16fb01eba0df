"""Per-sample operands read as they are: ``Unsqueeze(v, [1, …]) → fused norm`` → the norm with
``sample_operands=1`` reading ``v``.

A DiT's AdaLN vectors come out of ``Gemm → Split(axis=1)`` as ``[N, C]`` and the model writes
``scale.unsqueeze(1)``; the fused modulation / gate (``modulated.layer``, ``residual.gate_*``) takes
that ``[N, 1, C]`` Unsqueeze as its scale / shift / gate. ``sample_operands.layer`` /
``sample_operands.rms``: when every per-sample operand of such a node (scale and shift of a
modulation, the gate of a gated residual) is ``Unsqueeze(v, axes)``, the node reads the ``v`` s
instead, with ``sample_operands=1``.

Proof (``check``), for a node over X of rank ``r`` normalising ``ns`` (``k = len(ns)``): each
Unsqueeze's axes (a constant, or the attribute below opset 13) are exactly ``1 … r − 1 − k``, and
``v`` has the node's dtype and the static shape ``[N or 1, *ns]`` (its first dim 1 or X's own, an
int or the same symbol), so ``Unsqueeze(v)`` is ``[N or 1, 1, …, 1, *ns]`` with ``v``'s elements in
the same order: the rows the kernel reads for sample n are the same floats, and the function body
of a ``sample_operands`` node applies that same Unsqueeze before the same ops
(:func:`normonnx.lowering.fused.row_operand`). One attribute covers all of a node's per-sample
operands, so a node with some operand that is not such an Unsqueeze (a shared ``[1, 1, C]`` graph
input, another op) is refused with that operand named; nothing is rewritten halfway.

The Unsqueezes stay in the graph; the cleanup drops those nothing else reads.
"""

from __future__ import annotations

import onnx

from ..rejection import OK, CheckResult, Rejection
from .graph import GraphView, attr, dtype_name, norm_node_params, spec_of_node
from .rewriter import Rewrite, norm_rewrite
from .rule import Match, Rule

DOMAIN = "normonnx"
#: the node's per-sample operand slots (those present switch together)
SAMPLE_SLOTS = ("scale", "shift", "gate")
ATTRIBUTE = "sample_operands"


def unsqueeze_axes(g: GraphView, n: onnx.NodeProto) -> tuple[int, ...] | None:
    """The axes of Unsqueeze ``n`` as written (input 1 from opset 13, else the attribute); None when
    they are not a constant."""
    if len(n.input) > 1 and n.input[1]:
        c = g.const(n.input[1])
        return None if c is None or c.dtype.kind not in "iu" else tuple(int(a) for a in c.reshape(-1))
    a = attr(n, "axes")
    return tuple(int(x) for x in a) if a is not None else None


class SampleOperands(Rule):
    anchor_domain = DOMAIN
    #: the node's sum output stays produced (the residual stream reads it): only the node is replaced
    check_interior = False

    def __init__(self, name: str, op: str) -> None:
        self.name = name  # type: ignore[misc]
        self.anchor_ops = (op,)  # type: ignore[misc]

    def match(self, g: GraphView, node: onnx.NodeProto) -> Match | Rejection:
        if not (attr(node, "modulation", 0) or attr(node, "has_gate", 0)):
            return Rejection("no per-sample operands (neither modulation=1 nor has_gate=1)")
        if attr(node, ATTRIBUTE, 0):
            return Rejection("already reads per-sample operands")
        if any(p.key == "normonnx.strategy" for p in node.metadata_props):
            return Rejection("already lowered")
        operands = {s: v for s, v in norm_node_params(node).items() if s in SAMPLE_SLOTS}
        if not any(g.op(v, "Unsqueeze") is not None for v in operands.values()):
            return Rejection("no per-sample operand is produced by an Unsqueeze")
        return Match(node, [node], node.output[0], {"operands": operands})

    def check(self, g: GraphView, m: Match) -> CheckResult:
        node = m.anchor
        spec = spec_of_node(g, node)
        if spec is None:
            return Rejection("the norm's input type is unknown", node.input[0])
        x_shape = g.shape(node.input[0])
        if x_shape is None:
            return Rejection(f"the rank of the norm's input {node.input[0]!r} is unknown", node.input[0])
        r, ns = len(x_shape), tuple(spec.normalized_shape or ())
        want = tuple(range(1, r - len(ns)))
        if not want:
            return Rejection(
                f"a rank-{r} input over {len(ns)} normalised axes has no axes between the sample and the features",
                node.input[0],
            )
        absorbed: dict[str, str] = {}
        for slot, u in m.facts["operands"].items():
            n = g.op(u, "Unsqueeze")
            if n is None:
                p = g.op(u)
                made = f"{p.op_type} node {p.name!r}" if p is not None else "a graph input or initializer"
                return Rejection(
                    f"the {slot} {u!r} is not an Unsqueeze but {made}: a node's per-sample operands switch to "
                    f"{ATTRIBUTE}=1 together",
                    u,
                )
            v = n.input[0]
            axes = unsqueeze_axes(g, n)
            if axes is None:
                return Rejection(f"the axes of the {slot}'s Unsqueeze {n.name!r} are not a constant", u)
            norm = sorted(a + r if a < 0 else a for a in axes)
            if norm != list(want):
                return Rejection(
                    f"the {slot}'s Unsqueeze {n.name!r} inserts axes {list(axes)}, not {list(want)}: it does not "
                    f"turn [N, *normalized_shape] into [N, 1, ..., 1, *normalized_shape] for the rank-{r} input",
                    u,
                )
            if g.elem_type(v) != spec.onnx_dtype:
                return Rejection(f"the {slot} {v!r} is {dtype_name(g.elem_type(v))}, the norm {spec.dtype}", v)
            shape = g.shape(v)
            if shape is None or None in shape:
                return Rejection(f"the static shape of the {slot} {v!r} is unknown", v)
            if len(shape) != 1 + len(ns) or tuple(shape[1:]) != ns:
                return Rejection(f"the {slot} {v!r} has shape {list(shape)}, not [N or 1, *{list(ns)}]", v)
            if shape[0] not in (1, x_shape[0]):
                return Rejection(
                    f"the {slot} {v!r}'s first dim {shape[0]} is neither 1 nor the input's {x_shape[0]}", v
                )
            absorbed[slot] = v
        m.facts["params"] = {**norm_node_params(node), **absorbed}
        m.facts["spec"] = spec.replace(sample_operands=True, rank=r)
        return OK

    def rewrite(self, g: GraphView, m: Match) -> Rewrite:
        node = m.anchor
        return norm_rewrite(g, m.nodes, m.output, m.facts["spec"], node.input[0], m.facts["params"], node, ATTRIBUTE)  # type: ignore[arg-type]


RULES: list[Rule] = [
    SampleOperands("sample_operands.layer", "LayerNorm"),
    SampleOperands("sample_operands.rms", "RMSNorm"),
]
