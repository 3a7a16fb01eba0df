"""Find the layer: the first torch module whose *own* ONNX computation diverges.

``localize(model, onnx, inputs)`` runs both sides once on the same inputs and returns a
:class:`LocalizeReport` (data, not a verdict only):

1. torch: forward pre/post hooks on every module record each call's inputs (snapshot before the
   call, so in-place ops cannot rewrite them) and its first floating output, in execution order.
   A norm module whose output is not its norm's output (an activation inside its own forward, as
   timm's ``BatchNormAct2d``) also gets a *norm point*, ``name[norm]``: its kind's functional
   call recomputed from the module's input, placed before the module's children;
2. ONNX: every intermediate value becomes an extra graph output (types from the exporter's
   annotations and ``onnx.shape_inference``; bfloat16 values through a Cast to float32, numpy
   has no bfloat16), and onnxruntime runs with its own graph optimizations disabled so it cannot
   fuse away the values we look at (or hide a bug);
3. mapping ONNX values → module calls, most reliable first:
   - ``metadata``: the exporter's ``pkg.torch.onnx.name_scopes`` / ``namespace`` node metadata. A
     module's output is a value produced inside its scope and consumed outside it (or a graph
     output; the same elements in another shape count);
   - ``folded``: a BatchNorm folded into the Conv/Linear before it has no node; the folded node's
     value is the pair's output and goes to the BatchNorm's row (``folded_with`` names the conv);
   - ``norm``: nodes of a norm lowered by normonnx carry ``normonnx.norm``; the norm subgraphs (in
     graph order) are paired with the torch norm calls / norm points (in execution order) of the
     same kind; a fused activation (GroupNorm + SiLU) is applied to the torch side;
   - ``aligned``: only when most nodes lack scope metadata, the remaining leaf calls are aligned
     with the remaining values by a monotone dynamic program on equal shapes. With metadata a
     module whose scope has no node has no value of its own and stays ``unmapped``;
4. every mapped call is compared twice under its tolerance (the table as floor, raised by the
   error model of :mod:`normonnx.compare.derive`; a user's atol/rtol as given): *accumulated*
   (the ONNX value after the whole run) and *isolated* (:mod:`normonnx.isolate`: the module's
   own ONNX nodes fed with torch's values at their entries);
5. the culprit is the first *leaf* call (execution order) whose isolated comparison fails. When
   the functional code feeding a leaf (ONNX values entering its scope, recomputed from torch's
   values) fails instead, the divergence entered outside modules and the report names the two
   modules around it. Without isolated results the accumulated comparison decides, with the
   inputs-agree rule.

``bisect(a, b, inputs)`` (:mod:`normonnx.bisect`, re-exported here) is the ONNX-only variant.
"""

from __future__ import annotations

import ast
import dataclasses
import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper

from . import io as nio
from .compare import OutputComparison, Tolerance, compare_arrays, tolerance
from .compare.tolerances import check_usage
from .errors import InputError

FLOAT_ELEMS = {TensorProto.FLOAT: "float32", TensorProto.FLOAT16: "float16", TensorProto.DOUBLE: "float64"}
_BF16_SUFFIX = "::as_float32"
#: cost of leaving a leaf call unmatched in the alignment (a match costs min(relative error, 10))
_SKIP_COST = 11.0
_MATCH_CAP = 10.0


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
    #: the error model behind the derived tolerance (see normonnx.compare.derive)
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
        from .reports import format_layers

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
# torch side


@dataclasses.dataclass
class _Call:
    name: str
    module: str
    type: str
    index: int
    leaf: bool
    output: np.ndarray | None
    inputs: list[np.ndarray]
    sources: list[str | None]  # per float input: "input:i", a call name, or None (functional)
    identity: bool
    norm_kind: str | None
    eps: float | None
    obj: Any = dataclasses.field(default=None, repr=False)  # the torch module (error models read its weights)
    #: "output" (the module's output) or "norm" (the norm's own output inside a module that does
    #: more, e.g. ``act(batch_norm(x))`` in a BatchNorm2d subclass; recomputed from its input)
    point: str = "output"


def _norm_kind_of(module: Any) -> str | None:
    from .norms import KINDS

    for kind in KINDS.values():
        classes = kind.torch_modules()
        if classes and isinstance(module, classes):
            return kind.name
    return None


def _norm_output(module: Any, kind: str, x: Any) -> Any:
    """The norm's own functional output on ``x`` (its kind's torch call with the module's
    parameters), or None when the module cannot be described by its kind."""
    import torch

    from .norms import KINDS

    try:
        spec, params = KINDS[kind].from_module(module, x.ndim)
        tp = {k: torch.from_numpy(v).to(x.dtype) for k, v in params.items()}
        return KINDS[kind].torch_forward(spec, x, tp)
    except Exception:
        return None


