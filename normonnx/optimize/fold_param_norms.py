"""Norms of parameters, computed once in float64 and stored as the constant they always are.

Weight standardization (timm's ``StdConv2d``: ``F.batch_norm(w.reshape(1, O, −1), training=True)``,
BiT's ``(w − mean)/√(var + ε)``), ``weight_norm`` (``g·v/‖v‖``) and parametrizations export as a
small subgraph whose every leaf is a weight. onnxruntime recomputes it on every call, in float32.

- ``param_norm.fold``: a value that (a) is computed only from constants, (b) is read by a node that is
  not (the boundary: typically a Conv/Gemm weight input) and (c) whose subgraph contains a
  normalisation (a reduction, BatchNormalization/InstanceNormalization/LayerNormalization/…,
  LpNormalization, or a ``normonnx.<Op>`` node — what export makes of timm's ``StdConv2d``, whose
  float64 reference then computes it) is evaluated in float64 with onnx's reference evaluator — every float
  constant promoted to float64, every Cast to a float type made a Cast to float64 — and replaced
  by the result cast to its dtype once.

Refused: a leaf that is a graph input (an initializer a user may override at run time, so the
weight is not a constant), non-deterministic ops, subgraphs over 2^26 elements, and anything the
reference evaluator cannot run. The old subgraph is left to dead-node removal.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..rejection import OK, CheckResult, Rejection
from .graph import GraphView, constant_node_value, dtype_name
from .rewriter import Rewrite, tensor
from .rule import Match, Rule

NORM_OPS = frozenset(
    {
        "ReduceMean",
        "ReduceSum",
        "ReduceSumSquare",
        "ReduceL1",
        "ReduceL2",
        "LpNormalization",
        "BatchNormalization",
        "InstanceNormalization",
        "LayerNormalization",
        "GroupNormalization",
        "RMSNormalization",
        "MeanVarianceNormalization",
    }
)
NONDETERMINISTIC = frozenset(
    {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial", "Bernoulli"}
)
CONTROL_FLOW = frozenset({"If", "Loop", "Scan"})
FLOATS = {TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16, TensorProto.DOUBLE}
MAX_ELEMENTS = 2**26


def _is_leaf(g: GraphView, v: str) -> bool:
    return g.const(v) is not None or (v in g.initializers)  # initializer-backed graph inputs count


def _is_norm_node(n: onnx.NodeProto) -> bool:
    """A portable ``normonnx.<Op>`` norm (what export makes of ``F.batch_norm(w, training=True)``)."""
    from ..norms import BY_OP

    return n.domain == "normonnx" and n.op_type in BY_OP


def constant_cones(g: GraphView) -> dict[str, bool]:
    """value → True if computed only from initializers/Constants (graph-input initializers included)."""
    out: dict[str, bool] = {}
    for n in g.nodes:
        ok = (
            (n.domain in ("", "ai.onnx") or _is_norm_node(n))
            and n.op_type not in NONDETERMINISTIC
            and n.op_type not in CONTROL_FLOW
            and n.op_type != "Constant"
            and all(not i or _is_leaf(g, i) or out.get(i, False) for i in n.input)
            and any(i for i in n.input)
        )
        for o in n.output:
            if o:
                out[o] = ok
    return out


def cone(g: GraphView, value: str, const: dict[str, bool]) -> tuple[list[onnx.NodeProto], set[str]]:
    """The nodes computing ``value`` from leaves (in graph order) and the leaf names."""
    nodes: dict[int, onnx.NodeProto] = {}
    leaves: set[str] = set()
    stack = [value]
    while stack:
        v = stack.pop()
        n = g.producer.get(v)
        if n is None or n.op_type == "Constant" or not const.get(v, False):
            leaves.add(v)
            if n is not None and n.op_type == "Constant":
                nodes[id(n)] = n
            continue
        if id(n) in nodes:
            continue
        nodes[id(n)] = n
        stack.extend(i for i in n.input if i)
    return sorted(nodes.values(), key=lambda n: g.index[id(n)]), leaves


class ParamNormFold(Rule):
    name = "param_norm.fold"
    check_interior = False  # nothing is removed; the readers are pointed at the new constant

    def candidates(self, g: GraphView) -> list[onnx.NodeProto]:
        const = constant_cones(g)
        self._const = const
        self._boundary: dict[int, list[str]] = {}
        out = []
        for n in g.nodes:
            if not any(const.get(o, False) for o in n.output):
                continue
            outs = [o for o in n.output if const.get(o, False) and self._read_outside(g, o, const)]
            if outs:
                self._boundary[id(n)] = outs
                out.append(n)
        return out

    @staticmethod
    def _read_outside(g: GraphView, v: str, const: dict[str, bool]) -> bool:
        return v in g.graph_outputs or any(not any(const.get(o, False) for o in u.output) for u in g.users(v))

    def match(self, g: GraphView, node: onnx.NodeProto) -> Match | Rejection:
        value = self._boundary[id(node)][0]
        nodes, leaves = cone(g, value, self._const)
        if not any(n.op_type in NORM_OPS or _is_norm_node(n) for n in nodes):
            return Rejection("constant subgraph without a normalisation (left to constant folding)")
        return Match(node, [node], value, {"cone": nodes, "leaves": leaves})

    def check(self, g: GraphView, m: Match) -> CheckResult:
        leaves = m.facts["leaves"]
        for leaf in sorted(leaves):
            if g.is_graph_input(leaf):
                return Rejection(f"weight {leaf!r} is a graph input (a caller may feed another value)", leaf)
        if m.output in g.graph_outputs:
            return Rejection(f"{m.output!r} is a graph output", m.output)
        size = sum(int(np.prod(g.shape(v) or (0,), dtype=np.int64)) for v in leaves if g.const(v) is not None)
        if size > MAX_ELEMENTS:
            return Rejection(f"the weights hold {size} elements (limit {MAX_ELEMENTS})", m.output)
        et = g.elem_type(m.output)
        if et not in FLOATS:
            return Rejection(f"result type {dtype_name(et)} is not a float type", m.output)
        try:
            value = evaluate_float64(g, m.facts["cone"], leaves, m.output)
        except Exception as e:  # the reference evaluator's own errors
            return Rejection(
                f"cannot evaluate in float64: {str(e).splitlines()[0] if str(e) else type(e).__name__}", m.output
            )
        m.facts["value"] = value.astype(helper.tensor_dtype_to_np_dtype(et))
        return OK

    def rewrite(self, g: GraphView, m: Match) -> Rewrite:
        t = tensor(g, f"{m.output}/folded", m.facts["value"])
        return Rewrite([], [], [t], rename={m.output: t.name})


def _f64(arr: np.ndarray) -> np.ndarray:
    return arr.astype(np.float64) if arr.dtype.kind == "f" else arr


def evaluate_float64(g: GraphView, nodes: list[onnx.NodeProto], leaves: set[str], output: str) -> np.ndarray:
    """Run ``nodes`` with every float tensor promoted to float64 (onnx.reference)."""
    from onnx.reference import ReferenceEvaluator

    inits = []
    for leaf in sorted(leaves):
        c = g.const(leaf)
        if c is None and leaf in g.initializers:
            c = numpy_helper.to_array(g.initializers[leaf])
        if c is None:
            raise ValueError(f"leaf {leaf!r} is not a constant")
        if g.producer.get(leaf) is None:
            inits.append(numpy_helper.from_array(_f64(c), name=leaf))
    body = [_promote(n) for n in nodes]
    graph = helper.make_graph(
        body, "param_norm", [], [helper.make_tensor_value_info(output, TensorProto.DOUBLE, None)], inits
    )
    opsets = [helper.make_opsetid("", g.opset)]
    if any(_is_norm_node(n) for n in nodes):
        opsets.append(helper.make_opsetid("normonnx", 1))
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = g.model.ir_version or 8
    (out,) = ReferenceEvaluator(model, new_ops=_norm_ops()).run(None, {})
    return np.asarray(out, dtype=np.float64)


def _norm_ops() -> list[type]:
    """onnx.reference implementations of the ``normonnx.<Op>`` nodes: each kind's float64 reference."""
    from onnx.reference.op_run import OpRun

    from ..norms import BY_OP

    def make(op: str, kind: object) -> type:
        def _run(self: OpRun, x: np.ndarray, *params: np.ndarray | None, **_attrs: object) -> tuple[np.ndarray]:
            node = self.onnx_node
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            if isinstance(attrs.get("activation"), bytes):
                attrs["activation"] = attrs["activation"].decode()
            present = [p is not None for p in params[:2]] + [False] * (2 - len(params[:2]))
            spec = kind.spec_from_attributes(attrs, present, "float64", x.ndim)  # type: ignore[attr-defined]
            slots = ("weight", "bias", "mean", "var")
            given = {s: np.asarray(p, np.float64) for s, p in zip(slots, params) if p is not None}
            return (kind.reference(spec, np.asarray(x, np.float64), given),)  # type: ignore[attr-defined]

        return type(op, (OpRun,), {"op_domain": "normonnx", "_run": _run})

    return [make(op, kind) for op, kind in BY_OP.items()]


def _promote(node: onnx.NodeProto) -> onnx.NodeProto:
    """The node with float constants, Cast targets and dtype attributes moved to float64."""
    if node.op_type == "Constant":
        arr = constant_node_value(node)
        if arr is not None and arr.dtype.kind == "f":
            return helper.make_node("Constant", [], list(node.output), value=numpy_helper.from_array(_f64(arr)))
        return node
    n = onnx.NodeProto()
    n.CopyFrom(node)
    for a in n.attribute:
        if a.name in ("to", "dtype") and a.type == onnx.AttributeProto.INT and a.i in FLOATS:
            a.i = TensorProto.DOUBLE
        if a.type == onnx.AttributeProto.TENSOR and a.t.data_type in FLOATS:
            a.t.CopyFrom(numpy_helper.from_array(_f64(numpy_helper.to_array(a.t)), name=a.t.name))
    return n


RULES: list[Rule] = [ParamNormFold()]
