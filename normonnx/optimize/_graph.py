"""A read-only index over an ONNX graph, and the sub-patterns the norm rules share.

:class:`GraphView` answers the questions every rule asks — who produces this value, who reads it,
is it a constant (and which), what is its dtype and static shape — over a plain ``ModelProto``
that it never mutates. Rules describe rewrites as :class:`Rewrite` data and :func:`apply_rewrites`
builds the new graph.

The shared sub-patterns are the pieces every decomposed norm is made of:

    n = (x − μ) / √(σ² + ε)        μ = ReduceMean(x), σ² = ReduceMean((x − μ)²)   (layer, group)
    n =  x      / √(ms + ε)        ms = ReduceMean(x²)                            (rms)

:func:`match_normalize` recognises that shape in every spelling the exporters use (Div by Sqrt,
Mul by Reciprocal(Sqrt), Mul by 1/Sqrt, Mul by Pow(·, −0.5); Pow(d, 2) or d·d; keepdims=0
reductions restored by a Reshape; the variance scaled by constants, which is how an unbiased
``x.var()`` shows up) and returns the facts; :func:`check_normalize` decides whether they
describe the biased statistics a norm computes, and says why not.
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
from ._shapes import dims_of, shape_value, static_scalar

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


# -- rewrites ---------------------------------------------------------------------------------------
@dataclasses.dataclass
class Rewrite:
    """What one fired rule changes: nodes removed, nodes added (at the position of the last removed
    node), new initializers and value_info, and inputs renamed in the remaining nodes."""

    remove: list[onnx.NodeProto]
    add: list[onnx.NodeProto]
    initializers: list[onnx.TensorProto] = dataclasses.field(default_factory=list)
    value_info: list[onnx.ValueInfoProto] = dataclasses.field(default_factory=list)
    rename: dict[str, str] = dataclasses.field(default_factory=dict)
    at: onnx.NodeProto | None = None  # insert before/at this node instead (default: last removed)


def apply_rewrites(model: onnx.ModelProto, view: GraphView, rewrites: Sequence[Rewrite]) -> onnx.ModelProto:
    """A new model with every rewrite applied (their node sets must be disjoint)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    removed: set[int] = set()
    insert_at: dict[int, list[onnx.NodeProto]] = defaultdict(list)
    rename: dict[str, str] = {}
    for rw in rewrites:
        removed |= {id(n) for n in rw.remove}
        if rw.add:
            anchor = rw.at if rw.at is not None else max(rw.remove, key=lambda n: view.index[id(n)])
            insert_at[view.index[id(anchor)]].extend(rw.add)
        rename.update(rw.rename)
    nodes: list[onnx.NodeProto] = []
    for i, n in enumerate(view.nodes):
        nodes.extend(insert_at.get(i, []))
        if id(n) in removed:
            continue
        if rename and any(x in rename for x in n.input):
            m = onnx.NodeProto()
            m.CopyFrom(n)
            for k, x in enumerate(m.input):
                if x in rename:
                    m.input[k] = rename[x]
            n = m
        nodes.append(n)
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    for rw in rewrites:
        out.graph.initializer.extend(rw.initializers)
        known = {v.name for v in out.graph.value_info}
        for vi in rw.value_info:
            if vi.name in known:
                for old in out.graph.value_info:
                    if old.name == vi.name:
                        old.CopyFrom(vi)
            else:
                out.graph.value_info.append(vi)
    return out


def interior_check(view: GraphView, nodes: Sequence[onnx.NodeProto], output: str) -> tuple[str, str] | None:
    """(reason, value) if a value computed inside the matched nodes is also read outside them
    (or is a graph output), which would make removing them change another result."""
    ids = {id(n) for n in nodes}
    for n in nodes:
        for o in n.output:
            if not o or o == output:
                continue
            if o in view.graph_outputs:
                return f"intermediate value {o!r} is a graph output", o
            for u in view.users(o):
                if id(u) not in ids:
                    return f"intermediate value {o!r} ({n.op_type}) is also used by {u.op_type} node {u.name!r}", o
    return None


