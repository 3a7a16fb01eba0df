"""normonnx's native CPU kernels (normonnx/kernels) and the native_kernel lowering.

What is checked, and how:

- portability: one saved ``.onnx`` file runs without the library (onnxruntime inlines the
  carried function bodies) and with it (the compiled kernel), with equal results; *which* path
  ran is read from onnxruntime's profiler (op types of the nodes that executed);
- numerics: every kind and layout against the float64 reference, including the stress inputs
  (offset 1e3, scale 1e-3, zero variance, ≥ 1M elements per group) against torch fp32's own error;
- determinism across thread counts (the kernels split work with onnxruntime's pool);
- bad cases: unsupported dtype (the selector falls back, and onnxruntime's binding behaviour that
  made the library use a domain of its own), kernel-side shape errors, library missing/disabled/
  not loadable, and a failing compiler during the build.

Tests that need the compiled library skip with the reason the library reports when it is absent.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from strict_tolerances import (
    FLOAT64_STATS_ATOL,
    ISA_ATOL,
    ISA_RTOL,
    KERNEL_MAX_ABS,
    SILU_LIMITS_TOL,
    ZERO_VARIANCE_RTOL,
    ZERO_VARIANCE_SILU,
)

import normonnx
from normonnx import kernels
from normonnx.errors import InputError, LoweringError, ModelLoadError, UnsupportedHere
from normonnx.io import save
from normonnx.lowering import STRATEGIES, build_model, check, select
from normonnx.lowering.function import DOMAIN as PORTABLE_DOMAIN
from normonnx.norms import KINDS
from normonnx.spec import NormSpec
from normonnx.verify import tolerance
from normonnx.verify.stress import large_shape, large_spec, measure

OPSET = 18
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
needs_lib = pytest.mark.skipif(
    not kernels.available(), reason=f"native kernel library not available: {kernels.unavailable_reason()}"
)

# (spec, input shape): every kind and layout, affine variants, ranks, lengths off the 32-lane grid
CASES = {
    "group": (NormSpec("group", channels=32, groups=8, rank=4), (2, 32, 9, 11)),
    "group_silu": (NormSpec("group", channels=32, groups=8, activation="silu", rank=4), (2, 32, 9, 11)),
    "group_no_affine": (
        NormSpec("group", channels=8, groups=2, has_weight=False, has_bias=False, rank=4),
        (3, 8, 5, 5),
    ),
    "group_rank3": (NormSpec("group", channels=6, groups=3, rank=3), (2, 6, 100)),
    # channels of >= 256 elements: statistics of the next segment are read while this one is
    # written (pipelined tasks of many segments; lengths off the 32-lane grid)
    "group_pipelined": (NormSpec("group", channels=64, groups=16, rank=4), (3, 64, 17, 19)),
    "group_silu_pipelined": (NormSpec("group", channels=32, groups=8, activation="silu", rank=4), (2, 32, 16, 17)),
    "group_relu": (NormSpec("group", channels=32, groups=8, activation="relu", rank=4), (2, 32, 9, 11)),
    "group_relu_pipelined": (NormSpec("group", channels=32, groups=8, activation="relu", rank=4), (2, 32, 16, 17)),
    "instance_pipelined": (NormSpec("instance", channels=24, rank=3), (2, 24, 300)),
    "group_rank5": (NormSpec("group", channels=16, groups=4, rank=5), (1, 16, 3, 8, 8)),
    "layer": (NormSpec("layer", normalized_shape=(77,), rank=3), (2, 7, 77)),
    "layer_2axes": (NormSpec("layer", normalized_shape=(7, 64), rank=3), (3, 7, 64)),
    "layer_weight_only": (NormSpec("layer", normalized_shape=(40,), has_bias=False, rank=2), (5, 40)),
    "layer_cf": (NormSpec("layer", normalized_shape=(48,), channels_first=True, rank=4), (2, 48, 17, 19)),
    "rms": (NormSpec("rms", normalized_shape=(96,), has_bias=False, rank=3), (3, 5, 96)),
    # short rows (a multiple of 8, at most 256) go through the ISA's short_rows, whole tiles of rows
    # per call; the row counts leave a partial tile, the lengths take each of its three reductions
    "layer_short": (NormSpec("layer", normalized_shape=(32,), rank=4), (2, 15, 16, 32)),
    "layer_short_bias_only": (NormSpec("layer", normalized_shape=(120,), has_weight=False, rank=3), (3, 7, 120)),
    "layer_short_no_affine": (
        NormSpec("layer", normalized_shape=(200,), has_weight=False, has_bias=False, rank=3),
        (3, 13, 200),
    ),
    "rms_short": (NormSpec("rms", normalized_shape=(64,), has_bias=False, rank=3), (3, 11, 64)),
    "rms_no_weight": (NormSpec("rms", normalized_shape=(33,), has_weight=False, has_bias=False, rank=2), (4, 33)),
    "instance": (NormSpec("instance", channels=8, rank=4), (2, 8, 12, 13)),
    "instance_running": (NormSpec("instance", channels=8, running_stats=True, rank=4), (2, 8, 12, 13)),
    "batch_running": (NormSpec("batch", channels=8, running_stats=True, rank=4), (2, 8, 6, 6)),
    "batch_stats": (NormSpec("batch", channels=8, running_stats=False, rank=4), (3, 8, 6, 6)),
    # the activation in every channel path: segments (instance), per-channel tasks (running stats, batch)
    "instance_relu": (NormSpec("instance", channels=8, activation="relu", rank=4), (2, 8, 12, 13)),
    "instance_relu_pipelined": (NormSpec("instance", channels=24, activation="relu", rank=3), (2, 24, 300)),
    "instance_running_relu": (
        NormSpec("instance", channels=8, running_stats=True, activation="relu", rank=4),
        (2, 8, 12, 13),
    ),
    "batch_running_relu": (NormSpec("batch", channels=8, running_stats=True, activation="relu", rank=4), (2, 8, 6, 6)),
    "batch_stats_silu": (NormSpec("batch", channels=8, running_stats=False, activation="silu", rank=4), (3, 8, 6, 6)),
}


def _inputs(spec: NormSpec, shape: tuple[int, ...], seed: int = 0) -> tuple[dict[str, np.ndarray], np.ndarray]:
    rng = np.random.default_rng(seed)
    return KINDS[spec.kind].random_params(spec, rng), (rng.standard_normal(shape) * 2 + 0.5).astype(np.float32)


def _ref32(spec: NormSpec, x: np.ndarray, params: dict[str, np.ndarray]) -> np.ndarray:
    """float64 reference of the computation the float32 model performs (parameters rounded to fp32)."""
    p32 = {k: np.asarray(v, np.float32) for k, v in params.items()}
    return KINDS[spec.kind].reference(spec, x.astype(np.float64), p32)


def run_profiled(model_or_path, x: np.ndarray, tmp_path, *, custom_ops: bool, threads: int = 2, optimize=False):
    """(output, op types that onnxruntime executed) for one run, read from its profiler."""
    s = normonnx.session(
        model_or_path, threads=threads, optimize=optimize, profile=str(tmp_path / "prof"), custom_ops=custom_ops
    )
    (y,) = s.run({"X": x})
    path = s.inner.end_profiling()
    with open(path) as f:
        events = json.load(f)
    os.remove(path)
    nodes = [e["args"] for e in events if e.get("cat") == "Node" and "op_name" in e.get("args", {})]
    assert nodes and all(n.get("provider") == "CPUExecutionProvider" for n in nodes)
    return y, sorted({n["op_name"] for n in nodes})


def _build_native(spec: NormSpec, params: dict[str, np.ndarray]) -> onnx.ModelProto:
    return build_model(spec, params, OPSET, "native_kernel")


# -- structure -------------------------------------------------------------------------------------
@needs_lib
def test_node_domain_overload_and_carried_function():
    spec, shape = CASES["group_silu"]
    params, _ = _inputs(spec, shape)
    m = _build_native(spec, params)
    (node,) = [n for n in m.graph.node if n.domain == kernels.DOMAIN]
    assert (node.op_type, node.overload) == ("GroupNorm", spec.key())
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    assert attrs == {"epsilon": pytest.approx(1e-5), "channels": 32, "num_groups": 8, "activation": b"silu"}
    assert [(f.domain, f.name, f.overload) for f in m.functions] == [(kernels.DOMAIN, "GroupNorm", spec.key())]
    assert (kernels.DOMAIN, kernels.DOMAIN_VERSION) in [(o.domain, o.version) for o in m.opset_import]
    assert PORTABLE_DOMAIN not in {n.domain for n in m.graph.node}  # the library never binds "normonnx"
    onnx.checker.check_model(m, full_check=True)


def test_strategy_registered_with_capabilities():
    s = STRATEGIES["native_kernel"]
    # exactly the kinds whose op the loaded library registers (none without it)
    assert set(s.capabilities) == {k for k, kind in KINDS.items() if kind.normonnx_op in kernels.registered_ops()}
    assert all(c.dtypes["cpu"] == {"float32"} and not c.dtypes["cuda"] for c in s.capabilities.values())
    assert kernels.api_version_required == 17
    verdict = check(NormSpec("layer", normalized_shape=(8,)), "native_kernel", OPSET, "cuda")
    assert not verdict and "float32 not supported on cuda" in verdict.reason


@needs_lib
def test_selected_first_on_cpu_float32():
    spec = NormSpec("group", channels=8, groups=2, rank=4)
    assert select(spec, OPSET, "cpu").strategy == "native_kernel"


@needs_lib
def test_lower_model_emits_loadable_kernel_nodes(tmp_path):
    from normonnx.lowering.graph import lower_model, make_norm_node

    spec = NormSpec("group", channels=8, groups=2, rank=4)
    params, x = _inputs(spec, (2, 8, 4, 4))
    inits = [onnx.numpy_helper.from_array(np.asarray(v, np.float32), f"p_{k}") for k, v in params.items()]
    node = make_norm_node(spec, "X", {k: f"p_{k}" for k in params}, "Y", "gn")
    g = helper.make_graph(
        [node],
        "portable",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["n", 8, "h", "w"])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["n", 8, "h", "w"])],
        inits,
    )
    m = helper.make_model(
        g, opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid(PORTABLE_DOMAIN, 1)], ir_version=10
    )
    lowered, records = lower_model(m, prefer=["native_kernel"])
    assert [r.strategy for r in records] == ["native_kernel"]
    assert (kernels.DOMAIN, kernels.DOMAIN_VERSION) in [(o.domain, o.version) for o in lowered.opset_import]
    onnx.checker.check_model(lowered, full_check=True)
    y, ops = run_profiled(lowered, x, tmp_path, custom_ops=True)
    assert ops == ["GroupNorm"]
    np.testing.assert_allclose(y, _ref32(spec, x, params), atol=FLOAT64_STATS_ATOL)


@needs_lib
def test_library_reports_itself():
    info = kernels.info()
    assert info["abi"] == str(kernels.ABI) and info["ort_api"] == "17" and info["domain"] == kernels.DOMAIN
    assert set(info["ops"].split(",")) == {"GroupNorm", "LayerNorm", "RMSNorm", "InstanceNorm", "BatchNorm"}
    assert kernels.registered_ops() == set(info["ops"].split(","))
    assert info["isa"] in ("avx2+fma", "generic")
    assert kernels.library_path() and os.path.isfile(kernels.library_path()) and kernels.unavailable_reason() == ""


# -- one file, two paths, same numbers --------------------------------------------------------------
@needs_lib
@pytest.mark.parametrize("case", list(CASES))
def test_same_file_runs_with_and_without_library(case, tmp_path):
    spec, shape = CASES[case]
    params, x = _inputs(spec, shape)
    path = str(tmp_path / f"{case}.onnx")
    save(_build_native(spec, params), path)
    y_fn, ops_fn = run_profiled(path, x, tmp_path, custom_ops=False)
    y_nk, ops_nk = run_profiled(path, x, tmp_path, custom_ops=True)
    op = KINDS[spec.kind].normonnx_op
    # without the library: the carried function body (primitive ops), never a node of our op type
    assert op not in ops_fn and {"Mul", "Add"} <= set(ops_fn), ops_fn
    assert all(onnx.defs.has(o) for o in ops_fn), ops_fn  # default-domain ONNX ops only
    # with it: exactly our kernel (plus build_model's output Identity)
    assert ops_nk == sorted({op, "Identity"}), ops_nk
    ref = _ref32(spec, x, params)
    tol = tolerance("float32", spec.kind, "cpu")
    for y in (y_fn, y_nk):
        assert y.dtype == np.float32 and y.shape == ref.shape
        np.testing.assert_allclose(y, ref, atol=tol.atol, rtol=tol.rtol)
    np.testing.assert_allclose(y_nk, y_fn, atol=tol.atol, rtol=tol.rtol)
    assert float(np.abs(y_nk - ref).max()) < KERNEL_MAX_ABS  # ~ulp-level, far inside the tolerance


@needs_lib
def test_kernel_survives_onnxruntime_graph_optimizations(tmp_path):
    spec, shape = CASES["layer_cf"]
    params, x = _inputs(spec, shape)
    y, ops = run_profiled(_build_native(spec, params), x, tmp_path, custom_ops=True, optimize=True)
    assert "LayerNorm" in ops
    np.testing.assert_allclose(y, _ref32(spec, x, params), atol=FLOAT64_STATS_ATOL)


def _params_as_inputs(m: onnx.ModelProto) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """``m`` with the norm node's initializers turned into graph inputs of any size, and their values
    as feeds."""
    out = onnx.ModelProto()
    out.CopyFrom(m)
    node = next(n for n in out.graph.node if n.domain == kernels.DOMAIN)
    feeds = {}
    for init in list(out.graph.initializer):
        if init.name in node.input[1:]:
            feeds[init.name] = numpy_helper.to_array(init)
            out.graph.initializer.remove(init)
            dims = [f"{init.name}_{i}" for i in range(len(init.dims))]  # symbolic: the kernel checks sizes
            out.graph.input.append(helper.make_tensor_value_info(init.name, init.data_type, dims))
    return out, feeds


@needs_lib
@pytest.mark.parametrize("case", ["layer", "rms", "group", "layer_cf", "batch_running"])
def test_parameters_read_once_as_constants_or_each_run_as_inputs(case, tmp_path):
    """The kernel reads constant weight/bias once, when onnxruntime creates it, and any other input at
    every run: the two give bitwise the same output, and a weight of the wrong size is reported the
    same way in both."""
    spec, shape = CASES[case]
    params, x = _inputs(spec, shape)
    m = _build_native(spec, params)
    m_in, feeds = _params_as_inputs(m)
    assert feeds, "the case has parameters"
    (y_const,) = normonnx.session(m, threads=1).run({"X": x})
    (y_input,) = normonnx.session(m_in, threads=1).run({"X": x, **feeds})
    np.testing.assert_array_equal(y_const, y_input)
    w_name = next(n for n in m_in.graph.input if n.name != "X").name
    short = {**feeds, w_name: feeds[w_name][:-1]}
    bad = onnx.ModelProto()
    bad.CopyFrom(m)
    for init in bad.graph.initializer:  # the same shortened weight, as a constant initializer
        if init.name == w_name:
            init.CopyFrom(numpy_helper.from_array(short[w_name], w_name))
    for model, feed in ((bad, {"X": x}), (m_in, {"X": x, **short})):
        s = normonnx.session(model, threads=1, optimize=False)
        with pytest.raises(Exception, match=r"(weight|mean) has \d+ elements, expected \d+"):
            s.run(feed)


@needs_lib
@pytest.mark.parametrize("case", ["group", "layer", "layer_cf", "batch_stats"])
def test_empty_batch(case, tmp_path):
    spec, shape = CASES[case]
    params, _ = _inputs(spec, shape)
    x = np.zeros((0, *shape[1:]), np.float32)
    y, ops = run_profiled(_build_native(spec, params), x, tmp_path, custom_ops=True)
    assert y.shape == x.shape and KINDS[spec.kind].normonnx_op in ops


# -- numerics ----------------------------------------------------------------------------------------
FLOOR = 1e-7  # ~1 ulp at unit scale, so "2x torch" is not a bound of 0 when torch is exact
STRESS_CASES = {
    k: CASES[k]
    for k in (
        *("group", "group_silu", "group_relu", "layer", "layer_cf", "rms"),
        *("layer_short", "layer_short_bias_only", "layer_short_no_affine", "rms_short"),
        *("instance", "instance_relu", "batch_stats", "batch_stats_silu"),
    )
}


@needs_lib
@pytest.mark.parametrize("stress", ["offset", "tiny_scale", "normal"])
@pytest.mark.parametrize("case", list(STRESS_CASES))
def test_stress_at_least_as_accurate_as_torch(case, stress):
    spec, shape = STRESS_CASES[case]
    err, terr, _, _ = measure(spec, shape, stress, "native_kernel", opset=OPSET)
    assert err <= 2 * max(terr, FLOOR), f"{err:.3g} vs torch {terr:.3g}"  # the "stable" bound of base.Capability
    if stress == "offset":  # where accuracy is at stake: strictly better than torch fp32 (measured 25-300x)
        assert err <= terr and err < KERNEL_MAX_ABS, f"{err:.3g} vs torch {terr:.3g}"


LARGE = {kind: large_spec(kind) for kind in ("batch", "layer", "instance", "group", "rms")}  # the library's kinds
LARGE["layer_cf"] = NormSpec("layer", normalized_shape=(1 << 20,), channels_first=True, rank=4)
LARGE["group_silu"] = NormSpec("group", channels=4, groups=2, activation="silu", rank=4)


@needs_lib
@pytest.mark.parametrize("stress", ["offset", "normal"])
@pytest.mark.parametrize("case", list(LARGE))
def test_million_element_groups(case, stress):
    """≥ 1M elements per set of statistics; 1-3 groups take the kernels' chunked two-phase path."""
    spec = LARGE[case]
    shape = large_shape(spec)
    err, terr, _, _ = measure(spec, shape, stress, "native_kernel", opset=OPSET)
    assert err <= 2 * max(terr, FLOOR), f"{shape}: {err:.3g} vs torch {terr:.3g}"
    assert err < KERNEL_MAX_ABS, f"{shape}: {err:.3g}"
    if stress == "offset" and spec.kind != "rms":  # rms has no mean to lose: equal to torch there
        assert err <= terr


