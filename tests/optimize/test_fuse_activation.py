"""The channel norms lifted from ONNX (normonnx/optimize/fuse_channel.py: InstanceNormalization, the
BatchNormalization no linear op absorbs) and the SiLU / ReLU after a Group/Instance/BatchNorm fused
into it (normonnx/optimize/fuse_activation.py) — on real exports, with the refusals' reasons."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from optimize_helpers import check_numbers, export, model, ops, optimize, refusal, rng, run, torch64_out
from strict_tolerances import REWRITE_ATOL

from normonnx.spec import NormSpec

C = 6


def _affine(norm):
    import torch

    with torch.no_grad():
        norm.weight.normal_(1, 0.2)
        norm.bias.normal_(0, 0.2)
        if getattr(norm, "running_mean", None) is not None:
            norm.running_mean.normal_(0, 0.3)
            norm.running_var.uniform_(0.5, 1.5)
    return norm


def _module(kind: str, act: str):
    import torch

    torch.manual_seed(0)
    norm = {
        "instance": lambda: torch.nn.InstanceNorm2d(C, affine=True),
        "batch": lambda: torch.nn.BatchNorm2d(C),
    }[kind]()
    a = {"relu": torch.nn.ReLU(inplace=True), "silu": torch.nn.SiLU()}[act]
    return torch.nn.Sequential(_affine(norm), a).eval()


# (module, activation) → the rules that fire
CASES = {
    ("instance", "relu"): {"instance_norm.native": 1, "instance_norm.relu": 1},
    ("instance", "silu"): {"instance_norm.native": 1, "instance_norm.silu": 1},
    ("batch", "relu"): {"batch_norm.native": 1, "batch_norm.relu": 1},
}


@pytest.mark.parametrize(("exporter", "opset"), [("legacy", 17), ("dynamo", 18), ("dynamo", 21)])
@pytest.mark.parametrize(("kind", "act"), list(CASES))
def test_norm_then_activation_exports_as_one_node(kind, act, exporter, opset):
    """torch's own export of Norm → ReLU/SiLU, through ``normonnx optimize``: one norm node carrying the
    activation (lowered here as the selector picks: the decomposition for the instance norm, whose
    InstanceNormalization keeps float32 statistics; BatchNormalization + Relu for the batch norm),
    the numbers torch's."""
    import torch

    mod = _module(kind, act)
    x = torch.randn(2, C, 5, 7)
    m = export(mod, x, exporter, opset)
    res = optimize(m)
    fired = {k: v for k, v in res.fired.items() if not k.startswith("canonical.")}
    assert fired == CASES[(kind, act)], res.fired
    assert [(r["kind"], r["activation"]) for r in res.lowerings] == [(kind, act)]
    assert "InstanceNormalization" not in ops(res.model)
    assert res.passed, res.summary()
    np.testing.assert_allclose(run(res.model, x.numpy())[0], torch64_out(mod, x), atol=REWRITE_ATOL)


def test_normonnx_export_fuses_the_activation(tmp_path):
    """``normonnx export`` (aten norms captured directly) gives the same one node as optimize."""
    import torch

    from normonnx.exporter import export as nx_export

    mod = _module("instance", "relu")
    x = torch.randn(2, C, 5, 7)
    path = str(tmp_path / "in_relu.onnx")
    nx_export(mod, (x,), path)
    m = onnx.load(path)
    norms = [n for n in m.graph.node if n.op_type == "InstanceNorm"]
    assert len(norms) == 1 and "Relu" not in ops(m)
    assert {a.name: onnx.helper.get_attribute_value(a) for a in norms[0].attribute}["activation"] == b"relu"
    np.testing.assert_allclose(run(m, x.numpy())[0], torch64_out(mod, x), atol=REWRITE_ATOL)


def _instance_text(tail: str, outputs: str = "float[2,6,5,7] y") -> str:
    return f"""<ir_version: 8, opset_import: ["" : 17]>
    g (float[2,6,5,7] x) => ({outputs}) {{
     a = InstanceNormalization <epsilon = 1e-5> (x, sc, bb)
     {tail}
    }}"""


def _inits() -> dict[str, np.ndarray]:
    return {
        "sc": (1 + 0.2 * rng().standard_normal(C)).astype(np.float32),
        "bb": (0.2 * rng().standard_normal(C)).astype(np.float32),
    }


def _x() -> np.ndarray:
    return rng().standard_normal((2, C, 5, 7)).astype(np.float32)


def test_lifted_instance_norm_matches_the_float64_reference():
    p = _inits()
    m = model(_instance_text("y = Relu(a)"), **p)
    res = optimize(m)
    assert res.fired == {"instance_norm.native": 1, "instance_norm.relu": 1}
    spec = NormSpec("instance", channels=C, activation="relu", rank=4)
    check_numbers(res, m, _x(), spec, {"weight": p["sc"], "bias": p["bb"]})


