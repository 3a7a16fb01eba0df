"""RMSNorm fusions (normonnx/optimize/fuse_rms.py): spellings, γ, Cast-to-fp32 wrappers, the native
op, refusals with reasons, and real exports."""

from __future__ import annotations

import numpy as np
import pytest
from optimize_helpers import check_numbers, constants_rng, export, model, ops, optimize, refusal, rng, run, torch64_out
from strict_tolerances import REWRITE_ATOL

from normonnx.spec import NormSpec
from normonnx.verify import tolerance

_CONST = constants_rng("test_fuse_rms")  # import-time constants only; tests draw from rng()

F16 = tolerance("float16")
W = (1.0 + 0.25 * _CONST.standard_normal(16)).astype(np.float32)
SQUARES = {"pow": "two = Constant <value = float {2.0}> ()\n sq = Pow(x, two)", "mul": "sq = Mul(x, x)"}
INVERSES = {
    "div": "n = Div(x, s)",
    "reciprocal": "r = Reciprocal(s)\n n = Mul(x, r)",
    "one_div": "one = Constant <value = float {1.0}> ()\n r = Div(one, s)\n n = Mul(x, r)",
}


def rms_text(
    *,
    square="pow",
    inverse="div",
    opset=17,
    axes="-1",
    keepdims=1,
    weight="y = Mul(w, n)",
    eps="eps = Constant <value = float {1e-6}> ()",
    inputs="",
    outputs="",
    dtype="float",
    shape="2,5,16",
    scale="",
) -> str:
    if opset >= 18:
        red = f"ax = Constant <value = int64[1] {{{axes}}}> ()\n ms0 = ReduceMean <keepdims = {keepdims}> (sq, ax)"
    else:
        red = f"ms0 = ReduceMean <axes = [{axes}], keepdims = {keepdims}> (sq)"
    sc = f"k = Constant <value = float {{{scale}}}> ()\n ms = Mul(ms0, k)" if scale else "ms = Identity(ms0)"
    sq = SQUARES[square] if dtype == "float" else "sq = Mul(x, x)"
    return f"""<ir_version: 8, opset_import: ["" : {opset}]>
rms ({dtype}[{shape}] x{inputs}) => ({dtype}[{shape}] y{outputs}) {{
 {sq}
 {red}
 {sc}
 {eps}
 ve = Add(ms, eps)
 s = Sqrt(ve)
 {INVERSES[inverse]}
 {weight}
}}"""


def x_of(shape=(2, 5, 16), dtype=np.float32) -> np.ndarray:
    return rng().standard_normal(shape).astype(dtype)


@pytest.mark.parametrize("square", ["pow", "mul"])
@pytest.mark.parametrize("inverse", ["div", "reciprocal", "one_div"])
def test_decomposed_spellings_fuse(square, inverse):
    m = model(rms_text(square=square, inverse=inverse), w=W)
    res = optimize(m)
    assert res.fired == {"rms_norm.decomposed": 1, "rms_norm.affine": 1}
    assert [(r["kind"], r["strategy"]) for r in res.lowerings] == [("rms", "decomposed")]
    assert "Pow" not in ops(res.model) and ops(res.model).count("ReduceMean") == 1
    check_numbers(res, m, x_of(), NormSpec("rms", eps=1e-6, normalized_shape=(16,), has_bias=False), {"weight": W})


def test_opset23_lowers_to_native_rmsnormalization():
    m = model(rms_text(opset=23), w=W)
    res = optimize(m)
    assert ops(res.model) == ["RMSNormalization"]
    check_numbers(res, m, x_of(), NormSpec("rms", eps=1e-6, normalized_shape=(16,), has_bias=False), {"weight": W})


def test_native_rmsnormalization_is_lifted():
    m = model(
        """<ir_version: 10, opset_import: ["" : 23]>
        g (float[2,5,16] x) => (float[2,5,16] y) { y = RMSNormalization <axis = -1, epsilon = 1e-6> (x, w) }""",
        w=W,
    )
    res = optimize(m)
    assert res.fired == {"rms_norm.native": 1}
    assert ops(res.model) == ["RMSNormalization"]
    check_numbers(res, m, x_of(), NormSpec("rms", eps=1e-6, normalized_shape=(16,), has_bias=False), {"weight": W})


def test_llama_cast_wrapper_fp16():
    """x.float() → RMS in fp32 → .to(fp16) → weight (fp16) · x: one fp16 RMSNorm."""
    text = rms_text(inverse="reciprocal", weight="n16 = Cast <to = 10> (n)\n y = Mul(w16, n16)", opset=18)
    text = text.replace("float[2,5,16] x)", "float16[2,5,16] x16)").replace("float[2,5,16] y", "float16[2,5,16] y")
    text = text.replace(" two = Constant", " x = Cast <to = 1> (x16)\n two = Constant", 1)
    w16 = W.astype(np.float16)
    m = model(text, w16=w16)
    res = optimize(m)
    assert res.fired == {"rms_norm.decomposed": 1, "rms_norm.cast_wrapper": 1, "rms_norm.affine": 1}
    assert [r["spec"].endswith("float16") for r in res.lowerings] == [True]
    assert "Pow" not in ops(res.model)
    spec = NormSpec("rms", eps=1e-6, normalized_shape=(16,), has_bias=False, dtype="float16")
    check_numbers(res, m, x_of(dtype=np.float16), spec, {"weight": w16.astype(np.float64)})