@needs_lib
@pytest.mark.parametrize("case", [c for c in CASES if not CASES[c][0].running_stats])
def test_zero_variance_gives_exactly_bias(case, tmp_path):
    spec, shape = CASES[case]
    params, _ = _inputs(spec, shape)
    x = np.full(shape, 3.25, np.float32)
    y, _ = run_profiled(_build_native(spec, params), x, tmp_path, custom_ops=True)
    expected = _ref32(spec, x, params)  # β broadcast (SiLU(β) when fused; 0 without bias)
    if spec.kind == "rms":  # no mean subtracted: x / √(x² + ε) · γ
        np.testing.assert_allclose(y, expected, rtol=ZERO_VARIANCE_RTOL, atol=0)
    elif spec.activation:
        np.testing.assert_allclose(y, expected, rtol=ZERO_VARIANCE_SILU[0], atol=ZERO_VARIANCE_SILU[1])
    else:
        np.testing.assert_array_equal(y, expected.astype(np.float32))  # x − μ is exactly 0


@needs_lib
@pytest.mark.parametrize(
    ("spec", "shape"),
    [
        (NormSpec("group", channels=2, groups=2, rank=4), (1, 2, 1024, 512)),
        (NormSpec("group", channels=64, groups=2, rank=4), (2, 64, 16, 16)),
        # 32 groups in tasks of 12 rebalanced to 4 tasks of 8; short rows split in one task per thread
        (NormSpec("group", channels=1280, groups=32, rank=4), (1, 1280, 8, 8)),
        (NormSpec("layer", normalized_shape=(32,), rank=4), (1, 16, 16, 32)),
        (NormSpec("rms", normalized_shape=(128,), has_bias=False, rank=3), (2, 65, 128)),
    ],
    ids=["two_phase", "per_group", "rebalanced_groups", "short_rows", "short_rms_rows"],
)
def test_deterministic_across_thread_counts(spec, shape, tmp_path):
    """Tasks hold whole segments (or fixed chunks), so how the work is split over the threads never
    changes a bit of the output."""
    params, x = _inputs(spec, shape)
    m = _build_native(spec, params)
    y1, _ = run_profiled(m, x, tmp_path, custom_ops=True, threads=1)
    y2, _ = run_profiled(m, x, tmp_path, custom_ops=True, threads=2)
    np.testing.assert_array_equal(y1, y2)


