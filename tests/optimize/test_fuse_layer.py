"""LayerNorm fusions (normonnx/optimize/fuse_layer.py): every spelling of the decomposition, the
native op, channels-first forms, Cast wrappers — and the refusals, each with its reason."""

from __future__ import annotations

import numpy as np
import pytest
from optimize_helpers import (
    check_numbers,
    constants_rng,
    export,
    model,
    ops,
    optimize,
    refusal,
    rng,
    run,
    torch64_out,
    torch_out,
)
from strict_tolerances import REWRITE_ATOL

from normonnx.spec import NormSpec

_CONST = constants_rng("test_fuse_layer")  # import-time constants only; tests draw from rng()

GAMMA = (1.0 + 0.25 * _CONST.standard_normal(16)).astype(np.float32)
BETA = (0.25 * _CONST.standard_normal(16)).astype(np.float32)

SQUARES = {"pow": "two = Constant <value = float {2.0}> ()\n sq = Pow(d, two)", "mul": "sq = Mul(d, d)"}
INVERSES = {
    "div": "n = Div(d, s)",
    "reciprocal": "r = Reciprocal(s)\n n = Mul(d, r)",
    "one_div": "one = Constant <value = float {1.0}> ()\n r = Div(one, s)\n n = Mul(r, d)",
    "pow": "h = Constant <value = float {-0.5}> ()\n r = Pow(ve, h)\n n = Mul(d, r)",
}


def ln_text(
    *,
    square: str = "pow",
    inverse: str = "div",
    affine: bool = True,
    opset: int = 17,
    shape: str = "2,5,16",
    axes: str = "-1",
    var_axes: str | None = None,
    keepdims: int = 1,
    eps: str = "eps = Constant <value = float {1e-5}> ()",
    inputs: str = "",
    outputs: str = "",
    dtype: str = "float",
    gamma: str = "gamma",
    var_scale: str = "",
) -> str:
    var_axes = var_axes or axes
    if opset >= 18:
        red_m = f"axm = Constant <value = int64[{len(axes.split(','))}] {{{axes}}}> ()\n mean = ReduceMean(x, axm)"
        red_v = (
            f"axv = Constant <value = int64[{len(var_axes.split(','))}] {{{var_axes}}}> ()\n"
            f" var0 = ReduceMean <keepdims = {keepdims}> (sq, axv)"
        )
    else:
        red_m = f"mean = ReduceMean <axes = [{axes}]> (x)"
        red_v = f"var0 = ReduceMean <axes = [{var_axes}], keepdims = {keepdims}> (sq)"
    scale = (
        f"k = Constant <value = float {{{var_scale}}}> ()\n var = Mul(var0, k)" if var_scale else "var = Identity(var0)"
    )
    square_line = SQUARES[square] if dtype == "float" else "sq = Mul(d, d)"
    tail = f"g = Mul(n, {gamma})\n y = Add(g, beta)" if affine else "y = Identity(n)"
    return f"""<ir_version: 8, opset_import: ["" : {opset}]>
ln ({dtype}[{shape}] x{inputs}) => ({dtype}[{shape}] y{outputs}) {{
 {red_m}
 d = Sub(x, mean)
 {square_line}
 {red_v}
 {scale}
 {eps}
 ve = Add(var, eps)
 s = Sqrt(ve)
 {INVERSES[inverse]}
 {tail}
}}"""


def x_of(shape: tuple[int, ...], dtype=np.float32) -> np.ndarray:
    return rng().standard_normal(shape).astype(dtype)


# -- positive: every spelling --------------------------------------------------------------------------
@pytest.mark.parametrize("square", ["pow", "mul"])
@pytest.mark.parametrize("inverse", ["div", "reciprocal", "one_div", "pow"])
def test_decomposed_spellings_fuse_to_one_layernorm(square, inverse):
    m = model(ln_text(square=square, inverse=inverse), gamma=GAMMA, beta=BETA)
    res = optimize(m)
    assert ops(res.model) == ["LayerNormalization"]
    assert res.fired == {"layer_norm.decomposed": 1, "layer_norm.affine": 2}
    assert [(r["kind"], r["strategy"]) for r in res.lowerings] == [("layer", "native")]
    spec = NormSpec("layer", eps=1e-5, normalized_shape=(16,))
    check_numbers(res, m, x_of((2, 5, 16)), spec, {"weight": GAMMA, "bias": BETA})


def test_opset18_axes_input_and_no_affine():
    m = model(ln_text(opset=18, affine=False))
    res = optimize(m)
    assert ops(res.model) == ["LayerNormalization"]
    assert res.fired == {"layer_norm.decomposed": 1}
    spec = NormSpec("layer", eps=1e-5, normalized_shape=(16,), has_weight=False, has_bias=False)
    check_numbers(res, m, x_of((2, 5, 16)), spec)


