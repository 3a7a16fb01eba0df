"""Graph access for the rules: a read-only index over an ONNX model's main graph.

:class:`GraphView` answers the questions every rule asks — who produces this value, who reads it,
is it a constant (and which), what is its dtype and static shape — over a plain ``ModelProto``
that it never mutates. Beside it, the facts read off single nodes: attributes, Constant values,
what a reduction reduces (:func:`reduction_of`), a ``normonnx`` node's parameters and spec.

Rules describe their changes as data (:mod:`normonnx.optimize.rewriter`); the driver builds one
view per graph state and rebuilds it only after a rewrite (see :class:`~normonnx.optimize.rule.RulePass`).
"""

from __future__ import annotations

import dataclasses
import itertools
from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .. import external
from ..dtypes import FLOAT_NAMES

FLOAT_TYPES = FLOAT_NAMES  # ONNX code → dtype name (normonnx.dtypes)
LOW_PRECISION = {TensorProto.FLOAT16, TensorProto.BFLOAT16}
REDUCE_OPS = ("ReduceMean", "ReduceSum", "ReduceSumSquare")
# opset at which each reduction's ``axes`` moved from attribute to input
_AXES_AS_INPUT = {"ReduceSum": 13, "ReduceMean": 18, "ReduceSumSquare": 18}

Dim = int | str | None


def dtype_name(elem_type: int | None) -> str:
    return FLOAT_TYPES.get(elem_type or 0, onnx.TensorProto.DataType.Name(elem_type) if elem_type else "unknown")


def attr(node: onnx.NodeProto, name: str, default: Any = None) -> Any:
    for a in node.attribute:
        if a.name == name:
            v = helper.get_attribute_value(a)
            return v.decode() if isinstance(v, bytes) else v
    return default


def _subgraph_inputs(graph: onnx.GraphProto) -> set[str]:
    """Outer-scope names a subgraph (If/Loop/Scan body) reads."""
    used: set[str] = set()
    for n in graph.node:
        used.update(i for i in n.input if i)
        for a in n.attribute:
            for sub in [a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs):
                used |= _subgraph_inputs(sub)
    return used