@needs_lib
@pytest.mark.parametrize(
    "case",
    [
        "group_silu",
        "group_pipelined",
        "group_silu_pipelined",
        "group_relu",
        "group_relu_pipelined",
        "instance_relu_pipelined",
        "instance_running_relu",
        "batch_stats_silu",
        "layer",
        "layer_cf",
        "rms",
        "batch_stats",
    ],
)
def test_portable_loops_match_the_avx2_ones(case, monkeypatch, tmp_path):
    """The library picks its AVX2+FMA loops at registration when the CPU has them; the portable C
    loops (other CPUs) are forced with NORMONNX_KERNELS_ISA=generic and must give the same numbers."""
    spec, shape = CASES[case]
    params, x = _inputs(spec, shape)
    m = _build_native(spec, params)
    y_default, _ = run_profiled(m, x, tmp_path, custom_ops=True)
    monkeypatch.setenv("NORMONNX_KERNELS_ISA", "generic")
    y_generic, ops = run_profiled(m, x, tmp_path, custom_ops=True)
    assert KINDS[spec.kind].normonnx_op in ops
    ref = _ref32(spec, x, params)
    assert float(np.abs(y_generic - ref).max()) < KERNEL_MAX_ABS
    np.testing.assert_allclose(y_generic, y_default, atol=ISA_ATOL, rtol=ISA_RTOL)


