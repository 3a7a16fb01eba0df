"""The registry of rule families: the one list of what rules exist, in the order the pipeline runs them.

A family is one module under ``normonnx/optimize/`` with a ``RULES`` list. Adding one is a module
plus one line in :data:`FAMILIES`; the pipeline, ``rules=`` / ``--rules`` and :func:`rule_names`
read this table.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Iterable
from typing import Literal

from ..errors import OptimizeError
from .rule import Rule

Stage = Literal["fold", "canonical", "fuse"]


@dataclasses.dataclass(frozen=True)
class Family:
    """A family name (what ``rules=`` accepts), its module, and the pipeline stage it runs in.

    fold:      folds norms into constants (BatchNorm into its Conv, norms of weights), before cleanup;
    canonical: makes the statistics' spellings one, followed by a cleanup;
    fuse:      turns norm spellings into ``normonnx.<Op>`` nodes (only where normonnx can lower them);
               ``rotary`` and ``attention`` turn rotary embeddings and attention written in
               primitives into the ONNX ``RotaryEmbedding`` and ``Attention`` ops.
    """

    name: str
    module: str
    stage: Stage


FAMILIES: tuple[Family, ...] = (
    Family("fold_batchnorm", "fold_batchnorm", "fold"),
    Family("fold_param_norms", "fold_param_norms", "fold"),
    Family("canonical", "canonical", "canonical"),
    Family("fuse_group", "fuse_group", "fuse"),
    Family("fuse_channel", "fuse_channel", "fuse"),
    Family("activation", "fuse_activation", "fuse"),
    Family("fuse_layer", "fuse_layer", "fuse"),
    Family("fuse_rms", "fuse_rms", "fuse"),
    Family("modulated", "fuse_modulated", "fuse"),
    Family("residual", "fuse_residual", "fuse"),
    Family("sample_operands", "fuse_sample", "fuse"),  # after the fusions that make the per-sample operands
    Family("rotary", "fuse_rotary", "fuse"),  # not a norm: the ONNX RotaryEmbedding op (opset 23+)
    Family("attention", "fuse_attention", "fuse"),  # not a norm: the ONNX Attention op (opset 23+)
)

#: family names by stage, in pipeline order
FOLDS = tuple(f.name for f in FAMILIES if f.stage == "fold")
FUSIONS = tuple(f.name for f in FAMILIES if f.stage in ("canonical", "fuse"))


def family_rules() -> dict[str, list[Rule]]:
    """Family name → its rules, in pipeline order."""
    return {f.name: list(importlib.import_module(f"{__package__}.{f.module}").RULES) for f in FAMILIES}


def rule_names() -> dict[str, list[str]]:
    """Family → rule names (what ``rules=`` accepts)."""
    return {f: [r.name for r in rules] for f, rules in family_rules().items()}


def select(rules: Iterable[str] | None) -> dict[str, list[Rule]]:
    """The rules of every family that ``rules`` (family or rule names; None: all) asks for."""
    fams = family_rules()
    if rules is None:
        return fams
    wanted = set(rules)
    known = set(fams) | {r.name for rs in fams.values() for r in rs}
    unknown = sorted(wanted - known)
    if unknown:
        raise OptimizeError(
            f"unknown rule or family: {', '.join(unknown)}",
            note="valid: " + "; ".join(f"{f} ({', '.join(r.name for r in rs)})" for f, rs in fams.items()),
        )
    return {f: [r for r in rs if f in wanted or r.name in wanted] for f, rs in fams.items()}
