"""``normonnx.runtime.session(...)`` is a drop-in for ``onnxruntime.InferenceSession``.

The same snippet, written for ``InferenceSession``, runs against a plain onnxruntime session and a
normonnx one on real models (built with ``onnx.helper`` and exported from a torch module) and
must give identical results; then the errors normonnx adds, each with its message.
"""

from __future__ import annotations

import os
import threading

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from normonnx import kernels
from normonnx.errors import InputError, ModelLoadError, UnsupportedHere
from normonnx.exporter import export
from normonnx.runtime import Session, session
from normonnx.verify import tolerance

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
no_cuda = pytest.mark.skipif(
    CUDA in ort.get_available_providers(), reason="tests the refusal of an unavailable CUDA provider"
)
W = np.array([0.5, -1.0, 2.0, 3.0], np.float32)
B = np.array([0.25, 0.0, -1.0, 1.5], np.float32)
#: Relu(x·W + B) and a row sum of 4 in float32 against NumPy's float32: one or two roundings, not
#: the table's float32 headroom (1e-4) for long reductions
ELEMENTWISE_TOL = 1e-6
#: an exported tiny model against torch float32: the table's rtol, with an absolute floor 10x inside
#: the table's (its outputs are unit-scale and its reductions short)
TINY_MODEL_ATOL = 1e-5
F32 = tolerance("float32")


def _helper_model() -> onnx.ModelProto:
    """Y = Relu(X·W + B) [N,4]; Z = ReduceSum(X, axis 1) + Cast(M) [N]; with custom metadata."""
    nodes = [
        helper.make_node("Mul", ["X", "W"], ["xw"]),
        helper.make_node("Add", ["xw", "B"], ["pre"]),
        helper.make_node("Relu", ["pre"], ["Y"]),
        # a Constant node, not an initializer: external data would take it out of shape inference's reach
        helper.make_node("Constant", [], ["axes"], value=numpy_helper.from_array(np.array([1], np.int64))),
        helper.make_node("ReduceSum", ["X", "axes"], ["s"], keepdims=0),
        helper.make_node("Cast", ["M"], ["mf"], to=TensorProto.FLOAT),
        helper.make_node("Add", ["s", "mf"], ["Z"]),
    ]
    g = helper.make_graph(
        nodes,
        "dropin",
        [
            helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", 4]),
            helper.make_tensor_value_info("M", TensorProto.INT64, ["N"]),
        ],
        [
            helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["N", 4]),
            helper.make_tensor_value_info("Z", TensorProto.FLOAT, ["N"]),
        ],
        initializer=[
            numpy_helper.from_array(W, "W"),
            numpy_helper.from_array(B, "B"),
        ],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 20)], ir_version=10, producer_name="dropin-test")
    helper.set_model_props(m, {"author": "normonnx tests", "purpose": "drop-in check"})
    return m


def _helper_feed(n: int = 3) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.standard_normal((n, 4)).astype(np.float32), np.arange(n, dtype=np.int64)]


