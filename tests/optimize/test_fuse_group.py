"""GroupNorm fusions (normonnx/optimize/fuse_group.py): the exporters' InstanceNormalization form, the
hand-written decomposition (biased fuses, the tutorial's unbiased x.var() is rewritten exactly when N is static), the native
op at opsets 18 (per-group scale) and 21, affine absorption, and the SiLU and ReLU after it
(normonnx/optimize/fuse_activation.py) — with reasons for refusals."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from optimize_helpers import (
    _quiet,
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
)
from strict_tolerances import REWRITE_ATOL, REWRITE_RANK3_ATOL

from normonnx.spec import NormSpec

_CONST = constants_rng("test_fuse_group")  # import-time constants only; tests draw from rng()

C, G = 8, 4
GAMMA = (1.0 + 0.25 * _CONST.standard_normal(C)).astype(np.float32)
BETA = (0.25 * _CONST.standard_normal(C)).astype(np.float32)


def via_instance_text(
    *, view="0, 4, -1", silu_tail=True, gamma_shape="8,1,1", opset=17, in_scale="s1", tail: str | None = None
) -> str:
    if tail is None:
        tail = "ys = Sigmoid(a)\n y = Mul(a, ys)" if silu_tail else "y = Identity(a)"
    return f"""<ir_version: 8, opset_import: ["" : {opset}]>
gn (float[2,8,5,6] x) => (float[2,8,5,6] y) {{
 v = Constant <value = int64[3] {{{view}}}> ()
 xg = Reshape(x, v)
 yg = InstanceNormalization <epsilon = 1e-5> (xg, {in_scale}, b0)
 sh = Shape(x)
 yr = Reshape(yg, sh)
 m = Mul(yr, gamma)
 a = Add(m, beta)
 {tail}
}}"""


def inits(gamma_shape=(C, 1, 1), scale=None, bias=None):
    return dict(
        s1=np.ones(G, np.float32) if scale is None else scale,
        b0=np.zeros(G, np.float32) if bias is None else bias,
        gamma=GAMMA.reshape(gamma_shape),
        beta=BETA.reshape(C, 1, 1),
    )


def tutorial_text(*, unbiased: bool, view="2,4,-1,5,6", axes="2,3,4") -> str:
    n = 2 * 5 * 6
    scale = (
        f"k = Constant <value = float {{{n / (n - 1)!r}}}> ()\n var = Mul(var0, k)"
        if unbiased
        else "var = Identity(var0)"
    )
    return f"""<ir_version: 8, opset_import: ["" : 17]>
