"""The reference set (module shapes of real libraries, ``_reference.py``) through the real CLI.

Each model is exported once by normonnx (standard ONNX ops, so faults can be planted in
attributes and initializers). A clean export: ``verify --localize`` exits 0 and names no module.
A planted fault of each kind (ε, scale, bias, axis, a conv/linear weight, a fused activation
dropped) at several positions: exit 1, the exact module named, its isolated error (its own ONNX
nodes fed with torch's inputs) beyond its tolerance and every leaf before it within its own.
"""

from __future__ import annotations

import json
import os

import onnx
import pytest
from _plant import (
    affine_of,
    folded_bias_of,
    plant_axis,
    plant_bias,
    plant_drop_activation,
    plant_element,
    plant_eps,
    plant_scale,
    plant_weight,
    weight_of,
)
from _reference import REFERENCE
from conftest import one_torch_thread

from normonnx.cli import main
from normonnx.exporter import export
from normonnx.verify.localize import localize

HERE = os.path.dirname(os.path.abspath(__file__))
STANDARD_OPS = ("native", "decomposed")


@pytest.fixture(scope="session")
def ref_exports(tmp_path_factory):
    d = tmp_path_factory.mktemp("reference")
    out = {}
    with one_torch_thread():
        for name, factory in REFERENCE.items():
            model, inputs = factory()
            path = d / f"{name}.onnx"
            export(model, inputs, path, prefer=STANDARD_OPS)
            out[name] = (path, onnx.load(path))
    return out


def _cli_json(capsys, model_name, path):
    rc = main(
        ["verify", f"{HERE}/_reference.py:{model_name}", str(path), "--localize", "--samples", "0", "--json", "-"]
    )
    out = capsys.readouterr().out

    def refuse(tok):
        raise AssertionError(f"non-strict JSON literal {tok}")

    return rc, json.loads(out, parse_constant=refuse)


@pytest.mark.parametrize("name", list(REFERENCE))
def test_clean_export_passes_and_names_nothing(capsys, ref_exports, name):
    rc, doc = _cli_json(capsys, name, ref_exports[name][0])
    loc = doc["localize"]
    assert rc == 0, loc["verdict"]
    assert doc["passed"] is True and loc["culprit"] is None and loc["between"] is None
    assert loc["verdict"] == "every checked module agrees"
    leaves = [lr for lr in loc["layers"] if lr["leaf"] and lr["comparison"] is not None]
    assert leaves and all(lr["isolated"] is not None and lr["isolated"]["passed"] for lr in leaves)
    for lr in leaves:  # every compared value carries its tolerance, where it came from and the minimum that passes
        iso = lr["isolated"]
        assert iso["tolerance_source"] in ("table", "derived")
        assert iso["tolerance"] == iso["derived"]  # no user tolerance: the derived one applies
        assert iso["derived"]["atol"] >= 1e-4 and iso["derived"]["rtol"] == 1e-4  # never below the table's floor
        assert iso["required_atol"] <= iso["tolerance"]["atol"]


def test_reference_shapes(ref_exports):
    """What each model is there for, asserted on a clean localization."""
    reps = {}
    for name, factory in REFERENCE.items():
        model, inputs = factory()
        reps[name] = localize(model, ref_exports[name][1], inputs)
    # norm+activation modules: the norm point is compared with the norm's own output
    na = {lr.name: lr for lr in reps["norm_act"].layers}
    assert na["bn1[norm]"].point == "norm" and na["bn1[norm]"].mapped_by == "folded"
    assert na["bn1[norm]"].folded_with == "stem" and na["stem"].mapped_by == "folded"
    assert na["bn1"].leaf is False and na["bn1"].comparison.passed  # the module output: act(norm(x))
    assert na["gn[norm]"].norm["fused_activation"] == "silu" and na["gn[norm]"].isolated.passed
    assert na["ln[norm]"].onnx_value != na["ln"].onnx_value  # LayerNorm vs its GELU
    # token + position embeddings: pos has no ONNX value of its own (folded to a constant)
    tp = {lr.name: lr for lr in reps["tok_pos"].layers}
    assert tp["pos"].mapped_by == "unmapped" and tp["pos"].comparison is None
    assert any("pos" in n and "no ONNX value of their own" in n for n in reps["tok_pos"].notes)
    # deep residual CNN: ≥ 50 leaf layers, bn1 and blocks.4.0.bn1 distinct, zero-init last norms pass
    dr = reps["deep_resnet"]
    leaves = [lr for lr in dr.layers if lr.leaf]
    assert len(leaves) >= 50
    by = {lr.name: lr for lr in dr.layers}
    assert by["bn1"].onnx_value != by["blocks.4.0.bn1"].onnx_value
    assert by["blocks.4.0.bn1"].folded_with == "blocks.4.0.conv1" and by["bn1"].folded_with == "conv1"
    assert by["blocks.0.0.bn2"].isolated.passed  # γ = 0: a constant β plane
    # large activations: the stem's pair reaches ~1e3 and its float32 error exceeds a fixed 1e-4,
    # the derived tolerance (reported, above the table's floor) passes it
    stem = by["bn1"].isolated
    assert stem.scale > 500 and stem.max_abs > 1e-4 and stem.passed
    assert stem.tolerance_source == "derived" and stem.tolerance == stem.derived and stem.tolerance.atol > 1e-4
    assert by["bn1"].error_model.startswith("conv+batchnorm fold")
    model, inputs = _fresh("deep_resnet")
    fixed = localize(model, ref_exports["deep_resnet"][1], inputs, atol=1e-4, rtol=0)
    assert fixed.culprit is not None and fixed.culprit.name == "bn1"  # what a fixed atol does: blames a healthy layer
    assert fixed.culprit.isolated.tolerance_source == "user"
    # weight-standardised convs, attention with GroupNorm, a reused SiLU (fused: no value)
    ws = {lr.name: lr for lr in reps["ws_attn"].layers}
    assert ws["conv1"].isolated.passed and ws["attn.norm"].norm["kind"] == "group"
    assert ws["act"].mapped_by == ws["act#2"].mapped_by == "unmapped"


