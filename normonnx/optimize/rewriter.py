"""The rewriter: what a fired rule changes, as data, and the function that builds the new graph.

A rule's ``rewrite`` returns a :class:`Rewrite` (nodes removed, nodes added, new initializers and
value_info, inputs renamed); :func:`apply_rewrites` applies a scan's disjoint rewrites at once.
:func:`interior_check` is the one proof every rule shares (nothing computed inside a match is read
outside it), and :func:`norm_rewrite` builds the replacement most norm rules emit: one portable
``normonnx.<Op>`` node.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..rejection import OK, CheckResult, Rejection
from .graph import GraphView

#: node metadata saying why a rewrite with corrected constants is exact (see patterns.Moments)
PROOF_KEY = "normonnx.proof"


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


def interior_check(view: GraphView, nodes: Sequence[onnx.NodeProto], output: str) -> CheckResult:
    """A Rejection if a value computed inside the matched nodes is also read outside them (or is a
    graph output), which would make removing them change another result."""
    ids = {id(n) for n in nodes}
    for n in nodes:
        for o in n.output:
            if not o or o == output:
                continue
            if o in view.graph_outputs:
                return Rejection(f"intermediate value {o!r} is a graph output", o)
            for u in view.users(o):
                if id(u) not in ids:
                    return Rejection(
                        f"intermediate value {o!r} ({n.op_type}) is also used by {u.op_type} node {u.name!r}", o
                    )
    return OK


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