def _flat_tensors(obj: Any) -> list[Any]:
    import torch

    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, Mapping):
        return [t for v in obj.values() for t in _flat_tensors(v)]
    if isinstance(obj, (list, tuple)):
        return [t for v in obj for t in _flat_tensors(v)]
    return []


def _np(t: Any) -> np.ndarray:
    return t.detach().cpu().numpy()


def trace_torch(model: Any, inputs: Sequence[Any]) -> tuple[list[_Call], list[np.ndarray]]:
    """Run ``model`` once with hooks on every submodule; return (calls in execution order, outputs).

    A call's position is its exit, except the ``norm`` point of a norm module that does more than
    its norm (an activation inside its forward): that point is recomputed from the module's input
    and placed where the module was entered, before its children."""
    import torch

    if isinstance(model, torch.export.ExportedProgram):
        model = model.module()
    calls: list[_Call] = []
    keep: list[Any] = list(inputs)  # keeps tensors alive so id() stays unique during the run
    producers: dict[int, str] = {id(t): f"input:{i}" for i, t in enumerate(inputs) if isinstance(t, torch.Tensor)}
    counts: dict[str, int] = {}
    snapshots: dict[int, list[tuple[list[Any], int]]] = {}
    handles = []

    def pre_hook(mod: Any, args: Any, kwargs: Any) -> None:
        flat = [t for t in _flat_tensors((args, kwargs)) if t.is_floating_point()]
        snapshots.setdefault(id(mod), []).append(([(t, t.detach().clone()) for t in flat], len(calls)))

    def make_hook(path: str, leaf: bool) -> Any:
        def hook(mod: Any, args: Any, kwargs: Any, out: Any) -> None:
            pairs, entered = snapshots[id(mod)].pop()
            k = counts.get(path, 0) + 1
            counts[path] = k
            name = path if k == 1 else f"{path}#{k}"
            outs = [t for t in _flat_tensors(out) if t.is_floating_point()]
            primary = outs[0] if outs else None
            identity = primary is not None and any(primary is t and torch.equal(primary, snap) for t, snap in pairs)
            kind = _norm_kind_of(mod)
            eps = getattr(mod, "eps", None)
            eps = float(eps) if isinstance(eps, (int, float)) else None
            ins = [_np(snap) for _, snap in pairs]
            srcs = [producers.get(id(t)) for t, _ in pairs]
            is_leaf = leaf
            if kind is not None and primary is not None and pairs:
                y = _norm_output(mod, kind, pairs[0][1])
                if y is not None and y.shape == primary.shape and not torch.equal(y, primary):
                    # the module does more than its norm: its norm point is a row of its own
                    calls.insert(
                        entered,
                        _Call(
                            f"{name}[norm]",
                            path,
                            type(mod).__name__,
                            0,
                            True,
                            _np(y),
                            ins,
                            srcs,
                            False,
                            kind,
                            eps,
                            mod,
                            "norm",
                        ),
                    )
                    kind, is_leaf = None, False
            calls.append(
                _Call(
                    name,
                    path,
                    type(mod).__name__,
                    0,
                    is_leaf,
                    _np(primary.detach().clone()) if primary is not None else None,
                    ins,
                    srcs,
                    identity,
                    kind,
                    eps,
                    mod,
                )
            )
            keep.extend(outs)
            if identity:
                return
            for t in outs:
                if is_leaf:
                    producers[id(t)] = name
                else:
                    producers.setdefault(id(t), name)

        return hook

    for path, mod in model.named_modules():
        if path == "":
            continue
        leaf = not any(True for _ in mod.children()) or _norm_kind_of(mod) is not None
        handles.append(mod.register_forward_pre_hook(pre_hook, with_kwargs=True))
        handles.append(mod.register_forward_hook(make_hook(path, leaf), with_kwargs=True))
    try:
        with torch.no_grad():
            out = model(*inputs)
    finally:
        for h in handles:
            h.remove()
    for i, c in enumerate(calls):
        c.index = i
    outputs = [_np(t) for t in _flat_tensors(out)]
    keep.clear()
    return calls, outputs


# ---------------------------------------------------------------------------------------------
# ONNX side


def infer_types(model: onnx.ModelProto) -> dict[str, onnx.TypeProto]:
    """Types of every value we can know: exporter annotations, then ``onnx.shape_inference``.

    normonnx-domain ops have schemas without inference functions; their outputs keep the types
    the exporter annotated.
    """
    from .lowering.function import register_schemas
    from .lowering.graph import value_types

    register_schemas()
    types = value_types(model)
    if model.ByteSize() < 1_800_000_000:
        try:
            inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
            for k, v in value_types(inferred).items():
                types.setdefault(k, v)
        except Exception:  # inference is a help, never a requirement
            pass
    return types


