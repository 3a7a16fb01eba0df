"""fp16 / bf16 deployment checks: convert, keep norm statistics in fp32, find overflow per layer.

Why convert the ONNX graph rather than export ``model.half()``: the exported fp32 graph is the
artefact being deployed, conversion keeps every value name (so the fp16 run lines up value by
value with the fp32 run and module by module with torch), and it needs no fp16 kernels in torch
CPU. Exporting ``model.half()`` is the other correct path — normonnx lowers a norm whose spec
dtype is float16 with fp32 statistics (``stash_fp32``) — and :func:`check_precision` accepts such
a file unchanged (its inputs are already fp16).

:func:`convert` (``dtype`` float16 or bfloat16):

- every float32 tensor computed *outside* norms becomes ``dtype``: initializers, ``Constant`` /
  ``ConstantOfShape`` values, ``Cast(to=float)``, graph inputs/outputs (unless ``keep_io_types``);
- ``norms="fp32"`` (default, the stash): the nodes of every norm lowered by normonnx (node
  metadata ``normonnx.norm``) and every ``normonnx``-domain node keep their fp32 computation;
  ``Cast`` nodes are inserted where values cross the boundary, so statistics (Σx², E[x]...) never
  see fp16's 65504 ceiling;
- ``norms="fp16"``: the norms are converted too, statistics included (the decomposition's float64
  casts become ``dtype``) — what a generic float16 converter makes of a decomposed norm; kept to
  show the failure the stash prevents;
- inputs that ONNX requires in float32 whatever the data type (``Resize`` scales/roi) stay float32;
- ``block_ops``: op types kept in fp32 with casts around them. onnxruntime's CPU provider inserts
  such casts itself for ops without an fp16 kernel (InstanceNormalization, Conv, ...); if a
  session still fails with NOT_IMPLEMENTED, :func:`check_precision` adds the op type to
  ``block_ops`` and converts again. :func:`ort_fp32_nodes` reports which nodes onnxruntime ran in
  fp32 (from its saved session graph), so the report says what really ran in fp16.

:func:`check_precision` runs torch fp32, the fp32 ONNX model and the converted model with every
intermediate value exposed, compares module outputs with :func:`normonnx.localize.localize` under
the ``dtype`` rows of the tolerance table, and counts per layer: non-finite values (Inf/NaN where
fp32 is finite), values saturated at the dtype's max, values whose fp32 magnitude exceeds the
dtype's range, and underflow (non-zero in fp32, zero in ``dtype``).
"""

from __future__ import annotations

import dataclasses
import os
import re
import tempfile
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .compare import OutputComparison
from .compare.tolerances import check_usage as _check_usage
from .dtypes import FLOAT_NAMES, FLOATS, HALF, SHORT
from .errors import InputError, UnsupportedHere
from .localize import LocalizeReport, infer_types, localize, node_meta, node_scopes, onnx_input_arrays, run_values

ELEM = {d: FLOATS[d] for d in HALF}  # the deployment dtypes → ONNX code (normonnx.dtypes)
#: (max finite, smallest normal) per dtype
LIMITS = {"float16": (65504.0, 6.103515625e-05), "bfloat16": (3.3895313892515355e38, 1.1754943508222875e-38)}
#: inputs that ONNX types as float32 whatever the data type
_FLOAT32_INPUTS = {"Resize": {1, 2}, "Upsample": {1}}
_SUFFIX = {code: SHORT[name] for code, name in FLOAT_NAMES.items()}  # 10 → "fp16"


@dataclasses.dataclass
class Conversion:
    """What :func:`convert` did."""

    dtype: str
    norms: str
    kept_fp32: dict[str, list[str]]  # norm (or op type) → node names kept in fp32
    casts: int
    block_ops: list[str]
    keep_io_types: bool

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _is_protected(node: onnx.NodeProto, norms: str, block: set[str]) -> str | None:
    """Why ``node`` stays fp32 (a norm name or op type), or None."""
    if node.op_type in block:
        return node.op_type
    if norms == "fp32":
        name = node_meta(node).get("normonnx.norm")
        if name:
            return name
    if node.domain == "normonnx":
        return node.name or node.op_type
    return None


