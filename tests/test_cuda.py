"""The CUDA execution provider path: option validation, refusal with exit 3 where CUDA is missing, IO
binding (exercised on the CPU device here, on the GPU where there is one), fp16 models.

GPU tests skip with the reason when ``CUDAExecutionProvider`` is not in
``onnxruntime.get_available_providers()`` (the development machines have no GPU)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from normonnx.cli import main
from normonnx.errors import InputError, UnsupportedHere
from normonnx.lowering import build_model
from normonnx.lowering.graph import lower_model, make_norm_node
from normonnx.norms import KINDS
from normonnx.runtime import cuda as ncuda
from normonnx.runtime import session
from normonnx.spec import NormSpec
from normonnx.verify import tolerance

HAS_CUDA, CUDA_REASON = ncuda.cuda_status()
needs_gpu = pytest.mark.skipif(not HAS_CUDA, reason=CUDA_REASON)
no_gpu = pytest.mark.skipif(HAS_CUDA, reason="the CUDA execution provider is available on this machine")

SPEC = NormSpec("layer", normalized_shape=(64,), rank=3)
PARAMS = KINDS["layer"].random_params(SPEC, np.random.default_rng(0))
X = np.random.default_rng(1).standard_normal((2, 8, 64)).astype(np.float32)
REF = KINDS["layer"].reference(SPEC, X, PARAMS)


def _within(y: np.ndarray, ref: np.ndarray, dtype: str, provider: str = "cpu") -> bool:
    tol = tolerance(dtype, "layer", provider)
    return bool(np.all(np.abs(y.astype(np.float64) - ref) <= tol.atol + tol.rtol * np.abs(ref)))


# -- options -------------------------------------------------------------------------------------


def test_valid_options_become_onnxruntime_strings():
    opts = ncuda.provider_options(
        {"device_id": 1, "cudnn_conv_algo_search": "heuristic"},
        gpu_mem_limit="2GiB",
        arena_extend_strategy="ksameasrequested",
        prefer_nhwc=True,
        enable_cuda_graph="0",
        tunable_op_max_tuning_duration_ms=50.0,
    )
    assert opts == {
        "device_id": "1",
        "cudnn_conv_algo_search": "HEURISTIC",
        "gpu_mem_limit": str(2 * 2**30),
        "arena_extend_strategy": "kSameAsRequested",
        "prefer_nhwc": "1",
        "enable_cuda_graph": "0",
        "tunable_op_max_tuning_duration_ms": "50",
    }
    assert ncuda.provider_options(gpu_mem_limit=4_000_000_000) == {"gpu_mem_limit": "4000000000"}
    assert ncuda.provider_options(gpu_mem_limit="1.5 GB") == {"gpu_mem_limit": "1500000000"}
    assert ncuda.parse_option_strings(["device_id=0", "use_tf32 = false"]) == {"device_id": "0", "use_tf32": "0"}


@pytest.mark.parametrize(
    "options, message, note",
    [
        (
            {"devise_id": 0},
            "unknown CUDA provider option 'devise_id' (did you mean device_id?)",
            "valid options: device_id",
        ),
        (
            {"cudnn_conv_algo_search": "FAST"},
            "cudnn_conv_algo_search='FAST' is not valid",
            "EXHAUSTIVE, HEURISTIC, DEFAULT",
        ),
        ({"arena_extend_strategy": 1}, "arena_extend_strategy=1 is not valid", "kNextPowerOfTwo, kSameAsRequested"),
        ({"gpu_mem_limit": "lots"}, "gpu_mem_limit='lots' is not a size", "2GB"),
        ({"gpu_mem_limit": 0}, "gpu_mem_limit=0 must be at least 1", "arena"),
        ({"gpu_mem_limit": True}, "must be a size in bytes", "2GB"),
        ({"device_id": -1}, "device_id=-1 must be at least 0", "device ordinal"),
        ({"device_id": 1.5}, "device_id=1.5 must be an integer", "device ordinal"),
        ({"device_id": "gpu0"}, "device_id='gpu0' must be an integer", "device ordinal"),
        ({"enable_cuda_graph": "yes"}, "enable_cuda_graph='yes' must be a boolean", "0/1"),
        ({"user_compute_stream": "0x1"}, "unknown CUDA provider option 'user_compute_stream'", "valid options"),
    ],
)
def test_bad_options_are_refused_with_the_valid_values(options, message, note):
    with pytest.raises(InputError) as e:
        ncuda.provider_options(options)
    assert message in e.value.message
    assert note in (e.value.note or "")
    assert e.value.exit_code == 2


def test_option_string_without_value():
    with pytest.raises(InputError, match="is not NAME=VALUE"):
        ncuda.parse_option_strings(["device_id"])


# -- refusal where CUDA is missing -----------------------------------------------------------------


def test_status_matches_onnxruntime():
    assert HAS_CUDA == ("CUDAExecutionProvider" in ort.get_available_providers())
    assert ("not in onnxruntime.get_available_providers()" in CUDA_REASON) is not HAS_CUDA


@no_gpu
def test_cuda_session_refused_with_exit_3():
    model = build_model(SPEC, PARAMS, 17, "native")
    with pytest.raises(UnsupportedHere) as e:
        ncuda.cuda_session(model, options={"cudnn_conv_algo_search": "HEURISTIC"})
    assert e.value.exit_code == 3
    assert "CUDAExecutionProvider" in e.value.message and "normonnx[cuda]" in e.value.note
    with pytest.raises(UnsupportedHere):
        session(model, "cuda")
    # option errors are reported before availability: a typo is a typo on any machine
    with pytest.raises(InputError, match="devise_id"):
        ncuda.cuda_session(model, options={"devise_id": 0})


@no_gpu
def test_cli_verify_with_provider_cuda_exits_3(tmp_path, capsys):
    (tmp_path / "tiny.py").write_text(
        "import torch\n\n"
        "def factory():\n"
        "    torch.manual_seed(0)\n"
        "    return torch.nn.LayerNorm(64).eval(), (torch.randn(2, 8, 64),)\n"
    )
    onnx.save(build_model(SPEC, PARAMS, 17, "native"), tmp_path / "tiny.onnx")
    rc = main(["verify", f"{tmp_path / 'tiny.py'}:factory", str(tmp_path / "tiny.onnx"), "--provider", "cuda"])
    captured = capsys.readouterr()
    assert rc == 3
    assert "CUDA execution provider is not available" in captured.err
    assert "Note:" in captured.err and "--provider cpu" in captured.err
    assert captured.out.strip().splitlines()[-1].startswith("FAILED | unsupported here")


# -- IO binding (CPU device: same code path) ------------------------------------------------------


def test_io_binding_keeps_values_as_ortvalues_on_the_device():
    s = session(build_model(SPEC, PARAMS, 17, "decomposed"), optimize=False)
    runner = ncuda.DeviceRunner(s, "cpu")
    dev = runner.to_device({"X": X})
    assert dev["X"].device_name() == "cpu" and dev["X"].shape() == [2, 8, 64]
    outs = runner.run(dev)
    assert len(outs) == 1 and isinstance(outs[0], ort.OrtValue)
    assert outs[0].device_name() == "cpu" and outs[0].shape() == [2, 8, 64]
    assert _within(outs[0].numpy(), REF, "float32")
    y = runner.run_numpy([X])[0]
    assert _within(y, REF, "float32")
    call = runner.timer({"X": X})
    call()  # runs on the pre-bound inputs without raising
    with pytest.raises(InputError, match="missing model inputs: X"):
        runner.to_device({"x": X})


def test_device_runner_refuses_cuda_on_a_cpu_session_and_unknown_devices():
    s = session(build_model(SPEC, PARAMS, 17, "native"))
    with pytest.raises(UnsupportedHere, match="needs a session on CUDAExecutionProvider"):
        ncuda.DeviceRunner(s, "cuda")
    with pytest.raises(InputError, match="unknown device 'tpu'"):
        ncuda.DeviceRunner(s, "tpu")


# -- fp16 ------------------------------------------------------------------------------------------


def _lowered_model() -> onnx.ModelProto:
    """x → normonnx LayerNorm, lowered by the decomposition (nodes carry ``normonnx.norm``) → Relu."""
    from onnx import numpy_helper

    w = numpy_helper.from_array(PARAMS["weight"].astype(np.float32), "w")
    b = numpy_helper.from_array(PARAMS["bias"].astype(np.float32), "b")
    g = helper.make_graph(
        [
            make_norm_node(SPEC, "x", {"weight": "w", "bias": "b"}, "y", "ln"),
            helper.make_node("Relu", ["y"], ["out"], name="relu"),
        ],
        "m",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8, 64])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [2, 8, 64])],
        [w, b],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("normonnx", 1)])
    m.ir_version = 10
    return lower_model(m, prefer=["decomposed"])[0]


def _types(model: onnx.ModelProto) -> dict[str, int]:
    inferred = onnx.shape_inference.infer_shapes(model)
    vals = [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]
    out = {v.name: v.type.tensor_type.elem_type for v in vals}
    out.update({t.name: t.data_type for t in model.graph.initializer})
    return out


def test_to_fp16_runs_native_norm_in_float32():
    m16 = ncuda.to_fp16(build_model(SPEC, PARAMS, 17, "native"))
    types = _types(m16)
    assert types["X"] == TensorProto.FLOAT16 and types["Y"] == TensorProto.FLOAT16
    ln = next(n for n in m16.graph.node if n.op_type == "LayerNormalization")
    assert [types[i] for i in ln.input] == [TensorProto.FLOAT] * 3  # casts in, casts out
    s = session(m16, optimize=False)
    y = s.run(ncuda.cast_inputs(s.inner, {"X": X}))[0]
    assert y.dtype == np.float16 and _within(y, REF, "float16")


def test_to_fp16_negative_norm_converted_on_request():
    m16 = ncuda.to_fp16(build_model(SPEC, PARAMS, 17, "native"), keep_norms_fp32=False)
    types = _types(m16)
    ln = next(n for n in m16.graph.node if n.op_type == "LayerNormalization")
    assert types[ln.input[0]] == TensorProto.FLOAT16


def test_to_fp16_decomposition_keeps_float64_statistics():
    m16 = ncuda.to_fp16(_lowered_model())
    names = [n.name for n in m16.graph.node]
    assert len(names) == len(set(names))
    types = _types(m16)
    assert types["x"] == TensorProto.FLOAT16 and types["out"] == TensorProto.FLOAT16
    relu = next(n for n in m16.graph.node if n.op_type == "Relu")
    assert types[relu.input[0]] == TensorProto.FLOAT16  # the rest of the model runs in fp16
    reduce = [n for n in m16.graph.node if n.op_type.startswith("Reduce")]
    assert len(reduce) == 2 and all(types[n.input[0]] == TensorProto.DOUBLE for n in reduce)
    s = session(m16, optimize=False)
    y = s.run(ncuda.cast_inputs(s.inner, {"x": X}))[0]
    assert y.dtype == np.float16 and _within(y, np.maximum(REF, 0.0), "float16")


def test_cast_inputs_only_casts_floats():
    s = session(ncuda.to_fp16(build_model(SPEC, PARAMS, 17, "native")))
    assert ncuda.input_dtypes(s.inner) == {"X": np.dtype(np.float16)}
    assert ncuda.cast_inputs(s.inner, {"X": X})["X"].dtype == np.float16
    with pytest.raises(InputError, match="is int64, the model declares float16"):
        ncuda.cast_inputs(s.inner, {"X": X.astype(np.int64)})


# -- on a GPU --------------------------------------------------------------------------------------


@pytest.mark.cuda
@needs_gpu
def test_gpu_session_options_reach_onnxruntime():
    s = ncuda.cuda_session(
        build_model(SPEC, PARAMS, 17, "native", provider="cuda"),
        options={"cudnn_conv_algo_search": "HEURISTIC", "gpu_mem_limit": "1GiB"},
    )
    assert s.providers[0] == "CUDAExecutionProvider"
    got = s.inner.get_provider_options()["CUDAExecutionProvider"]
    assert got["cudnn_conv_algo_search"] == "HEURISTIC" and got["gpu_mem_limit"] == str(2**30)


@pytest.mark.cuda
@needs_gpu
@pytest.mark.parametrize("strategy", ["native", "decomposed"])
def test_gpu_io_binding_outputs_stay_on_the_device(strategy):
    s = ncuda.cuda_session(build_model(SPEC, PARAMS, 17, strategy, provider="cuda"))
    runner = ncuda.DeviceRunner(s, "cuda")
    dev = runner.to_device({"X": X})
    assert dev["X"].device_name().lower() == "cuda"
    outs = runner.run(dev)
    assert outs[0].device_name().lower() == "cuda"
    assert _within(outs[0].numpy(), REF, "float32", "cuda")


@pytest.mark.cuda
@needs_gpu
def test_gpu_fp16_model():
    s = ncuda.cuda_session(ncuda.to_fp16(_lowered_model()))
    y = ncuda.DeviceRunner(s, "cuda").run_numpy({"x": X})[0]
    assert y.dtype == np.float16
    assert _within(y, np.maximum(REF, 0.0), "float16", "cuda")