@pytest.mark.parametrize(
    ("tail", "outputs", "rule", "reason"),
    [
        # the norm's output is also read elsewhere: its value must stay
        ("y = Relu(a)\n z = Neg(a)", "float[2,6,5,7] y, float[2,6,5,7] z", "instance_norm.relu", "exactly one Relu"),
        # look-alikes: LeakyRelu is not max(y, 0); a Mul by the sigmoid of another value is not SiLU
        ("y = LeakyRelu <alpha = 0.1> (a)", "float[2,6,5,7] y", "instance_norm.relu", "read by LeakyRelu, not Relu"),
        ("s = Sigmoid(x)\n y = Mul(a, s)", "float[2,6,5,7] y", "instance_norm.relu", "read by Mul, not Relu"),
    ],
)
def test_activation_not_fused_when_the_output_is_needed_or_not_the_activation(tail, outputs, rule, reason):
    m = model(_instance_text(tail, outputs), **_inits())
    res = optimize(m, debug=True)  # a pattern that does not match is a near miss, kept in debug mode
    assert res.fired == {"instance_norm.native": 1}, res.fired
    assert any(r.rule == rule and reason in r.reason for r in res.misses), res.misses
    check_numbers(res, m, _x())


def test_instance_norm_with_a_dynamic_channel_dim_is_not_lifted():
    text = _instance_text("y = Relu(a)").replace("float[2,6,5,7] x", "float[2,c,5,7] x")
    m = model(text, **_inits())
    res = optimize(m, verify=False)
    assert "channel dim of 'x' is not static" in refusal(res, "instance_norm.native")
    assert "InstanceNormalization" in ops(res.model) and "Relu" in ops(res.model)


def test_batchnorm_in_training_mode_is_not_lifted():
    p = {**_inits(), "mu": np.zeros(C, np.float32), "va": np.ones(C, np.float32)}
    m = model(
        """<ir_version: 8, opset_import: ["" : 15]>
        g (float[2,6,5,7] x) => (float[2,6,5,7] y) {
         a, rm, rv = BatchNormalization <epsilon = 1e-5, training_mode = 1> (x, sc, bb, mu, va)
         y = Relu(a)
        }""",
        **p,
    )
    res = optimize(m, verify=False)
    assert "training mode" in refusal(res, "batch_norm.native")
    assert "BatchNormalization" in ops(res.model)


def test_conv_then_batchnorm_then_relu_folds_and_keeps_the_relu():
    """Folding runs first: the BatchNorm goes into the Conv (onnxruntime fuses Conv + Relu itself),
    and no BatchNorm node is left to carry the ReLU. (Both torch exporters fold an eval BatchNorm
    after a Conv themselves, so the graph is written out.)"""
    p = {
        **_inits(),
        "mu": (0.3 * rng().standard_normal(C)).astype(np.float32),
        "va": rng().uniform(0.5, 1.5, C).astype(np.float32),
        "w": (0.3 * rng().standard_normal((C, 3, 3, 3))).astype(np.float32),
    }
    m = model(
        """<ir_version: 8, opset_import: ["" : 17]>
        g (float[2,3,7,7] x) => (float[2,6,5,5] y) {
         c = Conv (x, w)
         a = BatchNormalization <epsilon = 1e-5> (c, sc, bb, mu, va)
         y = Relu(a)
        }""",
        **p,
    )
    res = optimize(m)
    assert res.fired == {"batchnorm.into_preceding": 1}, res.fired
    assert ops(res.model) == ["Conv", "Relu"]
    check_numbers(res, m, rng().standard_normal((2, 3, 7, 7)).astype(np.float32))


def test_batchnorm_with_a_fused_activation_is_not_folded():
    """A BatchNorm carrying a ReLU is no affine map: fold_batchnorm refuses it by name."""
    from normonnx.optimize.fold_batchnorm import bn_affine
    from normonnx.optimize.graph import GraphView

    p = {**_inits(), "mu": np.zeros(C, np.float32), "va": np.ones(C, np.float32)}
    m = model(
        """<ir_version: 8, opset_import: ["" : 17, "normonnx" : 1]>
        g (float[2,6,5,7] x) => (float[2,6,5,7] y) {
         y = normonnx.BatchNorm <epsilon = 1e-5, channels = 6, running_stats = 1, activation = "relu"> (x, sc, bb, mu, va)
        }""",
        check=False,
        **p,
    )
    verdict, _, _ = bn_affine(GraphView(m), m.graph.node[0])
    assert not verdict and "fused activation (relu)" in verdict.reason
