"""The fused forms of the trailing LayerNorm / RMSNorm: residual input (``N(x + r)``, the sum as an
optional second output; gated: ``N(x + gate·r)``) and AdaLN modulation (``N(x)·(1 + scale) + shift``).

Every strategy lowers them (the kernel and the function body as one node, native/decomposed as the
ops they stand for); the compiled kernels are checked against the float64 reference and against
torch fp32's own error on the stress inputs (offset 1e3, scale 1e-3, zero variance, a 1M-element
row through the two-phase path), with the sum output bitwise the float32 Add it replaces, and the
same file run without the library (function bodies) for portability.
"""

from __future__ import annotations

import json
import os

import numpy as np
import onnx
import pytest
from strict_tolerances import FUSED_ATOL, ISA_ATOL, ISA_RTOL, KERNEL_MAX_ABS, ZERO_VARIANCE_RTOL

import normonnx
from normonnx import kernels
from normonnx.errors import SpecError
from normonnx.lowering import build_model, check
from normonnx.norms import KINDS
from normonnx.spec import NormSpec

OPSET = 18
needs_lib = pytest.mark.skipif(
    not kernels.available(), reason=f"native kernel library not available: {kernels.unavailable_reason()}"
)

CASES = {
    "layer_res": NormSpec("layer", normalized_shape=(77,), residual=True, rank=3),
    "layer_res_w": NormSpec("layer", normalized_shape=(64,), residual=True, has_bias=False, rank=3),
    "layer_res_2axes": NormSpec("layer", normalized_shape=(3, 40), residual=True, rank=3),
    "rms_res": NormSpec("rms", normalized_shape=(96,), residual=True, has_bias=False, rank=3),
    "rms_res_noweight": NormSpec(
        "rms", normalized_shape=(33,), residual=True, has_weight=False, has_bias=False, rank=3
    ),
    "layer_mod": NormSpec(
        "layer", normalized_shape=(128,), modulation=True, has_weight=False, has_bias=False, eps=1e-6, rank=3
    ),
    "layer_res_mod": NormSpec(
        "layer", normalized_shape=(72,), residual=True, modulation=True, has_weight=False, has_bias=False, rank=3
    ),
    "layer_res_gate_mod": NormSpec(  # DiT's block: N(x + gate·r)·(1 + scale) + shift
        "layer",
        normalized_shape=(72,),
        residual=True,
        gated=True,
        modulation=True,
        has_weight=False,
        has_bias=False,
        rank=3,
    ),
    "layer_res_gate": NormSpec("layer", normalized_shape=(40,), residual=True, gated=True, rank=3),
    "rms_res_gate": NormSpec("rms", normalized_shape=(96,), residual=True, gated=True, has_bias=False, rank=3),
}
SHAPE = (2, 5)  # leading dims: N samples of T tokens


def _shape(spec: NormSpec, lead: tuple[int, ...] = SHAPE) -> tuple[int, ...]:
    ns = spec.normalized_shape or ()
    return (*lead[: 3 - len(ns)], *ns)


def _operands(spec: NormSpec, shape: tuple[int, ...], stress: str = "normal", seed: int = 0) -> dict[str, np.ndarray]:
    """Feeds X (R, scale, shift) for one stress pattern; float32."""
    rng = np.random.default_rng(seed)
    f32 = lambda a: np.asarray(a, np.float32)
    if stress == "offset":  # the residual stream far from 0: x + r ≈ 1e3 ± 1
        x, r = 1e3 + rng.standard_normal(shape), 0.5 * rng.standard_normal(shape)
    elif stress == "tiny_scale":
        x, r = 1e-3 * rng.standard_normal(shape), 1e-3 * rng.standard_normal(shape)
    elif stress == "zero_var":  # every normalised row constant (x + r too)
        k = len(spec.normalized_shape or ())
        x = np.broadcast_to(rng.standard_normal((*shape[:-k], *([1] * k))), shape)
        r = np.full(shape, 0.25)
    else:
        x, r = 2 * rng.standard_normal(shape) + 0.5, rng.standard_normal(shape)
    feeds = {"X": f32(x)}
    if spec.residual:
        feeds["R"] = f32(r)
    m = (shape[0], *([1] * (len(shape) - 2)), shape[-1])  # per sample and feature
    if spec.modulation:
        feeds["scale"] = f32(0.3 * rng.standard_normal(m))
        feeds["shift"] = f32(0.3 * rng.standard_normal(m))
    if spec.gated:  # zero_var: a constant gate keeps x + gate·r constant along the row
        feeds["gate"] = f32(np.full(m, 2.0) if stress == "zero_var" else 1.0 + 0.5 * rng.standard_normal(m))
    return feeds


