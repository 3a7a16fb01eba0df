"""Oracle 1: every kind × every valid strategy × opsets × dtypes, run in onnxruntime CPU (its own
optimizations disabled), matches the float64 NumPy reference; every model passes the full
onnx.checker, and the ONNX reference evaluator agrees where it supports the ops."""

from __future__ import annotations

import numpy as np
import onnx
import onnx.inliner
import pytest
from norm_cases import ALL_CASES
from onnx.reference import ReferenceEvaluator

from normonnx.lowering import STRATEGIES, build_model, check
from normonnx.norms import KINDS
from normonnx.verify import compare_arrays, tolerance

OPSETS = (13, 17, 18, 21, 23)
# strategies that have no lowering at all for a kind are left out (not "skipped"): a skip in
# this suite always means a strategy *declares* the kind but rejects this spec, with a reason.
APPLICABLE = [
    (cid, spec, shape, st)
    for cid, spec, shape in ALL_CASES
    for st, s in STRATEGIES.items()
    if spec.kind in s.capabilities
]
FP32_MATRIX = [(*c, o) for c in APPLICABLE for o in OPSETS]
DTYPES = ("float16", "float64", "bfloat16")
DTYPE_MATRIX = [(*c, dt) for c in APPLICABLE for dt in DTYPES]


def _inputs(spec, shape, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape) * 2.0 + 0.5
    params = KINDS[spec.kind].random_params(spec, rng)
    return x, params


def _np_dtype(name):
    from onnx import helper

    from normonnx.spec import DTYPES as D

    return helper.tensor_dtype_to_np_dtype(D[name])


@pytest.mark.parametrize(
    ("cid", "spec", "shape", "strategy", "opset"), FP32_MATRIX, ids=[f"{c[0]}-{c[3]}-op{c[4]}" for c in FP32_MATRIX]
)
def test_fp32_matches_float64_reference(cid, spec, shape, strategy, opset, ort_run):
    verdict = check(spec, strategy, opset)
    if not verdict:
        # a rejection is data: it must carry a reason, and must be for a real incapacity
        assert verdict.reason
        pytest.skip(f"{strategy} rejects: {verdict.reason}")
    x, params = _inputs(spec, shape)
    model = build_model(spec, params, opset, strategy, allow_unstable=True)
    onnx.checker.check_model(model, full_check=True)
    xf = x.astype(np.float32)
    p32 = {k: v.astype(np.float32) for k, v in params.items()}
    ref = KINDS[spec.kind].reference(spec, xf, p32)
    (y,) = ort_run(model, {"X": xf})
    assert y.dtype == np.float32 and y.shape == shape
    cmp = compare_arrays("Y", y, ref, tolerance("float32", spec.kind))
    assert cmp.passed, cmp


@pytest.mark.parametrize(
    ("cid", "spec", "shape", "strategy", "dtype"), DTYPE_MATRIX, ids=[f"{c[0]}-{c[3]}-{c[4]}" for c in DTYPE_MATRIX]
)
def test_other_dtypes(cid, spec, shape, strategy, dtype, ort_run):
    spec = spec.replace(dtype=dtype)
    opset = 23
    verdict = check(spec, strategy, opset)
    if not verdict:
        assert verdict.reason
        pytest.skip(f"{strategy} rejects {dtype}: {verdict.reason}")
    x, params = _inputs(spec, shape)
    model = build_model(spec, params, opset, strategy, allow_unstable=True)
    onnx.checker.check_model(model, full_check=True)
    npdt = _np_dtype(dtype)
    xd = x.astype(npdt)
    pd = {k: v.astype(npdt) for k, v in params.items()}
    # the reference sees exactly the rounded inputs the model sees
    ref = KINDS[spec.kind].reference(spec, xd.astype(np.float64), {k: v.astype(np.float64) for k, v in pd.items()})
    if dtype == "bfloat16":  # onnxruntime's Python API cannot feed bfloat16 arrays: cast inside the graph
        model = _through_float32(model)
        (y,) = ort_run(model, {"X": xd.astype(np.float32)})
        y = y.astype(npdt)
    else:
        (y,) = ort_run(model, {"X": xd})
    assert y.dtype == npdt and y.shape == shape
    cmp = compare_arrays("Y", y.astype(np.float64), ref, tolerance(dtype, spec.kind))
    assert cmp.passed, cmp


def _through_float32(model: onnx.ModelProto) -> onnx.ModelProto:
    """Wrap a bf16 model: float32 X → Cast → model → Cast → float32 Y."""
    from onnx import TensorProto, helper

    g = model.graph
    for n in g.node:
        n.input[:] = ["X_bf16" if i == "X" else i for i in n.input]
        n.output[:] = ["Y_bf16" if o == "Y" else o for o in n.output]
    g.node.insert(0, helper.make_node("Cast", ["X"], ["X_bf16"], to=TensorProto.BFLOAT16))
    g.node.append(helper.make_node("Cast", ["Y_bf16"], ["Y"], to=TensorProto.FLOAT))
    g.input[0].type.tensor_type.elem_type = TensorProto.FLOAT
    g.output[0].type.tensor_type.elem_type = TensorProto.FLOAT
    return model


REF_MATRIX = [(*c, o) for c in APPLICABLE for o in (18, 23)]


@pytest.mark.parametrize(
    ("cid", "spec", "shape", "strategy", "opset"), REF_MATRIX, ids=[f"{c[0]}-{c[3]}-op{c[4]}" for c in REF_MATRIX]
)
def test_onnx_reference_evaluator_agrees(cid, spec, shape, strategy, opset):
    if not check(spec, strategy, opset):
        pytest.skip("strategy not valid here")
    x, params = _inputs(spec, shape, seed=1)
    model = onnx.inliner.inline_local_functions(build_model(spec, params, opset, strategy, allow_unstable=True))
    xf = x.astype(np.float32)
    ref = KINDS[spec.kind].reference(spec, xf, {k: v.astype(np.float32) for k, v in params.items()})
    (y,) = ReferenceEvaluator(model).run(None, {"X": xf})
    cmp = compare_arrays("Y", y, ref, tolerance("float32", spec.kind))
    assert cmp.passed, cmp


def test_matrix_covers_every_kind_and_strategy():
    kinds = {spec.kind for _, spec, _ in ALL_CASES}
    assert kinds == set(KINDS)
    for name, s in STRATEGIES.items():
        valid = [c for c in ALL_CASES if check(c[1], name, 23)]
        assert valid, f"strategy {name} is valid for no conformance case"
        assert set(s.capabilities) <= set(KINDS)