def _inference_session_snippet(sess, arrays):
    """Code written for onnxruntime.InferenceSession, nothing normonnx-specific in it."""
    inputs = sess.get_inputs()
    feed = {i.name: a for i, a in zip(inputs, arrays)}
    out_names = [o.name for o in sess.get_outputs()]
    first_only = sess.run(None, {inputs[0].name: arrays[0], **{i.name: a for i, a in zip(inputs[1:], arrays[1:])}})
    named = sess.run([out_names[-1]], feed)
    binding = sess.io_binding()
    for name, a in feed.items():
        binding.bind_cpu_input(name, a)
    for name in out_names:
        binding.bind_output(name, "cpu")
    sess.run_with_iobinding(binding)
    bound = binding.copy_outputs_to_cpu()
    ort_values = sess.run_with_ort_values(out_names, {k: ort.OrtValue.ortvalue_from_numpy(v) for k, v in feed.items()})
    done = threading.Event()
    got_async: dict = {}

    def callback(results, user_data, err):
        user_data["results"], user_data["err"] = results, err
        done.set()

    sess.run_async(None, feed, callback, got_async)
    assert done.wait(30), "run_async never called back"
    meta = sess.get_modelmeta()
    return {
        "inputs": [(i.name, i.shape, i.type) for i in inputs],
        "outputs": [(o.name, o.shape, o.type) for o in sess.get_outputs()],
        "overridable": [(i.name, i.shape, i.type) for i in sess.get_overridable_initializers()],
        "meta": (meta.producer_name, meta.graph_name, meta.domain, meta.version, meta.custom_metadata_map),
        "providers": sess.get_providers(),
        "provider_options": sess.get_provider_options(),
        "optimization": sess.get_session_options().graph_optimization_level,
        "arrays": {
            "run_none": first_only,
            "run_named": named,
            "iobinding": bound,
            "ort_values": [v.numpy() for v in ort_values],
            "run_async": [np.asarray(r) for r in got_async["results"]] if not got_async["err"] else got_async["err"],
        },
    }


def _assert_same(a: dict, b: dict) -> None:
    assert {k: v for k, v in a.items() if k != "arrays"} == {k: v for k, v in b.items() if k != "arrays"}
    for key, outs in a["arrays"].items():
        other = b["arrays"][key]
        assert len(outs) == len(other), key
        for x, y in zip(outs, other):
            assert x.dtype == y.dtype and np.array_equal(x, y), key


def test_helper_model_snippet_same_on_both(tmp_path):
    path = str(tmp_path / "m.onnx")
    onnx.save(_helper_model(), path)
    arrays = _helper_feed()
    ref = _inference_session_snippet(ort.InferenceSession(path, providers=[CPU]), arrays)
    sess = session(path)
    assert isinstance(sess, ort.InferenceSession)
    got = _inference_session_snippet(sess, arrays)
    _assert_same(ref, got)
    # and the numbers are the model's: NumPy reference
    x, m = arrays
    y_ref, z_ref = np.maximum(x * W + B, 0), x.sum(axis=1) + m.astype(np.float32)
    for y, z in [got["arrays"][k] for k in ("run_none", "iobinding", "ort_values", "run_async")]:
        np.testing.assert_allclose(y, y_ref, rtol=ELEMENTWISE_TOL, atol=ELEMENTWISE_TOL)
        np.testing.assert_allclose(z, z_ref, rtol=ELEMENTWISE_TOL, atol=ELEMENTWISE_TOL)
    np.testing.assert_allclose(got["arrays"]["run_named"][0], z_ref, rtol=ELEMENTWISE_TOL, atol=ELEMENTWISE_TOL)
    assert got["meta"][4] == {"author": "normonnx tests", "purpose": "drop-in check"}
    assert got["meta"][0] == "dropin-test" and got["providers"] == [CPU]
    assert got["inputs"] == [("X", ["N", 4], "tensor(float)"), ("M", ["N"], "tensor(int64)")]