def _sum(spec: NormSpec, feeds: dict[str, np.ndarray]) -> np.ndarray:
    """The float32 sum the fused node replaces: X + R, gated X + fl(gate·R) (numpy rounds each op)."""
    r = feeds["gate"] * feeds["R"] if spec.gated else feeds["R"]
    return feeds["X"] + r


def _params(spec: NormSpec) -> dict[str, np.ndarray]:
    return {
        k: np.asarray(v, np.float32) for k, v in KINDS[spec.kind].random_params(spec, np.random.default_rng(1)).items()
    }


def _reference(spec: NormSpec, feeds: dict[str, np.ndarray], params: dict[str, np.ndarray]) -> np.ndarray:
    """float64 N(fl32(x + r)) [·(1 + scale) + shift]: the sum rounded as the float32 Add it replaces
    (checked bitwise separately), everything after it exact."""
    x = _sum(spec, feeds) if spec.residual else feeds["X"]  # float32 (Mul and) Add
    p = {**params, **{k: feeds[k] for k in ("scale", "shift") if k in feeds}}
    return KINDS[spec.kind].reference(spec.replace(residual=False, gated=False), x.astype(np.float64), p)


def _torch(spec: NormSpec, feeds: dict[str, np.ndarray], params: dict[str, np.ndarray]) -> np.ndarray:
    import torch

    t = {k: torch.from_numpy(v) for k, v in feeds.items()}
    x = t["X"] + (t["gate"] * t["R"] if spec.gated else t["R"]) if spec.residual else t["X"]
    tp = {k: torch.from_numpy(v) for k, v in params.items()}
    y = KINDS[spec.kind].torch_forward(spec.replace(residual=False, gated=False, modulation=False), x, tp)
    if spec.modulation:
        y = y * (1 + t["scale"]) + t["shift"]
    return y.numpy()


def _model(spec: NormSpec, params: dict[str, np.ndarray], strategy: str, *, with_sum: bool = True) -> onnx.ModelProto:
    m = build_model(spec, params, OPSET if spec.kind != "rms" else 23, strategy)
    if spec.residual and not with_sum:  # the residual stream does not read the sum: one output
        node = next(n for n in m.graph.node if n.op_type in ("LayerNorm", "RMSNorm"))
        keep = [n for n in m.graph.node if n.name != "sum_output"]
        del m.graph.node[:]
        m.graph.node.extend(keep)
        del node.output[1:]
        outs = [o for o in m.graph.output if o.name != "S"]
        del m.graph.output[:]
        m.graph.output.extend(outs)
    return m


def _run(m: onnx.ModelProto, feeds: dict[str, np.ndarray], tmp_path, *, custom_ops: bool = True, threads: int = 2):
    """(outputs, op types onnxruntime executed, from its profiler)."""
    s = normonnx.session(m, threads=threads, optimize=False, profile=str(tmp_path / "prof"), custom_ops=custom_ops)
    outs = s.run(feeds)
    path = s.inner.end_profiling()
    with open(path) as f:
        events = json.load(f)
    os.remove(path)
    ops = sorted({e["args"]["op_name"] for e in events if e.get("cat") == "Node" and "op_name" in e.get("args", {})})
    return outs, ops


# -- spec and strategies -------------------------------------------------------------------------------
def test_fused_forms_are_declared_per_kind_and_rejected_elsewhere():
    with pytest.raises(SpecError, match="not supported on group norm"):
        KINDS["group"].validate(NormSpec("group", channels=4, groups=2, residual=True))
    with pytest.raises(SpecError, match="modulation is not supported on rms"):
        KINDS["rms"].validate(NormSpec("rms", normalized_shape=(8,), has_bias=False, modulation=True))
    with pytest.raises(SpecError, match="no γ/β of its own"):
        KINDS["layer"].validate(NormSpec("layer", normalized_shape=(8,), modulation=True))
    with pytest.raises(SpecError, match="trailing-axes layer norm only"):
        KINDS["layer"].validate(NormSpec("layer", normalized_shape=(8,), channels_first=True, residual=True))
    spec = CASES["layer_res_mod"]
    assert spec.key().endswith("_res_mod_e1em05_float32")
    attrs = KINDS["layer"].attributes(spec)
    assert attrs["has_residual"] == 1 and attrs["modulation"] == 1
    assert KINDS["layer"].spec_from_attributes(attrs, [False, False], "float32", 3) == spec