def elem_type(types: Mapping[str, onnx.TypeProto], name: str) -> int:
    t = types.get(name)
    if t is None or not t.HasField("tensor_type"):
        return 0
    return int(t.tensor_type.elem_type)


def expose_values(
    model: onnx.ModelProto, names: Iterable[str] | None = None, types: Mapping[str, onnx.TypeProto] | None = None
) -> tuple[onnx.ModelProto, dict[str, str]]:
    """A copy of ``model`` whose graph outputs include its intermediate float values.

    Returns ``(model, {graph output name: value name})`` covering the original outputs too.
    bfloat16 values are exposed through a ``Cast`` to float32 (named ``value::as_float32``);
    values of unknown type are exposed untyped (onnxruntime infers them) unless the model holds
    bfloat16 values anywhere.
    """
    types = dict(types) if types is not None else infer_types(model)
    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    wanted = set(names) if names is not None else None
    exposed = {o.name: o.name for o in g.output}
    inits = {t.name for t in g.initializer}
    has_bf16 = any(elem_type(types, k) == TensorProto.BFLOAT16 for k in types)
    extra_nodes = []
    for node in list(g.node):
        if node.op_type == "Constant":
            continue
        for v in node.output:
            if not v or v in exposed or v in inits or (wanted is not None and v not in wanted):
                continue
            et = elem_type(types, v)
            if et == TensorProto.BFLOAT16:
                out = v + _BF16_SUFFIX
                extra_nodes.append(helper.make_node("Cast", [v], [out], to=TensorProto.FLOAT, name=f"{v}/expose"))
                g.output.append(helper.make_tensor_value_info(out, TensorProto.FLOAT, None))
                exposed[out] = v
            elif et in FLOAT_ELEMS:
                g.output.append(helper.make_tensor_value_info(v, et, None))
                exposed[v] = v
            elif et == 0 and not has_bf16:
                g.output.append(onnx.ValueInfoProto(name=v))
                exposed[v] = v
    g.node.extend(extra_nodes)
    return m, exposed


def onnx_input_arrays(model: onnx.ModelProto, arrays: Sequence[np.ndarray]) -> list[np.ndarray]:
    """``arrays`` cast to the element types of the ONNX graph inputs (fp16 models take fp16)."""
    init_names = {t.name for t in model.graph.initializer}
    ins = [vi for vi in model.graph.input if vi.name not in init_names]
    out = []
    for vi, a in zip(ins, arrays):
        et = vi.type.tensor_type.elem_type
        if et in FLOAT_ELEMS and a.dtype.kind == "f":
            a = a.astype(FLOAT_ELEMS[et])
        out.append(a)
    return out


def run_values(
    model: onnx.ModelProto,
    arrays: Sequence[np.ndarray] | Mapping[str, np.ndarray],
    *,
    provider: str = "cpu",
    optimize: bool = False,
    threads: int | None = None,
    names: Iterable[str] | None = None,
    types: Mapping[str, onnx.TypeProto] | None = None,
    max_memory: int | None = None,
) -> dict[str, np.ndarray]:
    """Every intermediate float value (or ``names``) of ``model`` on ``arrays``, by value name.

    ``max_memory`` (bytes): expose the values in groups that fit it, one session at a time
    (:mod:`normonnx.budget`; UnsupportedHere when they cannot)."""
    from .runtime.session import session

    exp, mapping = expose_values(model, names, types)
    if max_memory is not None:
        return _run_in_groups(model, exp, mapping, arrays, provider, optimize, threads, types, max_memory)
    sess = session(exp, provider, threads=threads, optimize=optimize)
    if not isinstance(arrays, Mapping):
        arrays = list(arrays)
        if len(arrays) != len(sess.input_names):
            raise InputError(
                f"{len(arrays)} inputs given but the ONNX model takes {len(sess.input_names)} "
                f"({', '.join(sess.input_names)})"
            )
    feed = _feed(sess, arrays)
    try:
        got = sess.inner.run(None, feed)
    except Exception as e:  # onnxruntime's InvalidArgument & co. for a feed that does not fit
        shapes = ", ".join(f"{k}:{list(v.shape)}:{v.dtype}" for k, v in feed.items())
        expected = ", ".join(f"{i.name}:{i.shape}:{i.type}" for i in sess.inner.get_inputs())
        msg = re.sub(r"^\[ONNXRuntimeError\] : \d+ : \w+ : ", "", " ".join(str(e).split()[:40])) or type(e).__name__
        raise InputError(
            f"onnxruntime rejected the inputs ({shapes}): {msg}",
            note=f"the model expects {expected} (CLI: --input name:SHAPE[:DTYPE])",
        ) from None
    return {mapping[n]: np.asarray(a) for n, a in zip(sess.output_names, got) if n in mapping}