class GraphView:
    """Producers, consumers, constants and types of one model's main graph (read-only)."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = model
        g = model.graph
        self.nodes: list[onnx.NodeProto] = list(g.node)
        self.index = {id(n): i for i, n in enumerate(self.nodes)}
        self.producer: dict[str, onnx.NodeProto] = {}
        self.consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
        for n in self.nodes:
            for o in n.output:
                if o:
                    self.producer[o] = n
            names = [i for i in n.input if i]
            for a in n.attribute:  # values captured by control-flow bodies are read by the node
                for sub in [a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs):
                    names += sorted(_subgraph_inputs(sub))
            for i in dict.fromkeys(names):
                self.consumers[i].append(n)
        self.initializers = {t.name: t for t in g.initializer}
        self.graph_inputs = {i.name for i in g.input}
        self.graph_outputs = {o.name for o in g.output}
        self.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
        self.types: dict[str, onnx.TypeProto] = {v.name: v.type for v in (*g.input, *g.output, *g.value_info)}
        for t in g.initializer:
            self.types.setdefault(t.name, helper.make_tensor_type_proto(t.data_type, list(t.dims)))
        self._const_cache: dict[str, np.ndarray | None] = {}
        self.names: set[str] = set(self.producer) | set(self.initializers) | self.graph_inputs

    # -- values -----------------------------------------------------------------------------------
    def op(self, value: str, op_types: str | Sequence[str] | None = None) -> onnx.NodeProto | None:
        """The node producing ``value`` (only if its op type is one of ``op_types``, when given)."""
        n = self.producer.get(value)
        if n is None or op_types is None:
            return n
        return n if _op_in(n, op_types) else None

    def users(self, value: str) -> list[onnx.NodeProto]:
        return self.consumers.get(value, [])

    def single_user(self, value: str) -> onnx.NodeProto | None:
        """The only node reading ``value`` (None if several, none, or it is a graph output)."""
        us = self.users(value)
        return us[0] if len(us) == 1 and value not in self.graph_outputs else None

    def source(self, value: str) -> str:
        """``value`` with Identity chains stripped (legacy exports route weights through Identity)."""
        for _ in range(8):
            n = self.producer.get(value)
            if n is None or n.op_type != "Identity" or n.domain not in ("", "ai.onnx"):
                break
            value = n.input[0]
        return value

    def is_graph_input(self, value: str) -> bool:
        return self.source(value) in self.graph_inputs

    def const(self, value: str) -> np.ndarray | None:
        """The value if it is a constant: a non-input initializer or a Constant node's output."""
        if not value:
            return None
        if value in self._const_cache:
            return self._const_cache[value]
        out: np.ndarray | None = None
        src = self.source(value)
        if src != value:
            out = self.const(src)
        elif value in self.initializers and value not in self.graph_inputs:
            out = external.array(self.initializers[value])  # external data: memory-mapped, read on use
        else:
            n = self.producer.get(value)
            if n is not None and n.op_type == "Constant" and n.domain in ("", "ai.onnx"):
                out = constant_node_value(n)
        self._const_cache[value] = out
        return out

    def elem_type(self, value: str) -> int | None:
        t = self.types.get(value)
        if t is None or not t.HasField("tensor_type"):
            c = self.const(value)
            return helper.np_dtype_to_tensor_dtype(c.dtype) if c is not None else None
        return t.tensor_type.elem_type or None

    def shape(self, value: str) -> tuple[Dim, ...] | None:
        """Static shape where known: ints for fixed dims, the dim_param string for symbolic ones."""
        c = self.const(value)
        if c is not None:
            return tuple(int(d) for d in c.shape)
        t = self.types.get(value)
        if t is None or not t.HasField("tensor_type") or not t.tensor_type.HasField("shape"):
            return None
        dims: list[Dim] = []
        for d in t.tensor_type.shape.dim:
            if d.HasField("dim_value"):
                dims.append(int(d.dim_value))
            elif d.HasField("dim_param"):
                dims.append(d.dim_param)
            else:
                dims.append(None)
        return tuple(dims)

    def rank(self, value: str) -> int | None:
        s = self.shape(value)
        return None if s is None else len(s)

    def fresh(self, hint: str) -> str:
        """A value/node name not used anywhere in the graph yet."""
        base = hint.replace(" ", "_")
        for k in itertools.count():
            name = base if k == 0 else f"{base}_{k}"
            if name not in self.names:
                self.names.add(name)
                return name
        raise AssertionError("unreachable")

    def same_value(self, a: str, b: str, depth: int = 6) -> bool:
        """True if ``a`` and ``b`` are provably the same tensor (same name, equal constants, or the
        same op with the same attributes applied to the same inputs — the duplicated ReduceMean
        that torch's legacy exporter emits for ``x - x.mean()`` used twice)."""
        if a == b:
            return True
        ca, cb = self.const(a), self.const(b)
        if ca is not None and cb is not None:
            return ca.dtype == cb.dtype and ca.shape == cb.shape and bool(np.array_equal(ca, cb))
        if depth == 0:
            return False
        na, nb = self.producer.get(a), self.producer.get(b)
        if na is None or nb is None or (na.op_type, na.domain) != (nb.op_type, nb.domain):
            return False
        ra, rb = reduction_of(self, na), reduction_of(self, nb)
        if ra is not None and rb is not None:
            # the same reduction written with other axes constants ([-1] vs [2]): compare the axes
            # they mean, not the tensors that spell them
            rank = self.rank(ra.input)
            return (
                ra.dynamic_axes is None
                and rb.dynamic_axes is None
                and ra.keepdims == rb.keepdims
                and rank is not None
                and norm_axes(ra.axes, rank) == norm_axes(rb.axes, rank)
                and self.same_value(ra.input, rb.input, depth - 1)
            )
        if list(na.output).index(a) != list(nb.output).index(b) or len(na.input) != len(nb.input):
            return False
        if sorted(x.SerializeToString() for x in na.attribute) != sorted(x.SerializeToString() for x in nb.attribute):
            return False
        return all(self.same_value(x, y, depth - 1) for x, y in zip(na.input, nb.input))

    def position(self, nodes: Iterable[onnx.NodeProto]) -> int:
        return max(self.index[id(n)] for n in nodes)


