"""Why onnxruntime refused: its load and run errors turned into normonnx's readable ones.

:func:`load_error` explains a failed session creation (not ONNX, a missing external-data file,
an op without a kernel and where to get it); :func:`input_error` a failed run (which input, the
shape and type given and the ones declared). Both run only after onnxruntime has failed, so a
good session or run pays nothing for them.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from ..errors import InputError, ModelLoadError, NormOnnxError, UnsupportedHere

# -- load errors ---------------------------------------------------------------------------------

_UNREGISTERED = re.compile(r"([\w.\-]*):(\w+)\((-?\d+)\) is not a registered function/op")
_NO_OP = re.compile(r"No Op registered for (\w+) with domain_version of (\d+)")
_NO_KERNEL = re.compile(r"Could not find an implementation for (\w+)\((\d+)\) node with name '([^']*)'")


def load_error(e: Exception, label: str, src: bytes | str) -> NormOnnxError | None:
    """The user error for onnxruntime's failure to load ``src``: :class:`ModelLoadError`, or
    :class:`UnsupportedHere` (exit 3) when the model is fine but this onnxruntime has no kernel for
    one of its ops at its types (float64 Conv on CPU); None for exceptions that are not
    onnxruntime's (internal bugs keep their traceback)."""
    if not type(e).__module__.startswith("onnxruntime"):
        return None
    text = str(e)
    first = first_line(e)
    m = _UNREGISTERED.search(text)
    if m:
        return _unknown_op_error(label, m.group(1), m.group(2))
    m = _NO_KERNEL.search(text)
    if m:
        op, since, node = m.groups()
        return UnsupportedHere(
            f"onnxruntime {ort.__version__} here has no kernel for {op} (since opset {since}, node {node!r}) "
            "at this model's types",
            note="onnxruntime's CPU provider runs most ops in float32 only (float64 Conv has no kernel): export the "
            "model in float32 (model.float()) or run it where that kernel exists",
        )
    m = _NO_OP.search(text)
    if m:
        return ModelLoadError(
            f"{label} uses op {m.group(1)}, which is not in the ONNX standard opset {m.group(2)} "
            f"as onnxruntime {ort.__version__} knows it",
            note="check the op's name and the model's opset; a newer onnxruntime may have it",
        )
    if "external data" in text.lower() or "external initializer" in text.lower():
        missing = _missing_external_data(src)
        if not missing:
            m = re.search(r'does not exist: "([^"]+)"', text)
            missing = [(m.group(1), "")] if m else []
        if missing:
            (where, tensor), more = missing[0], len(missing) - 1
            held = f"; it holds initializer {tensor!r}" if tensor else ""
            also = f" (and {more} more tensor(s) in missing files)" if more else ""
            return ModelLoadError(
                f"{label}: its external data file {where} is missing{held}{also}",
                note="a model saved with external data is a pair: copy or move the .onnx file and its data file "
                "together (the data file's name is recorded in the model)",
            )
        return ModelLoadError(
            f"{label}: its external data could not be read: {first}",
            note="the data file next to it is truncated or belongs to another save; re-export the model",
        )
    if "INVALID_PROTOBUF" in text or "Protobuf parsing failed" in text or ("Load model" in text and "failed" in text):
        return ModelLoadError(
            f"{label} is not a readable ONNX model (truncated or corrupt?): {first}",
            note="re-export the model; normonnx writes files atomically, so a partial file comes from elsewhere",
        )
    return ModelLoadError(f"onnxruntime could not load {label}: {first}")


def _unknown_op_error(label: str, domain: str, op: str) -> ModelLoadError:
    from .. import kernels

    what = f"{label} is a valid ONNX model, but onnxruntime {ort.__version__} has no kernel for op {domain}:{op}"
    if domain == kernels.DOMAIN:
        reason = kernels.unavailable_reason()
        if reason:
            return ModelLoadError(
                f"{what}: it comes from normonnx's native kernel library, which is not available: {reason}",
                note="models exported by normonnx carry a function body for each kernel op and run without the "
                "library; this one does not: re-export it, or " + kernels._REBUILD,
            )
        return ModelLoadError(
            f"{what}: normonnx's native kernel library is available ({kernels.library_path()}) but was not "
            "registered on this session",
            note="create the session with normonnx.runtime.session(..., custom_ops=True), or call "
            "SessionOptions.register_custom_ops_library(normonnx.kernels.library_path())",
        )
    if domain == "com.microsoft":
        return ModelLoadError(
            f"{what}: an onnxruntime contrib op this build does not provide (some exist only for CUDA)",
            note="run it on the provider it was optimized for (normonnx optimize --target), or re-optimize for cpu",
        )
    return ModelLoadError(
        f"{what} (custom domain {domain!r})",
        note=f"register the custom-op library that implements domain {domain!r} "
        "(onnxruntime.SessionOptions.register_custom_ops_library(path)) before creating the session",
    )