# -- shared sub-patterns -------------------------------------------------------------------------------
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


@dataclasses.dataclass
class Normalize:
    """Facts of ``n = (x − μ)/√(σ² + ε)`` (centered) or ``n = x/√(mean(x²) + ε)`` (not centered)."""

    x: str
    output: str
    anchor: onnx.NodeProto
    centered: bool
    mean: Reduction | None
    var: Reduction
    square: onnx.NodeProto | None  # Pow / Mul (None for ReduceSumSquare)
    squared: str  # the value that is squared
    eps: str | None  # value name of ε (None: no Add, ε = 0)
    scales: list[tuple[onnx.NodeProto, str, str]]  # (node, "mul" | "div", other operand) on σ²
    restore: onnx.NodeProto | None  # Reshape restoring σ²'s reduced dims after keepdims=0
    inverse: str  # "div" | "reciprocal" | "one_div" | "pow"
    inverse_operand: str | None  # the 1 of 1/√, or the −0.5 exponent
    nodes: list[onnx.NodeProto]
    eps_outside: bool = False  # ε added to √σ² (std + ε), not to σ² under the root


def _strip_var_chain(
    view: GraphView, v: str
) -> tuple[Reduction, list[tuple[onnx.NodeProto, str, str]], onnx.NodeProto | None, list[onnx.NodeProto]] | str:
    """Walk from σ² (the Add's input) down to its reduction through at most one Reshape and any
    Mul/Div by another operand. Returns the reduction, the scales, the Reshape and the nodes; or a
    string saying what was found instead."""
    scales: list[tuple[onnx.NodeProto, str, str]] = []
    restore = None
    nodes: list[onnx.NodeProto] = []
    cur = v
    for _ in range(6):
        n = view.producer.get(cur)
        if n is None:
            return f"{cur!r} is not computed by a reduction"
        if _op_in(n, REDUCE_OPS):
            red = reduction_of(view, n)
            assert red is not None
            red.restore = restore
            return red, scales, restore, nodes
        if _op_in(n, "Reshape") and restore is None:
            restore = n
            nodes.append(n)
            cur = n.input[0]
            continue
        if _op_in(n, ("Mul", "Div")):
            # σ² · k or σ² / k: the data side is the one that leads to the reduction
            a, b = n.input[0], n.input[1]
            if _leads_to_reduce(view, a):
                data, other = a, b
            elif n.op_type == "Mul" and _leads_to_reduce(view, b):
                data, other = b, a
            else:
                return f"{n.op_type} {n.name!r} does not scale the variance"
            scales.append((n, n.op_type.lower(), other))
            nodes.append(n)
            cur = data
            continue
        return f"{cur!r} is computed by {n.op_type}, not by a reduction"
    return "variance chain too long"


def _leads_to_reduce(view: GraphView, v: str, depth: int = 4) -> bool:
    n = view.producer.get(v)
    if n is None or depth == 0:
        return False
    if _op_in(n, REDUCE_OPS):
        return True
    if _op_in(n, ("Reshape", "Mul", "Div")):
        return any(_leads_to_reduce(view, i, depth - 1) for i in n.input[:2] if i)
    return False