@needs_lib
def test_silu_extremes_are_finite_and_exact_in_the_limits(tmp_path):
    """SiLU(v) for |v| up to 1e4: → v for large v, → −0 for very negative v, no inf/NaN."""
    spec = NormSpec("group", channels=2, groups=2, activation="silu", has_weight=True, has_bias=True, rank=3)
    params = {"weight": np.array([1e4, 1e4]), "bias": np.array([0.0, 5.0])}
    x = np.tile(np.array([-1.0, 0.0, 1.0], np.float32), (1, 2, 1))
    y, _ = run_profiled(_build_native(spec, params), x, tmp_path, custom_ops=True)
    assert np.isfinite(y).all()
    with np.errstate(over="ignore"):  # the float64 reference's own e^(1e4)
        ref = _ref32(spec, x, params)
    np.testing.assert_allclose(y, ref, rtol=SILU_LIMITS_TOL, atol=SILU_LIMITS_TOL)


@needs_lib
@pytest.mark.parametrize(
    "case",
    [
        *("group_relu", "group_relu_pipelined", "instance_relu", "instance_relu_pipelined"),
        *("instance_running_relu", "batch_running_relu"),
    ],
)
def test_relu_is_exact_max_of_the_affine_and_keeps_nan(case, tmp_path):
    """The fused ReLU is the kernel's own affine output with its negatives set to 0 (bitwise, as a
    Relu node after the same kernel would give), and a NaN input stays NaN where its statistics
    reach (its group or channel; only itself with stored statistics), as onnx Relu."""
    spec, shape = CASES[case]
    params, x = _inputs(spec, shape)
    y, _ = run_profiled(_build_native(spec, params), x, tmp_path, custom_ops=True)
    plain, _ = run_profiled(_build_native(spec.replace(activation=""), params), x, tmp_path, custom_ops=True)
    assert (plain < 0).any() and (plain > 0).any()
    np.testing.assert_array_equal(y, np.where(plain < 0, np.float32(0), plain))
    x[(0,) * x.ndim] = np.nan
    y, _ = run_profiled(_build_native(spec, params), x, tmp_path, custom_ops=True)
    reach = np.zeros(x.shape, bool)
    if spec.running_stats:
        reach[(0,) * x.ndim] = True
    else:
        reach[0, : x.shape[1] // (spec.groups or x.shape[1])] = True
    np.testing.assert_array_equal(np.isnan(y), reach)


# -- bad cases -----------------------------------------------------------------------------------------
@needs_lib
def test_unsupported_dtype_falls_back_to_function_body(tmp_path):
    spec = NormSpec("group", channels=8, groups=2, rank=4, dtype="float16")
    verdict = check(spec, "native_kernel", OPSET, "cpu")
    assert not verdict and "float16 not supported on cpu (supported: float32)" in verdict.reason
    sel = select(spec, OPSET, "cpu", prefer=["native_kernel", "function"])
    assert sel.strategy == "function" and sel.rejected[0][0] == "native_kernel"
    params, x = _inputs(spec, (2, 8, 4, 4))
    m = build_model(spec, params, OPSET, sel.strategy)
    # the library IS registered (the model contains normonnx ops), yet the fp16 body runs
    y, ops = run_profiled(m, x.astype(np.float16), tmp_path, custom_ops=True)
    assert "GroupNorm" not in ops and "ReduceMean" in ops
    np.testing.assert_allclose(
        y.astype(np.float64), _ref32(spec, x.astype(np.float16), params), atol=tolerance("float16").atol
    )


@needs_lib
def test_why_the_library_has_its_own_domain(tmp_path):
    """onnxruntime binds every node of a registered (domain, op) to the library's schema: an fp16 node
    in the library's domain no longer falls back to its model-local function. (This is why the
    library does not register the portable "normonnx" domain.) Without the library it runs."""
    spec = NormSpec("layer", normalized_shape=(8,), rank=2, dtype="float16")
    params, x = _inputs(spec, (3, 8))
    m = build_model(spec, params, OPSET, "function")
    for n in [*m.graph.node, *m.functions]:
        if n.domain == PORTABLE_DOMAIN:
            n.domain = kernels.DOMAIN
    for o in m.opset_import:
        if o.domain == PORTABLE_DOMAIN:
            o.domain = kernels.DOMAIN
    y, ops = run_profiled(m, x.astype(np.float16), tmp_path, custom_ops=False)
    assert "LayerNorm" not in ops and y.dtype == np.float16
    with pytest.raises(ModelLoadError, match=r"tensor\(float16\)"):
        normonnx.session(m, custom_ops=True)


@needs_lib
def test_kernel_rejects_input_that_contradicts_attributes():
    spec = NormSpec("layer", normalized_shape=(64,), rank=3)
    params, _ = _inputs(spec, (2, 5, 64))
    s = normonnx.session(_build_native(spec, params), custom_ops=True)
    with pytest.raises(InputError, match=r"normonnx\.LayerNorm: input axis 2 has size 63, normalized_shape\[0\] is 64"):
        s.run({"X": np.zeros((2, 5, 63), np.float32)})
    gspec = NormSpec("group", channels=8, groups=2, rank=4)
    gparams, _ = _inputs(gspec, (1, 8, 2, 2))
    g = normonnx.session(_build_native(gspec, gparams), custom_ops=True)
    with pytest.raises(
        InputError, match=r"normonnx\.GroupNorm: input has 6 channels on axis 1, attribute channels is 8"
    ):
        g.run({"X": np.zeros((1, 6, 2, 2), np.float32)})


@needs_lib
@pytest.mark.parametrize(
    ("op", "attrs", "message"),
    [
        ("GroupNorm", {"num_groups": 2, "activation": "gelu"}, "unknown fused activation 'gelu'"),
        # only the channel norms fuse an activation: ignoring it would compute N(x) where the node
        # says act(N(x))
        ("LayerNorm", {"normalized_shape": [4], "activation": "relu"}, "a fused activation is for the channel norms"),
    ],
    ids=["unknown_activation", "activation_on_layer_norm"],
)
def test_kernel_rejects_bad_attributes(op, attrs, message):
    node = helper.make_node(op, ["X", "", ""], ["Y"], domain=kernels.DOMAIN, epsilon=1e-5, **attrs)
    g = helper.make_graph(
        [node],
        "bad",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)],
    )
    m = helper.make_model(
        g, opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid(kernels.DOMAIN, 1)], ir_version=10
    )
    with pytest.raises(ModelLoadError, match=message):
        normonnx.session(m, custom_ops=True)