@pytest.mark.parametrize("strategy", ["native", "decomposed", "function"])
@pytest.mark.parametrize("case", list(CASES))
def test_every_strategy_lowers_the_fused_forms(case, strategy, tmp_path):
    """Strategies without a fused form spell out the Add / Mul-Add around their plain norm."""
    spec = CASES[case]
    assert check(spec, strategy, OPSET if spec.kind != "rms" else 23)
    params = _params(spec)
    feeds = _operands(spec, _shape(spec))
    m = _model(spec, params, strategy)
    onnx.checker.check_model(m)
    outs, ops = _run(m, feeds, tmp_path, custom_ops=False)
    np.testing.assert_allclose(outs[0], _reference(spec, feeds, params), atol=FUSED_ATOL, rtol=0)
    if spec.residual:
        np.testing.assert_array_equal(outs[1], _sum(spec, feeds))
    if strategy == "native":
        assert {"LayerNormalization", "RMSNormalization"} & set(ops)
        assert ("Add" in ops) == (spec.residual or spec.modulation)


# -- kernels -------------------------------------------------------------------------------------------
@needs_lib
@pytest.mark.parametrize("with_sum", [True, False], ids=["sum_read", "sum_unread"])
@pytest.mark.parametrize("case", list(CASES))
def test_kernel_runs_and_matches_the_portable_body(case, with_sum, tmp_path):
    spec = CASES[case]
    params = _params(spec)
    feeds = _operands(spec, _shape(spec))
    m = _model(spec, params, "native_kernel", with_sum=with_sum)
    outs, ops = _run(m, feeds, tmp_path)
    assert ops == sorted([KINDS[spec.kind].normonnx_op, "Identity"]), ops  # the kernel ran, no body ops
    body, body_ops = _run(m, feeds, tmp_path, custom_ops=False)
    assert KINDS[spec.kind].normonnx_op not in body_ops  # without the library: the function body
    ref = _reference(spec, feeds, params)
    assert float(np.abs(outs[0] - ref).max()) < KERNEL_MAX_ABS
    np.testing.assert_allclose(outs[0], body[0], atol=FUSED_ATOL, rtol=0)
    assert len(outs) == (2 if spec.residual and with_sum else 1)
    if spec.residual and with_sum:
        np.testing.assert_array_equal(outs[1], _sum(spec, feeds))  # bitwise the float32 Add


FLOOR = 1e-7  # below this both errors are float32 rounding of the output


@needs_lib
@pytest.mark.parametrize("stress", ["offset", "tiny_scale", "normal"])
@pytest.mark.parametrize("case", list(CASES))
def test_stress_at_most_torch_error(case, stress, tmp_path):
    spec = CASES[case]
    params = _params(spec)
    feeds = _operands(spec, _shape(spec, (4, 33)), stress, seed=3)
    (y, *_), _ = _run(_model(spec, params, "native_kernel"), feeds, tmp_path)
    ref = _reference(spec, feeds, params)
    err = float(np.abs(y - ref).max())
    terr = float(np.abs(_torch(spec, feeds, params) - ref).max())
    assert err <= max(terr, FLOOR), f"{err:.3g} vs torch {terr:.3g}"


@needs_lib
@pytest.mark.parametrize("case", list(CASES))
def test_zero_variance_gives_exactly_bias_or_shift(case, tmp_path):
    spec = CASES[case]
    params = _params(spec)
    feeds = _operands(spec, _shape(spec), "zero_var")
    (y, *_), _ = _run(_model(spec, params, "native_kernel", with_sum=False), feeds, tmp_path)
    ref = _reference(spec, feeds, params)
    if spec.kind == "rms":  # no mean subtracted: x / √(x² + ε)·γ
        np.testing.assert_allclose(y, ref, rtol=ZERO_VARIANCE_RTOL, atol=0)
    else:  # x − μ is exactly 0: β, 0, or shift (0·(1 + scale) + shift)
        np.testing.assert_array_equal(y, ref.astype(np.float32))


LARGE = {
    "layer_res": NormSpec("layer", normalized_shape=(1 << 20,), residual=True, rank=2),
    "rms_res": NormSpec("rms", normalized_shape=(1 << 20,), residual=True, has_bias=False, rank=2),
    "layer_res_mod": NormSpec(
        "layer", normalized_shape=(1 << 20,), residual=True, modulation=True, has_weight=False, has_bias=False, rank=2
    ),
    "rms_res_gate": NormSpec("rms", normalized_shape=(1 << 20,), residual=True, gated=True, has_bias=False, rank=2),
}