def match_normalize(view: GraphView, anchor: onnx.NodeProto) -> Normalize | str:
    """Recognise the normalising division at ``anchor`` (a Div or Mul); a string says why not."""
    nodes = [anchor]
    eps_outside: str | None = None
    if _op_in(anchor, "Div"):
        d, s = anchor.input[0], anchor.input[1]
        sq = view.op(s, "Sqrt")
        if sq is None:
            # (x − μ)/(√σ² + ε): the std + ε spelling (the Annotated Transformer's LayerNorm)
            outer = view.op(s, "Add")
            inner = [i for i in (outer.input if outer is not None else []) if view.op(i, "Sqrt") is not None]
            if outer is None or len(inner) != 1:
                return "divisor is not a Sqrt"
            sq = view.producer[inner[0]]
            eps_outside = next(i for i in outer.input if i != inner[0])
            nodes.append(outer)
        nodes.append(sq)
        inverse, inv_operand, ve = "div", None, sq.input[0]
    elif _op_in(anchor, "Mul"):
        found = None
        for d, r in ((anchor.input[0], anchor.input[1]), (anchor.input[1], anchor.input[0])):
            rn = view.producer.get(r)
            if rn is None:
                continue
            if _op_in(rn, "Reciprocal") and view.op(rn.input[0], "Sqrt") is not None:
                sq = view.producer[rn.input[0]]
                found = (d, [rn, sq], "reciprocal", None, sq.input[0])
            elif _op_in(rn, "Div") and view.op(rn.input[1], "Sqrt") is not None:
                sq = view.producer[rn.input[1]]
                found = (d, [rn, sq], "one_div", rn.input[0], sq.input[0])
            elif _op_in(rn, "Pow") and _leads_to_add_or_reduce(view, rn.input[0]):
                found = (d, [rn], "pow", rn.input[1], rn.input[0])
            if found:
                break
        if not found:
            return "neither factor is 1/√(·)"
        d, extra, inverse, inv_operand, ve = found
        nodes += extra
    else:
        return f"{anchor.op_type} is not Div or Mul"
    # ve = σ² + ε (either operand order), or σ² itself (ε = 0)
    eps: str | None = None
    add = view.op(ve, "Add") if eps_outside is None else None
    if add is not None:
        a, b = add.input[0], add.input[1]
        if _leads_to_reduce(view, a):
            v, eps = a, b
        elif _leads_to_reduce(view, b):
            v, eps = b, a
        else:
            return "the value under the square root is not σ² + ε"
        nodes.append(add)
    else:
        v = ve
    chain = _strip_var_chain(view, v)
    if isinstance(chain, str):
        return chain
    var, scales, restore, chain_nodes = chain
    nodes += [*chain_nodes, var.node]
    # the squared value
    square = None
    if var.op == "ReduceSumSquare":
        squared = var.input
    else:
        square = view.producer.get(var.input)
        if square is None or not _op_in(square, ("Pow", "Mul")):
            return f"the reduced value is not a square ({square.op_type if square else 'graph input'})"
        squared = square.input[0]
        nodes.append(square)
    # numerator: x − μ (centered) or x
    sub = view.op(d, "Sub")
    mean = None
    centered = False
    x = d
    if sub is not None:
        mn = view.producer.get(sub.input[1])
        m_red = reduction_of(view, mn) if mn is not None else None
        restore_m = None
        if mn is not None and _op_in(mn, "Reshape"):
            inner = view.producer.get(mn.input[0])
            m_red = reduction_of(view, inner) if inner is not None else None
            restore_m = mn
        if m_red is not None and m_red.op == "ReduceMean" and view.same_value(m_red.input, sub.input[0]):
            m_red.restore = restore_m
            mean, centered, x = m_red, True, sub.input[0]
            nodes += [sub, *m_red.nodes]
    if centered:
        if not view.same_value(squared, d):
            return "the variance squares a different value than the numerator's x − μ"
        if squared != d:  # a duplicated x − μ (legacy exporter): its nodes belong to the pattern too
            nodes += _duplicate_chain(view, squared, d)
    elif not view.same_value(squared, x):
        return "the mean square is not of the normalised value"
    return Normalize(
        x,
        anchor.output[0],
        anchor,
        centered,
        mean,
        var,
        square,
        squared,
        eps if eps_outside is None else eps_outside,
        scales,
        restore,
        inverse,
        inv_operand,
        _dedupe(nodes),
        eps_outside is not None,
    )


def _leads_to_add_or_reduce(view: GraphView, v: str) -> bool:
    n = view.producer.get(v)
    return n is not None and (_op_in(n, "Add") or _leads_to_reduce(view, v))


def _duplicate_chain(view: GraphView, dup: str, orig: str, depth: int = 4) -> list[onnx.NodeProto]:
    """Nodes computing ``dup`` that are not shared with ``orig``'s computation."""
    if dup == orig or depth == 0 or view.const(dup) is not None:
        return []
    n = view.producer.get(dup)
    o = view.producer.get(orig)
    if n is None or n is o:
        return []
    out = [n]
    for a, b in zip(n.input, o.input if o is not None else []):
        out += _duplicate_chain(view, a, b, depth - 1)
    return out


