"""The one pipeline export and optimize share (normonnx/optimize/pipeline.py), on the reference
models of models/: every norm a user writes becomes one norm node, at export and at optimize alike."""

from __future__ import annotations

import io
from collections import Counter

import numpy as np
import onnx
import pytest
import torch
from optimize_helpers import _quiet
from strict_tolerances import REWRITE_ATOL

import models
from normonnx.exporter import export
from normonnx.lowering.graph import recorded_lowerings
from normonnx.optimize import optimize_model
from normonnx.optimize.pipeline import recorded
from normonnx.runtime import session

HAND = [n for n in models.names() if models.get(n).hand_written]
GROUP = [n for n in models.names() if "group" in models.get(n).expected_norms]


def _ops(m: onnx.ModelProto) -> Counter[str]:
    return Counter(n.op_type for n in m.graph.node)


def _kinds(records) -> dict[str, int]:
    return dict(Counter(r["kind"] if isinstance(r, dict) else r.kind for r in records))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["convnext_hand", "tutorial_gn", "resnet_ws"])
def test_export_equals_torch_export_then_optimize(name, tmp_path):
    """normonnx export and torch.onnx.export + normonnx optimize give the same graph and numbers."""
    entry = models.get(name)
    model, x = entry.factory(), tuple(entry.example_inputs())
    res = export(model, x, tmp_path / "n.onnx", opset=20)
    with _quiet(), torch.no_grad():
        plain = torch.onnx.export(model, x, dynamo=True, opset_version=20).model_proto
    opt = optimize_model(plain, verify=False)
    ours = onnx.load(res.path)
    assert _ops(ours) == _ops(opt.model), (_ops(ours), _ops(opt.model))
    assert _kinds(res.lowerings) == _kinds(opt.lowerings)
    feed = {i.name: t.numpy() for i, t in zip(ours.graph.input, x)}
    a = session(ours).run(feed)[0]
    b = session(opt.model).run({i.name: t.numpy() for i, t in zip(opt.model.graph.input, x)})[0]
    np.testing.assert_allclose(a, b, atol=REWRITE_ATOL, rtol=REWRITE_ATOL)
    # what fired is recorded in the file
    assert recorded(ours)["fired"] == res.fired and recorded_lowerings(ours)


@pytest.mark.slow
@pytest.mark.parametrize("name", GROUP)
def test_legacy_opset13_export_fuses_every_groupnorm(name):
    """torch's legacy exporter spells GroupNorm Reshape→InstanceNormalization→Reshape(Shape(x)); the
    shape facts pass folds each Shape so that every view is proven, not only the first few."""
    entry = models.get(name)
    f = io.BytesIO()
    with _quiet(), torch.no_grad():
        torch.onnx.export(entry.factory(), tuple(entry.example_inputs()), f, dynamo=False, opset_version=13)
    res = optimize_model(onnx.load_from_string(f.getvalue()), n_samples=1)
    assert _kinds(res.lowerings).get("group") == entry.expected_norms["group"], (res.fired, res.refused)
    assert not [r for r in res.refused if r.rule.startswith("group_norm.")], res.refused
    assert res.passed, res.summary()


@pytest.mark.slow
@pytest.mark.parametrize("name", HAND)
def test_hand_written_norms_at_offset_1e3_within_2x_torch(name, tmp_path):
    """Error vs float64 at input offset 1e3 ≤ 2× torch fp32's own, never NaN, for every model
    whose norms are written by hand (the unbiased tutorial GroupNorm included)."""
    entry = models.get(name)
    model = entry.factory()
    x = tuple(entry.example_inputs())
    res = export(model, x, tmp_path / "m.onnx")
    shifted = tuple(t + 1e3 if t.is_floating_point() else t for t in x)
    with torch.no_grad():
        y32 = model(*shifted)
        y64 = _double(model)(*[t.double() if t.is_floating_point() else t for t in shifted])
    feed = {i.name: t.numpy() for i, t in zip(onnx.load(res.path).graph.input, shifted)}
    y = session(res.path).run(feed)[0]
    assert np.isfinite(y).all()
    err = np.abs(y.astype(np.float64) - y64.numpy()).max()
    err_torch = (y32.double() - y64).abs().max().item()
    assert err <= 2 * err_torch + 1e-6, (name, err, err_torch)


def _double(model: torch.nn.Module) -> torch.nn.Module:
    import copy

    return copy.deepcopy(model).double()


def test_modulated_layernorm_fused(tmp_path):
    """DiT's AdaLN: LayerNorm without affine, then x·(1 + scale) + shift with per-sample run-time
    scale/shift: every one becomes the norm node's modulation (and pre-norm residual Adds its residual)."""
    entry = models.get("dit_block")
    res = export(entry.factory(), tuple(entry.example_inputs()), tmp_path / "d.onnx")
    m = onnx.load(res.path)
    norms = [n for n in m.graph.node if n.op_type == "LayerNorm"]
    assert res.fired.get("modulated.layer") == entry.expected_norms["layer"] == len(norms)
    assert all(any(a.name == "modulation" and a.i for a in n.attribute) for n in norms)
    assert "modulated.record" not in res.fired  # recorded only where it cannot be fused


def test_inspect_reports_what_the_pipeline_would_recognise_and_the_hazards(tmp_path):
    """A plain torch export of GroupNorm is an InstanceNormalization to the eye: inspect names it as
    the GroupNorm the pipeline makes of it, and says why the file as it is is fragile."""
    from normonnx.commands.inspect import inspect_model

    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.GroupNorm(4, 8), torch.nn.SiLU()).eval()
    ln = torch.nn.LayerNorm(32768).eval()
    for name, mod, x in (("gn", m, torch.randn(1, 3, 16, 16)), ("ln", ln, torch.randn(2, 32768))):
        with _quiet(), torch.no_grad():
            torch.onnx.export(mod, (x,), tmp_path / f"{name}.onnx", dynamo=True, opset_version=18)
    gn = inspect_model(str(tmp_path / "gn.onnx"))
    assert gn["recognisable_kinds"] == {"group": 1} and gn["fired"]["group_norm.via_instance"] == 1
    assert [h["op"] for h in gn["hazards"]] == ["InstanceNormalization"]
    big = inspect_model(str(tmp_path / "ln.onnx"))
    assert big["recognisable_kinds"] == {"layer": 1}
    (h,) = big["hazards"]
    assert h["op"] == "LayerNormalization" and "32768 elements per row" in h["hazard"]
