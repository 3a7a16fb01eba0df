"""ONNX vs ONNX: bisection value by value, and optimize's original-vs-optimized check.

:func:`bisect` runs model A (the reference) and B and compares every value they share by name.
B is a second file (e.g. the optimized one) or a provider spec for the same file (``cuda``,
``cpu:opt``). The first diverging value whose producer's inputs agree is reported with its node,
op type, module scope and norm lowering; constants shared by name are compared exactly, and the
producing nodes of the first divergence are diffed (attributes, inputs).

:func:`verify_models` proves that an optimized model computes what the original computes, output
by output. Both run in onnxruntime with *its* graph optimizations disabled (so onnxruntime cannot
hide a bug in our rewrites, nor fuse the original into something else) on:

- ``n_samples`` random inputs (:func:`.inputs.feeds`), compared element-wise with the table's
  tolerance for whole models (``tolerance(dtype, "model", target)``);
- two stress inputs (:data:`.inputs.STRESS`): ``offset_1e3`` (catastrophic cancellation in
  E[x²] − E[x]², fp32 accumulation) and ``scale_1e-3`` (variance below ε), compared
  scale-relatively (max error ≤ atol + rtol·max|reference|), since outputs there can be large.

A disagreement is not always the optimized model's fault: at offset 1e3 onnxruntime's
GroupNormalization-18 function body (and InstanceNormalization) is the inaccurate one. So when a
sample disagrees, both are compared with a float64 run of the *original* graph
(:mod:`.float64`): the sample passes only if the optimized model is at least as close to float64
as the original (within 1.5×, or inside the tolerance). Without a float64 reference a
disagreement fails.

For ``target="cuda"`` on a machine without CUDA, onnxruntime contrib ops are replaced by their
reference semantics (:func:`normonnx.lowering.contrib.cpu_equivalent`) and the check runs on CPU;
the result says so.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import onnx
from onnx import helper

from .. import external
from ..errors import NormOnnxError, OptimizeError
from ..providers import PROVIDERS
from .compare import OutputComparison, compare_arrays
from .expose import constants, infer_types, load_model, model_dtype, onnx_input_arrays, run_values
from .float64 import float64_reference
from .inputs import feeds, input_specs, inputs_from_onnx
from .mapping import node_meta, node_scopes, norm_records
from .tolerances import Tolerance, check_usage, tolerance, tolerance_for
from .trace import to_numpy

#: optimize's stress samples: (sample name, :data:`.inputs.STRESS` entry)
OPTIMIZE_STRESS = (("offset_1e3", "offset"), ("scale_1e-3", "tiny_scale"))


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
        from ..reports import format_values

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
    if prov in PROVIDERS and opt in ("", "opt", "noopt") and not os.path.exists(s):
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
    included while B runs (:mod:`normonnx.verify.budget`).
    """
    check_usage(check, atol, rtol)
    if max_memory is not None:
        from .budget import parse_size

        max_memory = parse_size(max_memory)
    proto_a, label_a = load_model(onnx_a, lazy=True)
    prov_b, opt_b = _parse_side(other)
    if prov_b is not None:
        proto_b, label_b = proto_a, f"{label_a} on {other}"
    else:
        proto_b, label_b = load_model(other, lazy=True)
        prov_b, opt_b = provider, False
    if inputs is None:
        arrays = inputs_from_onnx(proto_a, seed)
    else:
        if not isinstance(inputs, (list, tuple)):
            inputs = [inputs]
        arrays = [to_numpy(t) if hasattr(t, "detach") else np.asarray(t) for t in inputs]
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
            cmp = compare_arrays(v, a, b, tolerance_for(tdt, "*", provider, atol, rtol), check)
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
            outputs.append(
                compare_arrays(o.name, vb[o.name], b, tolerance_for(tdt, "model", provider, atol, rtol), check)
            )
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


# -- optimize's check: original vs optimized, output by output -----------------------------------


@dataclasses.dataclass
class SampleCheck:
    """One input sample: per-output comparison of optimized vs original."""

    name: str
    kind: str  # "random" | "stress"
    outputs: list[OutputComparison]
    passed: bool
    note: str = ""
    float64: dict[str, dict[str, float]] = dataclasses.field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "passed": self.passed,
            "note": self.note,
            "outputs": [o.as_dict() for o in self.outputs],
            "float64": self.float64,
        }