def _graphs(g: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    yield g
    for node in g.node:
        for a in node.attribute:
            for sub in [a.g] if a.HasField("g") else list(a.graphs):
                yield from _graphs(sub)


def _missing_external_data(src: bytes | str) -> list[tuple[str, str]]:
    """(absolute data file path, tensor name) for each external tensor whose file is missing."""
    if not isinstance(src, str):
        return []
    try:
        model = onnx.load(src, load_external_data=False)
    except Exception:  # the caller falls back to onnxruntime's own text
        return []
    base = os.path.dirname(os.path.abspath(src))
    out = []
    for g in _graphs(model.graph):
        for t in g.initializer:
            if t.data_location != onnx.TensorProto.EXTERNAL:
                continue
            loc = next((kv.value for kv in t.external_data if kv.key == "location"), "")
            path = os.path.join(base, loc)
            if not os.path.isfile(path):
                out.append((path, t.name))
    return out


# -- input errors --------------------------------------------------------------------------------


def input_error(sess: Any, e: Exception, feed: Mapping[str, Any], output_names: Any) -> InputError | None:
    """The :class:`InputError` explaining why onnxruntime rejected ``feed`` for session ``sess``,
    or None when the failure is not about the inputs (then the original exception propagates).

    Run only after a failure, so a good run pays nothing for the diagnosis.
    """
    declared = {i.name: i for i in [*sess.get_inputs(), *sess.get_overridable_initializers()]}
    problems = []
    for i in sess.get_inputs():
        if i.name not in feed and not i.type.startswith("optional"):
            problems.append(f"input {i.name!r} is missing (the model expects {_declared_text(i.shape)} {i.type})")
    for name, value in feed.items():
        if name not in declared:
            problems.append(f"{name!r} is not an input of the model")
            continue
        problem = _value_problem(name, value, declared[name])
        if problem:
            problems.append(problem)
    valid_outputs = sess.output_names
    for name in output_names or ():
        if name not in valid_outputs:
            problems.append(f"{name!r} is not an output of the model (outputs: {', '.join(valid_outputs)})")
    note = f"the model expects {expected_inputs(sess.get_inputs())}"
    if problems:
        return InputError("; ".join(problems), note=note)
    if isinstance(e, ort.capi.onnxruntime_pybind11_state.EPFail) or not type(e).__module__.startswith("onnxruntime"):
        return None
    given = ", ".join(f"{k}:{_given(v)}" for k, v in feed.items())
    return InputError(f"onnxruntime rejected the inputs ({given}): {first_line(e)}", note=note)


def shape_text(shape: Any) -> str:
    if shape is None:
        return "[?]"
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def expected_inputs(args: Sequence[Any]) -> str:
    return ", ".join(f"{a.name} {_declared_text(a.shape)} {a.type}" for a in args) or "no inputs"


def _declared_text(shape: Any) -> str:
    # onnxruntime reports an input that declares no shape as [] too, the shape of a scalar
    return "[] (a scalar, or no declared shape)" if shape == [] else shape_text(shape)


def _given_shape_type(value: Any) -> tuple[tuple[int, ...] | None, str | None]:
    """(shape, onnxruntime type string or None when not exact, e.g. a Python list)."""
    if isinstance(value, ort.OrtValue):
        return tuple(value.shape()), value.data_type() if value.is_tensor() else None
    if isinstance(value, (np.ndarray, np.generic)):
        return value.shape, _ORT_TYPES.get(value.dtype)
    try:
        return np.asarray(value).shape, None
    except Exception:
        return None, None


def _given(value: Any) -> str:
    shape, typ = _given_shape_type(value)
    return f"{shape_text(shape)}:{typ or type(value).__name__}"


def _value_problem(name: str, value: Any, arg: Any) -> str | None:
    """Why ``value`` does not fit the declared input ``arg`` (a NodeArg), or None."""
    if not arg.type.startswith("tensor("):
        return None  # sequences, maps, optionals: left to onnxruntime
    shape, typ = _given_shape_type(value)
    if typ is not None and typ != arg.type:
        return f"input {name!r} is {typ}, the model expects {arg.type} (shape {shape_text(arg.shape)})"
    want = arg.shape
    if shape is None or want is None or want == []:
        return None  # [] is also what onnxruntime reports when no shape is declared: no claim then
    if len(shape) != len(want):
        return (
            f"input {name!r} has shape {list(shape)} (rank {len(shape)}), the model expects "
            f"{shape_text(want)} (rank {len(want)})"
        )
    bad = [f"axis {k} must be {d}" for k, (g, d) in enumerate(zip(shape, want)) if isinstance(d, int) and g != d]
    if bad:
        return f"input {name!r} has shape {list(shape)}, the model expects {shape_text(want)} ({', '.join(bad)})"
    return None


def first_line(e: BaseException) -> str:
    text = str(e)
    return text.splitlines()[0] if text.strip() else type(e).__name__


def _ort_type_table() -> dict[np.dtype, str]:
    table = {}
    for name, code in onnx.TensorProto.DataType.items():
        if name in ("UNDEFINED", "STRING", "BFLOAT16") or name.startswith(("FLOAT8", "FLOAT4", "INT4", "UINT4")):
            continue
        try:
            dt = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(code))
        except Exception:
            continue
        if dt.kind in "biufc":
            table.setdefault(dt, f"tensor({name.lower()})")
    return table


_ORT_TYPES = _ort_type_table()