tut (float[2,8,5,6] x) => (float[2,8,5,6] y) {{
 v = Constant <value = int64[5] {{{view}}}> ()
 xg = Reshape(x, v)
 mean = ReduceMean <axes = [{axes}]> (xg)
 d = Sub(xg, mean)
 sq = Mul(d, d)
 var0 = ReduceMean <axes = [{axes}]> (sq)
 {scale}
 eps = Constant <value = float {{1e-5}}> ()
 ve = Add(var, eps)
 s = Sqrt(ve)
 n = Div(d, s)
 back = Constant <value = int64[4] {{2,8,5,6}}> ()
 nr = Reshape(n, back)
 m = Mul(nr, gamma)
 y = Add(m, beta)
}}"""


def x_of(shape=(2, C, 5, 6)) -> np.ndarray:
    return rng().standard_normal(shape).astype(np.float32)


SPEC = NormSpec("group", eps=1e-5, channels=C, groups=G)
PARAMS = {"weight": GAMMA, "bias": BETA}


def test_via_instance_with_silu():
    m = model(via_instance_text(), **inits())
    res = optimize(m)
    assert res.fired == {"group_norm.via_instance": 1, "group_norm.affine": 2, "group_norm.silu": 1}
    assert [(r["kind"], r["strategy"]) for r in res.lowerings] == [("group", "decomposed")]
    assert "InstanceNormalization" not in ops(res.model)
    assert ops(res.model).count("Sigmoid") == 1
    check_numbers(res, m, x_of(), SPEC.replace(activation="silu"), PARAMS)


def test_via_instance_with_relu():
    m = model(via_instance_text(tail="y = Relu(a)"), **inits())
    res = optimize(m)
    assert res.fired == {"group_norm.via_instance": 1, "group_norm.affine": 2, "group_norm.relu": 1}
    assert ops(res.model).count("Relu") == 1  # inside the decomposed lowering, after the affine
    check_numbers(res, m, x_of(), SPEC.replace(activation="relu"), PARAMS)


@pytest.mark.parametrize(
    ("tail", "outputs", "reason"),
    [
        # the norm's output is also read elsewhere: its value must stay
        ("y = Relu(a)\n z = Neg(a)", "y, z", "output is not read by exactly one Relu"),
        # a look-alike: LeakyRelu is not max(y, 0)
        ("y = LeakyRelu <alpha = 0.1> (a)", "y", "read by LeakyRelu, not Relu"),
    ],
)
def test_relu_not_fused_when_the_norm_output_is_needed_or_not_relu(tail, outputs, reason):
    text = via_instance_text(tail=tail)
    if outputs != "y":
        text = text.replace("=> (float[2,8,5,6] y)", "=> (float[2,8,5,6] y, float[2,8,5,6] z)")
    m = model(text, **inits())
    res = optimize(m, debug=True)  # a pattern that does not match is a near miss, kept in debug mode
    assert "group_norm.relu" not in res.fired
    assert ("group_norm.relu", reason) in {(r.rule, r.reason) for r in res.misses}
    check_numbers(res, m, x_of())


def test_via_instance_per_group_affine_folded_per_channel():
    a = np.array([0.5, 1.5, 2.0, 1.0], np.float32)
    b = np.array([0.1, -0.2, 0.0, 0.3], np.float32)
    m = model(via_instance_text(silu_tail=False), **inits(scale=a, bias=b))
    res = optimize(m)
    assert res.fired["group_norm.via_instance"] == 1
    # y = (n·a_g + b_g)·γ + β: the instance affine became the norm's weight/bias, γ/β stay outside
    check_numbers(res, m, x_of())


def test_biased_tutorial_groupnorm_fuses():
    m = model(tutorial_text(unbiased=False), gamma=GAMMA.reshape(1, C, 1, 1), beta=BETA.reshape(1, C, 1, 1))
    res = optimize(m)
    assert res.fired == {"group_norm.decomposed": 1, "group_norm.affine": 2}
    assert ops(res.model).count("ReduceMean") == 1  # the float64 two-pass lowering
    check_numbers(res, m, x_of(), SPEC, PARAMS)


def _unbiased_gn64(x: np.ndarray, eps: float = 1e-5) -> np.ndarray:
    """The tutorial's function in float64: (x − μ)/√(var_unbiased + ε) per group, then γ, β."""
    xg = x.astype(np.float64).reshape(2, G, -1)
    mu = xg.mean(-1, keepdims=True)
    var_u = xg.var(-1, ddof=1, keepdims=True)
    y = ((xg - mu) / np.sqrt(var_u + eps)).reshape(x.shape)
    return y * GAMMA.reshape(1, C, 1, 1).astype(np.float64) + BETA.reshape(1, C, 1, 1).astype(np.float64)


def node_meta(model: onnx.ModelProto, key: str) -> list[str]:
    return [p.value for n in model.graph.node for p in n.metadata_props if p.key == key]


def test_unbiased_tutorial_groupnorm_rewritten_exactly():
    """σ²_u = σ²·N/(N−1) with N = 60 static: GN(ε' = ε·59/60)·√(59/60) is the same function."""
    m = model(tutorial_text(unbiased=True), gamma=GAMMA.reshape(1, C, 1, 1), beta=BETA.reshape(1, C, 1, 1))
    res = optimize(m)
    assert res.fired == {"group_norm.decomposed": 1, "group_norm.affine": 2}, (res.fired, res.refused)
    assert [r["kind"] for r in res.lowerings] == ["group"]
    proofs = node_meta(res.model, "normonnx.proof")
    assert proofs and "N=60" in proofs[0] and "unbiased" in proofs[0]
    for offset in (0.0, 1e3):
        x = x_of() + np.float32(offset)
        ref = _unbiased_gn64(x)
        err = np.abs(run(res.model, x)[0] - ref).max()
        err_original = np.abs(run(m, x)[0] - ref).max()  # the spelling as written, in float32
        assert err <= 2 * err_original + 1e-6, (offset, err, err_original)
    check_numbers(res, m, x_of())


def test_groupnormalization18_per_group_scale_converted():
    sg = np.array([0.5, 1.5, 2.0, 1.0], np.float32)
    bg = np.array([0.1, -0.2, 0.0, 0.3], np.float32)
    m = model(
        """<ir_version: 8, opset_import: ["" : 18]>
        g (float[2,8,5,6] x) => (float[2,8,5,6] y) { y = GroupNormalization <num_groups = 4, epsilon = 1e-5> (x, sg, bg) }""",
        check=False,
        sg=sg,
        bg=bg,
    )
    res = optimize(m)
    assert res.fired == {"group_norm.native": 1}
    assert "GroupNormalization" not in ops(res.model)
    per_channel = {"weight": np.repeat(sg, 2), "bias": np.repeat(bg, 2)}
    check_numbers(res, m, x_of(), SPEC, per_channel)


