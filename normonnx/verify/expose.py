"""The ONNX side of verification: every intermediate value exposed as a graph output, and run.

:func:`expose_values` copies a model with its intermediate float values added to the graph
outputs (types from the exporter's annotations and ``onnx.shape_inference``; bfloat16 values
through a Cast to float32, numpy has no bfloat16); :func:`run_values` runs such a copy in
onnxruntime (its graph optimizations off by default, so it cannot fuse away the values we look
at) and returns every value by name. Also: the inputs cast to the graph's dtypes, the model's
working dtype, its constants, and loading a model from a path or a proto.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper

from .. import io as nio
from ..dtypes import FLOATS, NUMPY_FLOATS
from ..errors import InputError

FLOAT_ELEMS = {FLOATS[d]: d for d in NUMPY_FLOATS}  # ONNX code → the NumPy float dtype (no bfloat16)
_BF16_SUFFIX = "::as_float32"


def load_model(
    onnx_model: str | os.PathLike[str] | onnx.ModelProto, *, lazy: bool = False
) -> tuple[onnx.ModelProto, str]:
    """(model, label for reports): a proto as given, or the file at a path — its external data
    loaded, or with ``lazy`` its weights left in their file as references (any size; read them
    inside :func:`normonnx.external.reading` of the file's directory)."""
    if isinstance(onnx_model, onnx.ModelProto):
        return onnx_model, "<in-memory model>"
    return (nio.load_lazy(onnx_model) if lazy else nio.load(onnx_model)), os.fspath(onnx_model)


def infer_types(model: onnx.ModelProto) -> dict[str, onnx.TypeProto]:
    """Types of every value we can know: exporter annotations, then ``onnx.shape_inference``.

    normonnx-domain ops have schemas without inference functions; their outputs keep the types
    the exporter annotated.
    """
    from ..lowering.function import register_schemas
    from ..lowering.graph import value_types

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
    (:mod:`normonnx.verify.budget`; UnsupportedHere when they cannot)."""
    from ..runtime.session import session

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


def reading_beside(fn: Any) -> Any:
    """Run ``fn(model, onnx_path, ...)`` with the references of the file at ``onnx_path``
    readable (:func:`load_model` with ``lazy``); an in-memory model keeps the caller's."""
    import functools

    from .. import external

    @functools.wraps(fn)
    def wrapper(model: Any, onnx_path: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(onnx_path, onnx.ModelProto):
            return fn(model, onnx_path, *args, **kwargs)
        with external.reading(os.path.dirname(os.path.abspath(os.fspath(onnx_path)))):
            return fn(model, onnx_path, *args, **kwargs)

    return wrapper


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
    """:func:`run_values` under a memory budget: the exposed values in groups (:mod:`.budget`)."""
    from .. import external
    from . import budget

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

    from .. import external

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


__all__ = [
    "FLOAT_ELEMS",
    "constants",
    "elem_type",
    "expose_values",
    "infer_types",
    "load_model",
    "model_dtype",
    "onnx_input_arrays",
    "reading_beside",
    "run_values",
]