# -- negative -------------------------------------------------------------------------------------------
def test_scaled_mean_square_rewritten_exactly():
    """x/√(2·ms + ε) = 2^(−1/2)·x/√(ms + ε/2): an RMSNorm with corrected ε and weight."""
    m = model(rms_text(scale="2.0"), w=W)
    res = optimize(m)
    assert res.fired.get("rms_norm.decomposed") == 1, (res.fired, res.refused)
    proofs = [p.value for n in res.model.graph.node for p in n.metadata_props if p.key == "normonnx.proof"]
    assert proofs and "scaled by 2" in proofs[0]
    check_numbers(res, m, rng().standard_normal((2, 5, 16)).astype(np.float32))


def test_scale_computed_at_run_time_refused():
    """A mean square scaled by a graph input is not a norm with a constant ε."""
    text = rms_text(scale="2.0", inputs=", float k").replace("k = Constant <value = float {2.0}> ()\n ", "")
    res = optimize(model(text, w=W), verify=False)
    assert "computed at run time" in refusal(res, "rms_norm.decomposed")
    assert "rms_norm.decomposed" not in res.fired


def test_epsilon_not_constant_refused():
    res = optimize(model(rms_text(eps="", inputs=", float eps"), w=W), verify=False)
    assert "ε is not a constant ('eps' is a graph input)" in refusal(res, "rms_norm.decomposed")


def test_keepdims0_refused():
    m = model(rms_text(keepdims=0, shape="4,4,4", weight="y = Identity(n)"))
    res = optimize(m)
    assert "keepdims=0" in refusal(res, "rms_norm.decomposed")
    check_numbers(res, m, x_of((4, 4, 4)))


def test_fp16_statistics_without_cast_refused():
    m = model(rms_text(dtype="float16", eps="", weight="y = Identity(n)"), eps=np.array(1e-3, np.float16))
    res = optimize(m)
    assert "computed in float16" in refusal(res, "rms_norm.decomposed")
    assert not res.fired


def test_non_trailing_axes_refused():
    m = model(rms_text(axes="1", weight="y = Identity(n)"))
    res = optimize(m)
    assert "not the trailing axes" in refusal(res, "rms_norm.decomposed")


def test_weight_of_wrong_shape_not_absorbed():
    w = (1 + 0.1 * rng().standard_normal((5, 1))).astype(np.float32)
    m = model(rms_text(), w=w)
    res = optimize(m)
    assert "varies along axis 1" in refusal(res, "rms_norm.affine")
    assert res.fired == {"rms_norm.decomposed": 1}
    check_numbers(res, m, x_of())


def test_shared_intermediate_refused():
    m = model(rms_text(outputs=", float[2,5,1] ms0"), w=W)
    res = optimize(m)
    assert "graph output" in refusal(res, "rms_norm.decomposed")
    assert not res.fired


# -- real exports ------------------------------------------------------------------------------------------
def _hand_rms(dtype=None):
    import torch

    class RMS(torch.nn.Module):  # LLaMA's RMSNorm as people write it
        def __init__(self, d: int) -> None:
            super().__init__()
            self.weight = torch.nn.Parameter(1 + 0.2 * torch.randn(d))
            self.eps = 1e-6

        def forward(self, x):
            dt = x.dtype
            x = x.float()
            x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
            return self.weight * x.to(dt)

    m = RMS(16)
    return m.to(dtype) if dtype is not None else m


@pytest.mark.parametrize(("exporter", "opset"), [("legacy", 13), ("legacy", 17), ("dynamo", 18), ("dynamo", 21)])
def test_rms_exports(exporter, opset):
    import torch

    torch.manual_seed(0)
    mods = [_hand_rms()]
    if exporter == "dynamo":  # torch's legacy exporter has no aten::rms_norm
        rn = torch.nn.RMSNorm(16, eps=1e-6)
        with torch.no_grad():
            rn.weight.normal_(1, 0.2)
        mods.append(rn)
    x = torch.randn(2, 5, 16)
    for mod in mods:
        m = export(mod, x, exporter, opset)
        res = optimize(m)
        assert res.fired.get("rms_norm.decomposed") == 1 and res.fired.get("rms_norm.affine") == 1, res.fired
        assert [(r["kind"], r["strategy"]) for r in res.lowerings] == [("rms", "decomposed")]
        assert res.passed
        np.testing.assert_allclose(run(res.model, x.numpy())[0], torch64_out(mod, x), atol=REWRITE_ATOL)


def test_fp16_llama_rms_legacy_export():
    import torch

    torch.manual_seed(0)
    mod = _hand_rms(torch.float16)
    x = torch.randn(2, 5, 16).half()
    m = export(mod, x, "legacy", 17)
    res = optimize(m)
    assert res.fired.get("rms_norm.cast_wrapper") == 1, (res.fired, res.refused)
    assert res.lowerings[0]["spec"].endswith("float16")
    y = run(res.model, x.numpy())[0]
    assert y.dtype == np.float16
    np.testing.assert_allclose(y.astype(np.float64), torch64_out(mod, x), atol=F16.atol, rtol=F16.rtol)