def _fresh(name):
    return REFERENCE[name]()


def _pos_constant_fault(m):
    """pos(arange(T)) was folded to a constant: edit one element (a whole row would be invisible:
    LayerNorm removes a shift along its own axis)."""
    inits = {t.name for t in m.graph.initializer}
    add = next(n for n in m.graph.node if n.op_type == "Add" and any(v in inits for v in n.input))
    name = next(v for v in add.input if v in inits)
    return plant_element(m, name, (1, 3), 0.5)


def _token_row_fault(m):
    ids = _fresh("tok_pos")[1][0]
    return plant_element(m, "tok.weight", (int(ids[0, 0]), 5), 1.0)


FAULTS = [
    # (model, kind, plant, culprit name, folded_with)
    ("norm_act", "eps", lambda m: plant_eps(m, "gn"), "gn[norm]", None),
    ("norm_act", "eps", lambda m: plant_eps(m, "ln"), "ln[norm]", None),
    ("norm_act", "scale", lambda m: plant_scale(m, affine_of(m, "gn", "scale")), "gn[norm]", None),
    ("norm_act", "scale", lambda m: plant_scale(m, weight_of(m, "stem")), "bn1[norm]", "stem"),
    ("norm_act", "bias", lambda m: plant_bias(m, affine_of(m, "ln", "bias")), "ln[norm]", None),
    ("norm_act", "bias", lambda m: plant_bias(m, folded_bias_of(m, "stem")), "bn1[norm]", "stem"),
    ("norm_act", "axis", lambda m: plant_axis(m, "ln", 0), "ln[norm]", None),
    ("norm_act", "weight", lambda m: plant_weight(m, "conv2.weight"), "conv2", None),
    ("norm_act", "weight", lambda m: plant_weight(m, weight_of(m, "head")), "head", None),
    ("norm_act", "activation", lambda m: plant_drop_activation(m, "gn"), "gn[norm]", None),
    ("tok_pos", "eps", lambda m: plant_eps(m, "ln"), "ln", None),
    ("tok_pos", "eps", lambda m: plant_eps(m, "ln_f"), "ln_f", None),
    ("tok_pos", "scale", lambda m: plant_scale(m, affine_of(m, "ln", "scale")), "ln", None),
    ("tok_pos", "bias", lambda m: plant_bias(m, affine_of(m, "ln_f", "bias")), "ln_f", None),
    ("tok_pos", "axis", lambda m: plant_axis(m, "ln", 1), "ln", None),
    ("tok_pos", "weight", lambda m: plant_weight(m, weight_of(m, "mlp.2")), "mlp.2", None),
    ("tok_pos", "weight", _token_row_fault, "tok", None),
    ("deep_resnet", "scale", lambda m: plant_scale(m, weight_of(m, "conv1")), "bn1", "conv1"),
    (
        "deep_resnet",
        "scale",
        lambda m: plant_scale(m, weight_of(m, "blocks.4.0.conv1")),
        "blocks.4.0.bn1",
        "blocks.4.0.conv1",
    ),
    (
        "deep_resnet",
        "bias",
        lambda m: plant_bias(m, folded_bias_of(m, "blocks.5.1.conv2")),
        "blocks.5.1.bn2",
        "blocks.5.1.conv2",
    ),
    (
        "deep_resnet",
        "weight",
        lambda m: plant_weight(m, weight_of(m, "blocks.2.1.conv2")),
        "blocks.2.1.bn2",
        "blocks.2.1.conv2",
    ),
    ("deep_resnet", "weight", lambda m: plant_weight(m, weight_of(m, "fc")), "fc", None),
    ("ws_attn", "eps", lambda m: plant_eps(m, "gn2"), "gn2", None),
    ("ws_attn", "eps", lambda m: plant_eps(m, "attn.norm"), "attn.norm", None),
    ("ws_attn", "scale", lambda m: plant_scale(m, affine_of(m, "gn1", "scale")), "gn1", None),
    ("ws_attn", "bias", lambda m: plant_bias(m, affine_of(m, "attn.norm", "bias")), "attn.norm", None),
    ("ws_attn", "activation", lambda m: plant_drop_activation(m, "gn1"), "gn1", None),
    ("ws_attn", "activation", lambda m: plant_drop_activation(m, "gn2"), "gn2", None),
    ("ws_attn", "weight", lambda m: plant_weight(m, "attn.v.weight"), "attn.v", None),
    ("ws_attn", "weight", lambda m: plant_weight(m, weight_of(m, "conv2")), "conv2", None),
]