class _Tiny(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(4)
        self.ln = torch.nn.LayerNorm(8)
        self.fc = torch.nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = torch.relu(self.bn(self.conv(x)))
        y = self.fc(self.ln(h))
        return y, h.mean(dim=(2, 3))


def test_torch_export_snippet_same_on_both(tmp_path):
    torch.manual_seed(0)
    model = _Tiny().eval()
    with torch.no_grad():
        model.bn.running_mean.uniform_(-1, 1)
        model.bn.running_var.uniform_(0.5, 2)
    x = torch.randn(2, 3, 6, 8)
    res = export(model, (x,), tmp_path / "tiny.onnx", dynamic={"x": {0: "batch"}}, prefer=["native", "decomposed"])
    proto = onnx.load(res.path)
    assert kernels.DOMAIN not in {n.domain for n in proto.graph.node}  # plain onnxruntime runs the same graph
    for batch in (2, 5):
        arrays = [torch.randn(batch, 3, 6, 8).numpy()]
        ref = _inference_session_snippet(ort.InferenceSession(res.path, providers=[CPU]), arrays)
        got = _inference_session_snippet(session(res.path), arrays)
        _assert_same(ref, got)
        assert got["inputs"][0][1] == ["batch", 3, 6, 8]
        with torch.no_grad():
            want = model(torch.from_numpy(arrays[0]))
        for a, t in zip(got["arrays"]["run_none"], want):
            np.testing.assert_allclose(a, t.numpy(), rtol=F32.rtol, atol=TINY_MODEL_ATOL)


def test_short_forms_and_former_attributes():
    s = session(_helper_model())
    x, m = _helper_feed()
    full = s.run(None, {"X": x, "M": m})
    for out in (s.run({"X": x, "M": m}), s.run([x, m]), s.run((x, m)), s.run(None, [x, m])):
        assert isinstance(out, list) and len(out) == 2
        assert all(np.array_equal(a, b) for a, b in zip(out, full))
    (z,) = s.run(["Z"], {"X": x, "M": m})
    assert np.array_equal(z, full[1])
    assert s.inner is s and s.provider == "cpu" and s.providers == [CPU]
    assert s.input_names == ["X", "M"] and s.output_names == ["Y", "Z"]
    with pytest.raises(TypeError, match="output names but no input feed"):
        s.run(["Y"])
    with pytest.raises(TypeError, match="output names but no input feed"):
        s.run(None)


def test_profiling_and_set_providers_like_inference_session(tmp_path):
    s = session(_helper_model(), profile=str(tmp_path / "prof"))
    feed = dict(zip(["X", "M"], _helper_feed()))
    before = s.run(None, feed)
    s.set_providers([CPU])
    after = s.run(None, feed)
    assert all(np.array_equal(a, b) for a, b in zip(before, after))
    s.set_providers()  # normonnx: the providers it was created with, not "all available"
    assert s.get_providers() == [CPU]
    path = s.end_profiling()
    assert os.path.isfile(path) and os.path.basename(path).startswith("prof")


# -- provider check ------------------------------------------------------------------------------


@no_cuda
def test_unavailable_provider_refused_where_onnxruntime_falls_back():
    data = _helper_model().SerializeToString()
    with pytest.warns(UserWarning):  # onnxruntime: a warning, then a CPU session
        plain = ort.InferenceSession(data, providers=[CUDA])
    assert plain.get_providers() == [CPU]
    with pytest.raises(UnsupportedHere, match="CUDA execution provider is not available"):
        Session(data, providers=[CUDA])
    with pytest.raises(UnsupportedHere, match="CUDA execution provider is not available"):
        session(data, "cuda")
    s = session(data)
    feed = dict(zip(["X", "M"], _helper_feed()))
    before = s.run(feed)
    with pytest.raises(UnsupportedHere, match="CUDA execution provider is not available"):
        s.set_providers([CUDA, CPU])
    assert s.get_providers() == [CPU]
    assert all(np.array_equal(a, b) for a, b in zip(before, s.run(feed)))


# -- input errors --------------------------------------------------------------------------------

_X, _M = _helper_feed()
NOTE = "the model expects X [N, 4] tensor(float), M [N] tensor(int64)"


@pytest.mark.parametrize(
    "feed, message",
    [
        (
            {"X": np.ones((3, 5), np.float32), "M": _M},
            r"input 'X' has shape [3, 5], the model expects [N, 4] (axis 1 must be 4)",
        ),
        (
            {"X": np.ones((3, 4, 1), np.float32), "M": _M},
            r"input 'X' has shape [3, 4, 1] (rank 3), the model expects [N, 4] (rank 2)",
        ),
        (
            {"X": _X.astype(np.float64), "M": _M},
            r"input 'X' is tensor(double), the model expects tensor(float) (shape [N, 4])",
        ),
        ({"X": _X}, r"input 'M' is missing (the model expects [N] tensor(int64))"),
        ({"X": _X, "M": _M, "Q": _X}, r"'Q' is not an input of the model"),
        ([_X], r"1 inputs given but the model takes 2"),
    ],
    ids=["axis", "rank", "dtype", "missing", "unknown", "count"],
)
def test_bad_feed_names_the_input(feed, message):
    s = session(_helper_model())
    for call in (lambda: s.run(None, feed), lambda: s.run(feed)):
        with pytest.raises(InputError) as info:
            call()
        assert info.value.message == message
        assert info.value.note == NOTE


def test_bad_output_name_and_ort_values():
    s = session(_helper_model())
    with pytest.raises(InputError) as info:
        s.run(["Y", "nope"], {"X": _X, "M": _M})
    assert info.value.message == "'nope' is not an output of the model (outputs: Y, Z)"
    bad = {
        "X": ort.OrtValue.ortvalue_from_numpy(np.ones((3, 5), np.float32)),
        "M": ort.OrtValue.ortvalue_from_numpy(_M),
    }
    with pytest.raises(InputError) as info:
        s.run_with_ort_values(None, bad)
    assert info.value.message == "input 'X' has shape [3, 5], the model expects [N, 4] (axis 1 must be 4)"


def test_rejection_at_run_time_is_an_input_error_with_the_shapes():
    """A feed that fits the declared shapes but not the graph (8 elements into [-1, 3])."""
    g = helper.make_graph(
        [helper.make_node("Reshape", ["X", "shape"], ["Y"])],
        "reshape",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)],
        initializer=[numpy_helper.from_array(np.array([-1, 3], np.int64), "shape")],
    )
    s = session(helper.make_model(g, opset_imports=[helper.make_opsetid("", 20)], ir_version=10))
    (y,) = s.run({"X": np.arange(12, dtype=np.float32).reshape(3, 4)})
    assert y.shape == (4, 3) and np.array_equal(y.ravel(), np.arange(12, dtype=np.float32))
    with pytest.raises(InputError, match=r"onnxruntime rejected the inputs \(X:\[2, 4\]:tensor\(float\)\): .*Reshape"):
        s.run({"X": np.ones((2, 4), np.float32)})


