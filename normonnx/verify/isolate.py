"""Run each module's ONNX subgraph on torch's own inputs: its error without upstream drift.

An accumulated comparison (the ONNX value after the whole ONNX run vs torch's value) mixes a
module's own error with everything upstream: deep layers look worse than they are, and a small
early fault hides in the drift. Here every target value is recomputed by the ONNX nodes between
it and the nearest values torch also knows (the outputs of mapped modules, the values entering a
module's scope, the graph inputs) — fed with torch's recorded values, as onnx-diagnostic does.

All targets go into one model (each target's nodes copied under a ``iso<k>::`` prefix, the cut
values as shared graph inputs, initializers shared), so one onnxruntime session answers them all.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper

from ..dtypes import ONNX_CODES

_NP_TO_ONNX = {np.dtype(d): code for d, code in ONNX_CODES.items() if d != "bfloat16"}  # normonnx.dtypes
_CUT = "iso::"


@dataclasses.dataclass
class Target:
    key: str  # the caller's label (a layer name)
    value: str  # the ONNX value to recompute


@dataclasses.dataclass
class Isolated:
    """One recomputed value: its array, the values fed from torch and the nodes that ran."""

    value: np.ndarray
    cut: list[str]
    nodes: list[str]


def closure(
    model: onnx.ModelProto,
    value: str,
    known: Mapping[str, Any],
    consts: set[str],
    producer: Mapping[str, int] | None = None,
) -> tuple[list[int], list[str]] | None:
    """Nodes (graph order) computing ``value`` from ``known`` values other than itself, and the
    cut (the known values they read). None when a needed value is neither known nor constant."""
    if producer is None:
        producer = {v: i for i, n in enumerate(model.graph.node) for v in n.output if v}
    nodes: set[int] = set()
    cut: list[str] = []
    stack = [value]
    seen: set[str] = set()
    while stack:
        v = stack.pop()
        if v in seen or not v:
            continue
        seen.add(v)
        if v != value and v in known:
            cut.append(v)
            continue
        if v in consts:
            continue
        i = producer.get(v)
        if i is None:
            return None  # a graph input torch does not know
        node = model.graph.node[i]
        if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute):
            return None  # subgraphs read outer values by name: not copied
        nodes.add(i)
        stack.extend(node.input)
    return sorted(nodes), sorted(cut)


def run_isolated(
    model: onnx.ModelProto,
    targets: Sequence[Target],
    known: Mapping[str, np.ndarray],
    types: Mapping[str, onnx.TypeProto],
    *,
    provider: str = "cpu",
    threads: int | None = None,
) -> tuple[dict[str, Isolated], list[str]]:
    """Recompute every target from torch's ``known`` values; returns ({key: Isolated}, notes)."""
    from ..runtime.session import session

    g = model.graph
    consts = {t.name for t in g.initializer} | {v for n in g.node if n.op_type == "Constant" for v in n.output}
    notes: list[str] = []
    out = onnx.ModelProto()
    out.CopyFrom(model)
    del out.graph.node[:]
    del out.graph.input[:]
    del out.graph.output[:]
    del out.graph.value_info[:]
    inputs: dict[str, np.ndarray] = {}
    plans: dict[str, tuple[str, list[str], list[str]]] = {}
    producer = {v: i for i, n in enumerate(g.node) for v in n.output if v}
    for k, t in enumerate(targets):
        c = closure(model, t.value, known, consts, producer)
        if c is None:
            notes.append(f"{t.key}: its ONNX value {t.value!r} cannot be computed from values torch knows")
            continue
        idx, cut = c
        if not idx:
            continue  # the value itself is a cut value or a constant: nothing of its own ran
        prefix = f"iso{k}::"

        def rename(v: str, cut: list[str] = cut, prefix: str = prefix) -> str:
            if not v or v in consts:
                return v
            return _CUT + v if v in cut else prefix + v

        for i in idx:
            n = g.node[i]
            m = onnx.NodeProto()
            m.CopyFrom(n)
            m.name = prefix + (n.name or f"node{i}")
            del m.input[:]
            m.input.extend(rename(v) for v in n.input)
            del m.output[:]
            m.output.extend(rename(v) for v in n.output)
            out.graph.node.append(m)
        for v in cut:
            inputs.setdefault(v, np.ascontiguousarray(known[v]))
        et = types.get(t.value)
        vi = onnx.ValueInfoProto(name=prefix + t.value)
        if et is not None and et.HasField("tensor_type"):
            vi.type.tensor_type.elem_type = et.tensor_type.elem_type
        out.graph.output.append(vi)
        plans[t.key] = (prefix + t.value, cut, [g.node[i].name for i in idx])
    if not plans:
        return {}, notes
    feed: dict[str, np.ndarray] = {}
    for v, a in inputs.items():
        et = _elem(types, v) or _NP_TO_ONNX.get(a.dtype)
        if et is None:
            notes.append(f"value {v!r} has an element type numpy cannot feed: no isolated run")
            return {}, notes
        np_dt = onnx.helper.tensor_dtype_to_np_dtype(et)
        feed[_CUT + v] = a.astype(np_dt) if a.dtype != np_dt else a
        out.graph.input.append(helper.make_tensor_value_info(_CUT + v, et, list(a.shape)))
    # unused initializers are harmless; the graph inputs now are exactly the cut values
    try:
        sess = session(out, provider, threads=threads, optimize=False)
        got = sess.inner.run(None, feed)
    except Exception as e:  # an isolated run is extra evidence, never a reason to fail localize
        notes.append(f"the isolated runs failed in onnxruntime ({' '.join(str(e).split()[:30])})")
        return {}, notes
    by_out = dict(zip([o.name for o in out.graph.output], got))
    result = {key: Isolated(np.asarray(by_out[o]), cut, nodes) for key, (o, cut, nodes) in plans.items()}
    return result, notes


