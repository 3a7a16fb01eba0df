"""normonnx.nn layers: one norm node each at opsets 13-23, the same numbers as a torch reference
(forward and backward, float64 gradcheck), within 2x torch fp32's error on stress inputs, and a
file that runs in a plain onnxruntime session without normonnx's kernel library."""

from __future__ import annotations

import copy

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from nn_cases import BY_ID, CASES, inputs

from normonnx import nn as nnx
from normonnx.errors import SpecError
from normonnx.exporter import export
from normonnx.runtime import session
from normonnx.verify import tolerance

OPSETS = (13, 17, 18, 21, 23)
F32 = tolerance("float32")
#: an exported layer against torch float32: the table's rtol, with an absolute floor 10x inside the
#: table's (unit-scale outputs of one norm, short reductions)
LAYER_ATOL = 1e-5
#: float64 forward (and backward) against the torch reference formula in float64: the same math, so
#: only rounding order differs (~1e-15); stricter than the table's float64 entry (1e-9), which is
#: for an ONNX graph on another runtime
FORWARD64_TOL = 1e-10
BACKWARD64_RTOL = tolerance("float64").rtol  # the table's: gradients take a few more ops than the forward
#: a float16 layer exported with float32 statistics against torch's float16 run: one float16 rounding
#: each (~1e-3 at outputs near 1); 5x inside the table's float16 atol (1e-2)
HALF_EXPORT_ATOL = 2e-3
IDS = [c.id for c in CASES]


def _names(case):
    return ["x", "c"][: len(case.shapes)]


def _export(case, model, args, path, **kw):
    return export(model, args, path, input_names=_names(case), **kw)


def _norm_groups(model: onnx.ModelProto) -> set[str]:
    """Distinct norms of the lowered graph: every node a lowering emits is tagged with its norm."""
    return {p.value for n in model.graph.node for p in n.metadata_props if p.key == "normonnx.norm"}


ONE_NODE = [(c.id, o) for c in CASES for o in OPSETS]


@pytest.mark.parametrize(("cid", "opset"), ONE_NODE)
def test_exports_as_one_norm_node(cid, opset, tmp_path):
    case = BY_ID[cid]
    model = case.make()
    args = inputs(case)
    res = _export(case, model, args, tmp_path / "m.onnx", opset=opset)
    m = onnx.load(tmp_path / "m.onnx")
    assert res.opset == opset
    if case.kind is None:  # weight standardization: a constant at inference, folded in float64
        assert res.lowerings == [] and res.fired.get("param_norm.fold") == 1
        assert _norm_groups(m) == set()
        assert [n.op_type for n in m.graph.node] == ["Conv"]
    else:
        assert [r.kind for r in res.lowerings] == [case.kind], res.lowerings
        assert len(_norm_groups(m)) == 1
    with torch.no_grad():
        want = model(*args)
    want = want if isinstance(want, tuple) else (want,)
    feeds = {n: a.numpy() for n, a in zip(_names(case), args)}
    got = session(str(tmp_path / "m.onnx")).run(feeds)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w.numpy(), rtol=F32.rtol, atol=LAYER_ATOL)


@pytest.mark.parametrize("cid", IDS)
def test_target_cuda_exports_one_norm_each_structurally(cid, tmp_path):
    """``--target cuda``: the same one norm per layer, lowered for the CUDA provider (no CPU kernel
    domain; contrib ops only where they are stable). No GPU here: structure, and the numbers where
    the lowered ops also run on CPU."""
    case = BY_ID[cid]
    model, args = case.make(), inputs(case)
    res = _export(case, model, args, tmp_path / "c.onnx", target="cuda")
    m = onnx.load(tmp_path / "c.onnx")
    assert res.target == "cuda"
    assert not any(n.domain == "normonnx.kernels" for n in m.graph.node)  # CPU kernels are not for CUDA
    if case.kind is None:
        assert res.lowerings == [] and res.fired.get("param_norm.fold") == 1
    else:
        assert [r.kind for r in res.lowerings] == [case.kind], res.lowerings
        assert len(_norm_groups(m)) == 1
    if not any(n.domain == "com.microsoft" for n in m.graph.node):  # standard ops: CPU runs them too
        with torch.no_grad():
            want = model(*args)
        want = want if isinstance(want, tuple) else (want,)
        got = session(str(tmp_path / "c.onnx")).run({n: a.numpy() for n, a in zip(_names(case), args)})
        for g, w in zip(got, want):
            np.testing.assert_allclose(g, w.numpy(), rtol=F32.rtol, atol=LAYER_ATOL)