# -- creation errors -----------------------------------------------------------------------------


def test_directory_is_a_load_error_naming_it(tmp_path):
    d = tmp_path / "models"
    d.mkdir()
    onnx.save(_helper_model(), str(d / "a.onnx"))
    with pytest.raises(ModelLoadError) as info:
        session(str(d))
    assert info.value.message == f"{d} is a directory, not an ONNX file"
    assert info.value.note == "pass one of the files in it: a.onnx"


@pytest.mark.parametrize("threads", ["abc", -1, True, 1.5])
def test_bad_threads(threads):
    with pytest.raises(InputError) as info:
        session(_helper_model(), threads=threads)
    assert info.value.message == f"threads={threads!r} is not a thread count"


def test_threads_are_applied():
    for given in (2, "2"):
        s = session(_helper_model(), threads=given)
        assert s.get_session_options().intra_op_num_threads == 2
    assert session(_helper_model(), threads=0).get_session_options().intra_op_num_threads == 0


def _custom_op_model(domain: str, op: str) -> onnx.ModelProto:
    g = helper.make_graph(
        [helper.make_node(op, ["X"], ["Y"], domain=domain)],
        "custom",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["N", 4])],
    )
    opsets = [helper.make_opsetid("", 20)] + ([helper.make_opsetid(domain, 1)] if domain else [])
    return helper.make_model(g, opset_imports=opsets, ir_version=10)


def test_unknown_custom_op_says_which_and_how(tmp_path):
    path = str(tmp_path / "custom.onnx")
    onnx.save(_custom_op_model("my.ops", "Foo"), path)
    with pytest.raises(ModelLoadError) as info:
        session(path)
    assert info.value.message == (
        f"{path} is a valid ONNX model, but onnxruntime {ort.__version__} has no kernel for op my.ops:Foo "
        "(custom domain 'my.ops')"
    )
    assert "register_custom_ops_library" in info.value.note and "corrupt" not in str(info.value)
    with pytest.raises(ModelLoadError, match=r"uses op Foo, which is not in the ONNX standard opset 20"):
        session(_custom_op_model("", "Foo"))


