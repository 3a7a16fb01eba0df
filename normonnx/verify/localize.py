"""Find the layer: the first torch module whose *own* ONNX computation diverges.

``localize(model, onnx, inputs)`` runs both sides once on the same inputs and returns a
:class:`LocalizeReport` (data, not a verdict only):

1. torch (:mod:`.trace`): every module call's inputs and output, and the *norm point*
   ``name[norm]`` of a norm module that does more than its norm (an activation inside its forward);
2. ONNX (:mod:`.expose`): every intermediate value, onnxruntime's graph optimizations off so it
   cannot fuse away the values we look at (or hide a bug);
3. mapping (:mod:`.mapping`): each ONNX value to the module call (and the point in its forward)
   it is the output of — scope metadata, folded pairs, norm records, alignment; a module without
   a value of its own stays ``unmapped``, never compared with another value; a fused activation
   (GroupNorm + SiLU) is applied to the torch side;
4. every mapped call is compared twice under its tolerance (the table as floor, raised by the
   error model of :mod:`normonnx.verify.derive`; a user's atol/rtol as given): *accumulated*
   (the ONNX value after the whole run) and *isolated* (:mod:`normonnx.verify.isolate`: the module's
   own ONNX nodes fed with torch's values at their entries);
5. the culprit is the first *leaf* call (execution order) whose isolated comparison fails. When
   the functional code feeding a leaf (ONNX values entering its scope, recomputed from torch's
   values) fails instead, the divergence entered outside modules and the report names the two
   modules around it. Without isolated results the accumulated comparison decides, with the
   inputs-agree rule.

``bisect(a, b, inputs)`` (:mod:`normonnx.verify.bisect`) is the ONNX-only variant.
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

from .compare import OutputComparison, compare_arrays
from .expose import infer_types, load_model, model_dtype, onnx_input_arrays, reading_beside, run_values
from .inputs import torch_inputs
from .mapping import map_calls, node_meta, norm_records
from .tolerances import Tolerance, check_usage, tolerance, tolerance_for
from .trace import ModuleCall, trace_torch

# ---------------------------------------------------------------------------------------------
# data


@dataclasses.dataclass
class LayerResult:
    """One torch module call and its ONNX counterpart."""

    name: str  # module path, "#k" appended for the k-th call (k >= 2), "[norm]" for a norm point
    module: str  # module path
    type: str  # torch class name
    index: int  # execution order
    leaf: bool
    onnx_value: str | None
    mapped_by: str  # metadata | norm | folded | aligned | identity | unmapped
    #: accumulated: the ONNX value after the whole ONNX run vs torch's (upstream drift included)
    comparison: OutputComparison | None
    inputs_agree: bool | None  # None: could not be checked
    input_note: str
    norm: dict[str, Any] | None  # kind, strategy, node, spec, torch_eps, onnx_ops, onnx_epsilon
    #: isolated: the module's ONNX nodes run on torch's own inputs (its own error, no drift)
    isolated: OutputComparison | None = None
    #: "output" or "norm" (the norm's own output inside a module that also applies an activation)
    point: str = "output"
    #: a BatchNorm folded into the Conv/Linear before it: the pair's other module
    folded_with: str | None = None
    #: the error model behind the derived tolerance (see normonnx.verify.derive)
    error_model: str = ""

    @property
    def passed(self) -> bool | None:
        """The isolated verdict when there is one (what blames a module), else the accumulated."""
        if self.isolated is not None:
            return self.isolated.passed
        return None if self.comparison is None else self.comparison.passed

    def as_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["comparison"] = self.comparison.as_dict() if self.comparison else None
        d["isolated"] = self.isolated.as_dict() if self.isolated else None
        d["passed"] = self.passed
        return d


@dataclasses.dataclass
class LocalizeReport:
    """Per-layer evidence and the first diverging module."""

    onnx_path: str
    provider: str
    layers: list[LayerResult]
    outputs: list[OutputComparison]
    culprit: LayerResult | None
    between: tuple[str | None, str] | None  # divergence entered outside modules: (after, before)
    notes: list[str]
    #: per-layer / per-output samples of elementwise |error| and |error|/|torch| (not serialized)
    errors: dict[str, np.ndarray] = dataclasses.field(default_factory=dict, repr=False)
    rel_errors: dict[str, np.ndarray] = dataclasses.field(default_factory=dict, repr=False)
    #: every ONNX value of the run, by name (not serialized)
    values: dict[str, np.ndarray] = dataclasses.field(default_factory=dict, repr=False)

    @property
    def passed(self) -> bool:
        return self.culprit is None and self.between is None and all(o.passed for o in self.outputs)

    @property
    def mapping(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for lr in self.layers:
            out[lr.mapped_by] = out.get(lr.mapped_by, 0) + 1
        return out

    def checked(self) -> list[LayerResult]:
        return [lr for lr in self.layers if lr.comparison is not None]

    def verdict(self) -> str:
        if self.culprit is not None:
            c = self.culprit
            cmp = c.comparison
            assert cmp is not None
            what = f"first divergence at module {c.name!r} ({c.type}"
            if c.norm and c.norm.get("folded_into"):
                what += f", {c.norm.get('kind')} norm folded into {c.norm['folded_into']!r}"
            elif c.norm:
                what += f", {c.norm.get('kind')} norm lowered as {c.norm.get('strategy') or '?'}"
                ops = c.norm.get("onnx_ops") or []
                if 0 < len(ops) <= 3:
                    what += f" [{'/'.join(ops)}]"
            iso = c.isolated
            if iso is not None:
                what += (
                    f"): on torch's own inputs max_abs={iso.max_abs:.3g} rel_to_scale={iso.rel_to_scale:.3g} "
                    f"({iso.tolerance}, {iso.tolerance_source}; needs atol>={iso.required_atol:.3g}); "
                    f"accumulated max_abs={cmp.max_abs:.3g}"
                )
                return what
            what += f"): max_abs={cmp.max_abs:.3g} rel_to_scale={cmp.rel_to_scale:.3g} ({cmp.tolerance})"
            what += "; its inputs agree" if c.inputs_agree else "; its inputs could not be checked"
            return what
        if self.between is not None:
            after, before = self.between
            return (
                f"divergence enters outside modules, between {after or 'the model inputs'!r} and {before!r} "
                "(functional code in a forward)"
            )
        if not all(o.passed for o in self.outputs):
            return "every checked module agrees; the outputs diverge after the last module (functional code or output)"
        return "every checked module agrees"

    def summary(self) -> str:
        n = len(self.checked())
        return f"{self.verdict()} — {n} module outputs checked on {self.provider} ({self._mapping_text()})"

    def _mapping_text(self) -> str:
        return ", ".join(f"{k}: {v}" for k, v in sorted(self.mapping.items()))

    def format_table(self, all_layers: bool = False) -> str:
        from ..reports import format_layers

        return format_layers(self, all_layers=all_layers)

    def as_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "onnx_path": self.onnx_path,
            "provider": self.provider,
            "verdict": self.verdict(),
            "culprit": self.culprit.as_dict() if self.culprit else None,
            "between": list(self.between) if self.between else None,
            "mapping": self.mapping,
            "notes": self.notes,
            "outputs": [o.as_dict() for o in self.outputs],
            "layers": [lr.as_dict() for lr in self.layers],
        }


# ---------------------------------------------------------------------------------------------
# localize


def _error_sample(a: np.ndarray, r: np.ndarray, limit: int = 20000) -> tuple[np.ndarray, np.ndarray]:
    """Evenly spaced samples of elementwise |a − r| and |a − r| / |r| (for histograms)."""
    r64 = r.astype(np.float64).ravel()
    d = np.abs(a.astype(np.float64).ravel() - r64)
    if d.size > limit:
        pick = np.linspace(0, d.size - 1, limit).astype(np.int64)
        d, r64 = d[pick], r64[pick]
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.where(d == 0, 0.0, d / np.abs(r64))
    return d, rel


def _norm_info(
    model: onnx.ModelProto, value: str | None, norm_name: str | None, call: ModuleCall, records: Mapping[str, Any]
) -> dict[str, Any] | None:
    if norm_name is None and call.norm_kind is None:
        return None
    info: dict[str, Any] = {"kind": call.norm_kind, "torch_eps": call.eps}
    if norm_name is not None:
        rec = records.get(norm_name, {})
        nodes = [n for n in model.graph.node if node_meta(n).get("normonnx.norm") == norm_name]
        strategies = {node_meta(n).get("normonnx.strategy") for n in nodes} - {None}
        ops = [n.op_type for n in nodes if n.op_type not in ("Constant",)]
        # the nodes' own metadata describe the graph as it is; the record, the graph as exported
        strategy = sorted(strategies)[0] if strategies else rec.get("strategy")
        if rec.get("activation"):
            info["fused_activation"] = rec["activation"]  # compared as activation(module output)
        info.update(
            kind=rec.get("kind") or call.norm_kind,
            strategy=strategy,
            node=norm_name,
            spec=rec.get("spec"),
            onnx_ops=sorted(set(ops), key=ops.index),
        )
        if rec.get("strategy") and rec.get("strategy") != strategy:
            info["recorded_strategy"] = rec.get("strategy")
        eps = [
            helper.get_attribute_value(a)
            for n in nodes
            for a in n.attribute
            if a.name == "epsilon" and a.type == onnx.AttributeProto.FLOAT
        ]
        if eps:
            info["onnx_epsilon"] = float(eps[0])
        versions = {o.domain: o.version for o in model.opset_import}
        info["opset"] = opset = versions.get("", versions.get("ai.onnx"))
        if "GroupNormalization" in ops and opset is not None and opset < 21:
            info["warning"] = (
                f"GroupNormalization-{opset} scales per group (deprecated in opset 21); torch's GroupNorm scales per channel"
            )
        eps_t = call.eps
        if eps_t is not None and "onnx_epsilon" in info and not math.isclose(info["onnx_epsilon"], eps_t, rel_tol=1e-3):
            info["warning"] = f"epsilon {info['onnx_epsilon']:.3g} in ONNX vs {eps_t:.3g} in torch"
    return info


@reading_beside
def localize(
    model: Any,
    onnx_path: str | os.PathLike[str] | onnx.ModelProto,
    inputs: Any = None,
    *,
    provider: str = "cpu",
    rtol: float | None = None,
    atol: float | None = None,
    check: str = "elementwise",
    threads: int | None = None,
    ort_optimize: bool = False,
    seed: int = 0,
    dtype: str | None = None,
    isolated: bool = True,
    max_memory: int | str | None = None,
) -> LocalizeReport:
    """Compare every torch module's output with its ONNX value; report the first divergence.

    rtol/atol override the table's per-layer tolerance (dtype × norm kind × provider);
    ``check`` is :func:`~normonnx.verify.compare.compare_arrays`' statistic. onnxruntime runs with its
    graph optimizations off unless ``ort_optimize`` (exposed values then block some fusions).
    Tolerances are looked up for ``dtype`` (default: the model's input dtype, see
    :func:`model_dtype`), not for each value's own: an fp16 deployment keeps some values in fp32
    and they carry fp16 error all the same. Without a user atol/rtol each layer's tolerance is
    derived from its error model (:mod:`normonnx.verify.derive`) with the table as the floor.

    ``isolated`` (default): each mapped module's ONNX nodes also run on torch's own inputs
    (:mod:`normonnx.verify.isolate`); the culprit is the first module whose *isolated* error fails, so
    drift accumulated upstream never blames a healthy module. Both numbers are reported.

    The file's weights stay in it (any size). ``max_memory`` (bytes or ``"8G"``): the ONNX values
    are exposed in groups that fit beside the weights and the values kept, one session at a time
    (:mod:`normonnx.verify.budget`); UnsupportedHere up front when they cannot.
    """
    check_usage(check, atol, rtol)
    if max_memory is not None:
        from .budget import parse_size

        max_memory = parse_size(max_memory)
    proto, label = load_model(onnx_path, lazy=True)
    dtype = dtype or model_dtype(proto)
    tin, arrays = torch_inputs(proto, inputs, seed)
    calls, t_outputs = trace_torch(model, tin)
    types = infer_types(proto)
    values = run_values(
        proto,
        onnx_input_arrays(proto, arrays),
        provider=provider,
        optimize=ort_optimize,
        threads=threads,
        types=types,
        max_memory=max_memory,
    )
    out_names = [o.name for o in proto.graph.output]
    outputs = []
    errors: dict[str, np.ndarray] = {}
    rel_errors: dict[str, np.ndarray] = {}
    for name, r in zip(out_names, t_outputs):
        a = values.get(name)
        if a is None:
            continue
        outputs.append(
            compare_arrays(name, a, r, tolerance_for(dtype or str(a.dtype), "model", provider, atol, rtol), check)
        )
        if a.shape == r.shape:
            errors[f"output:{name}"], rel_errors[f"output:{name}"] = _error_sample(a, r)
    mapped, entries, value_norm, notes, folded = map_calls(proto, calls, values)
    records = norm_records(proto)
    by_name = {c.name: c for c in calls}
    refs: dict[str, np.ndarray] = {}
    tols: dict[str, tuple[Tolerance, str, Tolerance | None, str]] = {}
    for c in calls:
        v = mapped.get(c.name, (None, ""))[0]
        if v is None or c.output is None:
            continue
        ref = _with_fused_activation(c, records.get(value_norm.get(v, ""), {}))
        refs[c.name] = ref.reshape(values[v].shape) if ref.shape != values[v].shape else ref
        pair = by_name.get(folded.get(c.name, ""))
        tols[c.name] = _layer_tolerance(c, pair, refs[c.name], dtype or str(values[v].dtype), provider, atol, rtol)
    iso: dict[str, OutputComparison] = {}
    gaps: dict[str, list[tuple[str, OutputComparison]]] = {}
    if isolated:
        from .isolate import isolated_comparisons

        iso, gaps, iso_notes = isolated_comparisons(
            proto, calls, mapped, entries, refs, tols, arrays, types, values, dtype, provider, threads, check
        )
        notes += iso_notes
    layers: list[LayerResult] = []
    result_of: dict[str, LayerResult] = {}
    for c in calls:
        v, how = mapped.get(c.name, (None, "identity" if c.identity else "unmapped"))
        if c.name in folded and v is None:
            how = "folded"
        comparison = None
        model_name = ""
        if c.name in refs and v is not None:
            a, ref = values[v], refs[c.name]
            tol, source, derived, model_name = tols[c.name]
            comparison = _with_tolerance_facts(compare_arrays(c.name, a, ref, tol, check), source, derived)
            errors[c.name], rel_errors[c.name] = _error_sample(a, ref)
        agree, note = _inputs_agree(c, result_of, entries.get(c.name, []), values, provider, dtype, atol, rtol)
        lr = LayerResult(
            c.name,
            c.module,
            c.type,
            c.index,
            c.leaf,
            v,
            how,
            comparison,
            agree,
            note,
            _norm_info(proto, v, value_norm.get(v) if v else None, c, records),
            isolated=iso.get(c.name),
            point=c.point,
            folded_with=folded.get(c.name),
            error_model=model_name,
        )
        if lr.folded_with and lr.norm is not None and v is not None:
            node = next((n for n in proto.graph.node if v in n.output), None)
            lr.norm.update(folded_into=lr.folded_with, strategy="folded", onnx_ops=[node.op_type] if node else [])
        layers.append(lr)
        result_of[c.name] = lr
    culprit, between = _culprit(layers, gaps)
    unmapped = [lr.name for lr in layers if lr.leaf and lr.mapped_by == "unmapped"]
    if unmapped:
        shown = ", ".join(unmapped[:6]) + (f" and {len(unmapped) - 6} more" if len(unmapped) > 6 else "")
        notes.append(
            f"{len(unmapped)} leaf module outputs have no ONNX value of their own (fused, folded or constant): {shown}"
        )
    pairs = [
        f"{by_name[b].module!r} into {by_name[c].module!r}"
        for c, b in folded.items()
        if mapped.get(c) is None and b in mapped
    ]
    if pairs:
        shown = ", ".join(pairs[:4]) + (f" and {len(pairs) - 4} more" if len(pairs) > 4 else "")
        notes.append(f"{len(pairs)} BatchNorm(s) folded into the op before them, each compared as the pair: {shown}")
    return LocalizeReport(label, provider, layers, outputs, culprit, between, notes, errors, rel_errors, values)


def _layer_tolerance(
    c: ModuleCall,
    pair: ModuleCall | None,
    ref: np.ndarray,
    dtype: str,
    provider: str,
    atol: float | None,
    rtol: float | None,
) -> tuple[Tolerance, str, Tolerance | None, str]:
    """(tolerance applied, its source, the derived one, the error model) for one module call.

    The table's value for (dtype, norm kind or "*", provider) is the floor; the error model of
    :mod:`normonnx.verify.derive` may raise atol above it (reported as "derived"). A user's
    atol/rtol is applied as given; the derived value is still reported."""
    from .derive import derived_atol

    floor = tolerance(dtype, c.norm_kind or "*", provider)
    x = c.inputs[0] if c.inputs else None
    try:
        d, model_name = derived_atol(
            dtype,
            c.obj,
            c.norm_kind,
            x,
            ref,
            folded_into=pair.obj if pair is not None else None,
            folded_input=(pair.inputs[0] if pair is not None and pair.inputs else None),
        )
    except Exception as e:  # an error model is evidence; a module it cannot describe keeps the table's value
        d, model_name = 0.0, f"none ({type(e).__name__})"
    derived = Tolerance(max(floor.atol, d), floor.rtol)
    if atol is not None or rtol is not None:
        return tolerance_for(dtype, c.norm_kind or "*", provider, atol, rtol), "user", derived, model_name
    return derived, ("derived" if d > floor.atol else "table"), derived, model_name


def _with_tolerance_facts(cmp: OutputComparison, source: str, derived: Tolerance | None) -> OutputComparison:
    cmp.tolerance_source = source
    cmp.derived = derived
    return cmp


def _with_fused_activation(call: ModuleCall, record: Mapping[str, Any]) -> np.ndarray:
    """The torch norm module's output, followed by the activation its ONNX node fused (GroupNorm +
    SiLU or ReLU is one node after export/optimize: its value is act(norm(x)), not the module's output)."""
    from ..norms.base import ACTIVATIONS

    out = call.output
    act = ACTIVATIONS.get(str(record.get("activation") or ""))
    if call.norm_kind and act is not None and out is not None:
        with np.errstate(over="ignore"):  # silu: exp(-y) → inf for y ≪ 0 gives -0, as it should
            return act.reference(out.astype(np.float64)).astype(out.dtype)
    return out


