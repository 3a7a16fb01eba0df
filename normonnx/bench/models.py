"""Per-model latency, accuracy and time breakdown: torch eager vs three ONNX exports in onnxruntime.

For every model in ``models/`` (static shapes: the entry's example inputs):

- ``torch`` — eager, ``torch.inference_mode``;
- ``onnx:default`` — ``torch.onnx.export(model, inputs, dynamo=True)`` with every argument at its
  default (opset included), run in an onnxruntime session with default graph optimizations;
- ``onnx:normonnx`` — :func:`normonnx.exporter.export` (opset chosen by normonnx for the CPU);
- ``onnx:normonnx+optimize`` — that export after ``normonnx.optimize.optimize_model``, when the
  optimizer is importable (otherwise the column is skipped with the reason in the results).

All candidates get the same thread count (torch ``set_num_threads``, onnxruntime intra-op
threads) and are timed round-robin (:mod:`normonnx.bench.timing`) with onnxruntime's idle
workers not spinning (they would steal the cores from torch). The three ONNX files are then timed
again in *default* onnxruntime sessions (workers spin, as in a deployment), one session alive at
a time (:func:`~normonnx.bench.timing.measure_isolated`): each row's ``default_session`` holds
that timing and ``speedup_vs_default_export``: the median over rounds of the default export's
block median / this file's (paired within a round, so load changes between rounds cancel).
The row of normonnx's best file also carries ``headroom``: the same timing for that file with its
norm nodes replaced by ``Neg`` (what no norm kernel can beat) and removed (:func:`norm_replaced`).
Accuracy is the max absolute difference over all outputs against the model run in float64 by
torch. "Where the time goes" comes from onnxruntime's profiler: per-node kernel times (the first, warm-up run dropped),
grouped by op type, with the time spent in normalization nodes separated out; torch's from
``torch.profiler`` (self CPU time per aten op, norm kernels separated). A node counts as a
norm node if normonnx lowered it (node metadata ``normonnx.norm``), if torch's exporter recorded
it inside a norm module (metadata ``namespace``, innermost module class ``…Norm…``), or if its op
type is a norm op (ONNX native, onnxruntime contrib fusions, normonnx domain).
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import os
import re
import sys
import tempfile
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import onnx

from .timing import (
    Timing,
    default_session,
    measure,
    measure_isolated,
    no_progress,
    ort_session,
    paired_ratio,
    set_threads,
)

TORCH = "torch"
DEFAULT = "onnx:default"
NORMONNX = "onnx:normonnx"
OPTIMIZED = "onnx:normonnx+optimize"
CANDIDATES = (TORCH, DEFAULT, NORMONNX, OPTIMIZED)

#: op types that are normalizations wherever they appear
NORM_OP_TYPES = frozenset(
    {
        "BatchNormalization",
        "InstanceNormalization",
        "LayerNormalization",
        "GroupNormalization",
        "RMSNormalization",
        # onnxruntime contrib ops / fusions
        "SimplifiedLayerNormalization",
        "SkipLayerNormalization",
        "SkipSimplifiedLayerNormalization",
        "GroupNorm",
        "SkipGroupNorm",
        # normonnx domain (native kernel library)
        "BatchNorm",
        "LayerNorm",
        "InstanceNorm",
        "RMSNorm",
    }
)
_NORM_CLASS = re.compile(r"(BatchNorm\w*|LayerNorm\w*|InstanceNorm\w*|GroupNorm\w*|RMSNorm\w*)$")

BUDGET_S = 8.0
QUICK_BUDGET_S = 0.5
PROFILE_RUNS = 5
#: rounds x seconds per block of the default-session comparison (one session alive at a time)
ISOLATED_ROUNDS, ISOLATED_BLOCK_S = 12, 0.25
QUICK_ISOLATED_ROUNDS, QUICK_ISOLATED_BLOCK_S = 1, 0.02


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def optimizer() -> tuple[Callable[[onnx.ModelProto], Any] | None, str]:
    """``normonnx.optimize.optimize_model`` if importable, else None and why."""
    try:
        from ..optimize import optimize_model  # type: ignore[attr-defined]
    except Exception as e:
        return None, f"normonnx.optimize.optimize_model not importable ({type(e).__name__}: {e})"
    return optimize_model, ""


def _as_model(result: Any) -> onnx.ModelProto:
    """The ModelProto out of whatever the optimizer returns (model, (model, ...), or .model)."""
    if isinstance(result, onnx.ModelProto):
        return result
    if isinstance(result, tuple) and result and isinstance(result[0], onnx.ModelProto):
        return result[0]
    inner = getattr(result, "model", None)
    if isinstance(inner, onnx.ModelProto):
        return inner
    raise TypeError(f"optimize_model returned {type(result).__name__}, not an ONNX model")


# -- norm attribution ----------------------------------------------------------------------------


def _innermost_module_class(namespace: str) -> str:
    """``": M/gn: torch.nn….GroupNorm/group_norm: aten.group_norm.default"`` → ``"torch.nn….GroupNorm"``."""
    parts = [p.split(": ", 1)[-1].strip() for p in namespace.split("/")]
    modules = [p for p in parts if p and not p.startswith("aten.") and "." in p]
    return modules[-1] if modules else ""


def norm_node_names(model: onnx.ModelProto) -> set[str]:
    """Names of the nodes of ``model``'s main graph that belong to a normalization."""
    out = set()
    for n in model.graph.node:
        meta = {p.key: p.value for p in n.metadata_props}
        if "normonnx.norm" in meta or n.op_type in NORM_OP_TYPES:
            out.add(n.name)
            continue
        cls = _innermost_module_class(meta.get("namespace", ""))
        if cls and _NORM_CLASS.search(cls):
            out.add(n.name)
    return out