def _dedupe(nodes: Iterable[onnx.NodeProto]) -> list[onnx.NodeProto]:
    seen: set[int] = set()
    out = []
    for n in nodes:
        if id(n) not in seen:
            seen.add(id(n))
            out.append(n)
    return out


@dataclasses.dataclass
class Verdict:
    """Whether a check passed; a failure carries the reason and the offending value."""

    ok: bool
    reason: str = ""
    value: str = ""

    def __bool__(self) -> bool:
        return self.ok

    @classmethod
    def fail(cls, reason: str, value: object = "") -> Verdict:
        return cls(False, reason, _short(value))


OK = Verdict(True)


def _short(value: object) -> str:
    if isinstance(value, np.ndarray):
        flat = value.reshape(-1)
        body = ", ".join(f"{v:.6g}" for v in flat[:4]) + (", …" if flat.size > 4 else "")
        return f"{value.dtype}{list(value.shape)} [{body}]"
    return str(value)


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


def check_restore(view: GraphView, red: Reduction, x: str, axes: tuple[int, ...]) -> Verdict:
    """A keepdims=0 reduction must be followed by a Reshape that puts the reduced dims back as 1s."""
    what = f"{red.op} {red.node.name!r}"
    if red.keepdims and red.restore is None:
        return OK
    if red.restore is None:
        return Verdict.fail(
            f"{what} has keepdims=0, so its result broadcasts against the wrong axes of x", red.node.output[0]
        )
    target = shape_value(view, red.restore.input[1])
    if target is None:
        return Verdict.fail(f"{what} is reshaped to a shape computed at run time", red.restore.input[1])
    shape = dims_of(view, x)
    if shape is None or len(target) != len(shape):
        return Verdict.fail(
            f"cannot prove that Reshape {red.restore.name!r} restores the reduced axes of {what}", target
        )
    allow_zero = attr(red.restore, "allowzero", 0)
    kept_mismatch = [i for i, (w, d) in enumerate(zip(target, shape)) if i not in axes and w != d]
    if target.count(-1) == 1 and kept_mismatch == [target.index(-1)]:
        # one −1 on a kept axis, every other entry proven: the element count fixes it to that dim
        target = [shape[i] if w == -1 else w for i, w in enumerate(target)]
    for i, (want, dim) in enumerate(zip(target, shape)):
        if i in axes:
            if want != 1:
                return Verdict.fail(f"Reshape {red.restore.name!r} does not put a 1 at reduced axis {i}", target)
        # a 0 copies the reshaped tensor's own dim i: x's dim i when the reduction kept its dims or
        # when i comes before the first reduced axis
        elif not (want == dim or (want == 0 and not allow_zero and (red.keepdims or i < min(axes)))):
            return Verdict.fail(f"Reshape {red.restore.name!r} changes kept axis {i} ({want} vs {dim})", target)
    return OK


@dataclasses.dataclass(frozen=True)
class Moments:
    """What :func:`check_normalize` proved: the statistics are taken over ``axes`` and the written
    variance is ``factor · σ²`` (σ² the biased one, ``factor`` a positive constant: 1 for a norm,
    N/(N−1) for an unbiased ``x.var()``), with ``eps`` added before the square root.

    Because ``(x − μ)/√(f·σ² + ε) = f^(−1/2) · (x − μ)/√(σ² + ε/f)``, every such spelling is the
    norm with ``ε' = ε/f`` followed by the constant scale ``k = f^(−1/2)`` (exact up to rounding);
    :attr:`proof` says so in words for the node's metadata.
    """

    axes: tuple[int, ...]
    eps: float
    factor: float = 1.0
    count: int | None = None

    @property
    def corrected(self) -> bool:
        return self.factor != 1.0

    @property
    def norm_eps(self) -> float:
        """ε of the equivalent norm (ε/f)."""
        return self.eps / self.factor

    @property
    def scale(self) -> float:
        """The constant the equivalent norm's output is multiplied by (f^(−1/2))."""
        return float(1.0 / np.sqrt(self.factor))

    @property
    def proof(self) -> str:
        if not self.corrected:
            return ""
        n = self.count
        what = (
            f"unbiased variance σ²·N/(N−1) with N={n}"
            if n and n > 1 and np.isclose(self.factor, n / (n - 1), rtol=2e-7)
            else f"variance scaled by {self.factor:.9g}"
        )
        return (
            f"{what}: (x−μ)/√(f·σ²+ε) = f^(−1/2)·(x−μ)/√(σ²+ε/f) with f={self.factor:.9g}, "
            f"so ε'={self.norm_eps:.9g} and the output (and β's partner γ) is scaled by {self.scale:.9g}"
        )


