"""The rule framework: a rewrite is a :class:`Rule` with three separate parts, run by a :class:`RulePass`.

- ``match`` — the pattern, structure only: a :class:`Match` (nodes the rewrite removes, the value
  it recomputes, facts) or a :class:`~normonnx.rejection.Rejection` saying why not (kept as a
  near-miss in debug mode);
- ``check`` — the proof: constants, axes, keepdims, dtypes, shapes; :data:`~normonnx.rejection.OK`
  or a Rejection with the reason and the offending value, never a bare ``False``;
- ``rewrite`` — the replacement as data (:class:`~normonnx.optimize.rewriter.Rewrite`).

Values computed inside a match may not be read outside it: :func:`apply_rule` checks that for
every rule (:func:`~normonnx.optimize.rewriter.interior_check`). A pass returns ``(model, modified)``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from typing import Any, ClassVar

import onnx

from ..rejection import OK, CheckResult, Rejection
from .graph import GraphView
from .result import Report
from .rewriter import Rewrite, apply_rewrites, interior_check


@dataclasses.dataclass
class Match:
    """A structural match: the nodes the rewrite removes, the value it recomputes, and facts."""

    anchor: onnx.NodeProto
    nodes: list[onnx.NodeProto]
    output: str
    facts: dict[str, Any] = dataclasses.field(default_factory=dict)


class Rule:
    """One rewrite: pattern (``match``), proof (``check``), replacement (``rewrite``)."""

    #: "<family-ish>.<form>", e.g. "layer_norm.decomposed"; the key of the fired counts
    name: ClassVar[str] = ""
    #: op types of the node the pattern is anchored at (the node producing the matched output)
    anchor_ops: ClassVar[tuple[str, ...]] = ()
    anchor_domain: ClassVar[str] = ""
    #: the driver checks that values computed inside the match are not read outside it
    check_interior: ClassVar[bool] = True
    #: skip nodes that a normonnx lowering produced (``normonnx.strategy`` metadata): re-fusing the
    #: core's own decomposition would only churn the graph
    skip_lowered: ClassVar[bool] = False

    def match(self, g: GraphView, node: onnx.NodeProto) -> Match | Rejection:
        raise NotImplementedError

    def check(self, g: GraphView, m: Match) -> CheckResult:
        return OK

    def rewrite(self, g: GraphView, m: Match) -> Rewrite:
        raise NotImplementedError

    def candidates(self, g: GraphView) -> Iterable[onnx.NodeProto]:
        dom = ("", "ai.onnx") if self.anchor_domain == "" else (self.anchor_domain,)
        return [n for n in g.nodes if n.op_type in self.anchor_ops and n.domain in dom]


class Pass:
    """A graph transformation: ``run(model, report) -> (model, modified)``."""

    name: str = ""

    def run(self, model: onnx.ModelProto, report: Report | None = None) -> tuple[onnx.ModelProto, bool]:
        raise NotImplementedError

    __call__ = run


class RulePass(Pass):
    """Apply a family of rules until none fires (each round: one scan per rule, disjoint matches)."""

    def __init__(self, name: str, rules: Sequence[Rule], max_rounds: int = 16) -> None:
        self.name = name
        self.rules = list(rules)
        self.max_rounds = max_rounds

    def run(self, model: onnx.ModelProto, report: Report | None = None) -> tuple[onnx.ModelProto, bool]:
        report = report if report is not None else Report()
        modified = False
        view: GraphView | None = None
        for _ in range(self.max_rounds):
            fired = False
            for rule in self.rules:
                # a scan that rewrote nothing returns the same model: its view (and the constants it
                # has read) serves the next scan; only a rewrite makes a new graph to index
                if view is None or view.model is not model:
                    view = GraphView(model)
                model, n = apply_rule(rule, model, report, view)
                fired |= n > 0
            modified |= fired
            if not fired:
                break
        return model, modified


def apply_rule(
    rule: Rule, model: onnx.ModelProto, report: Report, view: GraphView | None = None
) -> tuple[onnx.ModelProto, int]:
    """One scan of ``rule`` over the graph; every accepted match is rewritten. Returns (model, count):
    ``model`` itself when nothing fired. ``view`` is a :class:`GraphView` of ``model`` to reuse."""
    g = view if view is not None and view.model is model else GraphView(model)
    claimed: set[int] = set()
    rewrites: list[Rewrite] = []
    for node in rule.candidates(g):
        if id(node) in claimed:
            continue
        if not any(o in g.graph_outputs or g.users(o) for o in node.output if o):
            continue  # dead (an earlier rewrite bypassed it): cleanup removes it, nothing to prove
        if rule.skip_lowered:
            lowered = next((p.value for p in node.metadata_props if p.key == "normonnx.strategy"), None)
            if lowered is not None:
                report.miss(rule.name, node, Rejection(f"already a normonnx lowering (strategy {lowered})"))
                continue
        m = rule.match(g, node)
        if isinstance(m, Rejection):
            report.miss(rule.name, node, m)
            continue
        if any(id(n) in claimed for n in m.nodes):
            continue  # overlaps a match of this round; seen again next round
        answer = rule.check(g, m)
        if answer and rule.check_interior:
            answer = interior_check(g, m.nodes, m.output)
        if not answer:
            report.refuse(rule.name, node, answer)
            continue
        rewrites.append(rule.rewrite(g, m))
        claimed |= {id(n) for n in m.nodes}
    if not rewrites:
        return model, 0
    report.fired[rule.name] += len(rewrites)
    return apply_rewrites(model, g, rewrites), len(rewrites)