def _inputs_agree(
    c: ModuleCall,
    result_of: Mapping[str, LayerResult],
    entry_values: Sequence[str],
    values: Mapping[str, np.ndarray],
    provider: str,
    dtype: str | None,
    atol: float | None,
    rtol: float | None,
) -> tuple[bool | None, str]:
    verdicts: list[bool | None] = []
    notes = []
    free_entries = list(entry_values)
    for src, x in zip(c.sources, c.inputs):
        if src is not None and src.startswith("input:"):
            verdicts.append(True)
            continue
        acc = result_of[src].comparison if src is not None and src in result_of else None
        if acc is not None:
            ok = bool(acc.passed)
            verdicts.append(ok)
            if not ok:
                notes.append(f"input from {src} diverges")
            continue
        # an ONNX value entering the module's scope with the input's shape
        match = next((v for v in free_entries if values[v].shape == x.shape), None)
        if match is not None:
            free_entries.remove(match)
            a = values[match]
            ok = compare_arrays("input", a, x, tolerance_for(dtype or str(a.dtype), "*", provider, atol, rtol)).passed
            verdicts.append(ok)
            if not ok:
                notes.append(f"ONNX input {match!r} diverges")
            continue
        verdicts.append(None)
        notes.append(f"input from {src or 'functional code'} not checked")
    if any(v is False for v in verdicts):
        return False, "; ".join(notes)
    if verdicts and all(v is True for v in verdicts):
        return True, ""
    return (None if verdicts else True), "; ".join(notes)


def _culprit(
    layers: Sequence[LayerResult], gaps: Mapping[str, Sequence[tuple[str, OutputComparison]]] | None = None
) -> tuple[LayerResult | None, tuple[str | None, str] | None]:
    """The first leaf (execution order) whose own error fails: its isolated comparison when it has
    one, else its accumulated one while its inputs agree. A failing isolated check of the
    functional code feeding a leaf (``gaps``) places the divergence between two modules."""
    gaps = gaps or {}
    last_ok: str | None = None
    for lr in layers:
        if not lr.leaf:
            continue
        if any(not g.passed for _, g in gaps.get(lr.name, ())):
            return None, (last_ok, lr.name)
        if lr.isolated is not None:
            if not lr.isolated.passed:
                return lr, None
            last_ok = lr.name
            continue
        if lr.comparison is None:
            continue
        if lr.comparison.passed:
            last_ok = lr.name
            continue
        if lr.inputs_agree is False:
            if any(x.isolated is not None for x in layers):
                continue  # drift from upstream: the isolated checks decide
            return None, (last_ok, lr.name)
        return lr, None
    return None, None


__all__ = ["LayerResult", "LocalizeReport", "localize"]
