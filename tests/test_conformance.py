"""Oracle 1: every kind × every valid strategy × opsets × dtypes, run in onnxruntime CPU (its own
optimizations disabled), matches the float64 NumPy reference; every model passes the full
onnx.checker, and the ONNX reference evaluator agrees where it supports the ops.

Which strategy lowers which case is not read from the strategies (a lost capability would then
just shrink the matrix): :data:`EXPECTED` writes it down, and ``test_capabilities_match_the_table``
compares every verdict with it, so an unexpected rejection *and* an unexpected support fail."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import numpy as np
import onnx
import onnx.inliner
import pytest
from norm_cases import ALL_CASES
from onnx.reference import ReferenceEvaluator

from normonnx import kernels
from normonnx.lowering import STRATEGIES, build_model, check
from normonnx.norms import KINDS
from normonnx.verify import compare_arrays, tolerance

OPSETS = (13, 17, 18, 21, 23)
TABLE_OPSETS = (13, 14, 15, 17, 18, 21, 23)
ALL_DTYPES = ("float32", "float16", "float64", "bfloat16")
PROVIDERS = ("cpu", "cuda")


@dataclasses.dataclass(frozen=True)
class Support:
    """A strategy lowers a kind from ``opset`` on, in these dtypes per provider; fp16/bf16 only
    from ``low_precision_opset``."""

    opset: int
    dtypes: Mapping[str, frozenset[str]]
    low_precision_opset: int = 0
    #: the last opset it lowers at (a stand-in for a standard op that a later opset defines)
    max_opset: int | None = None


def _on(cpu: set[str], cuda: set[str] | None = None) -> dict[str, frozenset[str]]:
    return {"cpu": frozenset(cpu), "cuda": frozenset(cpu if cuda is None else cuda)}


_F = {"float32", "float16", "float64"}
_ANY = Support(13, _on(set(ALL_DTYPES)))
_KERNEL = Support(13, _on({"float32"}, set()))
#: (strategy, kind) → what it supports; a pair that is absent is a rejection ("has no lowering")
EXPECTED: dict[tuple[str, str], Support] = {
    ("native", "batch"): Support(13, _on(_F), low_precision_opset=15),
    ("native", "instance"): Support(13, _on({"float32", "float16"}, _F), low_precision_opset=15),
    ("native", "layer"): Support(17, _on(_F | {"bfloat16"})),
    ("native", "group"): Support(21, _on(_F)),
    ("native", "rms"): Support(23, _on(_F, _F | {"bfloat16"})),
    **{("decomposed", k): _ANY for k in ("batch", "layer", "instance", "group", "rms", "grn")},
    **{("function", k): _ANY for k in ("batch", "layer", "instance", "group", "rms", "grn")},
    ("via_instance", "group"): Support(13, _on({"float32", "float16"}, _F)),
    # exactly the ops the compiled library registers (GRN has no kernel)
    **{("native_kernel", k): _KERNEL for k in ("batch", "layer", "instance", "group", "rms")},
    # onnxruntime's contrib ops: a --target cuda strategy (float32/float16 kernels), no CPU rows
    ("contrib", "group"): Support(13, _on(set(), {"float32", "float16"})),
    ("contrib", "layer"): Support(13, _on(set(), {"float32", "float16"})),
    ("contrib", "rms"): Support(13, _on(set(), {"float32", "float16"}), max_opset=22),
}
#: (strategy, case id) → the case's own entry where it differs from its kind's: a str is a
#: rejection with that reason fragment wherever the kind's entry would lower it, a Support
#: replaces the kind's entry
CASE_EXPECTED: dict[tuple[str, str], str | Support] = {
    ("native", "batch-batchstats"): "batch statistics need the decomposition",
    ("native", "batch-batchstats-silu"): "batch statistics need the decomposition",
    ("native", "layer-cf-r4"): "channels-first needs the decomposition",
    ("native", "layer-cf-r4-hw1"): "channels-first needs the decomposition",
    # with running statistics an instance norm is emitted as BatchNormalization: its facts
    ("native", "instance-running"): Support(13, _on(_F), low_precision_opset=15),
    ("native", "instance-running-relu"): Support(13, _on(_F), low_precision_opset=15),
    # com.microsoft.GroupNorm: rank 4, an even number of channels per group (read in pairs)
    ("contrib", "group-gC"): "1 channels per group is odd",
    ("contrib", "group-c1"): "1 channels per group is odd",
    ("contrib", "group-r2"): "takes rank-4 inputs, this one is rank 2",
    ("contrib", "group-r3"): "takes rank-4 inputs, this one is rank 3",
    ("contrib", "group-r5"): "takes rank-4 inputs, this one is rank 5",
    ("contrib", "group-relu"): "com.microsoft.GroupNorm fuses SiLU only, not relu",
    # SkipLayerNormalization is the residual form only; no case here has a residual input
    **{
        ("contrib", cid): "SkipLayerNormalization needs a residual input"
        for cid in (
            *("layer-r3", "layer-r2-b8", "layer-r4-two-axes", "layer-noaffine", "layer-nobias"),
            *("layer-cf-r4", "layer-cf-r4-hw1"),
        )
    },
}
#: strategies with no CPU row in the table
CUDA_ONLY = {st for (st, _), sup in EXPECTED.items()} - {st for (st, _), sup in EXPECTED.items() if sup.dtypes["cpu"]}
#: the reason fragment of a rejection the library decides (not the table): which kinds it lacks
_NO_KERNEL = "the native kernel library registers no"


def expected_verdict(
    cid: str,
    spec,
    strategy: str,
    opset: int,
    provider: str,
    table: Mapping[tuple[str, str], Support] = EXPECTED,
    case_table: Mapping[tuple[str, str], str | Support] = CASE_EXPECTED,
) -> str:
    """ "" if the table says ``strategy`` lowers this case here, else the reason fragment expected."""
    entry = table.get((strategy, spec.kind))
    own = case_table.get((strategy, cid))
    if isinstance(own, Support):
        entry = own
    if entry is None:
        if strategy == "native_kernel" and kernels.available():
            return _NO_KERNEL
        return f"has no lowering for {spec.kind} norm"
    if opset < entry.opset:
        return f"needs opset >= {entry.opset}"
    if spec.dtype not in entry.dtypes[provider]:
        return f"{spec.dtype} not supported on {provider}"
    if entry.max_opset is not None and opset > entry.max_opset:
        return f"opset >= {entry.max_opset + 1}"
    if strategy == "native_kernel" and not kernels.available():
        return "library is not available"
    if isinstance(own, str):
        return own
    if spec.stash_fp32 and opset < entry.low_precision_opset:
        return f"needs opset >= {entry.low_precision_opset}"
    return ""


def mismatches(cases, table=EXPECTED, case_table=CASE_EXPECTED) -> list[str]:
    """Every (case, strategy, opset, dtype, provider) where ``check`` disagrees with the table."""
    out = []
    for cid, spec0, _shape in cases:
        for dtype in ALL_DTYPES:
            spec = spec0.replace(dtype=dtype)
            for provider in PROVIDERS:
                for opset in TABLE_OPSETS:
                    for strategy in STRATEGIES:
                        want = expected_verdict(cid, spec, strategy, opset, provider, table, case_table)
                        got = check(spec, strategy, opset, provider)
                        where = f"{cid} {strategy} opset {opset} {dtype} {provider}"
                        if want and got:
                            out.append(f"{where}: supported, the table expects a rejection ({want})")
                        elif not want and not got:
                            out.append(f"{where}: rejected ({got.reason}), the table expects support")
                        elif want and want not in got.reason:
                            out.append(f"{where}: rejected for {got.reason!r}, the table expects {want!r}")
    return out


def supported(cases, opsets, dtypes, table=EXPECTED, case_table=CASE_EXPECTED) -> list[tuple]:
    """(id, spec, shape, strategy, opset, dtype) the table says lower on CPU: the numeric matrix."""
    return [
        (cid, spec, shape, st, o, dt)
        for cid, spec, shape in cases
        for st in STRATEGIES
        for o in opsets
        for dt in dtypes
        if not expected_verdict(cid, spec.replace(dtype=dt), st, o, "cpu", table, case_table)
    ]


def test_capabilities_match_the_table():
    bad = mismatches(ALL_CASES)
    assert not bad, f"{len(bad)} capability changes:\n" + "\n".join(bad[:40])


def test_table_covers_every_kind_and_strategy():
    assert {k for _, k in EXPECTED} == set(KINDS) and {s for s, _ in EXPECTED} == set(STRATEGIES)
    assert {spec.kind for _, spec, _ in ALL_CASES} == set(KINDS)
    assert {cid for _, cid in CASE_EXPECTED} <= {cid for cid, _, _ in ALL_CASES}


FP32_MATRIX = [c[:5] for c in supported(ALL_CASES, OPSETS, ("float32",))]
DTYPES = ("float16", "float64", "bfloat16")
DTYPE_MATRIX = [(*c[:4], c[5]) for c in supported(ALL_CASES, (23,), DTYPES)]


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
    run_fp32_case(spec, shape, strategy, opset, ort_run)


def run_fp32_case(spec, shape, strategy, opset, ort_run):
    """Build, check and run one fp32 case the table says is supported; compare with float64."""
    verdict = check(spec, strategy, opset)
    assert verdict, f"{strategy} rejects a case the table expects it to lower: {verdict.reason}"
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
    run_dtype_case(spec, shape, strategy, dtype, ort_run)


def run_dtype_case(spec, shape, strategy, dtype, ort_run):
    """One float16/float64/bfloat16 case at opset 23 against the float64 reference of the rounded inputs."""
    spec = spec.replace(dtype=dtype)
    opset = 23
    verdict = check(spec, strategy, opset)
    assert verdict, f"{strategy} rejects a {dtype} case the table expects it to lower: {verdict.reason}"
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


REF_MATRIX = [c[:5] for c in supported(ALL_CASES, (18, 23), ("float32",))]


@pytest.mark.parametrize(
    ("cid", "spec", "shape", "strategy", "opset"), REF_MATRIX, ids=[f"{c[0]}-{c[3]}-op{c[4]}" for c in REF_MATRIX]
)
def test_onnx_reference_evaluator_agrees(cid, spec, shape, strategy, opset):
    run_reference_evaluator_case(spec, shape, strategy, opset)


def run_reference_evaluator_case(spec, shape, strategy, opset):
    """onnx's ReferenceEvaluator on the inlined model agrees with the float64 reference."""
    assert check(spec, strategy, opset), "the table expects this strategy to lower the case"
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
        valid = [c for c in ALL_CASES for p in PROVIDERS for o in (18, 23) if check(c[1], name, o, p)]
        assert valid, f"strategy {name} is valid for no conformance case"
        assert set(s.capabilities) <= set(KINDS)
    # every strategy with CPU rows runs numbers here; the CUDA-only one (contrib) is run on CPU
    # through its ops' CPU kernels and cpu_equivalent in tests/optimize/test_contrib.py
    assert {c[3] for c in FP32_MATRIX} == set(STRATEGIES) - CUDA_ONLY


def test_the_comparison_fails_on_a_capability_change():
    """The table test can fail both ways: a support the table lacks, a rejection it does not expect."""
    cases = [c for c in ALL_CASES if c[0] == "group-r4"]
    lost = {k: v for k, v in EXPECTED.items() if k != ("via_instance", "group")}
    assert any("the table expects a rejection" in m for m in mismatches(cases, lost))
    gained = {**EXPECTED, ("via_instance", "group"): _ANY}
    assert any("the table expects support" in m for m in mismatches(cases, gained))
    assert not mismatches(cases)
