"""A float64 twin of an ONNX graph: the referee when two float32 runs disagree.

:func:`to_float64` promotes every float input, output, initializer, constant and Cast target to
float64 (and asks the norm ops for float64 statistics); :func:`float64_reference` runs the twin in
onnxruntime, else in onnx's reference evaluator.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

FLOATS = {TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16}


def to_float64(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy computing in float64: float inputs/outputs/initializers/constants/Cast targets promoted."""
    from onnx import inliner

    m = onnx.ModelProto()
    m.CopyFrom(inliner.inline_local_functions(model))
    _promote_graph(m.graph, next((o.version for o in m.opset_import if o.domain in ("", "ai.onnx")), 0))
    return m


def _promote_type(t: onnx.TypeProto) -> None:
    if t.HasField("tensor_type") and t.tensor_type.elem_type in FLOATS:
        t.tensor_type.elem_type = TensorProto.DOUBLE


def _promote_tensor(t: onnx.TensorProto) -> None:
    if t.data_type in FLOATS:
        arr = numpy_helper.to_array(t).astype(np.float64)
        t.CopyFrom(numpy_helper.from_array(arr, name=t.name))


#: norm ops whose ``stash_type`` (statistics precision, default float32) must become float64
_STASH_OPS = {"LayerNormalization": 17, "GroupNormalization": 21, "RMSNormalization": 23}


def _promote_graph(g: onnx.GraphProto, opset: int = 0) -> None:
    for v in (*g.input, *g.output, *g.value_info):
        _promote_type(v.type)
    for t in g.initializer:
        _promote_tensor(t)
    for n in g.node:
        if (
            n.op_type in _STASH_OPS
            and opset >= _STASH_OPS[n.op_type]
            and not any(a.name == "stash_type" for a in n.attribute)
        ):
            n.attribute.append(helper.make_attribute("stash_type", TensorProto.DOUBLE))
        for a in n.attribute:
            if a.name in ("to", "dtype", "stash_type") and a.type == onnx.AttributeProto.INT and a.i in FLOATS:
                a.i = TensorProto.DOUBLE  # stash_type: the norm ops' statistics precision
            elif a.type == onnx.AttributeProto.TENSOR:
                _promote_tensor(a.t)
            elif a.type == onnx.AttributeProto.FLOAT and n.op_type == "Constant" and a.name == "value_float":
                pass
            elif a.type == onnx.AttributeProto.GRAPH:
                _promote_graph(a.g, opset)
            elif a.type == onnx.AttributeProto.GRAPHS:
                for sub in a.graphs:
                    _promote_graph(sub, opset)
        if n.op_type == "Constant" and any(a.name in ("value_float", "value_floats") for a in n.attribute):
            vals = next(a for a in n.attribute if a.name in ("value_float", "value_floats"))
            arr = np.float64(vals.f) if vals.name == "value_float" else np.asarray(list(vals.floats), np.float64)
            del n.attribute[:]
            n.attribute.append(helper.make_attribute("value", numpy_helper.from_array(np.asarray(arr))))


def float64_reference(model: onnx.ModelProto, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray] | None:
    """Outputs of ``model`` computed in float64 (onnxruntime, else onnx.reference); None if neither runs."""
    try:
        m64 = to_float64(model)
    except Exception:
        return None
    f64 = {k: (v.astype(np.float64) if v.dtype.kind == "f" else v) for k, v in feeds.items()}
    try:
        from ..runtime.session import session

        return session(m64, optimize=False, custom_ops=False).run(f64)
    except Exception:
        pass
    try:
        from onnx.reference import ReferenceEvaluator

        return [np.asarray(o) for o in ReferenceEvaluator(m64).run(None, f64)]
    except Exception:
        return None


__all__ = ["float64_reference", "to_float64"]