@needs_lib
@pytest.mark.parametrize("with_sum", [True, False], ids=["sum_read", "sum_unread"])
@pytest.mark.parametrize("stress", ["offset", "normal"])
@pytest.mark.parametrize("case", list(LARGE))
def test_million_element_rows(case, stress, with_sum, tmp_path):
    """2 rows of 1M elements: the kernels' chunked two-phase path, with the sum in y or its own output."""
    spec = LARGE[case]
    params = _params(spec)
    feeds = _operands(spec, (2, 1 << 20), stress, seed=5)
    outs, _ = _run(_model(spec, params, "native_kernel", with_sum=with_sum), feeds, tmp_path)
    ref = _reference(spec, feeds, params)
    err = float(np.abs(outs[0] - ref).max())
    terr = float(np.abs(_torch(spec, feeds, params) - ref).max())
    assert err <= max(terr, FLOOR) and err < 2e-6, f"{err:.3g} vs torch {terr:.3g}"
    if with_sum:
        np.testing.assert_array_equal(outs[1], _sum(spec, feeds))


@needs_lib
def test_deterministic_across_thread_counts_and_isas(monkeypatch, tmp_path):
    spec = CASES["layer_res_mod"]
    params = _params(spec)
    feeds = _operands(spec, (3, 300, 72))
    m = _model(spec, params, "native_kernel")
    y1, _ = _run(m, feeds, tmp_path, threads=1)
    y2, _ = _run(m, feeds, tmp_path, threads=2)
    np.testing.assert_array_equal(y1[0], y2[0])
    monkeypatch.setenv("NORMONNX_KERNELS_ISA", "generic")
    yg, _ = _run(m, feeds, tmp_path)
    np.testing.assert_allclose(yg[0], y1[0], atol=ISA_ATOL, rtol=ISA_RTOL)
    np.testing.assert_array_equal(yg[1], y1[1])


@needs_lib
def test_scale_per_sample_with_a_shared_shift(tmp_path):
    spec = CASES["layer_mod"]
    feeds = _operands(spec, (3, 7, 128))
    feeds["shift"] = feeds["shift"][:1]  # [1, 1, C] against a [3, 1, C] scale
    (y,), ops = _run(_model(spec, {}, "native_kernel"), feeds, tmp_path)
    assert "LayerNorm" in ops
    assert float(np.abs(y - _reference(spec, feeds, {})).max()) < 2e-6


@needs_lib
@pytest.mark.parametrize(
    "feed, message",
    [
        ("R", "the residual input must have X's shape"),
        ("scale", "scale must be \\[N or 1, 1, ..., 1, normalized_shape\\]"),
    ],
)
def test_kernel_rejects_operands_of_the_wrong_shape(feed, message, tmp_path):
    spec = CASES["layer_res_mod"]
    params = _params(spec)
    feeds = _operands(spec, (2, 5, 72))
    feeds[feed] = feeds[feed][:1] if feed == "R" else np.ones((2, 5, 72), np.float32)  # R: batch 1; scale per token
    with pytest.raises(Exception, match=message):
        _run(_model(spec, params, "native_kernel"), feeds, tmp_path)


def test_native_lowering_survives_onnxruntime_graph_optimizations(tmp_path):
    """LayerNormalization(x, γ, "") + Mul + Add of run-time values segfaulted onnxruntime 1.32's
    optimizer (every default session); the native lowering omits the absent bias instead."""
    spec = CASES["layer_mod"]
    m = _model(spec, {}, "native")
    ln = next(n for n in m.graph.node if n.op_type == "LayerNormalization")
    assert len(ln.input) == 2
    feeds = _operands(spec, _shape(spec))
    (y,) = normonnx.session(m, threads=2, optimize=True).run(feeds)
    np.testing.assert_allclose(y, _reference(spec, feeds, {}), atol=FUSED_ATOL, rtol=0)


# -- per-sample operands [N, C] (sample_operands=1) -----------------------------------------------------
SAMPLE_CASES = ("layer_mod", "layer_res_gate_mod", "layer_res_gate", "rms_res_gate")