def test_groupnormalization21_fixed_at_offset_1e3():
    """onnxruntime runs GroupNormalization-21 through σ² = E[x²] − E[x]²; the lowered graph does not."""
    m = model(
        """<ir_version: 10, opset_import: ["" : 21]>
        g (float[2,8,5,6] x) => (float[2,8,5,6] y) { y = GroupNormalization <num_groups = 4, epsilon = 1e-5> (x, gamma, beta) }""",
        gamma=GAMMA,
        beta=BETA,
    )
    res = optimize(m)
    assert res.fired == {"group_norm.native": 1}
    stress = next(s for s in res.verification.samples if s.name == "offset_1e3")
    f64 = stress.float64["y"]
    assert f64["optimized"] < 1e-3 < f64["original"], f64  # decided by float64: the original is the inaccurate one
    assert res.passed and "less accurate" in res.verification.summary()
    x = x_of() + np.float32(1e3)
    from normonnx.norms import KINDS

    y64 = KINDS["group"].reference(SPEC, x.astype(np.float64), PARAMS)
    assert np.abs(run(res.model, x)[0] - y64).max() < 1e-3


# -- negative ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("view", "reason"),
    [("4, 4, -1", "axis 0 is not the batch size"), ("0, 3, -1", "3 does not divide C=8")],
)
def test_bad_group_view_refused(view, reason):
    if "3" in view:  # 8·30 elements do not split into 3 groups: use a valid-to-run shape instead
        text = via_instance_text(view=view, silu_tail=False).replace("float[2,8,5,6]", "float[2,8,3,4]")
        m = model(
            text,
            s1=np.ones(3, np.float32),
            b0=np.zeros(3, np.float32),
            gamma=GAMMA.reshape(C, 1, 1),
            beta=BETA.reshape(C, 1, 1),
        )
        res = optimize(m, verify=False)
    else:
        m = model(via_instance_text(view=view, silu_tail=False), **inits())
        res = optimize(m)
    assert reason in refusal(res, "group_norm.via_instance")
    assert "group_norm.via_instance" not in res.fired


def test_gamma_of_wrong_shape_not_absorbed():
    g = (1 + 0.2 * rng().standard_normal(6)).astype(np.float32)  # broadcasts along W, not along channels
    m = model(
        via_instance_text(silu_tail=False),
        s1=np.ones(G, np.float32),
        b0=np.zeros(G, np.float32),
        gamma=g,
        beta=BETA.reshape(C, 1, 1),
    )
    res = optimize(m)
    assert "varies along axis 3" in refusal(res, "group_norm.affine")
    assert res.fired == {"group_norm.via_instance": 1}
    check_numbers(res, m, x_of())


def test_instance_scale_not_constant_refused():
    text = via_instance_text(silu_tail=False).replace("float[2,8,5,6] x)", "float[2,8,5,6] x, float[4] s1)")
    m = model(text, b0=np.zeros(G, np.float32), gamma=GAMMA.reshape(C, 1, 1), beta=BETA.reshape(C, 1, 1))
    res = optimize(m, verify=False)
    assert "instance-norm weight is not a constant" in refusal(res, "group_norm.via_instance")


def test_partial_statistics_refused():
    m = model(tutorial_text(unbiased=False, axes="3,4"), gamma=GAMMA.reshape(1, C, 1, 1), beta=BETA.reshape(1, C, 1, 1))
    res = optimize(m)
    assert "not over all of 2..4" in refusal(res, "group_norm.decomposed")
    assert "group_norm.decomposed" not in res.fired
    check_numbers(res, m, x_of())


# -- real exports -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(("exporter", "opset"), [("legacy", 17), ("dynamo", 18), ("dynamo", 21)])
def test_groupnorm_relu_exports(exporter, opset):
    """ResNet-GN's GroupNorm → ReLU (in place, as torchvision writes it) is one node after optimize."""
    import torch

    torch.manual_seed(0)
    gn = torch.nn.GroupNorm(4, 8)
    with torch.no_grad():
        gn.weight.normal_(1, 0.2)
        gn.bias.normal_(0, 0.2)
    mod = torch.nn.Sequential(gn, torch.nn.ReLU(inplace=True))
    x = torch.randn(2, 8, 5, 6)
    m = export(mod, x, exporter, opset)
    res = optimize(m)
    assert res.fired.get("group_norm.relu") == 1, res.fired
    assert not {"InstanceNormalization", "GroupNormalization"} & set(ops(res.model))
    assert res.passed, res.summary()
    np.testing.assert_allclose(run(res.model, x.numpy())[0], torch64_out(mod, x), atol=REWRITE_ATOL)