def test_several_trailing_axes():
    g, b = GAMMA[:12].reshape(3, 4), BETA[:12].reshape(3, 4)
    m = model(ln_text(shape="2,5,3,4", axes="-2,-1"), gamma=g, beta=b)
    res = optimize(m)
    assert ops(res.model) == ["LayerNormalization"]
    assert res.fired["layer_norm.decomposed"] == 1
    spec = NormSpec("layer", eps=1e-5, normalized_shape=(3, 4))
    check_numbers(res, m, x_of((2, 5, 3, 4)), spec, {"weight": g, "bias": b})


def test_channels_first_decomposition_convnext():
    """ConvNeXt's LayerNorm(channels_first): statistics over axis 1, γ[:, None, None]."""
    g, b = GAMMA[:8].reshape(8, 1, 1), BETA[:8].reshape(8, 1, 1)
    m = model(ln_text(shape="2,8,3,5", axes="1"), gamma=g, beta=b)
    res = optimize(m)
    assert res.fired == {"layer_norm.decomposed": 1, "layer_norm.affine": 2}
    assert [(r["kind"], r["strategy"]) for r in res.lowerings] == [("layer", "decomposed")]
    assert "_cf_" in res.lowerings[0]["spec"]
    assert "ReduceSumSquare" in ops(res.model) and "Pow" not in ops(res.model)  # the float64 two-pass form
    spec = NormSpec("layer", eps=1e-5, normalized_shape=(8,), channels_first=True)
    check_numbers(res, m, x_of((2, 8, 3, 5)), spec, {"weight": g.reshape(8), "bias": b.reshape(8)})


def test_keepdims0_restored_by_reshape_fuses():
    """What the dynamo exporter emits for var(): ReduceMean(keepdims=0) then Reshape back."""
    text = ln_text(keepdims=0).replace(
        "var = Identity(var0)", "shp = Constant <value = int64[3] {2,5,1}> ()\n var = Reshape(var0, shp)"
    )
    m = model(text, gamma=GAMMA, beta=BETA)
    res = optimize(m)
    assert ops(res.model) == ["LayerNormalization"]
    check_numbers(
        res, m, x_of((2, 5, 16)), NormSpec("layer", eps=1e-5, normalized_shape=(16,)), {"weight": GAMMA, "bias": BETA}
    )


def test_transpose_layernorm_transpose_becomes_channels_first():
    m = model(
        """<ir_version: 8, opset_import: ["" : 17]>
        g (float[2,8,3,5] x) => (float[2,8,3,5] y) {
          t = Transpose <perm = [0, 2, 3, 1]> (x)
          l = LayerNormalization <axis = -1, epsilon = 1e-6> (t, gamma, beta)
          y = Transpose <perm = [0, 3, 1, 2]> (l)
        }""",
        gamma=GAMMA[:8],
        beta=BETA[:8],
    )
    res = optimize(m)
    assert res.fired == {"layer_norm.native": 1, "layer_norm.channels_first": 1}
    assert "Transpose" not in ops(res.model)
    spec = NormSpec("layer", eps=1e-6, normalized_shape=(8,), channels_first=True)
    check_numbers(res, m, x_of((2, 8, 3, 5)), spec, {"weight": GAMMA[:8], "bias": BETA[:8]})


def test_cast_wrapper_fp16():
    """Cast(fp16→fp32) → LayerNorm in fp32 → Cast(→fp16) is exactly an fp16 LayerNorm."""
    g16 = GAMMA.astype(np.float16).astype(np.float32)  # exactly representable in fp16
    text = (
        ln_text(shape="2,5,16")
        .replace("float[2,5,16] x", "float16[2,5,16] x16")
        .replace("float[2,5,16] y", "float16[2,5,16] y16")
    )
    text = text.replace(" mean = ReduceMean", " x = Cast <to = 1> (x16)\n mean = ReduceMean", 1).replace(
        "y = Add(g, beta)", "y = Add(g, beta)\n y16 = Cast <to = 10> (y)"
    )
    b16 = BETA.astype(np.float16).astype(np.float32)
    m = model(text, gamma=g16, beta=b16)
    res = optimize(m)
    assert res.fired["layer_norm.cast_wrapper"] == 1
    assert ops(res.model) == ["LayerNormalization"]
    x = x_of((2, 5, 16), np.float16)
    spec = NormSpec("layer", eps=1e-5, normalized_shape=(16,), dtype="float16")
    check_numbers(res, m, x, spec, {"weight": g16, "bias": b16})