def _rows(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The same feeds with scale / shift / gate ``[N, 1, C]`` → ``[N, C]`` (what a Split gives)."""
    return {k: v[:, 0, :] if k in ("scale", "shift", "gate") else v for k, v in feeds.items()}


def test_sample_operands_spec_round_trips_and_needs_a_rank():
    spec = CASES["layer_res_gate_mod"].replace(sample_operands=True)
    assert spec.key().endswith("_res_gate_mod_so3_e1em05_float32")  # the body's Unsqueeze axes depend on the rank
    attrs = KINDS["layer"].attributes(spec)
    assert attrs["sample_operands"] == 1
    assert KINDS["layer"].spec_from_attributes(attrs, [False, False], "float32", 3) == spec
    with pytest.raises(SpecError, match="needs modulation=1 or has_gate=1"):
        KINDS["layer"].validate(CASES["layer_res"].replace(sample_operands=True))
    with pytest.raises(SpecError, match="known input rank > 1, got None"):
        KINDS["layer"].validate(spec.replace(rank=None))
    # the float64 reference reads [N, C] rows as the function body does: aligned to axis 0
    base = CASES["layer_res_gate_mod"]
    feeds = _operands(base, (3, 7, 72))
    p = {"residual": feeds["R"], **{k: feeds[k] for k in ("scale", "shift", "gate")}}
    rows = {k: v[:, 0, :] if k != "residual" else v for k, v in p.items()}
    np.testing.assert_array_equal(
        KINDS["layer"].reference(spec, feeds["X"], rows), KINDS["layer"].reference(base, feeds["X"], p)
    )


@needs_lib
@pytest.mark.parametrize("case", SAMPLE_CASES)
def test_sample_operands_give_bitwise_the_unsqueezed_numbers(case, tmp_path):
    """The kernel reads row n of a ``[N, C]`` operand for sample n: the same floats at the same places
    as the ``[N, 1, C]`` form, so bitwise the same outputs; without the library the function body
    (onnxruntime inlining it, and onnx.reference) unsqueezes them itself."""
    from onnx.reference import ReferenceEvaluator

    spec = CASES[case]
    params = _params(spec)
    feeds = _operands(spec, _shape(spec, (3, 7)), seed=7)
    so = spec.replace(sample_operands=True)
    m, m_so = _model(spec, params, "native_kernel"), _model(so, params, "native_kernel")
    node = next(n for n in m_so.graph.node if n.domain == kernels.DOMAIN)
    assert {a.name: a.i for a in node.attribute}["sample_operands"] == 1
    before, _ = _run(m, feeds, tmp_path)
    after, ops = _run(m_so, _rows(feeds), tmp_path)
    assert ops == sorted([KINDS[spec.kind].normonnx_op, "Identity"]), ops  # the kernel ran, no Unsqueeze
    for a, b in zip(after, before, strict=True):
        np.testing.assert_array_equal(a, b)
    ref = _reference(spec, feeds, params)
    body, body_ops = _run(m_so, _rows(feeds), tmp_path, custom_ops=False)
    assert "Unsqueeze" in body_ops and KINDS[spec.kind].normonnx_op not in body_ops
    evaluated = ReferenceEvaluator(m_so).run(None, _rows(feeds))
    for y in (body[0], evaluated[0]):
        np.testing.assert_allclose(y, ref, atol=FUSED_ATOL, rtol=0)
    if spec.residual:
        np.testing.assert_array_equal(body[1], _sum(spec, feeds))
        np.testing.assert_array_equal(evaluated[1], _sum(spec, feeds))


@needs_lib
def test_sample_operands_shared_row_and_wrong_shapes(tmp_path):
    spec = CASES["layer_res_gate_mod"].replace(sample_operands=True)
    params = _params(spec)
    feeds = _rows(_operands(spec, (3, 7, 72)))
    feeds["shift"] = feeds["shift"][:1]  # [1, C]: one row shared by the samples
    m = _model(spec, params, "native_kernel")
    (y, s), _ = _run(m, feeds, tmp_path)
    unsq = {k: v[:, None, :] if k in ("scale", "shift", "gate") else v for k, v in feeds.items()}
    np.testing.assert_allclose(y, _reference(spec.replace(sample_operands=False), unsq, params), atol=2e-6, rtol=0)
    np.testing.assert_array_equal(s, _sum(spec, unsq))
    # the model declares scale [m0, m2]: a rank-2 feed of another batch or width reaches the kernel's check
    for bad in (np.ones((2, 72), np.float32), np.ones((3, 71), np.float32)):
        with pytest.raises(Exception, match="with sample_operands=1, scale must be \\[N or 1, normalized_shape\\]"):
            _run(m, {**feeds, "scale": bad}, tmp_path)