def test_library_disabled_gives_reasons_and_function_bodies(monkeypatch, tmp_path):
    built = kernels.available()
    spec, shape = CASES["rms"]
    params, x = _inputs(spec, shape)
    model = _build_native(spec, params) if built else None
    monkeypatch.setenv("NORMONNX_DISABLE_KERNELS", "1")
    assert kernels.library_path() is None and not kernels.available()
    assert kernels.unavailable_reason() == "disabled by NORMONNX_DISABLE_KERNELS"
    verdict = check(spec, "native_kernel", OPSET, "cpu")
    assert not verdict and "native kernel library is not available: disabled by" in verdict.reason
    with pytest.raises(LoweringError, match="native_kernel: the native kernel library is not available"):
        select(spec, OPSET, "cpu", prefer=["native_kernel"])
    with pytest.raises(UnsupportedHere, match="not available: disabled by NORMONNX_DISABLE_KERNELS") as e:
        kernels.require()
    assert e.value.exit_code == 3 and "strateg" in str(e.value.note)
    if model is not None:  # a file made with the library still runs without it: the function bodies
        y, ops = run_profiled(model, x, tmp_path, custom_ops=True)
        assert "RMSNorm" not in ops
        np.testing.assert_allclose(y, _ref32(spec, x, params), atol=FLOAT64_STATS_ATOL)