#: files derived from normonnx's export for the default-session comparison (timed, never verified)
BOUND_NEG = "norm→Neg"
NO_NORM = "norm removed"


def norm_replaced(model: onnx.ModelProto, op: str) -> onnx.ModelProto | None:
    """``model`` with every norm node computing ``op``(its input) instead, or None if that is not defined.

    Every norm must be one node of a norm op type (native op, contrib op, normonnx kernel) with
    one output, or a normonnx kernel in a fused form: that keeps its residual sum (``x + r`` or
    ``x + g·r``, as Mul/Add, written to its sum output when it has one) and ``op`` takes the sum;
    its modulation goes with the norm. A norm decomposed into primitive ops has no single node
    to swap, and a model with one gets None, as does a model without norms. With ``Neg``, the
    result bounds what any norm kernel at those positions can reach: one cheap element-wise
    pass, and (like every custom op) not an op onnxruntime's NCHWc layout transformer keeps in
    its blocked layout, so the layout conversions around it stay. With ``Identity`` (onnxruntime removes it, and the conversions
    with it) it is the model without normalization.
    """
    from onnx import helper

    from ..optimize.graph import attr

    out = onnx.ModelProto()
    out.CopyFrom(model)
    norms = norm_node_names(model)
    hits = 0
    nodes = []
    ranks: dict[str, int] | None = None
    for n in out.graph.node:
        if n.name not in norms:
            nodes.append(n)
            continue
        if n.op_type not in NORM_OP_TYPES or not n.input or not n.input[0]:
            return None
        fused = _fused_inputs(n)
        if fused is None:  # a plain norm
            if len(n.output) != 1:
                return None
            nodes.append(helper.make_node(op, [n.input[0]], [n.output[0]], name=n.name))
        else:  # a fused form keeps its residual sum (not the norm's work); scale/shift go with the norm
            residual, gate = fused
            x = n.input[0]
            if residual:
                if gate and attr(n, "sample_operands", 0):  # an [N, *ns] row: broadcast it as the node did
                    if ranks is None:
                        ranks = _ranks(model)
                    axes = list(range(1, ranks.get(x, 0) - len(attr(n, "normalized_shape", ()))))
                    if not axes:
                        return None
                    name = f"{n.name}/gate_rows"
                    nodes.append(helper.make_node("Constant", [], [f"{name}/axes"], value_ints=axes))
                    nodes.append(helper.make_node("Unsqueeze", [gate, f"{name}/axes"], [name], name=name))
                    gate = name
                if gate:
                    nodes.append(helper.make_node("Mul", [gate, residual], [f"{n.name}/gated"], name=f"{n.name}/gate"))
                    residual = f"{n.name}/gated"
                total = n.output[1] if len(n.output) > 1 and n.output[1] else f"{n.name}/sum"
                nodes.append(helper.make_node("Add", [x, residual], [total], name=f"{n.name}/residual"))
                x = total
            nodes.append(helper.make_node(op, [x], [n.output[0]], name=n.name))
        hits += 1
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    return out if hits else None