@dataclasses.dataclass
class Verification:
    """All samples; ``passed`` only if every sample passed."""

    provider: str
    samples: list[SampleCheck]
    note: str = ""
    error: str = ""

    @property
    def passed(self) -> bool:
        return not self.error and all(s.passed for s in self.samples)

    @property
    def max_abs(self) -> float:
        vals = [o.max_abs for s in self.samples for o in s.outputs]
        return max(vals) if vals else 0.0

    def max_abs_of(self, kind: str) -> float:
        vals = [o.max_abs for s in self.samples if s.kind == kind for o in s.outputs]
        return max(vals) if vals else 0.0

    def summary(self) -> str:
        if self.error:
            return f"verification failed: {self.error}"
        bad = [s for s in self.samples if not s.passed]
        if bad:
            s = bad[0]
            o = max(s.outputs, key=lambda o: o.max_abs if math.isfinite(o.max_abs) else math.inf)
            return (
                f"MISMATCH on {s.name}: output {o.name!r} max |optimized − original| {o.max_abs:.3g} "
                f"(tolerance {o.tolerance}){'; ' + s.note if s.note else ''}"
            )
        n_r = sum(s.kind == "random" for s in self.samples)
        n_s = len(self.samples) - n_r
        text = (
            f"equivalent on {n_r} random + {n_s} stress inputs: max |optimized − original| "
            f"{self.max_abs_of('random'):.3g} (random), {self.max_abs_of('stress'):.3g} (stress)"
        )
        decided = [s for s in self.samples if s.float64]
        if decided:
            errs = ", ".join(
                f"{s.name}: original {max(v['original'] for v in s.float64.values()):.3g} vs optimized "
                f"{max(v['optimized'] for v in s.float64.values()):.3g}"
                for s in decided
            )
            text += f"; where they differ the original is the less accurate one (max error vs float64 — {errs})"
        return text

    def as_dict(self) -> dict[str, Any]:
        return {
            "provider": self.provider,
            "ort_graph_optimizations": False,
            "passed": self.passed,
            "summary": self.summary(),
            "note": self.note,
            "error": self.error,
            "samples": [s.as_dict() for s in self.samples],
        }


def _err(a: np.ndarray, r: np.ndarray) -> float:
    d = np.abs(a.astype(np.float64) - r.astype(np.float64))
    return float(np.where(np.isnan(d), np.inf, d).max()) if d.size else 0.0


def verify_models(
    original: onnx.ModelProto,
    optimized: onnx.ModelProto,
    *,
    n_samples: int = 3,
    seed: int = 0,
    shapes: Mapping[str, Sequence[int]] | None = None,
    target: str = "cpu",
    threads: int | None = None,
) -> Verification:
    """Run both models on random and stress inputs and compare every output (see module doc)."""
    from ..runtime.session import session

    note = ""
    if target == "cuda":
        from ..lowering.contrib import cpu_equivalent

        optimized = cpu_equivalent(optimized)
        note = "target cuda verified on CPU: onnxruntime contrib ops replaced by their reference semantics"
    specs = input_specs(original, shapes)
    names = [o.name for o in original.graph.output]
    if [o.name for o in optimized.graph.output] != names:
        return Verification("cpu", [], note, error="the optimized model's outputs differ from the original's")
    rng = np.random.default_rng(seed)
    cases: list[tuple[str, str, dict[str, np.ndarray]]] = [
        (f"random{k}", "random", feeds(specs, rng)) for k in range(n_samples)
    ]
    for name, stress in OPTIMIZE_STRESS:
        cases.append((name, "stress", feeds(specs, rng, stress)))
    # one session at a time: the original's outputs first, then the optimized model's session (two
    # sessions of a large model would hold its weights twice)
    try:
        s_orig = session(original, "cpu", threads=threads, optimize=False)
    except NormOnnxError as e:
        raise OptimizeError(
            f"the original model does not run in onnxruntime here, so the result cannot be verified: {e.message}",
            note="pass --no-verify to optimize without verification",
        ) from None
    refs = [s_orig.run(feed) for _, _, feed in cases]
    del s_orig
    try:
        s_opt = session(optimized, "cpu", threads=threads, optimize=False)
    except NormOnnxError as e:
        return Verification("cpu", [], note, error=f"the optimized model does not load in onnxruntime: {e.message}")
    samples = []
    for (name, kind, feed), ref in zip(cases, refs):
        try:
            got = s_opt.run(feed)
        except NormOnnxError as e:
            return Verification("cpu", samples, note, error=f"the optimized model fails on {name}: {e.message}")
        outs = []
        for oname, a, r in zip(names, got, ref):
            tol: Tolerance = tolerance(str(r.dtype), "model", target)
            outs.append(compare_arrays(oname, a, r, tol, "elementwise" if kind == "random" else "max"))
        check = SampleCheck(name, kind, outs, all(o.passed for o in outs))
        if not check.passed:
            _adjudicate(original, feed, check, got, ref)
        samples.append(check)
    return Verification("cpu", samples, note)


def _adjudicate(
    original: onnx.ModelProto,
    feed: Mapping[str, np.ndarray],
    check: SampleCheck,
    got: list[np.ndarray],
    ref: list[np.ndarray],
) -> None:
    """Decide a disagreement with a float64 run of the original graph."""
    r64 = float64_reference(original, feed)
    if r64 is None:
        check.note = "no float64 reference could be computed to decide which model is right"
        return
    ok = True
    for o, a, r, f in zip(check.outputs, got, ref, r64):
        if o.passed or a.dtype.kind != "f":
            ok &= o.passed
            continue
        e_orig, e_opt = _err(r, f), _err(a, f)
        scale = float(np.abs(f).max()) if f.size else 0.0
        check.float64[o.name] = {"original": e_orig, "optimized": e_opt}
        ok &= math.isfinite(e_opt) and e_opt <= max(1.5 * e_orig, o.tolerance.atol + o.tolerance.rtol * scale)
    check.passed = ok
    errs = "; ".join(
        f"{k}: original {v['original']:.3g}, optimized {v['optimized']:.3g}" for k, v in check.float64.items()
    )
    check.note = (
        f"the original is less accurate here (max error vs float64 — {errs})"
        if ok
        else f"the optimized model is further from float64 than the original ({errs})"
    )


__all__ = ["OPTIMIZE_STRESS", "BisectReport", "SampleCheck", "ValueResult", "Verification", "bisect", "verify_models"]