def test_unloadable_library_is_reported(monkeypatch, tmp_path):
    bogus = tmp_path / "libbogus.so"
    bogus.write_text("not a shared library")
    monkeypatch.setenv("NORMONNX_KERNELS_LIBRARY", str(bogus))
    assert kernels.library_path() is None
    assert "is not a loadable normonnx kernel library" in kernels.unavailable_reason()
    monkeypatch.setenv("NORMONNX_KERNELS_LIBRARY", str(tmp_path / "missing.so"))
    assert "is not a file" in kernels.unavailable_reason()


# -- build -------------------------------------------------------------------------------------------
def _build_ext(tmp_path, env_extra: dict[str, str]) -> subprocess.CompletedProcess:
    env = {**os.environ, **env_extra}
    cmd = [sys.executable, "setup.py", "-q", "build_ext", "--build-lib", str(tmp_path / "lib"), "--build-temp"]
    return subprocess.run([*cmd, str(tmp_path / "tmp")], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def test_failed_compiler_does_not_fail_the_build_but_records_why(tmp_path):
    stale = tmp_path / "lib" / "normonnx" / "kernels" / "_normonnx_kernels.so"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"a library built from older sources")
    r = _build_ext(tmp_path, {"CC": "false"})
    assert r.returncode == 0, r.stderr[-2000:]
    assert "native kernel library was NOT built" in r.stderr
    err_file = tmp_path / "lib" / "normonnx" / "kernels" / "_build_error.txt"
    assert "the C compiler failed building the kernel library" in err_file.read_text()
    assert not list((tmp_path / "lib" / "normonnx" / "kernels").glob("_normonnx_kernels.*"))  # stale one removed


@pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None, reason="no C compiler")
def test_fresh_build_is_loadable(tmp_path, monkeypatch):
    r = _build_ext(tmp_path, {})
    assert r.returncode == 0, r.stderr[-2000:]
    (lib,) = (tmp_path / "lib" / "normonnx" / "kernels").glob("_normonnx_kernels.*")
    monkeypatch.setenv("NORMONNX_KERNELS_LIBRARY", str(lib))
    assert kernels.library_path() == str(lib), kernels.unavailable_reason()
    assert kernels.info()["abi"] == str(kernels.ABI)