def _ranks(model: onnx.ModelProto) -> dict[str, int]:
    """Value name → rank, from ONNX shape inference (through the kernel nodes' function bodies)."""
    inferred = onnx.shape_inference.infer_shapes(model)
    g = inferred.graph
    return {
        v.name: len(v.type.tensor_type.shape.dim)
        for v in (*g.input, *g.value_info, *g.output)
        if v.type.tensor_type.HasField("shape")
    }


def _fused_inputs(node: onnx.NodeProto) -> tuple[str, str] | None:
    """(residual, gate) input names of a normonnx kernel node in a fused form ("" if absent), or None
    for a node that is not a fused form (by the kind's input slots: X first, then its slots)."""
    from ..lowering.native_kernel import DOMAIN
    from ..norms import KINDS

    if node.domain != DOMAIN:
        return None
    kind = {"LayerNorm": "layer", "RMSNorm": "rms"}.get(node.op_type)
    if kind is None:
        return None
    slots = KINDS[kind].input_slots

    def slot(name: str) -> str:
        i = 1 + slots.index(name) if name in slots else len(node.input)
        return node.input[i] if i < len(node.input) else ""

    extra = [slot(name) for name in ("residual", "scale", "shift", "gate")]
    return (slot("residual"), slot("gate")) if any(extra) or len(node.output) > 1 else None


def _breakdown(groups: list[tuple[str, bool, float, int]], runs: int) -> dict[str, Any]:
    """The summary of (op, is_norm, µs over ``runs`` runs, nodes) groups: kernel and norm ms per run,
    the norm share, and a row per group, longest first (shared by the onnxruntime and torch profiles)."""
    total_us = sum(us for _, _, us, _ in groups) or 1.0
    rows = [
        {"op": op, "norm": norm, "ms": us / runs / 1e3, "share": us / total_us, "nodes": nodes}
        for op, norm, us, nodes in sorted(groups, key=lambda g: -g[2])
    ]
    norm_ms = sum(r["ms"] for r in rows if r["norm"])
    kernel_ms = total_us / runs / 1e3
    return {"kernel_ms": kernel_ms, "norm_ms": norm_ms, "norm_share": norm_ms / kernel_ms, "by_op": rows}