@pytest.mark.parametrize("cid", IDS)
def test_file_runs_without_normonnx(cid, tmp_path):
    """A plain onnxruntime session (no custom-op library registered) runs the carried function
    bodies of the portable strategies and gives the same numbers."""
    case = BY_ID[cid]
    model, args = case.make(), inputs(case)
    _export(case, model, args, tmp_path / "m.onnx", opset=18, prefer=["native_kernel", "function", "decomposed"])
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(str(tmp_path / "m.onnx"), so, providers=["CPUExecutionProvider"])
    got = sess.run(None, {n: a.numpy() for n, a in zip(_names(case), args)})
    with torch.no_grad():
        want = model(*args)
    want = want if isinstance(want, tuple) else (want,)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w.numpy(), rtol=F32.rtol, atol=LAYER_ATOL)


@pytest.mark.parametrize("cid", IDS)
def test_forward_and_backward_equal_the_torch_reference(cid):
    case = BY_ID[cid]
    model = case.make().double()
    args = [a.requires_grad_(True) for a in inputs(case, dtype=torch.float64)]
    ours = model(*args)
    ref = case.reference(model, *args)
    ours = ours if isinstance(ours, tuple) else (ours,)
    ref = ref if isinstance(ref, tuple) else (ref,)
    for o, r in zip(ours, ref, strict=True):
        torch.testing.assert_close(o, r, rtol=FORWARD64_TOL, atol=FORWARD64_TOL)
    leaves = [*args, *model.parameters()]
    cot = [torch.randn(o.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(3)) for o in ours]
    g_ours = torch.autograd.grad(ours, leaves, cot, allow_unused=True)
    g_ref = torch.autograd.grad(ref, leaves, cot, allow_unused=True)
    for a, b in zip(g_ours, g_ref, strict=True):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, rtol=BACKWARD64_RTOL, atol=FORWARD64_TOL)
    assert any(g is not None for g in g_ours[: len(args)])


@pytest.mark.parametrize("cid", IDS)
def test_gradcheck_float64(cid):
    case = BY_ID[cid]
    model = case.make().double()
    args = tuple(a.requires_grad_(True) for a in inputs(case, dtype=torch.float64))
    params = tuple(model.parameters())

    def f(*flat):
        xs, ps = flat[: len(args)], flat[len(args) :]
        return torch.func.functional_call(model, {n: p for (n, _), p in zip(model.named_parameters(), ps)}, xs)

    assert torch.autograd.gradcheck(f, (*args, *params), eps=1e-6, atol=1e-5)


FLOOR = 1e-7  # ~1 ulp at unit scale, so "2x torch" is not a bound of 0 where torch is exact


@pytest.mark.parametrize("stress", ["offset", "tiny_scale"])
@pytest.mark.parametrize("cid", IDS)
def test_within_2x_torch_fp32_error_on_stress_inputs(cid, stress, tmp_path):
    """Offset 1e3 (N(1000, 1)) and tiny scale (N(0, 1e-3²)) inputs: onnxruntime's error against
    the float64 model is at most 2x torch fp32's own (inputs rounded to fp32 for both)."""
    case = BY_ID[cid]
    model = case.make()
    g = torch.Generator().manual_seed(5)
    raw = [torch.randn(s, generator=g, dtype=torch.float64) for s in case.shapes]
    x = raw[0] + 1000.0 if stress == "offset" else raw[0] * 1e-3
    args = tuple(a.float() for a in (x, *raw[1:]))
    _export(case, model, inputs(case), tmp_path / "m.onnx", opset=18)
    with torch.no_grad():
        ref = copy.deepcopy(model).double()(*(a.double() for a in args))
        t32 = model(*args)
    ref = ref if isinstance(ref, tuple) else (ref,)
    t32 = t32 if isinstance(t32, tuple) else (t32,)
    got = session(str(tmp_path / "m.onnx")).run({n: a.numpy() for n, a in zip(_names(case), args)})
    for o, t, r in zip(got, t32, ref):
        r = r.numpy()
        err = float(np.abs(o.astype(np.float64) - r).max())
        terr = float(np.abs(t.double().numpy() - r).max())
        assert np.isfinite(o).all()
        assert err <= 2 * max(terr, FLOOR * max(1.0, float(np.abs(r).max()))), f"{err:.3g} vs torch {terr:.3g}"