def _run_in_groups(
    model: onnx.ModelProto,
    exp: onnx.ModelProto,
    mapping: Mapping[str, str],
    arrays: Sequence[np.ndarray] | Mapping[str, np.ndarray],
    provider: str,
    optimize: bool,
    threads: int | None,
    types: Mapping[str, onnx.TypeProto] | None,
    max_memory: int,
) -> dict[str, np.ndarray]:
    """:func:`run_values` under a memory budget: the exposed values in groups (see :mod:`normonnx.budget`)."""
    from . import budget, external

    types = dict(types) if types is not None else infer_types(model)
    ins = [vi.name for vi in model.graph.input if vi.name not in {t.name for t in model.graph.initializer}]
    feeds = dict(arrays) if isinstance(arrays, Mapping) else dict(zip(ins, arrays))
    dims = budget.bound_dims(model, {k: np.asarray(v) for k, v in feeds.items()})
    outs = [o.name for o in exp.graph.output]
    sizes = {o: budget.value_bytes(types.get(mapping[o]), dims) for o in outs}
    for o in outs:  # a bfloat16 value comes back as float32: twice its own bytes
        if o != mapping[o] and sizes[o] is not None:
            sizes[o] *= 2
    groups = budget.plan(outs, sizes, external.weight_bytes(model), max_memory)
    values: dict[str, np.ndarray] = {}
    for group in groups:
        wanted = {mapping[o] for o in group}
        values.update(
            run_values(model, feeds, provider=provider, optimize=optimize, threads=threads, names=wanted, types=types)
        )
    return values


