"""fp16 / bf16 deployment checks: convert, keep norm statistics in fp32, find overflow per layer.

Why convert the ONNX graph rather than export ``model.half()``: the exported fp32 graph is the
artefact being deployed, conversion keeps every value name (so the fp16 run lines up value by
value with the fp32 run and module by module with torch), and it needs no fp16 kernels in torch
CPU. Exporting ``model.half()`` is the other correct path — normonnx lowers a norm whose spec
dtype is float16 with fp32 statistics (``stash_fp32``) — and :func:`check_precision` accepts such
a file unchanged (its inputs are already fp16).

:func:`check_precision` converts with :func:`.half.convert` (or takes an fp16 export as is),
runs torch fp32, the fp32 ONNX model and the converted model with every intermediate value
exposed, compares module outputs with :func:`.localize.localize` under the ``dtype`` rows of the tolerance table, and counts per layer: non-finite values (Inf/NaN where
fp32 is finite), values saturated at the dtype's max, values whose fp32 magnitude exceeds the
dtype's range, and underflow (non-zero in fp32, zero in ``dtype``).
"""

from __future__ import annotations

import dataclasses
import os
import re
import tempfile
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto

from ..errors import InputError, UnsupportedHere
from .compare import OutputComparison
from .expose import elem_type, infer_types, load_model, run_values
from .half import ELEM, LIMITS, Conversion, convert
from .inputs import torch_inputs
from .localize import LocalizeReport, localize
from .mapping import node_meta, node_scopes
from .tolerances import check_usage as _check_usage


def ort_fp32_nodes(model: onnx.ModelProto, dtype: str = "float16", provider: str = "cpu") -> dict[str, int]:
    """Op types (with counts) of nodes given ``dtype`` inputs that onnxruntime runs in float32:
    it inserts casts (``InsertedPrecisionFreeCast_*``) around ops without a kernel for ``dtype``
    and merges neighbouring regions. Read from the session graph onnxruntime saves."""
    import onnxruntime as ort

    from ..runtime.session import PROVIDER_NAMES

    D = ELEM[dtype]
    ours = infer_types(model)
    intended = {
        n.name: n.op_type
        for n in model.graph.node
        if n.name and n.op_type != "Cast" and any(elem_type(ours, v) == D for v in n.input if v)
    }
    if not intended:
        return {}
    so = ort.SessionOptions()
    so.log_severity_level = 4
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "session.onnx")
        so.optimized_model_filepath = path
        ort.InferenceSession(model.SerializeToString(), so, providers=[PROVIDER_NAMES[provider]])
        saved = onnx.load(path, load_external_data=False)
    if not any(n.name.startswith("InsertedPrecisionFreeCast_") for n in saved.graph.node):
        return {}
    types = infer_types(saved)
    counts: dict[str, int] = {}
    for n in saved.graph.node:
        if n.name not in intended:
            continue
        if not any(elem_type(types, v) == D for v in n.input if v):
            counts[n.op_type] = counts.get(n.op_type, 0) + 1
    return counts


_NOT_IMPL = re.compile(r"Could not find an implementation for (\w+)\((\d+)\)")
#: the op's schema does not admit the dtype at this opset (e.g. Conv has no bfloat16 before 22)
_BAD_TYPE = re.compile(r"Type '?tensor\((?:float16|bfloat16)\)'? of input parameter .* of operator \((\w+)\)")


#: how normonnx.runtime.session words a kernel onnxruntime does not have for these types
_NO_KERNEL = re.compile(r"has no kernel for (\w+)")


def _loadable(model: onnx.ModelProto, provider: str) -> str | None:
    """None if onnxruntime loads ``model``; else the op type it has no kernel for (or raises)."""
    from ..runtime.session import session

    try:
        session(model, provider, optimize=False)
        return None
    except UnsupportedHere as e:  # the session's own wording of a missing kernel
        m = _NO_KERNEL.search(str(e))
        if m:
            return m.group(1)
        raise
    except Exception as e:
        m = _NOT_IMPL.search(str(e)) or _BAD_TYPE.search(str(e))
        if m:
            return m.group(1)
        raise


# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass
class LayerPrecision:
    """Range problems of the ``dtype`` values produced by one layer."""

    layer: str
    values: int
    nonfinite: int  # Inf/NaN where the fp32 run is finite
    at_max: int  # |x| == dtype max (saturated)
    beyond_range: int  # fp32 magnitude above the dtype's max
    underflow: int  # non-zero in fp32, zero in dtype
    max_abs_fp32: float
    worst_value: str

    def problem(self) -> str:
        p = []
        if self.nonfinite:
            p.append(f"{self.nonfinite} Inf/NaN")
        if self.at_max:
            p.append(f"{self.at_max} at dtype max")
        if self.beyond_range:
            p.append(f"{self.beyond_range} beyond range in fp32 (max |x| {self.max_abs_fp32:.3g})")
        return ", ".join(p)

    @property
    def overflow(self) -> bool:
        """Inf/NaN or saturation seen here, or a dtype value whose fp32 magnitude exceeds the
        dtype's range (onnxruntime CPU may have run that node in fp32, a GPU will not)."""
        return bool(self.nonfinite or self.at_max or self.beyond_range)

    def describe(self) -> str:
        return (
            f"{self.values} values, max |fp32| {self.max_abs_fp32:.3g}, underflow {self.underflow}, "
            f"worst {self.worst_value}" + (f": {self.problem()}" if self.problem() else "")
        )

    def as_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["overflow"] = self.overflow
        if not np.isfinite(self.max_abs_fp32):
            d["max_abs_fp32"] = str(self.max_abs_fp32)
        return d


@dataclasses.dataclass
class PrecisionReport:
    """fp16/bf16 deployment evidence."""

    dtype: str
    onnx_path: str
    conversion: Conversion | None  # None: the file was already in dtype
    ort_fp32: dict[str, int]
    outputs: list[OutputComparison]
    layers: list[LayerPrecision]
    localize: LocalizeReport | None
    notes: list[str]

    @property
    def overflow_layers(self) -> list[LayerPrecision]:
        return [lp for lp in self.layers if lp.overflow]

    @property
    def passed(self) -> bool:
        return bool(self.outputs) and all(o.passed for o in self.outputs) and not self.overflow_layers

    def summary(self) -> str:
        worst = max(self.outputs, key=lambda o: o.max_abs, default=None)
        err = f"max_abs={worst.max_abs:.3g} ({worst.tolerance})" if worst else "no outputs"
        over = self.overflow_layers
        parts = [f"{self.dtype} vs torch float32: {err}"]
        if over:
            parts.append(
                f"overflow in {len(over)} layer(s): " + "; ".join(f"{lp.layer}: {lp.problem()}" for lp in over[:4])
            )
        else:
            parts.append("no overflow")
        if self.conversion is not None:
            n = sum(len(v) for v in self.conversion.kept_fp32.values())
            parts.append(f"norms {self.conversion.norms} ({n} nodes kept fp32)")
        if self.ort_fp32:
            parts.append(
                "onnxruntime ran in fp32 via inserted casts: " + ", ".join(f"{k}×{v}" for k, v in self.ort_fp32.items())
            )
        if self.localize is not None and self.localize.culprit is not None:
            parts.append(f"first layer beyond {self.dtype} tolerance: {self.localize.culprit.name}")
        return "; ".join(parts)

    def format_table(self) -> str:
        head = ("layer", "values", "Inf/NaN", "at max", "beyond range", "underflow", "max |fp32|", "worst value")
        rows = [
            (
                lp.layer,
                str(lp.values),
                str(lp.nonfinite),
                str(lp.at_max),
                str(lp.beyond_range),
                str(lp.underflow),
                f"{lp.max_abs_fp32:.3g}",
                lp.worst_value,
            )
            for lp in self.layers
            if lp.overflow or lp.beyond_range or lp.underflow
        ]
        if not rows:
            return f"no range problems in {len(self.layers)} layers"
        from ..text import table

        return table(head, rows)

    def as_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "dtype": self.dtype,
            "onnx_path": self.onnx_path,
            "summary": self.summary(),
            "conversion": self.conversion.as_dict() if self.conversion else None,
            "ort_fp32_nodes": self.ort_fp32,
            "outputs": [o.as_dict() for o in self.outputs],
            "layers": [lp.as_dict() for lp in self.layers],
            "overflow_layers": [lp.layer for lp in self.overflow_layers],
            "localize": self.localize.as_dict() if self.localize else None,
            "notes": self.notes,
        }


