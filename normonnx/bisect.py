"""ONNX-only bisection: run model A (the reference) and B, compare every value they share by name.

B is a second file (e.g. the optimized one) or a provider spec for the same file (``cuda``,
``cpu:opt``). The first diverging value whose producer's inputs agree is reported with its node,
op type, module scope and norm lowering; constants shared by name are compared exactly, and the
producing nodes of the first divergence are diffed (attributes, inputs).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import numpy as np
import onnx
from onnx import helper

from . import external
from .compare import OutputComparison, Tolerance, compare_arrays
from .compare.tolerances import check_usage
from .localize import (
    _load,
    _np,
    _tol,
    constants,
    infer_types,
    model_dtype,
    node_meta,
    node_scopes,
    norm_records,
    onnx_input_arrays,
    run_values,
)


@dataclasses.dataclass
class ValueResult:
    """One value present in both ONNX runs."""

    name: str
    node: str
    op_type: str
    index: int  # producer's position in model A
    scope: str  # innermost module scope (exporter metadata) or ""
    norm: dict[str, Any] | None
    comparison: OutputComparison
    inputs_agree: bool | None

    def as_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["comparison"] = self.comparison.as_dict()
        return d


@dataclasses.dataclass
class BisectReport:
    """Value-by-value comparison of two ONNX runs and the first diverging value."""

    a: str
    b: str
    values: list[ValueResult]
    outputs: list[OutputComparison]
    first: ValueResult | None
    only_in_a: int
    only_in_b: int
    notes: list[str]

    @property
    def passed(self) -> bool:
        return self.first is None and all(o.passed for o in self.outputs)

    def verdict(self) -> str:
        f = self.first
        if f is None:
            if all(o.passed for o in self.outputs):
                return f"{len(self.values)} shared values agree"
            return "every shared value agrees; outputs diverge (in values only one side has)"
        where = f" in module {f.scope!r}" if f.scope else ""
        norm = f", {f.norm['kind']} norm lowered as {f.norm.get('strategy')}" if f.norm else ""
        return (
            f"first divergence at value {f.name!r} ({f.op_type} node {f.node!r}{where}{norm}): "
            f"max_abs={f.comparison.max_abs:.3g} rel_to_scale={f.comparison.rel_to_scale:.3g} ({f.comparison.tolerance})"
        )

    def summary(self) -> str:
        return f"{self.verdict()} — {self.a} vs {self.b}, {len(self.values)} shared values compared"

    def format_table(self) -> str:
        from .reports import format_values

        return format_values(self)

    def as_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "a": self.a,
            "b": self.b,
            "verdict": self.verdict(),
            "first": self.first.as_dict() if self.first else None,
            "only_in_a": self.only_in_a,
            "only_in_b": self.only_in_b,
            "notes": self.notes,
            "outputs": [o.as_dict() for o in self.outputs],
            "values": [v.as_dict() for v in self.values],
        }


def _parse_side(spec: str | os.PathLike[str] | onnx.ModelProto) -> tuple[str | None, bool | None]:
    """ "cpu", "cuda", "cpu:opt", "cpu:noopt" → (provider, optimize); a path → (None, None)."""
    if isinstance(spec, onnx.ModelProto):
        return None, None
    s = os.fspath(spec)
    prov, _, opt = s.partition(":")
    if prov in ("cpu", "cuda") and opt in ("", "opt", "noopt") and not os.path.exists(s):
        return prov, (opt == "opt")
    return None, None


def bisect(
    onnx_a: str | os.PathLike[str] | onnx.ModelProto,
    other: str | os.PathLike[str] | onnx.ModelProto,
    inputs: Any = None,
    *,
    provider: str = "cpu",
    optimize_a: bool = False,
    rtol: float | None = None,
    atol: float | None = None,
    check: str = "elementwise",
    threads: int | None = None,
    seed: int = 0,
    max_memory: int | str | None = None,
) -> BisectReport:
    """Run A (the reference) and B, compare every value they share by name, find the first divergence.

    ``other`` is a second ONNX file / model (e.g. the optimized one), or a provider spec for the
    same model: ``"cuda"``, ``"cpu:opt"`` (onnxruntime's graph optimizations on; values we expose
    cannot be fused away, so this compares kernels more than fusions).

    Files are read with their weights left on disk (any size). ``max_memory`` (bytes or ``"8G"``):
    each side's values are exposed in groups that fit beside its weights and the values kept, A's
    included while B runs (:mod:`normonnx.budget`).
    """
    from .verifier import _inputs_from_onnx

    check_usage(check, atol, rtol)
    if max_memory is not None:
        from .budget import parse_size

        max_memory = parse_size(max_memory)
    proto_a, label_a = _load(onnx_a)
    prov_b, opt_b = _parse_side(other)
    if prov_b is not None:
        proto_b, label_b = proto_a, f"{label_a} on {other}"
    else:
        proto_b, label_b = _load(other)
        prov_b, opt_b = provider, False
    if inputs is None:
        arrays = _inputs_from_onnx(proto_a, seed)
    else:
        if not isinstance(inputs, (list, tuple)):
            inputs = [inputs]
        arrays = [_np(t) if hasattr(t, "detach") else np.asarray(t) for t in inputs]
    types_a = infer_types(proto_a)
    types_b = types_a if proto_b is proto_a else infer_types(proto_b)
    # each file's weights stay in it (references, any size): each side reads beside its own file
    with external.reading(_base(onnx_a)):
        va = run_values(
            proto_a,
            onnx_input_arrays(proto_a, arrays),
            provider=provider,
            optimize=optimize_a,
            threads=threads,
            types=types_a,
            max_memory=max_memory,
        )
        const_a = constants(proto_a)
    if max_memory is not None:  # A's values stay while B runs
        max_memory -= sum(a.nbytes for a in va.values())
    with external.reading(_base(onnx_a if proto_b is proto_a else other)):
        vb = run_values(
            proto_b,
            onnx_input_arrays(proto_b, arrays),
            provider=prov_b,
            optimize=bool(opt_b),
            threads=threads,
            types=types_b,
            max_memory=max_memory,
        )
        const_b = constants(proto_b)
    g = proto_a.graph
    records = norm_records(proto_a)
    tdt = model_dtype(proto_a)
    results: list[ValueResult] = []
    status: dict[str, bool] = {vi.name: True for vi in g.input}  # both sides get the same inputs

    def describe(node: onnx.NodeProto) -> tuple[str, dict[str, Any] | None]:
        md = node_meta(node)
        scopes = node_scopes(node) or []
        norm_name = md.get("normonnx.norm")
        norm = None
        if norm_name:
            rec = records.get(norm_name, {})
            norm = {
                "node": norm_name,
                "kind": rec.get("kind"),
                "strategy": md.get("normonnx.strategy") or rec.get("strategy"),
                "spec": rec.get("spec"),
            }
        return (scopes[-1] if scopes else ""), norm

    # constants shared by name must be equal (an edited ε is a constant): compared exactly
    const_owner = {v: n for n in g.node if n.op_type == "Constant" for v in n.output}
    for name, ca in const_a.items():
        cb = const_b.get(name)
        if cb is None or ca.shape != cb.shape:
            continue
        cmp = compare_arrays(name, cb, ca, Tolerance(0.0, 1e-6), "elementwise")
        status[name] = cmp.passed
        if not cmp.passed:
            node = const_owner.get(name)
            scope, norm = describe(node) if node is not None else ("", None)
            idx = list(g.node).index(node) if node is not None else -1
            results.append(
                ValueResult(
                    name,
                    node.name if node is not None else name,
                    "Constant" if node is not None else "initializer",
                    idx,
                    scope,
                    norm,
                    cmp,
                    True,
                )
            )
    for i, node in enumerate(g.node):
        if node.op_type == "Constant":
            continue
        for v in node.output:
            if v not in va or v not in vb or va[v].shape != vb[v].shape:
                continue
            a, b = vb[v], va[v]
            cmp = compare_arrays(v, a, b, _tol(tdt, "*", provider, atol, rtol), check)
            ins = [status[x] for x in node.input if x in status]  # int shape tensors are not tracked
            agree = False if not all(ins) else (True if ins else None)
            scope, norm = describe(node)
            results.append(ValueResult(v, node.name, node.op_type, i, scope, norm, cmp, agree))
            status[v] = cmp.passed
    results.sort(key=lambda r: r.index)
    first = next((r for r in results if not r.comparison.passed and r.inputs_agree is not False), None)
    outputs = []
    for o in g.output:
        if o.name in va and o.name in vb:
            b = va[o.name]
            outputs.append(compare_arrays(o.name, vb[o.name], b, _tol(tdt, "model", provider, atol, rtol), check))
    notes = []
    shared = {r.name for r in results}
    only_a = len([v for v in va if v not in shared])
    only_b = len([v for v in vb if v not in shared])
    if not results:
        notes.append("the two models share no value names; only graph outputs were compared")
    if first is not None and first.op_type not in ("Constant", "initializer"):
        notes += _attribute_diff(proto_a, proto_b, first.name)
    return BisectReport(label_a, label_b, results, outputs, first, only_a, only_b, notes)


def _base(side: str | os.PathLike[str] | onnx.ModelProto) -> str | None:
    """The directory a side's external references resolve against (an in-memory model: the caller's)."""
    if isinstance(side, onnx.ModelProto):
        return external.base_dir()
    return os.path.dirname(os.path.abspath(os.fspath(side)))


def _attribute_diff(a: onnx.ModelProto, b: onnx.ModelProto, value: str) -> list[str]:
    """Differences between the nodes producing ``value`` in A and B (op type, attributes)."""
    na = next((n for n in a.graph.node if value in n.output), None)
    nb = next((n for n in b.graph.node if value in n.output), None)
    if na is None or nb is None:
        return []
    if na.op_type != nb.op_type:
        return [f"{value!r} is produced by {na.op_type} in A, {nb.op_type} in B"]
    aa = {x.name: helper.get_attribute_value(x) for x in na.attribute}
    ab = {x.name: helper.get_attribute_value(x) for x in nb.attribute}
    notes = [
        f"{na.op_type} producing {value!r}: attribute {k} = {aa.get(k)!r} in A, {ab.get(k)!r} in B"
        for k in sorted(set(aa) | set(ab))
        if aa.get(k) != ab.get(k)
    ]
    notes += [
        f"{na.op_type} producing {value!r}: input {i} is {x!r} in A, {y!r} in B"
        for i, (x, y) in enumerate(zip(na.input, nb.input))
        if x != y
    ]
    return notes


__all__ = ["BisectReport", "ValueResult", "bisect"]