def check_normalize(view: GraphView, nm: Normalize, *, want_centered: bool) -> tuple[Verdict, Moments]:
    """Prove that ``nm`` computes a norm's statistics up to a constant factor on the variance;
    returns (verdict, :class:`Moments`)."""
    none = Moments((), 0.0)
    if nm.centered != want_centered:
        return Verdict.fail("x − mean(x) is subtracted" if nm.centered else "no mean is subtracted"), none
    et = view.elem_type(nm.x)
    if et not in FLOAT_TYPES:
        return Verdict.fail(f"input {nm.x!r} has element type {dtype_name(et)}, not a float type", nm.x), none
    if et in LOW_PRECISION:
        return (
            Verdict.fail(
                f"statistics are computed in {dtype_name(et)} (no Cast to float32 before the reductions); normonnx "
                f"{dtype_name(et)} norms compute them in float32, so fusing would change the numbers",
                nm.x,
            ),
            none,
        )
    for n in nm.nodes:  # every value on the way must be of x's type (no hidden Casts)
        t = view.elem_type(n.output[0])
        if t is not None and t != et:
            return (
                Verdict.fail(f"{n.op_type} {n.name!r} computes in {dtype_name(t)}, not {dtype_name(et)}", n.output[0]),
                none,
            )
    rank = view.rank(nm.x)
    if rank is None:
        return Verdict.fail(f"rank of {nm.x!r} is unknown", nm.x), none
    # ε
    eps = 0.0
    if nm.eps is not None:
        c = view.const(nm.eps)
        if c is None:
            why = "a graph input" if view.is_graph_input(nm.eps) else "computed at run time"
            return Verdict.fail(f"ε is not a constant ({nm.eps!r} is {why})", nm.eps), none
        e = scalar(c)
        if e is None:
            return Verdict.fail(f"ε is not a single number (shape {list(c.shape)})", c), none
        if not e >= 0:
            return Verdict.fail(f"ε = {e} is negative", c), none
        if nm.eps_outside and e != 0:
            return (
                Verdict.fail(
                    f"ε = {e:.3g} is added outside the square root, (x − μ)/(√σ² + ε), which is not "
                    "(x − μ)/√(σ² + ε) (no constant ε' makes them equal): left as written",
                    c,
                ),
                none,
            )
        eps = e
    # 1/√ spellings
    if nm.inverse == "one_div":
        c = view.const(nm.inverse_operand or "")
        if c is None or not np.all(c == 1):
            return (
                Verdict.fail("numerator of 1/√(·) is not the constant 1", c if c is not None else nm.inverse_operand),
                none,
            )
    if nm.inverse == "pow":
        p = scalar(view.const(nm.inverse_operand or ""))
        if p != -0.5:
            return Verdict.fail(f"Pow exponent {p} is not −0.5", nm.inverse_operand), none
    # the square
    if nm.square is not None:
        if nm.square.op_type == "Pow":
            p = scalar(view.const(nm.square.input[1]))
            if p != 2.0:
                return Verdict.fail(f"Pow exponent {p} is not 2", nm.square.input[1]), none
        elif not view.same_value(nm.square.input[0], nm.square.input[1]):
            return Verdict.fail("Mul is not a square (different operands)", nm.square.output[0]), none
    # axes
    for red in [r for r in (nm.mean, nm.var) if r is not None]:
        if red.dynamic_axes:
            return Verdict.fail(f"{red.op} {red.node.name!r} reduces run-time axes", red.dynamic_axes), none
    var_axes = norm_axes(nm.var.axes, rank)
    if var_axes is None or not var_axes:
        return Verdict.fail(f"invalid axes {nm.var.axes} for a rank-{rank} input", nm.var.node.output[0]), none
    if nm.mean is not None:
        mean_axes = norm_axes(nm.mean.axes, rank)
        if mean_axes != var_axes:
            return (
                Verdict.fail(f"mean over axes {mean_axes} but variance over axes {var_axes}", nm.mean.node.output[0]),
                none,
            )
        v = check_restore(view, nm.mean, nm.x, var_axes)
        if not v:
            return v, none
    v = check_restore(view, nm.var, nm.x, var_axes)
    if not v:
        return v, none
    # the variance's normaliser: 1/N (biased) or another constant (1/(N−1): unbiased), which the
    # equivalent norm absorbs into ε and a scale; a count computed at run time cannot be absorbed
    factor = 1.0
    for _node, how, other in nm.scales:
        c = static_scalar(view, other)
        if c is None:
            why = "not a single constant" if view.const(other) is not None else "computed at run time"
            return (
                Verdict.fail(
                    f"σ² is scaled by {other!r} ({why}): the {how} by a count that an unbiased x.var() computes from "
                    "a dynamic shape, so N is not static and the exact rewrite ε' = ε·(N−1)/N has no constant ε'",
                    other,
                ),
                none,
            )
        factor = factor * c if how == "mul" else factor / c
    n = reduced_count(view, nm.x, var_axes)
    if nm.var.op != "ReduceMean":
        if not n:
            return Verdict.fail(f"{nm.var.op} over dynamic dims: the count N is unknown", nm.var.node.output[0]), none
        factor *= n  # ReduceSum = N · mean
    if np.isclose(factor, 1.0, rtol=2e-7, atol=0.0):
        factor = 1.0
    if not (np.isfinite(factor) and factor > 0):
        return Verdict.fail(f"σ² is scaled by {factor:.7g}, not by a positive constant", f"factor {factor:.7g}"), none
    return OK, Moments(var_axes, eps, factor, n)