@pytest.mark.parametrize(
    ("model_name", "kind", "plant", "culprit", "folded_with"),
    FAULTS,
    ids=[f"{f[0]}-{f[1]}-{f[3]}" for f in FAULTS],
)
def test_planted_fault_names_the_module(capsys, tmp_path, ref_exports, model_name, kind, plant, culprit, folded_with):
    bad = plant(ref_exports[model_name][1])
    path = tmp_path / "bad.onnx"
    onnx.save(bad, path)
    rc, doc = _cli_json(capsys, model_name, path)
    loc = doc["localize"]
    assert rc == 1, loc["verdict"]
    assert doc["passed"] is False
    c = loc["culprit"]
    assert c is not None, loc["verdict"]
    assert c["name"] == culprit, loc["verdict"]
    assert c["folded_with"] == folded_with
    assert f"first divergence at module {culprit!r}" in loc["verdict"]
    iso = c["isolated"]  # its own error, on torch's inputs, beyond its tolerance
    assert iso is not None and iso["passed"] is False
    assert float(iso["max_abs"]) > iso["tolerance"]["atol"] and float(iso["required_atol"]) > iso["tolerance"]["atol"]
    assert c["comparison"] is not None  # the accumulated number is reported too
    for lr in loc["layers"]:
        if lr["name"] == culprit:
            break
        if lr["leaf"] and lr["isolated"] is not None:
            assert lr["isolated"]["passed"], lr["name"]


def test_fault_in_a_constant_no_module_owns_is_placed_between_modules(tmp_path, ref_exports):
    """pos(arange(T)) became a constant; a wrong value there is not blamed on pos (it has no ONNX
    value of its own) nor on ln (its isolated error is fine): it enters between tok and ln."""
    bad = _pos_constant_fault(ref_exports["tok_pos"][1])
    model, inputs = _fresh("tok_pos")
    rep = localize(model, bad, inputs)
    assert rep.culprit is None
    assert rep.between == ("tok", "ln"), rep.verdict()
    by = {lr.name: lr for lr in rep.layers}
    assert by["pos"].mapped_by == "unmapped" and by["ln"].isolated.passed
    assert not by["ln"].comparison.passed  # accumulated: the wrong input shows


def test_isolated_error_removes_upstream_drift(ref_exports):
    """A small fault early (bias of bn1's fold) and a healthy deep layer: the deep layer's
    accumulated error is large, its isolated error float32 noise."""
    m = ref_exports["deep_resnet"][1]
    bad = plant_bias(m, folded_bias_of(m, "conv1"), delta=50.0)
    model, inputs = _fresh("deep_resnet")
    rep = localize(model, bad, inputs)
    assert rep.culprit is not None and rep.culprit.name == "bn1"
    deep = next(lr for lr in rep.layers if lr.name == "blocks.3.1.bn2")
    assert not deep.comparison.passed and deep.comparison.max_abs > 10 * deep.comparison.tolerance.atol
    assert deep.isolated.passed and deep.isolated.max_abs < deep.isolated.tolerance.atol


def test_default_export_clean_and_a_dropped_fused_activation(tmp_path):
    """The export users get by default (normonnx's kernels when the library is there, standard ops
    otherwise): clean → no culprit; the SiLU fused into gn2's node dropped → gn2 named."""
    model, inputs = _fresh("ws_attn")
    path = tmp_path / "ws.onnx"
    with one_torch_thread():
        res = export(model, inputs, path)
        assert [r.activation for r in res.lowerings] == ["silu", "silu", ""]
        clean = localize(model, path, inputs)
        assert clean.passed and clean.culprit is None, clean.verdict()
        rep = localize(model, plant_drop_activation(onnx.load(path), "gn2"), inputs)
    assert rep.culprit is not None and rep.culprit.name == "gn2", rep.verdict()
    assert rep.culprit.norm["fused_activation"] == "silu" and not rep.culprit.isolated.passed