def profile_breakdown(events: list[dict[str, Any]], norm_nodes: set[str]) -> dict[str, Any]:
    """Kernel time per op type per run (ms), norm nodes separated, from onnxruntime profiler events.

    The first ``model_run`` is a warm-up and is dropped.
    """
    runs = sorted(
        (e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"), key=lambda e: e["ts"]
    )
    start = runs[1]["ts"] if len(runs) > 1 else 0
    n_runs = max(1, len(runs) - 1) if len(runs) > 1 else max(1, len(runs))
    groups: dict[tuple[str, bool], dict[str, Any]] = {}
    for e in events:
        if e.get("cat") != "Node" or not str(e.get("name", "")).endswith("_kernel_time") or e.get("ts", 0) < start:
            continue
        node = e["name"][: -len("_kernel_time")]
        op = e.get("args", {}).get("op_name", "?")
        is_norm = node in norm_nodes or op in NORM_OP_TYPES
        g = groups.setdefault((op, is_norm), {"op": op, "norm": is_norm, "us": 0.0, "nodes": set()})
        g["us"] += float(e.get("dur", 0))
        g["nodes"].add(node)
    return _breakdown([(g["op"], g["norm"], g["us"], len(g["nodes"])) for g in groups.values()], n_runs)


def profile(path: str, feed: dict[str, np.ndarray], threads: int, runs: int = PROFILE_RUNS) -> dict[str, Any]:
    """Run ``path`` ``runs``+1 times under onnxruntime's profiler and group the kernel times."""
    model = onnx.load(path, load_external_data=False)
    with tempfile.TemporaryDirectory() as d:
        sess = ort_session(path, threads, profile=os.path.join(d, "prof"))
        for _ in range(runs + 1):
            sess.run(None, feed)
        prof = sess.end_profiling()
        with open(prof) as f:
            events = json.load(f)
    return profile_breakdown(events, norm_node_names(model))


#: aten ops of torch's normalization kernels (self time: the nested calls do not double count)
_TORCH_NORM = re.compile(r"^aten::.*(batch_norm|layer_norm|group_norm|instance_norm|rms_norm)")


def torch_profile(call: Callable[[], Any], runs: int = PROFILE_RUNS) -> dict[str, Any]:
    """torch eager's time per aten op per run (ms, self CPU time from ``torch.profiler``), norm ops
    separated, in the shape of :func:`profile_breakdown`. One untimed warm-up call first.

    The profiler adds a few µs of recording per op to every op alike; the norm *time* is what the
    issue's "within 1.3× of torch's norm time" compares against, not the total."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as tprofile

    call()
    with tprofile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(runs):
            call()
    groups: dict[str, dict[str, Any]] = {}
    for ev in prof.key_averages():
        us = float(ev.self_cpu_time_total)
        if us <= 0 or not ev.key.startswith("aten::"):
            continue
        g = groups.setdefault(ev.key, {"op": ev.key, "norm": bool(_TORCH_NORM.match(ev.key)), "us": 0.0, "n": 0})
        g["us"] += us
        g["n"] += int(ev.count)
    return _breakdown([(g["op"], g["norm"], g["us"], g["n"] // runs) for g in groups.values()], runs)


# -- one model -----------------------------------------------------------------------------------


def _flatten(out: Any) -> list[np.ndarray]:
    from ..tensors import flatten

    return [t.detach().numpy() for t in flatten(out, strict=True)]


def _max_err(outs: list[np.ndarray], refs: list[np.ndarray]) -> float | None:
    if len(outs) != len(refs):
        return None
    errs = []
    for a, r in zip(outs, refs):
        if a.shape != r.shape:
            return None
        errs.append(float(np.max(np.abs(a.astype(np.float64) - r))) if a.size else 0.0)
    return max(errs) if errs else 0.0


def default_export(model: Any, inputs: tuple[Any, ...], path: str) -> int:
    """``torch.onnx.export(model, inputs, path, dynamo=True)`` with defaults; returns its opset."""
    import torch

    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        torch.onnx.export(model, inputs, path, dynamo=True)
    m = onnx.load(path, load_external_data=False)
    return next(o.version for o in m.opset_import if o.domain in ("", "ai.onnx"))


def bench_model(
    entry: Any,
    out_dir: str,
    *,
    threads: int = 2,
    budget_s: float = BUDGET_S,
    quick: bool = False,
    profile_runs: int = PROFILE_RUNS,
) -> list[dict[str, Any]]:
    """Rows (one per candidate) for one ``models`` entry."""
    import torch

    from ..exporter import export

    set_threads(threads)
    model = entry.factory()
    inputs = tuple(entry.example_inputs())
    with torch.inference_mode():
        y32 = _flatten(model(*inputs))
        m64 = copy.deepcopy(model).double()
        ref = [
            a.astype(np.float64) for a in _flatten(m64(*[t.double() if t.is_floating_point() else t for t in inputs]))
        ]
    feed_arrays = [t.numpy() for t in inputs]

    info: dict[str, dict[str, Any]] = {
        TORCH: {"max_abs_err": _max_err(y32, ref), "note": f"torch {torch.__version__} eager"}
    }
    cands: dict[str, Callable[[], Any]] = {}

    def torch_call() -> Any:
        with torch.inference_mode():
            return model(*inputs)

    cands[TORCH] = torch_call
    info[TORCH]["profile"] = torch_profile(torch_call, runs=1 if quick else profile_runs)
    paths: dict[str, str] = {}

    # default torch.onnx export
    p_default = os.path.join(out_dir, f"{entry.name}.default.onnx")
    try:
        opset = default_export(model, inputs, p_default)
        paths[DEFAULT] = p_default
        info[DEFAULT] = {"opset": opset, "note": "torch.onnx.export(dynamo=True) defaults"}
    except Exception as e:
        info[DEFAULT] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"}

    # normonnx export
    p_nn = os.path.join(out_dir, f"{entry.name}.normonnx.onnx")
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            res = export(model, inputs, p_nn, input_names=list(entry.input_names))
        paths[NORMONNX] = p_nn
        info[NORMONNX] = {"opset": res.opset, "strategies": res.strategies, "note": res.opset_reason}
    except Exception as e:
        info[NORMONNX] = {"error": f"{type(e).__name__}: {getattr(e, 'message', str(e)).splitlines()[0][:200]}"}

    # normonnx export + optimize
    opt, why = optimizer()
    if opt is None:
        info[OPTIMIZED] = {"skipped": why}
    elif NORMONNX in paths:
        p_opt = os.path.join(out_dir, f"{entry.name}.normonnx.opt.onnx")
        try:
            from ..io import load, save

            with contextlib.redirect_stdout(io.StringIO()):
                result = opt(load(p_nn))
            optimized = _as_model(result)
            save(optimized, p_opt)
            paths[OPTIMIZED] = p_opt
            passed = getattr(result, "passed", None)
            info[OPTIMIZED] = {
                "opset": next(o.version for o in optimized.opset_import if o.domain in ("", "ai.onnx")),
                "note": "normonnx.optimize.optimize_model"
                + ("" if passed is None else f" (its own verification {'passed' if passed else 'FAILED'})"),
            }
        except Exception as e:
            info[OPTIMIZED] = {"error": f"{type(e).__name__}: {getattr(e, 'message', str(e)).splitlines()[0][:200]}"}
    else:
        info[OPTIMIZED] = {"skipped": "the normonnx export failed"}

    for name, path in paths.items():
        try:
            sess = ort_session(path, threads)
            feed = {i.name: a for i, a in zip(sess.get_inputs(), feed_arrays)}
            outs = sess.run(None, feed)
            info[name]["max_abs_err"] = _max_err(list(outs), ref)
            info[name]["nodes"] = len(onnx.load(path, load_external_data=False).graph.node)
            cands[name] = lambda sess=sess, feed=feed: sess.run(None, feed)
            info[name]["profile"] = profile(path, feed, threads, runs=1 if quick else profile_runs)
        except Exception as e:
            cands.pop(name, None)
            info[name]["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"

    if quick:
        timings = measure(cands, budget_s=budget_s, warmup=1, min_rounds=3, max_rounds=20, sample_s=0.001)
    else:
        timings = measure(cands, budget_s=budget_s, warmup=3, min_rounds=7, sample_s=0.02, max_inner=20)
    t_torch = timings[TORCH].median_ms

    # the same files in default onnxruntime sessions (idle workers spin, as users run them); such
    # sessions cannot be interleaved with each other or with torch, so each is timed alone. Two
    # files derived from normonnx's best one bound what the norms can still give (norm_replaced).
    ort_names = [n for n in (DEFAULT, NORMONNX, OPTIMIZED) if n in cands]
    best = OPTIMIZED if OPTIMIZED in cands else NORMONNX
    if best in cands:
        base = onnx.load(paths[best])
        for label, op in ((BOUND_NEG, "Neg"), (NO_NORM, "Identity")):
            variant = norm_replaced(base, op)
            if variant is not None:
                paths[label] = os.path.join(out_dir, f"{entry.name}.{op.lower()}-for-norms.onnx")
                onnx.save(variant, paths[label])
                ort_names.append(label)

    def factory(name: str) -> Callable[[], Callable[[], Any]]:
        def build() -> Callable[[], Any]:
            sess = default_session(paths[name], threads)
            feed = {i.name: a for i, a in zip(sess.get_inputs(), feed_arrays)}
            return lambda: sess.run(None, feed)

        return build

    isolated = measure_isolated(
        {n: factory(n) for n in ort_names},
        rounds=QUICK_ISOLATED_ROUNDS if quick else ISOLATED_ROUNDS,
        block_s=QUICK_ISOLATED_BLOCK_S if quick else ISOLATED_BLOCK_S,
        warmup=1 if quick else 3,
    )
    rows = []
    for name in CANDIDATES:
        meta = info.get(name, {})
        t: Timing | None = timings.get(name)
        row: dict[str, Any] = {
            "model": entry.name,
            "candidate": name,
            "threads": threads,
            "opset": meta.get("opset"),
            "max_abs_err": meta.get("max_abs_err"),
            "nodes": meta.get("nodes"),
            "strategies": meta.get("strategies"),
            "profile": meta.get("profile"),
            "note": meta.get("note", ""),
            "error": meta.get("error", ""),
            "skipped": meta.get("skipped", ""),
        }
        if t is not None:
            row.update(t.as_dict())
            row["x_torch"] = t.median_ms / t_torch
        if name in isolated:
            row["default_session"] = _isolated_entry(isolated, name)
            if name == best:
                row["default_session"]["headroom"] = {
                    label: _isolated_entry(isolated, label) for label in (BOUND_NEG, NO_NORM) if label in isolated
                }
        rows.append(row)
    return rows


def _isolated_entry(isolated: dict[str, Timing], name: str) -> dict[str, Any]:
    d = isolated[name].as_dict()
    if DEFAULT in isolated:
        d["speedup_vs_default_export"] = paired_ratio(isolated[DEFAULT], isolated[name])
    d["rounds"] = len(isolated[name].block_medians_ms)
    return d


def run_models(
    names: Iterable[str] | None = None,
    *,
    quick: bool = False,
    threads: int = 2,
    budget_s: float | None = None,
    out_dir: str | None = None,
    log: Callable[[str], None] | None = _log,
    progress: Callable[..., Any] = no_progress,
) -> list[dict[str, Any]]:
    """Benchmark every model in ``models/`` (or ``names``); rows in registry order. ``progress``
    wraps the model list (``progress(names, total=, desc=)``), e.g. with a progress bar."""
    from ..errors import InputError
    from ..modelspec import models_registry

    reg = models_registry()
    if reg is None:
        raise InputError("the models/ package is not importable", note="run from the repository root")
    names = list(names) if names is not None else list(reg.MODELS)
    unknown = [n for n in names if n not in reg.MODELS]
    if unknown:
        raise InputError(f"unknown model(s): {', '.join(unknown)}", note=f"valid models: {', '.join(reg.MODELS)}")
    budget = budget_s if budget_s is not None else (QUICK_BUDGET_S if quick else BUDGET_S)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="normonnx-bench-") as tmp:
        d = out_dir or tmp
        os.makedirs(d, exist_ok=True)  # export() and io.save() refuse a missing directory
        for i, name in enumerate(progress(names, total=len(names), desc="bench models")):
            if log:
                log(f"[models {i + 1}/{len(names)}] {name}")
            rows += bench_model(reg.MODELS[name], d, threads=threads, budget_s=budget, quick=quick)
    return rows