def _gn_silu():
    import torch

    gn = torch.nn.GroupNorm(4, 8)
    with torch.no_grad():
        gn.weight.normal_(1, 0.2)
        gn.bias.normal_(0, 0.2)
    return torch.nn.Sequential(gn, torch.nn.SiLU())


@pytest.mark.parametrize(("exporter", "opset"), [("legacy", 13), ("legacy", 17), ("dynamo", 18), ("dynamo", 21)])
def test_groupnorm_silu_exports(exporter, opset):
    import torch

    torch.manual_seed(0)
    mod = _gn_silu()
    x = torch.randn(2, 8, 5, 6)
    m = export(mod, x, exporter, opset)
    res = optimize(m)
    first = "group_norm.native" if opset >= 21 else "group_norm.via_instance"
    assert res.fired.get(first) == 1 and res.fired.get("group_norm.silu") == 1, res.fired
    assert [(r["kind"], r["strategy"]) for r in res.lowerings] == [("group", "decomposed")]
    assert not {"InstanceNormalization", "GroupNormalization"} & set(ops(res.model))
    assert res.passed, res.summary()
    np.testing.assert_allclose(run(res.model, x.numpy())[0], torch64_out(mod, x), atol=REWRITE_ATOL)


def _tutorial(unbiased: bool):
    import torch

    class TutorialGroupNorm(torch.nn.Module):
        def __init__(self, c: int, g: int) -> None:
            super().__init__()
            self.g = g
            self.weight = torch.nn.Parameter(1 + 0.2 * torch.randn(1, c, 1, 1))
            self.bias = torch.nn.Parameter(0.2 * torch.randn(1, c, 1, 1))

        def forward(self, x):
            n, c, h, w = x.size()
            x = x.view(n, self.g, -1, h, w)
            mean = x.mean(dim=(2, 3, 4), keepdim=True)
            var = x.var(dim=(2, 3, 4), keepdim=True, unbiased=unbiased)
            x = (x - mean) / torch.sqrt(var + 1e-5)
            return x.view(n, c, h, w) * self.weight + self.bias

    return TutorialGroupNorm(8, 4)


@pytest.mark.parametrize(("exporter", "opset"), [("legacy", 13), ("dynamo", 18)])
def test_tutorial_groupnorm_exports(exporter, opset):
    import torch

    torch.manual_seed(0)
    x = torch.randn(2, 8, 5, 6)
    biased, unbiased = _tutorial(False), _tutorial(True)
    res = optimize(export(biased, x, exporter, opset))
    assert res.fired.get("group_norm.decomposed") == 1, (res.fired, res.refused)
    np.testing.assert_allclose(run(res.model, x.numpy())[0], torch64_out(biased, x), atol=REWRITE_ATOL)
    res = optimize(export(unbiased, x, exporter, opset))
    assert res.fired.get("group_norm.decomposed") == 1, (res.fired, res.refused)
    assert res.passed
    np.testing.assert_allclose(run(res.model, x.numpy())[0], torch64_out(unbiased, x), atol=REWRITE_ATOL)
    x3 = x + 1e3  # where the float32 decomposition loses digits and the fused norm does not
    np.testing.assert_allclose(run(res.model, x3.numpy())[0], torch64_out(unbiased, x3), atol=REWRITE_RANK3_ATOL)


def test_unbiased_tutorial_with_dynamic_group_size_refused():
    """With H, W dynamic the count N of x.var() is computed at run time: no constant ε' exists."""
    import torch

    torch.manual_seed(0)
    mod = _tutorial(True)
    x = torch.randn(2, 8, 5, 6)
    dyn = {0: torch.export.Dim.DYNAMIC, 2: torch.export.Dim.DYNAMIC, 3: torch.export.Dim.DYNAMIC}
    with _quiet():
        m = torch.onnx.export(mod, (x,), dynamo=True, opset_version=18, dynamic_shapes=({**dyn},)).model_proto
    res = optimize(m, inputs={"x": [2, 8, 5, 6]})
    reason = refusal(res, "group_norm.decomposed")
    assert "computed at run time" in reason and "N is not static" in reason
    assert "group_norm.decomposed" not in res.fired and res.passed
