"""The rule framework (normonnx/optimize/rule.py, families.py) and the one rejection type
(normonnx/rejection.py) that rule matches, rule checks and lowering strategies all answer with."""

from __future__ import annotations

import numpy as np
import pytest
from optimize_helpers import STANDARD_OPS, assert_close, model, ops, optimize, run
from test_fuse_layer import BETA, GAMMA, ln_text

from normonnx import lowering
from normonnx.errors import OptimizeError
from normonnx.optimize import OK, Rejection, Report, RulePass, apply_rule, cleanup, infer, pipeline, rule
from normonnx.optimize.families import FAMILIES, FOLDS, FUSIONS, family_rules, select
from normonnx.optimize.graph import GraphView
from normonnx.runtime import session
from normonnx.spec import NormSpec


def x_of(shape: tuple[int, ...], seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def test_rejection_prints_one_way():
    r = Rejection("ε = -1 is negative", np.array([-1.0, 2.0, 3.0, 4.0, 5.0], np.float32))
    assert not r and OK and repr(OK) == "OK"
    assert r.value == "float32[5] [-1, 2, 3, 4, …]"  # an array is shortened when the rejection is made
    assert str(r) == "ε = -1 is negative [float32[5] [-1, 2, 3, 4, …]]"
    at = r.at("layer_norm.decomposed", "LN_0")
    assert str(at) == "layer_norm.decomposed at 'LN_0': ε = -1 is negative [float32[5] [-1, 2, 3, 4, …]]"
    assert at.as_dict() == {
        "rule": "layer_norm.decomposed",
        "node": "LN_0",
        "reason": "ε = -1 is negative",
        "value": "float32[5] [-1, 2, 3, 4, …]",
    }
    assert str(Rejection("no lowering").at("native", "")) == "native: no lowering"
    assert Rejection("a", 3) == Rejection("a", "3")  # the value is kept as text


def test_rule_refusal_and_lowering_rejection_are_one_type():
    # a rule check: ε is a graph input, so the decomposed LayerNorm is refused with the value
    m = model(ln_text(eps="", inputs=", float eps"), gamma=GAMMA, beta=BETA)
    res = optimize(m, verify=False)  # (optimize's verification cannot feed a rank-0 input: checked below)
    assert not res.fired and res.refused
    r = next(r for r in res.refused if r.rule == "layer_norm.decomposed")
    assert isinstance(r, Rejection) and r.value == "eps" and "ε is not a constant" in r.reason
    assert str(r) == f"layer_norm.decomposed at {r.node!r}: {r.reason} [eps]"
    feed = {"x": x_of((2, 5, 16), 1), "eps": np.array(1e-5, np.float32)}
    got, want = (session(g, optimize=False).run(None, feed)[0] for g in (res.model, m))
    assert_close(got, want, "model", "refused model vs original")

    # a lowering strategy: the same type, and the selector records it as printed
    spec = NormSpec("layer", normalized_shape=(6,), channels_first=True, rank=4)
    why = lowering.check(spec, "native", 17)
    assert isinstance(why, Rejection) and not why
    assert "channels-first needs the decomposition" in str(why)
    assert ("native", str(why)) in lowering.select(spec, 17, prefer=("native", "decomposed")).rejected
    assert lowering.check(spec, "decomposed", 17) is OK


def test_rule_pass_builds_one_view_per_graph_state(monkeypatch: pytest.MonkeyPatch):
    """A scan that fires nothing hands its view to the next scan; a rewrite makes a new graph."""
    built: list[GraphView] = []

    class CountingView(GraphView):
        def __init__(self, m: object) -> None:
            super().__init__(m)  # type: ignore[arg-type]
            built.append(self)

    m = cleanup(infer(model(ln_text(), gamma=GAMMA, beta=BETA)))
    rules = family_rules()["fuse_layer"]
    # the reference: RulePass's rounds, each scan on a view of its own
    fresh, fired_scans = m, 0
    while True:
        round_fired = False
        for r in rules:
            fresh, n = apply_rule(r, fresh, Report())
            fired_scans += n > 0
            round_fired |= n > 0
        if not round_fired:
            break
    monkeypatch.setattr(rule, "GraphView", CountingView)
    report = Report()
    out, modified = RulePass("fuse_layer", rules).run(m, report)
    assert modified and dict(report.fired) == {"layer_norm.decomposed": 1, "layer_norm.affine": 2}
    assert fired_scans == 3 and len(built) == 1 + fired_scans  # not one per scan (15 here)
    assert out.SerializeToString() == fresh.SerializeToString()
    assert ops(out) == ["normonnx.LayerNorm"]
    x = x_of((2, 5, 16), 2)
    lowered, _ = pipeline.lower(out, report, target="cpu", prefer=STANDARD_OPS)
    assert ops(lowered) == ["LayerNormalization"]
    assert_close(run(lowered, x)[0], run(m, x)[0], "layer", "fused vs original")


def test_one_family_list():
    names = tuple(f.name for f in FAMILIES)
    assert FOLDS + FUSIONS == names and FUSIONS[0] == "canonical"
    rules = family_rules()
    assert tuple(rules) == names and all(rules[f] for f in names)
    assert select(["fuse_rms"]) == {f: (rules[f] if f == "fuse_rms" else []) for f in names}
    first = rules["fuse_layer"][0].name
    assert select([first]) == {f: ([rules[f][0]] if f == "fuse_layer" else []) for f in names}
    with pytest.raises(OptimizeError) as e:
        select(["fuse_nothing"])
    assert "unknown rule or family: fuse_nothing" in str(e.value)
    assert all(f in e.value.note for f in names)