def test_kernel_op_without_library_says_why(monkeypatch):
    monkeypatch.setenv("NORMONNX_DISABLE_KERNELS", "1")
    reason = kernels.unavailable_reason()
    assert reason
    with pytest.raises(ModelLoadError) as info:
        session(_custom_op_model(kernels.DOMAIN, "LayerNorm"))
    assert info.value.message.endswith(
        f"has no kernel for op {kernels.DOMAIN}:LayerNorm: it comes from normonnx's native kernel library, "
        f"which is not available: {reason}"
    )
    assert "re-export it" in info.value.note


@pytest.mark.skipif(
    not kernels.available(), reason=f"native kernel library not available: {kernels.unavailable_reason()}"
)
def test_kernel_op_with_library_not_registered():
    with pytest.raises(ModelLoadError) as info:
        session(_custom_op_model(kernels.DOMAIN, "LayerNorm"), custom_ops=False)
    assert "normonnx's native kernel library is available" in info.value.message
    assert "but was not registered on this session" in info.value.message
    assert "custom_ops=True" in info.value.note


def _external_data_pair(tmp_path) -> tuple[str, str]:
    path = str(tmp_path / "ext.onnx")
    onnx.save(_helper_model(), path, save_as_external_data=True, location="ext.data", size_threshold=0)
    data = str(tmp_path / "ext.data")
    assert os.path.getsize(data) > 0
    return path, data


def test_missing_external_data_names_the_file(tmp_path):
    path, data = _external_data_pair(tmp_path)
    x, m = _helper_feed()
    (y, _) = session(path).run([x, m])
    np.testing.assert_allclose(y, np.maximum(x * W + B, 0), rtol=ELEMENTWISE_TOL)
    os.remove(data)
    with pytest.raises(ModelLoadError) as info:
        session(path)
    assert info.value.message.startswith(f"{path}: its external data file {data} is missing; it holds initializer ")
    assert "copy or move the .onnx file and its data file together" in info.value.note
    assert "corrupt" not in str(info.value)


def test_truncated_external_data_and_truncated_model(tmp_path):
    path, data = _external_data_pair(tmp_path)
    with open(data, "r+b") as f:
        f.truncate(2)
    with pytest.raises(ModelLoadError, match=r"its external data could not be read: .*out of bounds"):
        session(path)
    bad = tmp_path / "trunc.onnx"
    bad.write_bytes(_helper_model().SerializeToString()[:25])
    with pytest.raises(ModelLoadError, match=r"is not a readable ONNX model \(truncated or corrupt\?\)"):
        session(str(bad))


def test_an_input_without_a_declared_shape_is_not_called_a_scalar():
    """onnxruntime reports an input that declares no shape as [] (a scalar's shape): a run that fails
    for another reason (here a Reshape that cannot apply) reports onnxruntime's own reason, never
    "the model expects [] (rank 0)"."""
    g = helper.make_graph(
        [helper.make_node("Reshape", ["X", "shape"], ["Y"])],
        "undeclared",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)],
        [helper.make_tensor("shape", TensorProto.INT64, [1], [3])],
    )
    s = session(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]))
    assert s.get_inputs()[0].shape == []
    with pytest.raises(InputError) as info:
        s.run({"X": np.ones(4, np.float32)})
    assert "rank 0" not in info.value.message
    assert info.value.message.startswith("onnxruntime rejected the inputs (X:[4]:tensor(float)): ")
    assert "reshape" in info.value.message.lower()
    assert info.value.note == "the model expects X [] (a scalar, or no declared shape) tensor(float)"
    np.testing.assert_array_equal(s.run({"X": np.ones(3, np.float32)})[0], np.ones(3, np.float32))
