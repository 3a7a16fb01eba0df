"""What the installed onnxruntime can do: version, providers, highest opset, norm kernels."""

from __future__ import annotations

import functools

import numpy as np
import onnx
from onnx import TensorProto, helper

from ..providers import ort_name


@functools.cache
def ort_version() -> str:
    import onnxruntime as ort

    return str(ort.__version__)


def available_providers() -> list[str]:
    import onnxruntime as ort

    return list(ort.get_available_providers())


def _loads(model: onnx.ModelProto) -> bool:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 4
    try:
        ort.InferenceSession(model.SerializeToString(), so, providers=[ort_name("cpu")])
        return True
    except Exception:
        return False


def _identity_model(opset: int) -> onnx.ModelProto:
    g = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "probe",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)], ir_version=10)


@functools.cache
def ort_max_opset() -> int:
    """Highest default-domain opset the installed onnxruntime loads (probed, cached)."""
    hi = onnx.defs.onnx_opset_version()
    for opset in range(hi, 12, -1):
        if _loads(_identity_model(opset)):
            return opset
    return 13


@functools.cache
def has_kernel(op_type: str, opset: int, dtype: str = "float32", provider: str = ort_name("cpu")) -> bool:
    """True if ``provider`` (onnxruntime's name) runs ``op_type`` at ``opset`` for ``dtype`` natively.

    Uses onnxruntime's profiler: an op without a kernel is inlined (function ops) or fails.
    """
    import onnxruntime as ort

    from ..lowering import build_model
    from ..norms import KINDS

    kind = next((k for k in KINDS.values() if k.native_op == op_type), None)
    if kind is None or not kind.examples():
        return False
    _, spec, shape = kind.examples()[0]  # a kind's first example is one its native op lowers
    spec = spec.replace(dtype=dtype)
    params = kind.random_params(spec, np.random.default_rng(0))
    try:
        model = build_model(spec, params, opset, "native", allow_unstable=True)
        so = ort.SessionOptions()
        so.log_severity_level = 4
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        sess = ort.InferenceSession(model.SerializeToString(), so, providers=[provider])
    except Exception:
        return False
    # after inlining, a function op leaves no node of its own type in the session graph;
    # the profiler lists executed nodes by op type.
    so.enable_profiling = True
    import json
    import os
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        so.profile_file_prefix = os.path.join(d, "p")
        sess = ort.InferenceSession(model.SerializeToString(), so, providers=[provider])
        x = np.ones(shape, dtype=helper.tensor_dtype_to_np_dtype(spec.onnx_dtype))
        try:
            sess.run(None, {"X": x})
        except Exception:
            return False
        path = sess.end_profiling()
        with open(path) as f:
            events = json.load(f)
    ops = {e.get("args", {}).get("op_name") for e in events if e.get("cat") == "Node"}
    return op_type in ops
