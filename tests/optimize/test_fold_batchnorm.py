"""BatchNorm folding (normonnx/optimize/fold_batchnorm.py): into a preceding Conv/ConvTranspose/Gemm/
MatMul(+Add) and a following unpadded Conv/Gemm/MatMul, in float64 — and the refusals."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import numpy_helper
from optimize_helpers import check_numbers, export, model, ops, optimize, refusal, rng, run, torch64_out

from normonnx.verify import tolerance


def bn_params(c: int) -> dict[str, np.ndarray]:
    return {
        "sc": (1 + 0.3 * rng().standard_normal(c)).astype(np.float32),
        "bb": (0.3 * rng().standard_normal(c)).astype(np.float32),
        "mu": (0.5 * rng().standard_normal(c)).astype(np.float32),
        "va": rng().uniform(0.5, 2.0, c).astype(np.float32),
    }


def f32(*shape: int, scale: float = 0.3) -> np.ndarray:
    return (scale * rng().standard_normal(shape)).astype(np.float32)


BN = "BatchNormalization <epsilon = 1e-3> ({x}, sc, bb, mu, va)"


def initializer(m, name):
    return next(numpy_helper.to_array(t) for t in m.graph.initializer if t.name == name)


def test_conv_then_bn_folds_in_float64():
    p = bn_params(6)
    w, b = f32(6, 3, 3, 3), f32(6)
    m = model(
        f"""<ir_version: 8, opset_import: ["" : 17]>
        g (float[2,3,7,7] x) => (float[2,6,7,7] y) {{ c = Conv <pads = [1,1,1,1]> (x, w, b)  y = {BN.format(x="c")} }}""",
        w=w,
        b=b,
        **p,
    )
    res = optimize(m)
    assert ops(res.model) == ["Conv"] and res.fired == {"batchnorm.into_preceding": 1}
    check_numbers(res, m, f32(2, 3, 7, 7, scale=1.0))
    # the stored weight is the float64 product, rounded once
    s = p["sc"].astype(np.float64) / np.sqrt(p["va"].astype(np.float64) + 1e-3)
    conv = res.model.graph.node[0]
    w2 = initializer(res.model, conv.input[1])
    b2 = initializer(res.model, conv.input[2])
    np.testing.assert_array_equal(w2, (w.astype(np.float64) * s[:, None, None, None]).astype(np.float32))
    np.testing.assert_array_equal(b2, ((b - p["mu"].astype(np.float64)) * s + p["bb"]).astype(np.float32))


def test_grouped_convtranspose_then_bn():
    p = bn_params(6)
    m = model(
        f"""<ir_version: 8, opset_import: ["" : 17]>
        g (float[2,4,5,5] x) => (float[2,6,11,11] y) {{ c = ConvTranspose <strides = [2,2], group = 2> (x, w)  y = {BN.format(x="c")} }}""",
        w=f32(4, 3, 3, 3),
        **p,
    )
    res = optimize(m)
    assert ops(res.model) == ["ConvTranspose"]
    check_numbers(res, m, f32(2, 4, 5, 5, scale=1.0))


@pytest.mark.parametrize("trans_b", [0, 1])
def test_gemm_then_bn(trans_b):
    p = bn_params(5)
    w = f32(5, 6) if trans_b else f32(6, 5)
    m = model(
        f"""<ir_version: 8, opset_import: ["" : 17]>
        g (float[4,6] x) => (float[4,5] y) {{ c = Gemm <transB = {trans_b}, alpha = 0.5, beta = 2.0> (x, w, cb)  y = {BN.format(x="c")} }}""",
        w=w,
        cb=f32(5),
        **p,
    )
    res = optimize(m)
    assert ops(res.model) == ["Gemm"]
    check_numbers(res, m, f32(4, 6, scale=1.0))


@pytest.mark.parametrize("with_add", [True, False])
def test_matmul_add_then_bn(with_add):
    p = bn_params(5)
    body = "mm = MatMul(x, w)  c = Add(mm, ab)" if with_add else "c = MatMul(x, w)"
    m = model(
        f"""<ir_version: 8, opset_import: ["" : 17]>
        g (float[4,6] x) => (float[4,5] y) {{ {body}  y = {BN.format(x="c")} }}""",
        w=f32(6, 5),
        ab=f32(5),
        **p,
    )
    res = optimize(m)
    assert ops(res.model) == ["MatMul", "Add"] and res.fired == {"batchnorm.into_preceding": 1}
    check_numbers(res, m, f32(4, 6, scale=1.0))


@pytest.mark.parametrize(
    ("op", "x_shape", "w", "out"),
    [
        ("Conv <group = 2>", "2,4,6,6", (6, 2, 3, 3), "2,6,4,4"),
        ("Gemm <transB = 1>", "4,4", (5, 4), "4,5"),
        ("MatMul", "4,4", (4, 5), "4,5"),
    ],
)
def test_bn_then_linear_folds_into_following(op, x_shape, w, out):
    p = bn_params(4)
    args = "(b1, w, cb)" if op.startswith("Conv") else ("(b1, w, cb)" if op.startswith("Gemm") else "(b1, w)")
    m = model(
        f"""<ir_version: 8, opset_import: ["" : 17]>
        g (float[{x_shape}] x) => (float[{out}] y) {{ b1 = {BN.format(x="x")}  y = {op} {args} }}""",
        w=f32(*w),
        cb=f32(w[0] if not op.startswith("Gemm") else 5),
        **p,
    )
    res = optimize(m)
    assert res.fired == {"batchnorm.into_following": 1}
    assert "BatchNormalization" not in ops(res.model)
    shape = tuple(int(d) for d in x_shape.split(","))
    check_numbers(res, m, f32(*shape, scale=1.0))


# -- negative ---------------------------------------------------------------------------------------------
def test_padded_conv_after_bn_refused():
    p = bn_params(3)
    m = model(
        f"""<ir_version: 8, opset_import: ["" : 17]>
        g (float[2,3,6,6] x) => (float[2,4,6,6] y) {{ b1 = {BN.format(x="x")}  y = Conv <pads = [1,1,1,1]> (b1, w) }}""",
        w=f32(4, 3, 3, 3),
        **p,
    )
    res = optimize(m)
    assert "pads its input" in refusal(res, "batchnorm.into_following")
    assert ops(res.model) == ["BatchNormalization", "Conv"]
    check_numbers(res, m, f32(2, 3, 6, 6, scale=1.0))


def test_shared_conv_weight_refused():
    p = bn_params(4)
    m = model(
        f"""<ir_version: 8, opset_import: ["" : 17]>
        g (float[2,3,6,6] x) => (float[2,4,4,4] y, float[2,4,4,4] z) {{ c = Conv (x, w)  y = {BN.format(x="c")}  z = Conv (x, w) }}""",
        w=f32(4, 3, 3, 3),
        **p,
    )
    res = optimize(m)
    assert "weight 'w' is shared with Conv" in refusal(res, "batchnorm.into_preceding")
    assert "BatchNormalization" in ops(res.model)


def test_graph_input_weight_refused():
    p = bn_params(4)
    m = model(
        f"""<ir_version: 8, opset_import: ["" : 17]>
        g (float[2,3,6,6] x, float[4,3,3,3] w) => (float[2,4,4,4] y) {{ c = Conv (x, w)  y = {BN.format(x="c")} }}""",
        w=f32(4, 3, 3, 3),
        **p,
    )
    res = optimize(m, verify=False)
    assert "weight 'w' is a graph input" in refusal(res, "batchnorm.into_preceding")
    # not folded; the BatchNorm is only lifted into the portable op (fuse_channel)
    assert res.fired == {"batch_norm.native": 1}


def test_non_constant_statistics_refused():
    p = bn_params(4)
    del p["mu"]
    m = model(
        f"""<ir_version: 8, opset_import: ["" : 17]>
        g (float[2,3,6,6] x, float[4] mu) => (float[2,4,4,4] y) {{ c = Conv (x, w)  y = {BN.format(x="c")} }}""",
        w=f32(4, 3, 3, 3),
        **p,
    )
    res = optimize(m, verify=False)
    assert "BatchNorm μ is not a constant ('mu' is a graph input)" in refusal(res, "batchnorm.into_preceding")


def test_bn_over_rank3_matmul_output_refused():
    p = bn_params(3)
    m = model(
        f"""<ir_version: 8, opset_import: ["" : 17]>
        g (float[2,3,6] x) => (float[2,3,5] y) {{ c = MatMul(x, w)  y = {BN.format(x="c")} }}""",
        w=f32(6, 5),
        **p,
    )
    res = optimize(m)
    assert "not its feature axis" in refusal(res, "batchnorm.into_preceding")
    check_numbers(res, m, f32(2, 3, 6, scale=1.0))


def test_bn_before_convtranspose_refused():
    p = bn_params(4)
    m = model(
        f"""<ir_version: 8, opset_import: ["" : 17]>
        g (float[2,4,5,5] x) => (float[2,3,7,7] y) {{ b1 = {BN.format(x="x")}  y = ConvTranspose (b1, w) }}""",
        w=f32(4, 3, 3, 3),
        **p,
    )
    res = optimize(m)
    assert "border outputs receive fewer taps" in refusal(res, "batchnorm.into_following")


# -- real exports ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("exporter", "opset"), [("legacy", 13), ("legacy", 17), ("dynamo", 18), ("dynamo", 21)])
def test_conv_bn_exports(exporter, opset):
    """Exported without the exporters' own folding (it would hide the BatchNorms)."""
    import torch

    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1),
        torch.nn.BatchNorm2d(8),
        torch.nn.ReLU(),
        torch.nn.BatchNorm2d(8),
        torch.nn.Conv2d(8, 4, 1),
    )
    with torch.no_grad():
        for bn in (net[1], net[3]):
            bn.running_mean.normal_(0, 0.5)
            bn.running_var.uniform_(0.5, 2)
            bn.weight.normal_(1, 0.3)
            bn.bias.normal_(0, 0.3)
    x = torch.randn(2, 3, 8, 8)
    m = export(net, x, exporter, opset, fold=False)
    assert ops(m).count("BatchNormalization") == 2
    res = optimize(m)
    assert res.fired == {"batchnorm.into_preceding": 1, "batchnorm.into_following": 1}
    assert ops(res.model) == ["Conv", "Relu", "Conv"]
    assert res.passed, res.summary()
    np.testing.assert_allclose(run(res.model, x.numpy())[0], torch64_out(net, x), atol=tolerance("float32").atol)