def _elem(types: Mapping[str, onnx.TypeProto], v: str) -> int:
    t = types.get(v)
    if t is None or not t.HasField("tensor_type"):
        return 0
    et = int(t.tensor_type.elem_type)
    return 0 if et == TensorProto.BFLOAT16 else et


def isolated_comparisons(
    model: onnx.ModelProto,
    calls: Sequence[Any],
    mapped: Mapping[str, tuple[str, str]],
    entries: Mapping[str, Sequence[str]],
    refs: Mapping[str, np.ndarray],
    tols: Mapping[str, tuple[Any, str, Any, str]],
    arrays: Sequence[np.ndarray],
    types: Mapping[str, onnx.TypeProto],
    values: Mapping[str, np.ndarray],
    dtype: str,
    provider: str,
    threads: int | None,
    check: str,
) -> tuple[dict[str, Any], dict[str, list[tuple[str, Any]]], list[str]]:
    """Isolated comparison of every mapped leaf call, and of the functional code feeding each leaf.

    Returns ({call name: OutputComparison}, {call name: [(entry value, OutputComparison)]}, notes).
    torch's known values: the graph inputs, every mapped call's output, and the ONNX values entering
    a leaf's scope matched (by shape, in order) to the inputs torch recorded for that call."""
    from .compare import compare_arrays
    from .derive import C
    from .tolerances import UNIT_ROUNDOFF, Tolerance, tolerance

    init = {t.name for t in model.graph.initializer}
    known: dict[str, np.ndarray] = {}
    for vi, a in zip([vi for vi in model.graph.input if vi.name not in init], arrays):
        known[vi.name] = a
    leaves = [c for c in calls if c.leaf and c.name in refs]
    for c in sorted(leaves, key=lambda c: not c.leaf):
        known.setdefault(mapped[c.name][0], refs[c.name])
    for c in calls:
        if c.name in refs and not c.leaf:
            known.setdefault(mapped[c.name][0], refs[c.name])
    gap_of: dict[str, list[tuple[str, np.ndarray]]] = {}
    for c in leaves:
        free = list(entries.get(c.name, ()))
        for x in c.inputs:
            e = next((v for v in free if v in values and values[v].shape == x.shape), None)
            if e is None:
                continue
            free.remove(e)
            if e not in known:
                known[e] = x
                gap_of.setdefault(c.name, []).append((e, x))
    targets = [Target(c.name, mapped[c.name][0]) for c in leaves]
    for name, pairs in gap_of.items():
        targets += [Target(f"{name}<-{e}", e) for e, _ in pairs]
    got, notes = run_isolated(model, targets, known, types, provider=provider, threads=threads)
    iso: dict[str, Any] = {}
    for c in leaves:
        r = got.get(c.name)
        if r is None or r.value.shape != refs[c.name].shape:
            continue
        tol, source, derived, _ = tols[c.name]
        cmp = compare_arrays(c.name, r.value, refs[c.name], tol, check)
        cmp.tolerance_source, cmp.derived = source, derived
        iso[c.name] = cmp
    gaps: dict[str, list[tuple[str, Any]]] = {}
    u = UNIT_ROUNDOFF.get(dtype, UNIT_ROUNDOFF["float32"])
    for name, pairs in gap_of.items():
        for e, x in pairs:
            r = got.get(f"{name}<-{e}")
            if r is None or r.value.shape != x.shape:
                continue
            floor = tolerance(dtype, "*", provider)
            scale = float(np.abs(x[np.isfinite(x)]).max()) if np.isfinite(x).any() else 0.0
            tol = Tolerance(max(floor.atol, C * u * scale * max(1, len(r.nodes))), floor.rtol)
            cmp = compare_arrays(f"input of {name} ({e})", r.value, x, tol, check)
            cmp.tolerance_source = "derived" if tol.atol > floor.atol else "table"
            gaps.setdefault(name, []).append((e, cmp))
    return iso, gaps, notes