def _op_in(n: onnx.NodeProto, op_types: str | Sequence[str]) -> bool:
    if n.domain not in ("", "ai.onnx"):
        return False
    return n.op_type == op_types if isinstance(op_types, str) else n.op_type in op_types


def constant_node_value(n: onnx.NodeProto) -> np.ndarray | None:
    for a in n.attribute:
        if a.name == "value":
            return numpy_helper.to_array(a.t)
        if a.name == "value_float":
            return np.asarray(a.f, dtype=np.float32)
        if a.name == "value_floats":
            return np.asarray(list(a.floats), dtype=np.float32)
        if a.name == "value_int":
            return np.asarray(a.i, dtype=np.int64)
        if a.name == "value_ints":
            return np.asarray(list(a.ints), dtype=np.int64)
    return None


def scalar(arr: np.ndarray | None) -> float | None:
    """The single number of a size-1 constant (any rank), else None."""
    if arr is None or arr.size != 1 or arr.dtype.kind not in "fiu":
        return None
    return float(arr.reshape(()))


def norm_axes(axes: Sequence[int] | None, rank: int | None) -> tuple[int, ...] | None:
    """Sorted non-negative axes (all axes when ``axes`` is None); None if the rank is unknown."""
    if rank is None:
        return None
    if axes is None:
        return tuple(range(rank))
    out = sorted({a + rank if a < 0 else a for a in axes})
    return tuple(out) if all(0 <= a < rank for a in out) else None


# -- node facts -------------------------------------------------------------------------------------
@dataclasses.dataclass
class Reduction:
    """A ReduceMean/ReduceSum/ReduceSumSquare, with the Reshape that restores its kept dims."""

    node: onnx.NodeProto
    input: str
    axes: tuple[int, ...] | None  # raw axes (None: all axes)
    dynamic_axes: str | None  # value name when the axes input is not a constant
    keepdims: int
    restore: onnx.NodeProto | None = None  # a Reshape after a keepdims=0 reduction

    @property
    def op(self) -> str:
        return self.node.op_type

    @property
    def nodes(self) -> list[onnx.NodeProto]:
        return [self.node] + ([self.restore] if self.restore is not None else [])


def reduction_of(view: GraphView, node: onnx.NodeProto) -> Reduction | None:
    if not _op_in(node, REDUCE_OPS):
        return None
    axes: tuple[int, ...] | None = None
    dynamic = None
    if view.opset >= _AXES_AS_INPUT[node.op_type]:
        if len(node.input) > 1 and node.input[1]:
            c = view.const(node.input[1])
            if c is None:
                dynamic = node.input[1]
            else:
                axes = tuple(int(a) for a in c.reshape(-1))
        if not axes and attr(node, "noop_with_empty_axes", 0):
            axes = ()
    else:
        a = attr(node, "axes")
        axes = tuple(int(x) for x in a) if a is not None else None
    return Reduction(node, node.input[0], axes, dynamic, int(attr(node, "keepdims", 1)))


def reduced_count(view: GraphView, x: str, axes: tuple[int, ...]) -> int | None:
    """Elements per set of statistics when the reduced dims are static."""
    shape = view.shape(x)
    if shape is None:
        return None
    n = 1
    for a in axes:
        d = shape[a]
        if not isinstance(d, int):
            return None
        n *= d
    return n


def norm_node_params(node: onnx.NodeProto) -> dict[str, str]:
    """Slot → value name of a normonnx node's present inputs after X (parameters, and a residual
    / modulation's run-time operands)."""
    from ..lowering.function import input_slots

    return {s: v for s, v in zip(input_slots(node.op_type), node.input[1:]) if v}


def spec_of_node(view: GraphView, node: onnx.NodeProto) -> Any:
    """The NormSpec of a normonnx node (dtype/rank from the view's types); None if unknown."""
    from ..errors import NormOnnxError
    from ..lowering.graph import spec_of

    try:
        return spec_of(node, view.types)
    except NormOnnxError:
        return None
