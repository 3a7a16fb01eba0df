"""Planted conversion faults: localize must name exactly the faulty module, with its norm facts.

Each test edits a healthy export the way a real bug would (wrong ε, deprecated GroupNormalization-18
per-group scale, wrong LayerNormalization axis, BatchNorm folded with a sign error, a functional
op outside any module) and checks the culprit's name, the mapping that found it, the norm kind
and strategy, and the numbers: every module before it agrees to fp32 noise, the culprit is far
beyond its tolerance.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from _faults import (
    plant_bn_fold_sign,
    plant_gn18_per_group,
    plant_layernorm_axis,
    plant_wrong_eps,
    strip_scope_metadata,
)
from onnx import helper, numpy_helper

from normonnx.verify.localize import localize

# conv is folded with bn (normonnx's export folds every eval BatchNorm into the conv before it):
# the pair's value is compared on the bn row
ORDER = ["bn", "act", "gn", "conv2", "inorm", "ln", "fc"]
FP32_NOISE = 5e-6  # healthy layers of this net: measured ≤ 1.5e-6


def _before(rep, name):
    """The checked leaf layers executed before ``name``."""
    out = []
    for lr in rep.layers:
        if lr.name == name:
            return out
        if lr.comparison is not None:
            out.append(lr)
    raise AssertionError(name)


def _assert_culprit(rep, name, kind, strategy, lo, hi):
    c = rep.culprit
    assert c is not None, rep.verdict()
    assert c.name == name
    assert rep.between is None
    assert c.norm is not None and c.norm["kind"] == kind and c.norm["strategy"] == strategy
    assert lo < c.comparison.max_abs < hi, c.comparison.max_abs
    assert not c.comparison.passed and c.inputs_agree is not False
    assert c.isolated is not None and not c.isolated.passed  # its own error, on torch's inputs
    for lr in _before(rep, name):
        assert lr.comparison.passed and lr.comparison.max_abs < FP32_NOISE, (lr.name, lr.comparison.max_abs)
        assert lr.isolated is not None and lr.isolated.passed
    assert not rep.passed
    assert f"module {name!r}" in rep.verdict()


@pytest.mark.parametrize("opset", [17, 18])
def test_healthy_model_has_no_culprit(net, x, exported, opset):
    rep = localize(net, exported[opset][1], (x,))
    assert rep.culprit is None and rep.between is None and rep.passed
    assert [lr.name for lr in rep.layers if lr.comparison is not None] == ORDER
    assert max(lr.comparison.max_abs for lr in rep.checked()) < FP32_NOISE
    # both keep the exporter's scope metadata (normonnx restores it after the 18 → 17 conversion)
    assert rep.mapping == {"metadata": 6, "folded": 2}
    norms = {lr.name: (lr.norm["kind"], lr.norm["strategy"]) for lr in rep.layers if lr.norm}
    assert norms == {
        "bn": ("batch", "folded"),
        "gn": ("group", "decomposed"),
        "inorm": ("instance", "decomposed"),
        "ln": ("layer", "native"),
    }


@pytest.mark.parametrize("opset", [17, 18])
def test_wrong_epsilon_in_decomposed_group_norm(net, x, exported, opset):
    bad, old = plant_wrong_eps(exported[opset][1], "group_norm", 1e-3)  # the Add-ε constant
    assert old == pytest.approx(1e-5)
    rep = localize(net, bad, (x,))
    _assert_culprit(rep, "gn", "group", "decomposed", 2e-3, 2e-2)
    assert rep.culprit.norm["torch_eps"] == pytest.approx(1e-5)


def test_wrong_epsilon_attribute_of_native_layer_norm(net, x, exported):
    bad, old = plant_wrong_eps(exported[18][1], "layer_norm", 1e-3)  # LayerNormalization epsilon
    assert old == pytest.approx(1e-5)
    rep = localize(net, bad, (x,))
    _assert_culprit(rep, "ln", "layer", "native", 1e-3, 2e-2)
    assert rep.culprit.norm["onnx_ops"] == ["LayerNormalization"]
    assert rep.culprit.norm["onnx_epsilon"] == pytest.approx(1e-3)
    assert "epsilon 0.001 in ONNX vs 1e-05 in torch" in rep.culprit.norm["warning"]
    # the last layer (fc) diverges too, because its input does
    fc = next(lr for lr in rep.layers if lr.name == "fc")
    assert not fc.comparison.passed and fc.inputs_agree is False


def test_deprecated_groupnormalization18_per_group_scale(net, x, exported):
    bad = plant_gn18_per_group(exported[18][1], net)
    assert [n.op_type for n in bad.graph.node].count("GroupNormalization") == 1
    rep = localize(net, bad, (x,))
    _assert_culprit(rep, "gn", "group", "native", 0.3, 3.0)
    info = rep.culprit.norm
    assert info["onnx_ops"] == ["GroupNormalization"] and info["opset"] == 18
    assert info["recorded_strategy"] == "decomposed"  # the graph was changed after export
    assert "per group" in info["warning"]


def test_layernorm_normalising_the_wrong_axis(net, x, exported):
    bad = plant_layernorm_axis(exported[18][1], axis=-2)  # over tokens × channels, not channels
    rep = localize(net, bad, (x,))
    _assert_culprit(rep, "ln", "layer", "native", 0.5, 10.0)
    assert rep.culprit.inputs_agree is True  # checked on the ONNX value entering the norm


@pytest.mark.parametrize("opset", [17, 18])
def test_batchnorm_folded_with_a_sign_error(net, x, exported, opset):
    bad = plant_bn_fold_sign(exported[opset][1], net)
    assert "BatchNormalization" not in [n.op_type for n in bad.graph.node]
    rep = localize(net, bad, (x,))
    _assert_culprit(rep, "bn", "batch", "folded", 0.2, 10.0)
    assert rep.culprit.norm["onnx_ops"] == ["Conv"] and rep.culprit.folded_with == "conv"
    conv = next(lr for lr in rep.layers if lr.name == "conv")
    assert conv.mapped_by == "folded" and conv.comparison is None  # folded away: reported, not blamed
    assert "1 BatchNorm(s) folded into the op before them, each compared as the pair: 'bn' into 'conv'" in rep.notes
    assert "first divergence at module 'bn' (BatchNorm2d, batch norm folded into 'conv')" in rep.verdict()


def test_without_scope_metadata_the_same_culprit_is_found(net, x, exported):
    bad = strip_scope_metadata(plant_wrong_eps(exported[18][1], "group_norm", 1e-3)[0])
    rep = localize(net, bad, (x,))
    _assert_culprit(rep, "gn", "group", "decomposed", 2e-3, 2e-2)
    # without scope metadata: norms by their normonnx.norm nodes, the rest aligned, the fold found
    # from the aligned conv's folded node
    assert rep.mapping == {"norm": 3, "aligned": 3, "folded": 2}


def test_fault_in_functional_code_is_placed_between_modules(net, x, exported):
    """A per-channel Mul after the transpose in forward (no module owns it): no module is blamed.
    (A scalar would not do: layer norm is invariant to it.)"""
    m = onnx.ModelProto()
    m.CopyFrom(exported[18][1])
    g = m.graph
    i = next(k for k, n in enumerate(g.node) if n.op_type == "Transpose")
    t_out = g.node[i].output[0]
    for n in g.node:
        for k, v in enumerate(n.input):
            if v == t_out:
                n.input[k] = "scaled"
    k = np.ones(8, np.float32)
    k[3] = 1.2
    g.initializer.append(numpy_helper.from_array(k, "planted_k"))
    g.node.insert(i + 1, helper.make_node("Mul", [t_out, "planted_k"], ["scaled"], name="planted_mul"))
    rep = localize(net, m, (x,))
    assert rep.culprit is None
    assert rep.between == ("inorm", "ln")
    ln = next(lr for lr in rep.layers if lr.name == "ln")
    assert ln.inputs_agree is False and "diverges" in ln.input_note
    assert "between 'inorm' and 'ln'" in rep.verdict()


def test_custom_tolerance_can_hide_a_small_fault(net, x, exported):
    """atol/rtol are honoured per layer: ε 1e-5 → 1e-3 changes gn by < 2e-2, so atol 0.05 passes it."""
    bad, _ = plant_wrong_eps(exported[18][1], "group_norm", 1e-3)
    rep = localize(net, bad, (x,), atol=0.05, rtol=0.0)
    assert rep.culprit is None and rep.passed
    assert next(lr for lr in rep.layers if lr.name == "gn").comparison.max_abs > 2e-3


@pytest.mark.parametrize("norm", ["group", "instance", "batch"])
@pytest.mark.parametrize("act", ["silu", "relu"])
def test_norm_activation_fused_at_export_is_compared_after_the_activation(norm, act, tmp_path):
    """Export fuses a channel norm → SiLU (or ReLU) into one node, whose value is act(norm(x)):
    localize compares it with act of the module's output, so a healthy export has no culprit and a
    wrong norm (torch's weights changed after export) is still pinned on the norm module. (The Tanh
    keeps the BatchNorm from being folded into the Conv.)"""
    import torch

    from normonnx.exporter import export

    torch.manual_seed(0)
    module = {"silu": torch.nn.SiLU, "relu": torch.nn.ReLU}[act]
    layer = {
        "group": lambda: torch.nn.GroupNorm(4, 8),
        "instance": lambda: torch.nn.InstanceNorm2d(8, affine=True),
        "batch": lambda: torch.nn.BatchNorm2d(8),
    }[norm]()
    with torch.no_grad():
        layer.weight.normal_(1, 0.2)
        layer.bias.normal_(0, 0.2)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.Tanh(), layer, module(), torch.nn.Conv2d(8, 4, 1)
    ).eval()
    x = torch.randn(1, 3, 8, 8)
    res = export(net, (x,), tmp_path / "norm_act.onnx")
    (rec,) = res.lowerings
    assert (rec.kind, rec.activation) == (norm, act)  # fused: one node for the norm + the activation
    m = onnx.load(tmp_path / "norm_act.onnx")
    rep = localize(net, m, (x,))
    assert rep.passed and rep.culprit is None, rep.verdict()
    lr = next(lr for lr in rep.layers if lr.name == "2")
    assert lr.norm["fused_activation"] == act and lr.comparison.max_abs < FP32_NOISE
    with torch.no_grad():
        net[2].weight.mul_(1.5)
    rep = localize(net, m, (x,))
    assert rep.culprit is not None and rep.culprit.name == "2", rep.verdict()