def convert(
    model: onnx.ModelProto,
    dtype: str = "float16",
    *,
    norms: str = "fp32",
    keep_io_types: bool | None = None,
    block_ops: Iterable[str] = (),
) -> tuple[onnx.ModelProto, Conversion]:
    """A copy of the fp32 ``model`` computing in ``dtype`` (see the module docstring)."""
    if dtype not in ELEM:
        raise InputError(f"cannot convert to {dtype!r}", note=f"valid: {', '.join(ELEM)}")
    if norms not in ("fp32", "fp16"):
        raise InputError(f"norms={norms!r}", note="valid: fp32 (statistics kept in fp32) or fp16")
    D = ELEM[dtype]
    F = TensorProto.FLOAT
    if keep_io_types is None:
        keep_io_types = dtype == "bfloat16"  # numpy has no bfloat16: feed and fetch float32
    block = set(block_ops)
    types = infer_types(model)
    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    inits = {t.name: t for t in g.initializer}
    graph_inputs = {vi.name for vi in g.input if vi.name not in inits}
    protected = [_is_protected(n, norms, block) for n in g.node]
    naive_norm = [norms == "fp16" and "normonnx.norm" in node_meta(n) for n in g.node]

    def et(v: str) -> int:
        t = types.get(v)
        return int(t.tensor_type.elem_type) if t is not None and t.HasField("tensor_type") else 0

    # where each float value lives after conversion
    lives: dict[str, int] = {}
    for vi in g.input:
        if vi.name in graph_inputs and vi.type.tensor_type.elem_type == F:
            lives[vi.name] = F if keep_io_types else D
    for i, n in enumerate(g.node):
        for v in n.output:
            t = et(v)
            if t == F or (naive_norm[i] and t == TensorProto.DOUBLE):
                lives[v] = F if protected[i] else D
            elif t == 0 and not protected[i] and _float_producing(n):
                lives[v] = D
    # graph outputs: rename a producer whose dtype differs from the wanted output dtype
    renames: dict[str, str] = {}
    tail: list[onnx.NodeProto] = []
    want_out = F if keep_io_types else D
    for o in g.output:
        if o.name in lives and lives[o.name] != want_out:
            new = f"{o.name}::{_SUFFIX[lives[o.name]]}"
            renames[o.name] = new
            lives[new] = lives[o.name]
            tail.append(helper.make_node("Cast", [new], [o.name], to=want_out, name=f"{o.name}/to_{_SUFFIX[want_out]}"))
        if o.name in lives:
            o.type.tensor_type.elem_type = want_out
    for vi in g.input:
        if vi.name in graph_inputs and vi.type.tensor_type.elem_type == F and not keep_io_types:
            vi.type.tensor_type.elem_type = D

    casts: dict[tuple[str, int], str] = {}
    init_copies: dict[str, str] = {}
    new_inits: list[onnx.TensorProto] = []
    new_nodes: list[onnx.NodeProto] = []
    n_casts = 0
    consumers_protected: dict[str, bool] = {}
    for i, n in enumerate(g.node):
        for v in n.input:
            if v in inits and protected[i]:
                consumers_protected[v] = True

    _producer = {v: n for n in g.node for v in n.output}

    def as_type(v: str, need: int, consumer: onnx.NodeProto) -> str:
        """``v`` cast to ``need``; the Cast belongs to the fp32 side (a norm's scope) so module
        boundaries stay where they were: entering a kept-fp32 node it takes the consumer's
        metadata, leaving one the producer's."""
        nonlocal n_casts
        key = (v, need)
        if key not in casts:
            out = f"{v}::{_SUFFIX[need]}"
            c = helper.make_node("Cast", [v], [out], to=need, name=f"{v}/to_{_SUFFIX[need]}")
            owner = consumer if need == F else _producer.get(v, consumer)
            c.metadata_props.extend(owner.metadata_props)
            new_nodes.append(c)
            lives[out] = need
            casts[key] = out
            n_casts += 1
        return casts[key]

    def init_in(v: str, need: int) -> str:
        if need == F:
            return v
        if v not in init_copies:
            arr = numpy_helper.to_array(inits[v])
            name = f"{v}::{_SUFFIX[need]}" if consumers_protected.get(v) else v
            new_inits.append(_tensor(arr, need, name))
            init_copies[v] = name
        return init_copies[v]

    kept: dict[str, list[str]] = {}
    for i, node in enumerate(g.node):
        n = onnx.NodeProto()
        n.CopyFrom(node)
        prot = protected[i]
        if prot:
            kept.setdefault(prot, []).append(n.name or n.op_type)
        need = F if prot else D
        f32_slots = _FLOAT32_INPUTS.get(n.op_type, set())
        for k, v in enumerate(n.input):
            if not v:
                continue
            v = renames.get(v, v)
            n.input[k] = v
            want = F if k in f32_slots else need
            # float32 initializers, and in a naive norm its float64 statistics constants (the
            # export keeps the decomposition's constants as initializers, not Constant nodes)
            if v in inits and (
                inits[v].data_type == F or (naive_norm[i] and not prot and inits[v].data_type == TensorProto.DOUBLE)
            ):
                if prot and node.op_type in block and k not in f32_slots:
                    # an op without a dtype kernel: its weights are still *stored* in dtype
                    n.input[k] = as_type(init_in(v, D), F, n)
                elif v in init_copies or want != F:
                    n.input[k] = init_in(v, want)
                continue
            have = lives.get(v)
            if have is not None and have != want:
                n.input[k] = as_type(v, want, n)
        for k, v in enumerate(n.output):
            if v in renames:
                n.output[k] = renames[v]
        if not prot:
            _convert_attributes(n, D, naive_norm[i])
        new_nodes.append(n)
    new_nodes.extend(tail)
    # initializers converted in place (no fp32 consumer left) replace the originals
    replaced = {t.name for t in new_inits}
    keep_inits = [t for t in g.initializer if t.name not in replaced]
    del g.initializer[:]
    g.initializer.extend(keep_inits + new_inits)
    del g.node[:]
    g.node.extend(new_nodes)
    converted_inits = {t.name: t.data_type for t in new_inits}
    for vi in g.value_info:
        if vi.name in lives and vi.type.HasField("tensor_type"):
            vi.type.tensor_type.elem_type = lives[vi.name]
        elif vi.name in converted_inits and vi.type.HasField("tensor_type"):
            vi.type.tensor_type.elem_type = converted_inits[vi.name]
    info = Conversion(dtype, norms, kept, n_casts + len(tail), sorted(block), bool(keep_io_types))
    m.metadata_props.add(key="normonnx.precision", value=f"{dtype} norms={norms}")
    return m, info