def test_cast_wrapper_refused_when_gamma_not_fp16_exact():
    g = GAMMA + np.float32(1e-5)  # not representable in fp16
    text = ln_text().replace("float[2,5,16] x", "float16[2,5,16] x16").replace("float[2,5,16] y", "float16[2,5,16] y16")
    text = text.replace(" mean = ReduceMean", " x = Cast <to = 1> (x16)\n mean = ReduceMean", 1).replace(
        "y = Add(g, beta)", "y = Add(g, beta)\n y16 = Cast <to = 10> (y)"
    )
    m = model(text, gamma=g, beta=BETA)
    res = optimize(m)
    assert "not exactly representable in float16" in refusal(res, "layer_norm.cast_wrapper")
    assert res.fired["layer_norm.decomposed"] == 1  # the fp32 norm is still fused, casts stay outside
    assert ops(res.model).count("Cast") == 2
    check_numbers(res, m, x_of((2, 5, 16), np.float16))


def test_shared_gamma_initializer_still_fuses():
    """γ read by another node too: fusing only references it, so that is not a reason to refuse."""
    text = ln_text(outputs=", float[2,5,16] z").replace("y = Add(g, beta)", "y = Add(g, beta)\n z = Mul(x, gamma)")
    m = model(text, gamma=GAMMA, beta=BETA)
    res = optimize(m)
    assert res.fired["layer_norm.affine"] == 2
    x = x_of((2, 5, 16))
    for a, b in zip(run(res.model, x), run(m, x)):
        np.testing.assert_allclose(a, b, atol=REWRITE_ATOL)


# -- negative: refused, with the reason ----------------------------------------------------------------
def test_unbiased_variance_rewritten_exactly():
    """(x − μ)/√(σ²·16/15 + ε) = √(15/16)·LN(x; ε·15/16): fused with those constants, proof recorded."""
    m = model(ln_text(var_scale=str(16 / 15)), gamma=GAMMA, beta=BETA)
    res = optimize(m)
    assert res.fired == {"layer_norm.decomposed": 1, "layer_norm.affine": 2}, (res.fired, res.refused)
    proofs = [p.value for n in res.model.graph.node for p in n.metadata_props if p.key == "normonnx.proof"]
    assert proofs and "N=16" in proofs[0]
    x = x_of((2, 5, 16)) + np.float32(1e3)
    x64 = x.astype(np.float64)
    mu = x64.mean(-1, keepdims=True)
    ref = (x64 - mu) / np.sqrt(x64.var(-1, ddof=1, keepdims=True) + 1e-5) * GAMMA + BETA
    err, err_original = np.abs(run(res.model, x)[0] - ref).max(), np.abs(run(m, x)[0] - ref).max()
    assert err <= 2 * err_original + 1e-6, (err, err_original)
    check_numbers(res, m, x_of((2, 5, 16)))


def test_epsilon_not_constant_refused():
    m = model(ln_text(eps="", inputs=", float eps"), gamma=GAMMA, beta=BETA)
    res = optimize(m, verify=False)
    assert "ε is not a constant" in refusal(res, "layer_norm.decomposed")
    assert not res.fired


def test_gamma_of_wrong_shape_not_absorbed():
    g = (1 + 0.1 * rng().standard_normal((5, 1))).astype(np.float32)  # varies along axis 1, not normalised
    m = model(ln_text(), gamma=g, beta=BETA)
    res = optimize(m)
    assert "varies along axis 1" in refusal(res, "layer_norm.affine")
    assert res.fired == {"layer_norm.decomposed": 1}
    assert ops(res.model) == ["LayerNormalization", "Mul", "Add"]
    check_numbers(res, m, x_of((2, 5, 16)))


def test_keepdims0_refused():
    # var has keepdims=0: [4,4] broadcasts against the *last* two axes of d [4,4,4] — wrong statistics
    m = model(ln_text(shape="4,4,4", keepdims=0, affine=False))
    res = optimize(m)
    assert "keepdims=0" in refusal(res, "layer_norm.decomposed")
    assert not res.fired
    check_numbers(res, m, x_of((4, 4, 4)))


def test_fp16_statistics_without_cast_refused():
    text = ln_text(dtype="float16", eps="", affine=False)
    m = model(text, eps=np.array(1e-3, np.float16))
    res = optimize(m)
    assert "computed in float16" in refusal(res, "layer_norm.decomposed")
    assert not res.fired


def test_mean_and_variance_over_different_axes_refused():
    m = model(ln_text(shape="2,5,16", axes="-1", var_axes="-2,-1", affine=False))
    res = optimize(m)
    assert "mean over axes (2,) but variance over axes (1, 2)" in refusal(res, "layer_norm.decomposed")