PROOF_KEY = "normonnx.proof"


def corrected_weight(mo: Moments, shape: Sequence[int]) -> dict[str, np.ndarray]:
    """The weight of the norm equivalent to a spelling whose variance is scaled (see :class:`Moments`)."""
    return {"weight": np.full(tuple(shape), mo.scale)} if mo.corrected else {}


def decomposed_spec(
    m: Any, mo: Moments, kind: str, affine_shape: Sequence[int], *, dtype: str, rank: int | None, **fields: Any
) -> Verdict:
    """Record in match ``m`` the affine-free norm a proven decomposition computes: its spec (ε/f),
    the corrected weight when the variance was scaled, and the proof (see :class:`Moments`)."""
    from ..spec import NormSpec

    m.facts["params"] = corrected_weight(mo, affine_shape)
    m.facts["proof"] = mo.proof
    m.facts["spec"] = NormSpec(
        kind, eps=mo.norm_eps, has_weight=mo.corrected, has_bias=False, dtype=dtype, rank=rank, **fields
    )
    return OK


def decomposed_rewrite(view: GraphView, m: Any, x: str, hint: str) -> Rewrite:
    """The rewrite of a match recorded by :func:`decomposed_spec`: one norm node reading ``x``."""
    return norm_rewrite(
        view, m.nodes, m.output, m.facts["spec"], x, m.facts["params"], m.anchor, hint, m.facts["proof"]
    )