def _float_producing(node: onnx.NodeProto) -> bool:
    return node.op_type not in ("Shape", "Size", "NonZero", "ArgMax", "ArgMin", "Cast", "Equal", "Greater", "Less")


def _tensor(arr: np.ndarray, elem: int, name: str) -> onnx.TensorProto:
    if elem == TensorProto.FLOAT16:
        return numpy_helper.from_array(arr.astype(np.float16), name)
    if elem == TensorProto.BFLOAT16:
        t = helper.make_tensor(name, TensorProto.BFLOAT16, arr.shape, arr.astype(np.float32).ravel().tolist())
        return t
    return numpy_helper.from_array(arr.astype(np.float32), name)


def _convert_attributes(n: onnx.NodeProto, D: int, naive_norm: bool) -> None:
    """Cast targets and constant values of an unprotected node: float32 (and in a naive norm,
    float64) → ``D``."""
    src = {TensorProto.FLOAT} | ({TensorProto.DOUBLE} if naive_norm else set())
    for a in n.attribute:
        if n.op_type == "Cast" and a.name == "to" and a.i in src:
            a.i = D
        elif (
            a.type == onnx.AttributeProto.TENSOR
            and a.t.data_type in src
            and n.op_type in ("Constant", "ConstantOfShape")
        ):
            arr = numpy_helper.to_array(a.t)
            a.t.CopyFrom(_tensor(arr, D, a.t.name))
        elif n.op_type == "Constant" and a.name == "value_float":
            a.CopyFrom(helper.make_attribute("value", _tensor(np.asarray(a.f, np.float32), D, "")))
        elif n.op_type == "Constant" and a.name == "value_floats":
            a.CopyFrom(helper.make_attribute("value", _tensor(np.asarray(list(a.floats), np.float32), D, "")))