def test_intermediate_used_elsewhere_refused():
    m = model(ln_text(outputs=", float[2,5,1] mean"), gamma=GAMMA, beta=BETA)
    res = optimize(m)
    assert "'mean'" in refusal(res, "layer_norm.decomposed") and "graph output" in refusal(res, "layer_norm.decomposed")
    assert not res.fired


def test_cube_is_not_a_square():
    text = ln_text().replace("two = Constant <value = float {2.0}> ()", "two = Constant <value = float {3.0}> ()")
    res = optimize(model(text, gamma=GAMMA, beta=BETA), verify=False)
    assert "Pow exponent 3.0 is not 2" in refusal(res, "layer_norm.decomposed")


def test_debug_reports_why_nothing_matched():
    m = model(ln_text().replace("s = Sqrt(ve)", "s = Abs(ve)"), gamma=GAMMA, beta=BETA)
    res = optimize(m, debug=True, verify=False)
    assert not res.fired and not res.refused
    assert ("layer_norm.decomposed", "divisor is not a Sqrt") in {(r.rule, r.reason) for r in res.misses}
    assert optimize(m, verify=False).misses == []  # only collected in debug mode


# -- real exports -----------------------------------------------------------------------------------------
EXPORTS = [("legacy", 13), ("legacy", 17), ("dynamo", 18), ("dynamo", 21)]


@pytest.mark.parametrize(("exporter", "opset"), EXPORTS)
def test_torch_layernorm_exports(exporter, opset):
    import torch

    torch.manual_seed(0)
    mod = torch.nn.LayerNorm(16)
    with torch.no_grad():
        mod.weight.normal_(1, 0.2)
        mod.bias.normal_(0, 0.2)
    x = torch.randn(2, 5, 16)
    m = export(mod, x, exporter, opset)
    res = optimize(m)
    assert res.fired.get("layer_norm.decomposed" if opset < 17 else "layer_norm.native") == 1
    expected = "native" if opset >= 17 else "decomposed"
    assert [(r["kind"], r["strategy"]) for r in res.lowerings] == [("layer", expected)]
    if opset >= 17:
        assert ops(res.model) == ["LayerNormalization"]
    assert res.passed
    y = run(res.model, x.numpy())[0]
    np.testing.assert_allclose(y, torch_out(mod, x), atol=REWRITE_ATOL)
    np.testing.assert_allclose(y, torch64_out(mod, x), atol=REWRITE_ATOL)


class LayerNorm2d:
    """timm's LayerNorm2d: permute → layer_norm → permute (built lazily to keep torch import local)."""

    @staticmethod
    def make():
        import torch

        class LN2d(torch.nn.LayerNorm):
            def forward(self, x):
                x = x.permute(0, 2, 3, 1)
                x = torch.nn.functional.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
                return x.permute(0, 3, 1, 2)

        class CFLN(torch.nn.Module):  # ConvNeXt's hand-written channels_first LayerNorm
            def __init__(self, c: int) -> None:
                super().__init__()
                self.weight = torch.nn.Parameter(1 + 0.2 * torch.randn(c))
                self.bias = torch.nn.Parameter(0.2 * torch.randn(c))

            def forward(self, x):
                u = x.mean(1, keepdim=True)
                s = (x - u).pow(2).mean(1, keepdim=True)
                x = (x - u) / torch.sqrt(s + 1e-6)
                return self.weight[:, None, None] * x + self.bias[:, None, None]

        return LN2d(8, eps=1e-6), CFLN(8)


@pytest.mark.parametrize(("exporter", "opset"), [("legacy", 13), ("legacy", 17), ("dynamo", 18)])
def test_convnext_layernorm2d_exports(exporter, opset):
    import torch

    torch.manual_seed(1)
    ln2d, cfln = LayerNorm2d.make()
    with torch.no_grad():
        ln2d.weight.normal_(1, 0.2)
        ln2d.bias.normal_(0, 0.2)
    x = torch.randn(2, 8, 5, 6)
    for mod in (ln2d, cfln):
        m = export(mod, x, exporter, opset)
        res = optimize(m)
        assert [(r["kind"], r["strategy"]) for r in res.lowerings] == [("layer", "decomposed")]
        assert "_cf_" in res.lowerings[0]["spec"], res.fired
        assert "Transpose" not in ops(res.model)
        assert res.passed, res.summary()
        y = run(res.model, x.numpy())[0]
        np.testing.assert_allclose(y, torch64_out(mod, x), atol=REWRITE_ATOL)