def _layer_of(model: onnx.ModelProto, loc: LocalizeReport | None) -> dict[str, str]:
    """value name → layer name: mapped module outputs, norm subgraphs, scopes, node names."""
    by_value: dict[str, str] = {}
    norm_module: dict[str, str] = {}
    if loc is not None:
        for lr in loc.layers:
            if lr.onnx_value and lr.leaf:
                by_value.setdefault(lr.onnx_value, lr.name)
            if lr.norm and lr.norm.get("node"):
                norm_module.setdefault(str(lr.norm["node"]), lr.name)
    out: dict[str, str] = {}
    for n in model.graph.node:
        md = node_meta(n)
        norm = md.get("normonnx.norm")
        scopes = node_scopes(n)
        for v in n.output:
            if v in by_value:
                out[v] = by_value[v]
            elif norm:
                out[v] = norm_module.get(norm, norm)
            elif scopes and scopes[-1]:
                out[v] = scopes[-1]
            else:
                out[v] = n.name or n.op_type
    return out


def check_precision(
    model: Any,
    onnx_path: str | os.PathLike[str] | onnx.ModelProto,
    inputs: Any = None,
    *,
    dtype: str = "float16",
    norms: str = "fp32",
    provider: str = "cpu",
    rtol: float | None = None,
    atol: float | None = None,
    check: str = "max",
    threads: int | None = None,
    seed: int = 0,
    localize_layers: bool = True,
) -> PrecisionReport:
    """Deploy the fp32 ONNX model in ``dtype`` (or take an fp16 export as is) and gather the evidence.

    ``check`` defaults to "max" (max error <= atol + rtol·max|torch| per output and per layer):
    fp16 rounding error scales with the magnitude of a layer's operands, not with each element,
    so a near-zero element of a large-scale layer legitimately carries the layer's absolute error.
    """
    _check_usage(check, atol, rtol)
    proto, label = load_model(onnx_path)
    D = ELEM.get(dtype)
    if D is None:
        raise InputError(f"unsupported precision {dtype!r}", note=f"valid: {', '.join(ELEM)}")
    init_names = {t.name for t in proto.graph.initializer}
    in_types = {vi.type.tensor_type.elem_type for vi in proto.graph.input if vi.name not in init_names}
    notes: list[str] = []
    conversion: Conversion | None = None
    block: list[str] = []
    if D in in_types:
        converted = proto
        reference32: onnx.ModelProto | None = None
        notes.append(f"{label} already takes {dtype} inputs: checked as exported, no conversion")
    else:
        reference32 = proto
        for _ in range(16):
            converted, conversion = convert(proto, dtype, norms=norms, block_ops=block)
            missing = _loadable(converted, provider)
            if missing is None:
                break
            ops = {n.op_type for n in proto.graph.node}
            if missing in block or missing not in ops:
                # onnxruntime expanded some op into one without a kernel (e.g. a Max with no
                # name): keep every op in fp32, the model stores its tensors in dtype only
                rest = sorted(ops - set(block) - {"Constant", "Cast"})
                if not rest:
                    raise UnsupportedHere(f"onnxruntime cannot run this model in {dtype} on {provider}")
                block.extend(rest)
                notes.append(
                    f"onnxruntime needs a {dtype} kernel for {missing}, which the model does not name: every op kept in fp32"
                )
                continue
            block.append(missing)
            notes.append(
                f"onnxruntime has no {dtype} kernel for {missing} (or its schema has no {dtype} at this opset): kept in fp32 with casts"
            )
        else:  # pragma: no cover - needs an onnxruntime without most kernels
            raise UnsupportedHere(f"onnxruntime cannot run this model in {dtype} on {provider}")
    tin, arrays = torch_inputs(proto, inputs, seed)
    try:
        ort32 = ort_fp32_nodes(converted, dtype, provider)
    except Exception as e:  # the probe is a report detail; never fail the check for it
        ort32 = {}
        notes.append(f"could not read onnxruntime's session graph: {str(e).splitlines()[0]}")
    loc = localize(
        model, converted, tin, provider=provider, rtol=rtol, atol=atol, check=check, threads=threads, dtype=dtype
    )
    values = loc.values
    ref_values = run_values(reference32, arrays, provider=provider, threads=threads) if reference32 is not None else {}
    types = infer_types(converted)
    layer_of = _layer_of(converted, loc)
    vmax, tiny = LIMITS[dtype]
    stats: dict[str, LayerPrecision] = {}
    order: list[str] = []
    for v, a in values.items():
        t = types.get(v)
        elem = t.tensor_type.elem_type if t is not None and t.HasField("tensor_type") else 0
        if elem != D and not (elem == 0 and a.dtype == np.float16 and D == TensorProto.FLOAT16):
            continue
        a64 = a.astype(np.float64)
        r = ref_values.get(v)
        r64 = r.astype(np.float64) if r is not None and r.shape == a.shape else None
        fin_r = np.isfinite(r64) if r64 is not None else np.ones(a.shape, bool)
        nonfinite = int((~np.isfinite(a64) & fin_r).sum())
        at_max = int((np.isfinite(a64) & (np.abs(a64) >= vmax)).sum())
        beyond = int((np.abs(r64[fin_r]) > vmax).sum()) if r64 is not None else 0
        under = int(((r64 != 0) & (np.abs(r64) < tiny) & (a64 == 0)).sum()) if r64 is not None else 0
        mx = float(np.abs(r64[fin_r]).max()) if r64 is not None and fin_r.any() else float(np.nanmax(np.abs(a64)))
        layer = layer_of.get(v, v)
        if layer not in stats:
            stats[layer] = LayerPrecision(layer, 0, 0, 0, 0, 0, 0.0, "")
            order.append(layer)
        s = stats[layer]
        score = (nonfinite + at_max, beyond, mx)
        best = (s.nonfinite + s.at_max, s.beyond_range, s.max_abs_fp32)
        s.values += 1
        s.nonfinite += nonfinite
        s.at_max += at_max
        s.beyond_range += beyond
        s.underflow += under
        if score >= best or not s.worst_value:
            s.worst_value = v
        s.max_abs_fp32 = max(s.max_abs_fp32, mx)
    layers = [stats[k] for k in order]
    if not layers and conversion is not None:
        notes.append(
            f"no value is computed in {dtype}: every op ran in fp32 with {dtype} storage only "
            f"(kept fp32: {', '.join(conversion.block_ops) or 'norms'})"
        )
    if conversion is not None and conversion.norms == "fp16":
        notes.append("norm statistics were converted to fp16 (norms='fp16'): the unsafe conversion, for comparison")
    return PrecisionReport(
        dtype, label, conversion, ort32, loc.outputs, layers, loc if localize_layers else None, notes
    )


__all__ = ["LayerPrecision", "PrecisionReport", "check_precision", "ort_fp32_nodes"]