# ---------------------------------------------------------------------------------------------


def ort_fp32_nodes(model: onnx.ModelProto, dtype: str = "float16", provider: str = "cpu") -> dict[str, int]:
    """Op types (with counts) of nodes given ``dtype`` inputs that onnxruntime runs in float32:
    it inserts casts (``InsertedPrecisionFreeCast_*``) around ops without a kernel for ``dtype``
    and merges neighbouring regions. Read from the session graph onnxruntime saves."""
    import onnxruntime as ort

    from .runtime.session import PROVIDER_NAMES

    D = ELEM[dtype]
    ours = infer_types(model)
    intended = {
        n.name: n.op_type
        for n in model.graph.node
        if n.name and n.op_type != "Cast" and any(elem_type_of(ours, v) == D for v in n.input if v)
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
        if not any(elem_type_of(types, v) == D for v in n.input if v):
            counts[n.op_type] = counts.get(n.op_type, 0) + 1
    return counts


def elem_type_of(types: dict[str, onnx.TypeProto], v: str) -> int:
    t = types.get(v)
    return int(t.tensor_type.elem_type) if t is not None and t.HasField("tensor_type") else 0


_NOT_IMPL = re.compile(r"Could not find an implementation for (\w+)\((\d+)\)")
#: the op's schema does not admit the dtype at this opset (e.g. Conv has no bfloat16 before 22)
_BAD_TYPE = re.compile(r"Type '?tensor\((?:float16|bfloat16)\)'? of input parameter .* of operator \((\w+)\)")


#: how normonnx.runtime.session words a kernel onnxruntime does not have for these types
_NO_KERNEL = re.compile(r"has no kernel for (\w+)")


def _loadable(model: onnx.ModelProto, provider: str) -> str | None:
    """None if onnxruntime loads ``model``; else the op type it has no kernel for (or raises)."""
    from .runtime.session import session

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
        from .text import table

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
    from .localize import _as_torch_inputs, _load

    _check_usage(check, atol, rtol)
    proto, label = _load(onnx_path)
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
    tin, arrays = _as_torch_inputs(proto, inputs, seed)
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


def export_half(model: Any, example_inputs: Sequence[Any], path: str | os.PathLike[str], **export_kw: Any) -> Any:
    """Export a float16 copy of ``model``: normonnx lowers its norms with fp32 statistics
    (spec dtype float16 ⇒ ``stash_fp32``). Needs torch fp16 kernels on CPU for one check run."""
    import copy

    import torch

    from .exporter import export

    half = copy.deepcopy(model).half().eval()
    args = [t.half() if isinstance(t, torch.Tensor) and t.is_floating_point() else t for t in example_inputs]
    return export(half, tuple(args), path, **export_kw)


__all__ = [
    "ELEM",
    "LIMITS",
    "Conversion",
    "LayerPrecision",
    "PrecisionReport",
    "check_precision",
    "convert",
    "export_half",
    "onnx_input_arrays",
    "ort_fp32_nodes",
]