def tensor(view: GraphView, hint: str, array: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(np.ascontiguousarray(array), name=view.fresh(hint))


def value_info_like(view: GraphView, name: str, elem_type: int | None) -> list[onnx.ValueInfoProto]:
    """A value_info for ``name`` with its known type (dtype at least) so lowering can read it."""
    t = view.types.get(name)
    if t is not None and t.HasField("tensor_type") and t.tensor_type.elem_type:
        vi = onnx.ValueInfoProto()
        vi.name = name
        vi.type.CopyFrom(t)
        return [vi]
    if elem_type is None:
        return []
    return [helper.make_tensor_value_info(name, elem_type, None)]


def affine_param(
    view: GraphView, operand: str, *, rank: int, axes: Sequence[int], target: Sequence[int], what: str
) -> tuple[np.ndarray | None, Verdict]:
    """The per-feature parameter a Mul/Add ``operand`` applies to a norm's output.

    It must be a constant that varies only along ``axes`` (the normalised or channel axes) of a
    rank-``rank`` input and does not grow the output; it is returned reshaped/broadcast to ``target``.
    """
    c = view.const(operand)
    if c is None:
        why = "a graph input" if view.is_graph_input(operand) else "computed at run time"
        return None, Verdict.fail(f"{what} is not a constant ({operand!r} is {why})", operand)
    if c.ndim > rank:
        return None, Verdict.fail(f"{what} of shape {list(c.shape)} has more dims than the rank-{rank} input", c)
    padded = (1,) * (rank - c.ndim) + tuple(c.shape)
    kept = []
    for i, d in enumerate(padded):
        if i in axes:
            want = target[list(axes).index(i)] if len(target) == len(axes) else None
            if d not in (1, want):
                return None, Verdict.fail(
                    f"{what} of shape {list(c.shape)} has {d} elements on axis {i}, expected {want}", c
                )
            kept.append(d)
        elif d != 1:
            return None, Verdict.fail(
                f"{what} of shape {list(c.shape)} varies along axis {i}, which the norm does not normalise", c
            )
    arr = np.broadcast_to(c.reshape(kept), tuple(target)) if len(target) == len(axes) else c.reshape(target)
    return np.ascontiguousarray(arr), OK


def norm_rewrite(
    view: GraphView,
    nodes: Sequence[onnx.NodeProto],
    output: str,
    spec: Any,
    x: str,
    params: dict[str, str | np.ndarray],
    anchor: onnx.NodeProto,
    hint: str,
    proof: str = "",
) -> Rewrite:
    """Replace ``nodes`` by one portable ``normonnx`` node computing ``output`` from ``x``.

    ``params`` maps slots ("weight", "bias", ...) to value names or to arrays, which become new
    initializers in the spec's dtype. ``proof`` (why a rewrite with corrected constants is exact)
    is kept in the node's ``normonnx.proof`` metadata, after any proof the anchor carried.
    """
    from ..lowering.graph import make_norm_node

    np_dt = helper.tensor_dtype_to_np_dtype(spec.onnx_dtype)
    base = (anchor.name or output).rstrip("/")
    inits: list[onnx.TensorProto] = []
    names: dict[str, str] = {}
    for slot, v in params.items():
        if isinstance(v, np.ndarray):
            t = tensor(
                view, f"{base}.{slot}" if anchor.domain == "normonnx" else f"{base}/{hint}.{slot}", v.astype(np_dt)
            )
            inits.append(t)
            names[slot] = t.name
        else:
            names[slot] = v
    # a rewrite of a normonnx node keeps its name (the node it replaces is removed)
    name = anchor.name if anchor.domain == "normonnx" and anchor.name else view.fresh(f"{base}/{hint}")
    keep_sum = anchor.output[1] if anchor.domain == "normonnx" and len(anchor.output) > 1 else ""
    node = make_norm_node(spec, x, names, output, name, sum_output=keep_sum)
    node.metadata_props.extend(p for p in anchor.metadata_props if p.key == "namespace")
    proofs = [p.value for n in nodes for p in n.metadata_props if p.key == PROOF_KEY] + ([proof] if proof else [])
    if proofs:
        node.metadata_props.add(key=PROOF_KEY, value="; ".join(dict.fromkeys(proofs)))
    return Rewrite(list(nodes), [node], inits, value_info_like(view, output, spec.onnx_dtype))


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
