"""What an optimization did, as data: :class:`Report` (filled in while the passes run) and
:class:`OptimizeResult` (what :func:`~normonnx.optimize.optimize_model` returns, with the evidence).

Refusals and near-misses are :class:`~normonnx.rejection.Rejection` s attributed to their rule and
node, printed as ``rule at 'node': reason [value]``.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from typing import Any

import onnx

from ..rejection import Rejection


@dataclasses.dataclass
class Report:
    """What the passes did: fired counts per rule, refusals with reasons, debug near-misses."""

    debug: bool = False
    fired: Counter[str] = dataclasses.field(default_factory=Counter)
    refused: list[Rejection] = dataclasses.field(default_factory=list)
    misses: list[Rejection] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)

    def refuse(self, rule: str, node: onnx.NodeProto, rejection: Rejection) -> None:
        """Record that ``rule`` matched at ``node`` but its check refused (once per rule, node, reason)."""
        r = rejection.at(rule, node.name or node.output[0])
        if r not in self.refused:
            self.refused.append(r)

    def miss(self, rule: str, node: onnx.NodeProto, rejection: Rejection) -> None:
        """Record why ``rule``'s pattern did not match at ``node`` (debug mode only)."""
        if self.debug:
            r = rejection.at(rule, node.name or node.output[0])
            if r not in self.misses:
                self.misses.append(r)


@dataclasses.dataclass
class OptimizeResult:
    """What :func:`optimize_model` did, with the evidence."""

    model: onnx.ModelProto
    target: str
    opset: int
    fired: dict[str, int]
    refused: list[Rejection]
    lowerings: list[dict[str, Any]]
    verification: Any  # verify.Verification | None
    nodes_before: int
    nodes_after: int
    ops_before: dict[str, int]
    ops_after: dict[str, int]
    seconds: float
    misses: list[Rejection] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)
    #: where ``model``'s external references resolve (the input's directory; None: all inline).
    #: Save it inside ``normonnx.external.reading(result.base_dir)``: io.save copies the data.
    base_dir: str | None = None

    @property
    def passed(self) -> bool:
        """True unless verification ran and found a mismatch."""
        return self.verification is None or bool(self.verification.passed)

    @property
    def rewrites(self) -> int:
        return sum(self.fired.values())

    def summary(self) -> str:
        parts = [f"{self.rewrites} rewrites", f"{self.nodes_before} → {self.nodes_after} nodes"]
        if self.verification is not None:
            parts.append(self.verification.summary())
        else:
            parts.append("not verified (--no-verify)")
        return ", ".join(parts)

    def as_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "opset": self.opset,
            "passed": self.passed,
            "fired": dict(self.fired),
            "refused": [r.as_dict() for r in self.refused],
            "lowerings": self.lowerings,
            "nodes_before": self.nodes_before,
            "nodes_after": self.nodes_after,
            "ops_before": self.ops_before,
            "ops_after": self.ops_after,
            "seconds": round(self.seconds, 3),
            "verification": self.verification.as_dict() if self.verification is not None else None,
            "debug_misses": [r.as_dict() for r in self.misses],
            "notes": self.notes,
        }


def op_counts(model: onnx.ModelProto) -> dict[str, int]:
    """Op type → count, most frequent first (domain-qualified outside the default domain)."""
    c = Counter((f"{n.domain}." if n.domain not in ("", "ai.onnx") else "") + n.op_type for n in model.graph.node)
    return dict(sorted(c.items(), key=lambda kv: (-kv[1], kv[0])))