def _feed(sess: Any, arrays: Sequence[np.ndarray] | Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    if isinstance(arrays, Mapping):
        return {k: np.ascontiguousarray(v) for k, v in arrays.items()}
    return {n: np.ascontiguousarray(a) for n, a in zip(sess.input_names, arrays)}


def model_dtype(model: onnx.ModelProto) -> str:
    """The float dtype of the model's (first float) graph input: the precision its values carry.

    A float64 statistic computed from float32 data is only as exact as the float32 data, so
    tolerances are looked up for this dtype, not for each value's own."""
    init_names = {t.name for t in model.graph.initializer}
    for vi in model.graph.input:
        et = vi.type.tensor_type.elem_type
        if vi.name not in init_names and et in FLOAT_ELEMS:
            return FLOAT_ELEMS[et]
        if vi.name not in init_names and et == TensorProto.BFLOAT16:
            return "bfloat16"
    return "float32"


def constants(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Initializers and ``Constant`` node values by name (float ones only); external ones
    memory-mapped when their directory is known (:func:`normonnx.external.reading`)."""
    from onnx import numpy_helper

    from . import external

    out: dict[str, np.ndarray] = {}
    for t in model.graph.initializer:
        if t.data_type in FLOAT_ELEMS and not t.data_location:
            out[t.name] = numpy_helper.to_array(t)
        elif t.data_type in FLOAT_ELEMS and external.base_dir() is not None:
            out[t.name] = external.array(t)
    for n in model.graph.node:
        if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
            t = n.attribute[0].t
            if t.data_type in FLOAT_ELEMS:
                out[n.output[0]] = numpy_helper.to_array(t)
    return out


def node_meta(node: onnx.NodeProto) -> dict[str, str]:
    return {p.key: p.value for p in node.metadata_props}


def node_scopes(node: onnx.NodeProto) -> list[str] | None:
    """Module paths enclosing ``node`` (outermost first, root ``""`` included), from exporter metadata."""
    md = node_meta(node)
    raw = md.get("pkg.torch.onnx.name_scopes")
    if raw:
        try:
            scopes = ast.literal_eval(raw)
            if isinstance(scopes, list) and scopes:
                return [str(s) for s in scopes[:-1]]
        except (ValueError, SyntaxError):
            pass
    ns = md.get("namespace")
    if ns:
        parts = [p.split(": ", 1)[0] for p in ns.split("/")]
        return parts[:-1]
    return None


def norm_records(model: onnx.ModelProto) -> dict[str, dict[str, Any]]:
    """normonnx lowering records by norm node name (from the model metadata)."""
    from .lowering.graph import recorded_lowerings

    return {str(r.get("node")): dict(r) for r in recorded_lowerings(model)}


def _consumers(model: onnx.ModelProto) -> dict[str, list[int]]:
    cons: dict[str, list[int]] = {}
    for i, n in enumerate(model.graph.node):
        for v in n.input:
            if v:
                cons.setdefault(v, []).append(i)
    return cons


def _exits(model: onnx.ModelProto, members: set[int], consumers: Mapping[str, list[int]], outs: set[str]) -> list[str]:
    """Values produced by ``members`` and used outside them (or graph outputs), in node order."""
    result = []
    for i in sorted(members):
        for v in model.graph.node[i].output:
            if v and (v in outs or any(c not in members for c in consumers.get(v, ()))):
                result.append(v)
    return result


def _entries(model: onnx.ModelProto, members: set[int], producer: Mapping[str, int], skip: set[str]) -> list[str]:
    """Values consumed by ``members`` and produced outside them (graph inputs included)."""
    result: list[str] = []
    for i in sorted(members):
        for v in model.graph.node[i].input:
            if v and v not in skip and producer.get(v, -1) not in members and v not in result:
                result.append(v)
    return result


# ---------------------------------------------------------------------------------------------
# mapping


def _rel_err(a: np.ndarray, r: np.ndarray) -> float:
    a64 = a.astype(np.float64)
    r64 = r.astype(np.float64)
    d = np.abs(a64 - r64)
    d = np.where(np.isnan(d), np.inf, d)
    scale = float(np.abs(r64[np.isfinite(r64)]).max()) if np.isfinite(r64).any() else 0.0
    e = float(d.max()) if d.size else 0.0
    return min(_MATCH_CAP, e / scale if scale > 0 else e)


def _align(items: Sequence[_Call], values: Sequence[tuple[str, np.ndarray]]) -> dict[int, int]:
    """Monotone alignment of calls to values on equal shapes (index in items → index in values)."""
    m, n = len(items), len(values)
    if not m or not n:
        return {}
    inf = math.inf
    cost: dict[tuple[int, int], float] = {}
    for i, c in enumerate(items):
        assert c.output is not None
        for j, (_, v) in enumerate(values):
            if v.shape == c.output.shape:
                cost[(i, j)] = _rel_err(v, c.output)
    # f[i][j]: best cost for items[:i] using values[:j]
    f = [[0.0] * (n + 1) for _ in range(m + 1)]
    for i in range(1, m + 1):
        f[i][0] = i * _SKIP_COST
    back: dict[tuple[int, int], str] = {}
    for i in range(1, m + 1):
        for j in range(1, n + 1):
            best, how = f[i][j - 1], "left"
            s = f[i - 1][j] + _SKIP_COST
            if s < best:
                best, how = s, "skip"
            c = cost.get((i - 1, j - 1), inf)
            if c < inf and f[i - 1][j - 1] + c <= best:
                best, how = f[i - 1][j - 1] + c, "match"
            f[i][j] = best
            back[(i, j)] = how
    out: dict[int, int] = {}
    i, j = m, n
    while i > 0 and j > 0:
        how = back[(i, j)]
        if how == "match":
            out[i - 1] = j - 1
            i, j = i - 1, j - 1
        elif how == "left":
            j -= 1
        else:
            i -= 1
    return out


def _map_calls(
    model: onnx.ModelProto, calls: Sequence[_Call], values: Mapping[str, np.ndarray]
) -> tuple[dict[str, tuple[str, str]], dict[str, list[str]], dict[str, str], list[str], dict[str, str]]:
    """(call name → (value, how), call name → ONNX entry values, value → norm node name, notes,
    folded pairs: call name → the other call of a Conv/Linear + BatchNorm pair folded into one node).

    A module gets a value of its own or none: with the exporter's scope metadata on most nodes, a
    module whose scope has no node (a constant-folded ``pos(arange(T))``, a fused activation) stays
    unmapped rather than being aligned with a neighbour's value."""
    g = model.graph
    consumers = _consumers(model)
    outs = {o.name for o in g.output}
    producer = {v: i for i, n in enumerate(g.node) for v in n.output if v}
    const_like = {t.name for t in g.initializer} | {v for n in g.node if n.op_type == "Constant" for v in n.output}
    order = {v: producer.get(v, -1) for v in values}
    mapped: dict[str, tuple[str, str]] = {}
    entries: dict[str, list[str]] = {}
    notes: list[str] = []
    used: set[str] = set()

    def fits(c: _Call, v: str, reshaped: bool = False) -> bool:
        # a container's output is its last child's value: containers may share, leaves may not;
        # ``reshaped``: a value of the module's own nodes holding the same elements in another shape
        # (a decomposition that leaves [N, C, H·W] where torch returns [N, C, H, W]) is its output too
        free = v not in used or not c.leaf
        if c.output is None or v not in values or not free:
            return False
        a = values[v]
        return a.shape == c.output.shape or (reshaped and a.size == c.output.size and a.ndim >= 1)

    # 1. exporter scope metadata
    scopes = [node_scopes(n) for n in g.node]
    with_meta = sum(1 for s in scopes if s is not None)
    members: dict[str, set[int]] = {}
    for i, s in enumerate(scopes):
        for path in s or ():
            if path:
                members.setdefault(path, set()).add(i)
    by_module: dict[str, list[_Call]] = {}
    for c in calls:
        by_module.setdefault(c.module, []).append(c)
    for path, cs in by_module.items():
        if path not in members:
            continue
        cs = [c for c in cs if c.point == "output"]  # norm points: by the norm's own nodes below
        ex = _exits(model, members[path], consumers, outs)
        entries_p = [v for v in _entries(model, members[path], producer, const_like) if v in values]
        for c in cs:
            entries[c.name] = entries_p
        live = [c for c in cs if not c.identity and c.output is not None]
        for k, c in enumerate(live):
            cands = [v for v in ex if fits(c, v)] or ([v for v in ex if fits(c, v, True)][-1:] if c.leaf else [])
            if not cands:
                continue
            pick = cands[0] if len(cands) == len(live) - k else min(cands, key=lambda v: _rel_err(values[v], c.output))
            mapped[c.name] = (pick, "metadata")
            if c.leaf:
                used.add(pick)
    folded = _fold_pairs(model, calls, mapped, members, producer, entries)
    for c_name, b_name in folded.items():
        if c_name in mapped and b_name not in mapped:
            mapped[b_name] = (mapped.pop(c_name)[0], "folded")
    folded.update({b: c for c, b in list(folded.items())})
    dense_meta = bool(g.node) and with_meta >= len(g.node) // 2
    if g.node and not dense_meta:
        notes.append(
            f"only {with_meta}/{len(g.node)} ONNX nodes carry module-scope metadata "
            "(torch.onnx drops it when converting to opset 17); mapped by norm metadata and alignment"
        )

    # 2. normonnx norm subgraphs, in graph order, paired with torch norm calls of the same kind
    groups: dict[str, set[int]] = {}
    for i, n in enumerate(g.node):
        name = node_meta(n).get("normonnx.norm")
        if name:
            groups.setdefault(name, set()).add(i)
    records = norm_records(model)
    value_norm: dict[str, str] = {}
    group_out: list[tuple[str, str]] = []  # (norm name, output value)
    for name, idx in sorted(groups.items(), key=lambda kv: min(kv[1])):
        ex = [v for v in _exits(model, idx, consumers, outs) if v in values]
        for v in ex:
            value_norm[v] = name
        if ex:
            group_out.append((name, ex[-1]))
    norm_calls = [c for c in calls if c.norm_kind and not c.identity and c.output is not None]
    pending = [c for c in norm_calls if c.name not in mapped]
    free_groups = [(n, v) for n, v in group_out if v not in used]
    if pending and free_groups:
        kinds_t = [c.norm_kind for c in pending]
        kinds_o = [records.get(n, {}).get("kind") for n, _ in free_groups]
        if len(pending) == len(free_groups) and all(a == b or b is None for a, b in zip(kinds_t, kinds_o)):
            pairs = list(zip(pending, free_groups))
        else:  # pair each call with the next group of its kind and shape, in order
            pairs, j = [], 0
            for c in pending:  # a call with no group of its kind (a folded BatchNorm) consumes none
                k = j
                while k < len(free_groups) and not (
                    records.get(free_groups[k][0], {}).get("kind") in (c.norm_kind, None)
                    and fits(c, free_groups[k][1], True)
                ):
                    k += 1
                if k < len(free_groups):
                    pairs.append((c, free_groups[k]))
                    j = k + 1
        for c, (name, v) in pairs:
            if fits(c, v, True):
                mapped[c.name] = (v, "norm")
                used.add(v)
                if c.name not in entries and name in groups:
                    entries[c.name] = [e for e in _entries(model, groups[name], producer, const_like) if e in values]

    # 3. alignment of the remaining leaf calls between the anchors (only without scope metadata:
    # with it, a leaf whose scope has no node has no value of its own)
    leaves = [c for c in calls if c.leaf and not c.identity and c.output is not None]
    if dense_meta:
        leaves = [c for c in leaves if c.name in mapped]
    cand = sorted((v for v in values if v not in used and order.get(v, -1) >= 0), key=lambda v: order[v])
    segment: list[_Call] = []
    lo = -1

    def flush(hi: float) -> None:
        vals = [(v, values[v]) for v in cand if lo < order.get(v, -1) < hi and v not in used]
        for i, j in _align(segment, vals).items():
            mapped[segment[i].name] = (vals[j][0], "aligned")
            used.add(vals[j][0])

    for c in leaves:
        if c.name in mapped:
            flush(order.get(mapped[c.name][0], -1))
            segment = []
            lo = order.get(mapped[c.name][0], -1)
        else:
            segment.append(c)
    flush(math.inf)
    late = _fold_pairs(model, calls, mapped, members, producer, entries)  # pairs found by alignment
    for c_name, b_name in late.items():
        if c_name in mapped and b_name not in mapped:
            mapped[b_name] = (mapped.pop(c_name)[0], "folded")
            folded.update({c_name: b_name, b_name: c_name})
    by_name = {c.name: c for c in calls}
    for b in calls:  # alignment gave the folded node's value to the BatchNorm itself: name the pair
        src = by_name.get(b.sources[0] or "") if b.norm_kind == "batch" and b.sources else None
        if src is None or b.name not in mapped or src.name in mapped or b.name in folded:
            continue
        i = producer.get(mapped[b.name][0])
        if i is not None and _is_folded_node(g.node[i]):
            mapped[b.name] = (mapped[b.name][0], "folded")
            folded.update({src.name: b.name, b.name: src.name})
    return mapped, entries, value_norm, notes, folded


def _is_folded_node(node: onnx.NodeProto) -> bool:
    """A Conv/Gemm/MatMul that normonnx's pipeline folded a BatchNorm into: its ``normonnx.folded``
    metadata names the BatchNorm (files from before that metadata: the ``…/bn_folded`` naming)."""
    if any(p.key == "normonnx.folded" for p in node.metadata_props):
        return True
    return node.name.endswith("/bn_folded") or any(v.endswith("/bn_folded_bias") for v in node.input)


def _fold_pairs(
    model: onnx.ModelProto,
    calls: Sequence[_Call],
    mapped: Mapping[str, tuple[str, str]],
    members: Mapping[str, set[int]],
    producer: Mapping[str, int],
    entries: dict[str, list[str]],
) -> dict[str, str]:
    """{linear call: batchnorm call} for BatchNorms folded into the op before them: the BatchNorm's
    scope has no node, its input comes from the linear call, and the value mapped to the linear
    call is produced by a folded node (so it is the pair's output, not the linear op's)."""
    out: dict[str, str] = {}
    by_name = {c.name: c for c in calls}
    for b in calls:
        if b.norm_kind != "batch" or b.name in mapped or not b.sources:
            continue
        if b.point == "output" and members.get(b.module):
            continue  # the BatchNorm has nodes of its own
        c = by_name.get(b.sources[0] or "")
        if c is None or c.name not in mapped or c.name in out:
            continue
        i = producer.get(mapped[c.name][0])
        if i is None or not _is_folded_node(model.graph.node[i]):
            continue
        out[c.name] = b.name
        entries[b.name] = list(entries.get(c.name, []))
    return out


# ---------------------------------------------------------------------------------------------
# localize


def _tol(dtype: str, kind: str, provider: str, atol: float | None, rtol: float | None) -> Tolerance:
    t = tolerance(dtype, kind, provider)
    if atol is not None or rtol is not None:
        t = Tolerance(atol if atol is not None else t.atol, rtol if rtol is not None else t.rtol)
    return t


def _as_torch_inputs(
    model_proto: onnx.ModelProto, example_inputs: Any, seed: int
) -> tuple[list[Any], list[np.ndarray]]:
    import torch

    from .verifier import _inputs_from_onnx

    if example_inputs is None:
        example_inputs = [torch.from_numpy(a) for a in _inputs_from_onnx(model_proto, seed)]
    if isinstance(example_inputs, (torch.Tensor, np.ndarray)):
        example_inputs = (example_inputs,)
    tin = [t if isinstance(t, torch.Tensor) else torch.from_numpy(np.asarray(t)) for t in example_inputs]
    arrays = [_np(t) for t in tin]
    for i, a in enumerate(arrays):
        if a.dtype.kind == "f" and not np.isfinite(a).all():
            raise InputError(f"input {i} contains NaN or Inf", note="localization needs finite inputs")
    return tin, arrays


def _load(onnx_model: str | os.PathLike[str] | onnx.ModelProto) -> tuple[onnx.ModelProto, str]:
    if isinstance(onnx_model, onnx.ModelProto):
        return onnx_model, "<in-memory model>"
    # weights stay in their file (references, any size); see _reading_beside
    return nio.load_lazy(onnx_model), os.fspath(onnx_model)


def _reading_beside(fn: Any) -> Any:
    """Run ``fn(model, onnx_path, ...)`` with the references of the file at ``onnx_path``
    readable (:func:`normonnx.io.load_lazy`); an in-memory model keeps the caller's."""
    import functools

    from . import external

    @functools.wraps(fn)
    def wrapper(model: Any, onnx_path: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(onnx_path, onnx.ModelProto):
            return fn(model, onnx_path, *args, **kwargs)
        with external.reading(os.path.dirname(os.path.abspath(os.fspath(onnx_path)))):
            return fn(model, onnx_path, *args, **kwargs)

    return wrapper


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
    model: onnx.ModelProto, value: str | None, norm_name: str | None, call: _Call, records: Mapping[str, Any]
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


@_reading_beside
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
    ``check`` is :func:`~normonnx.compare.compare_arrays`' statistic. onnxruntime runs with its
    graph optimizations off unless ``ort_optimize`` (exposed values then block some fusions).
    Tolerances are looked up for ``dtype`` (default: the model's input dtype, see
    :func:`model_dtype`), not for each value's own: an fp16 deployment keeps some values in fp32
    and they carry fp16 error all the same. Without a user atol/rtol each layer's tolerance is
    derived from its error model (:mod:`normonnx.compare.derive`) with the table as the floor.

    ``isolated`` (default): each mapped module's ONNX nodes also run on torch's own inputs
    (:mod:`normonnx.isolate`); the culprit is the first module whose *isolated* error fails, so
    drift accumulated upstream never blames a healthy module. Both numbers are reported.

    ``max_memory`` (bytes or ``"8G"``): the ONNX values are exposed in groups that fit beside the
    session's weights and the values kept (:mod:`normonnx.budget`), one session at a time;
    UnsupportedHere up front when they cannot. None: all at once, in one session.
    """
    check_usage(check, atol, rtol)
    if max_memory is not None:
        from .budget import parse_size

        max_memory = parse_size(max_memory)
    proto, label = _load(onnx_path)
    dtype = dtype or model_dtype(proto)
    tin, arrays = _as_torch_inputs(proto, inputs, seed)
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
        outputs.append(compare_arrays(name, a, r, _tol(dtype or str(a.dtype), "model", provider, atol, rtol), check))
        if a.shape == r.shape:
            errors[f"output:{name}"], rel_errors[f"output:{name}"] = _error_sample(a, r)
    mapped, entries, value_norm, notes, folded = _map_calls(proto, calls, values)
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
    c: _Call, pair: _Call | None, ref: np.ndarray, dtype: str, provider: str, atol: float | None, rtol: float | None
) -> tuple[Tolerance, str, Tolerance | None, str]:
    """(tolerance applied, its source, the derived one, the error model) for one module call.

    The table's value for (dtype, norm kind or "*", provider) is the floor; the error model of
    :mod:`normonnx.compare.derive` may raise atol above it (reported as "derived"). A user's
    atol/rtol is applied as given; the derived value is still reported."""
    from .compare.derive import derived_atol

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
        return _tol(dtype, c.norm_kind or "*", provider, atol, rtol), "user", derived, model_name
    return derived, ("derived" if d > floor.atol else "table"), derived, model_name


def _with_tolerance_facts(cmp: OutputComparison, source: str, derived: Tolerance | None) -> OutputComparison:
    cmp.tolerance_source = source
    cmp.derived = derived
    return cmp


def _with_fused_activation(call: _Call, record: Mapping[str, Any]) -> np.ndarray:
    """The torch norm module's output, followed by the activation its ONNX node fused (GroupNorm +
    SiLU is one node after export/optimize: its value is silu(norm(x)), not the module's output)."""
    out = call.output
    if call.norm_kind and record.get("activation") == "silu" and out is not None:
        y = out.astype(np.float64)
        with np.errstate(over="ignore"):  # exp(-y) → inf for y ≪ 0: silu → -0, as it should
            return (y / (1.0 + np.exp(-y))).astype(out.dtype)
    return out


def _inputs_agree(
    c: _Call,
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
            ok = compare_arrays("input", a, x, _tol(dtype or str(a.dtype), "*", provider, atol, rtol)).passed
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


# bisect (ONNX only) lives in normonnx/bisect.py; the old import path keeps working (lazily: bisect
# imports this module's helpers)
_MOVED = {"BisectReport", "ValueResult", "bisect"}


def __getattr__(name: str) -> Any:
    if name in _MOVED:
        from . import bisect as _bisect

        return getattr(_bisect, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "LayerResult",
    "LocalizeReport",
    "expose_values",
    "infer_types",
    "localize",
    "run_values",
    "trace_torch",
]
