"""ONNX-only bisection: original vs edited file, one file on two onnxruntime configurations."""

from __future__ import annotations

import pytest
from _faults import plant_layernorm_axis, plant_wrong_eps

from normonnx.verify.bisect import bisect


def test_edited_epsilon_constant_is_the_first_divergence(exported, x):
    a = exported[18][1]
    b, _ = plant_wrong_eps(a, "group_norm", 1e-3)  # var + ε reads a new ε initializer
    rep = bisect(a, b, [x.numpy()])
    f = rep.first
    assert f is not None and not rep.passed
    assert f.op_type == "Add" and f.scope == "gn"
    assert f.norm == {
        "node": "node_group_norm",
        "kind": "group",
        "strategy": "decomposed",
        "spec": "group_c8_g4_wb_e1em05_float32",
    }
    assert f.comparison.max_abs == pytest.approx(1e-3 - 1e-5)
    assert any("input 1 is " in n and "planted_eps/" in n for n in rep.notes), rep.notes
    # downstream values are reported as diverging *because of* their inputs
    consumer = next(n for n in a.graph.node if f.name in n.input)
    sqrt = next(v for v in rep.values if v.name == consumer.output[0])
    assert sqrt.op_type == "Sqrt" and sqrt.inputs_agree is False and not sqrt.comparison.passed
    later = [v for v in rep.values if v.index > f.index and not v.comparison.passed]
    assert later and all(v.inputs_agree is not True for v in later)
    assert rep.outputs[0].passed is False


def test_attribute_change_is_named(exported, x):
    a = exported[18][1]
    rep = bisect(a, plant_layernorm_axis(a, -2), [x.numpy()])
    assert rep.first.name == "layer_norm" and rep.first.op_type == "LayerNormalization"
    assert rep.first.inputs_agree is True
    assert 0.5 < rep.first.comparison.max_abs < 10
    assert rep.notes == ["LayerNormalization producing 'layer_norm': attribute axis = -1 in A, -2 in B"]


def test_same_file_with_onnxruntime_optimizations_agrees(exported, x):
    path = exported[18][0]
    rep = bisect(path, "cpu:opt", [x.numpy()])
    assert rep.passed and rep.first is None
    assert len(rep.values) > 30
    assert max(v.comparison.max_abs for v in rep.values) < 1e-4
    assert rep.b.endswith("on cpu:opt")