def test_group_norm_keeps_float32_statistics_in_a_half_model(tmp_path):
    """``stats_dtype=torch.float32``: a float16 GroupNorm+SiLU computes in float32 and rounds once;
    the export is one float32 norm node between two Casts."""
    gn = BY_ID["group_silu"].make()
    ref_model = copy.deepcopy(gn).double()
    half = nnx.GroupNorm(2, 8, activation="silu", stats_dtype=torch.float32)
    half.load_state_dict(gn.state_dict())
    half = half.half().eval()
    x = (1000.0 + torch.randn(2, 8, 5, 4, generator=torch.Generator().manual_seed(0))).half()
    with torch.no_grad():
        y = half(x)
        ref = ref_model(x.double())
    assert y.dtype == torch.float16
    # one fp16 rounding of the output: within an fp16 ulp of the float64 result
    assert float((y.double() - ref).abs().max()) <= 1e-3 * max(1.0, float(ref.abs().max()))
    res = export(half, (x,), tmp_path / "h.onnx", opset=18)
    assert [(r.kind, r.spec.endswith("float32")) for r in res.lowerings] == [("group", True)]
    (got,) = session(str(tmp_path / "h.onnx")).run({"x": x.numpy()})
    np.testing.assert_allclose(got.astype(np.float64), y.double().numpy(), atol=HALF_EXPORT_ATOL)


def test_batch_norm_trains_like_torch():
    ours, theirs = nnx.BatchNorm(4, momentum=0.2), torch.nn.BatchNorm2d(4, momentum=0.2)
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(3, 4, 5, 5, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(ours(x), theirs(x), rtol=0, atol=0)
    torch.testing.assert_close(ours.running_var, theirs.running_var, rtol=0, atol=0)
    assert int(ours.num_batches_tracked) == 1


def test_adaln_zero_init_starts_as_identity_gate():
    ada = nnx.AdaLayerNorm(16, 12, gate=True, zero_init=True)
    x, c = torch.randn(2, 5, 16), torch.randn(2, 12)
    y, gate = ada(x, c)
    torch.testing.assert_close(y, torch.nn.functional.layer_norm(x, (16,), eps=1e-6))
    assert gate.shape == (2, 1, 16) and not gate.any()


def test_state_dicts_of_other_shapes_and_names_load():
    gn = nnx.GroupNorm(2, 8)
    gn.load_state_dict({"weight": torch.full((1, 8, 1, 1), 2.0), "bias": torch.zeros(1, 8, 1, 1)})
    assert gn.weight.shape == (8,) and float(gn.weight.detach()[0]) == 2.0
    grn = nnx.GlobalResponseNorm(8)  # ConvNeXt-V2's own GRN: gamma/beta of shape [1, 1, 1, C]
    grn.load_state_dict({"gamma": torch.ones(1, 1, 1, 8), "beta": torch.zeros(1, 1, 1, 8)})
    assert float(grn.weight.detach().sum()) == 8.0


@pytest.mark.parametrize(
    ("make", "words"),
    [
        (lambda: nnx.GroupNorm(3, 8), "valid num_groups"),
        (lambda: nnx.GroupNorm(2, 8, activation="gelu"), "unknown activation"),
        (lambda: nnx.LayerNorm(8, channel_axis=2), "channel_axis=2"),
        (lambda: nnx.LayerNorm((4, 4), channel_axis=1), "axis 1 only"),
        (lambda: nnx.GlobalResponseNorm(8, data_format="nhwc"), "data_format"),
    ],
)
def test_bad_arguments_are_user_errors(make, words):
    with pytest.raises(SpecError) as e:
        make()
    text = str(e.value) + str(getattr(e.value, "note", ""))
    assert words in text
