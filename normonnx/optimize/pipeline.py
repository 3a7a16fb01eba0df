"""The one recognition-and-lowering pipeline that ``normonnx export`` and ``normonnx optimize`` share.

    ONNX graph ─infer─▶ fold_batchnorm ─▶ fold_param_norms ─cleanup─▶ canonical ─cleanup─▶
        fuse_group ─▶ fuse_layer ─▶ fuse_rms ─▶ modulated ─▶ residual ─▶ lower (selector) ─cleanup─▶ ONNX graph

``export`` feeds it torch's ONNX program (aten norms already became ``normonnx.<Op>`` nodes in the
exporter's translation table, hand-written ones are still primitives); ``optimize`` feeds it any
file. Both get the same rules, the same lowering policy and the same record of what fired and why
(:data:`RECORD_KEY` in the model's metadata), so ``normonnx export`` and ``torch.onnx.export`` +
``normonnx optimize`` give the same file.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import onnx

from . import Report, Rule, RulePass, cleanup, infer

#: rule families in the order the pipeline runs them (one module each under normonnx/optimize/)
FOLDS = ("fold_batchnorm", "fold_param_norms")
FUSIONS = ("canonical", "fuse_group", "fuse_layer", "fuse_rms", "modulated", "residual")
FAMILIES = FOLDS + FUSIONS
#: model metadata entry with the fired counts and refusals of the last pipeline run
RECORD_KEY = "normonnx.optimize"


def recognise(
    model: onnx.ModelProto, report: Report, families: Mapping[str, Sequence[Rule]], *, fuse: bool = True
) -> onnx.ModelProto:
    """Fold BatchNorms and norms of parameters, then (``fuse``) turn every norm spelling into one
    ``normonnx.<Op>`` node. ``families`` maps each family name to the rules to run (empty: skip)."""
    model = infer(model)
    for fam in FOLDS:
        if families.get(fam):
            model, _ = RulePass(fam, families[fam]).run(model, report)
    model = cleanup(model)
    if not fuse:
        return model
    if families.get("canonical"):
        model, changed = RulePass("canonical", families["canonical"]).run(model, report)
        if changed:
            model = cleanup(model)  # merges the now-identical reductions, drops the old ones
    for fam in FUSIONS[1:]:
        if families.get(fam):
            model, _ = RulePass(fam, families[fam]).run(model, report)
    return model


def lower(
    model: onnx.ModelProto,
    report: Report,
    *,
    target: str,
    prefer: Iterable[str] | None = None,
    allow_unstable: bool = False,
) -> tuple[onnx.ModelProto, list[Any]]:
    """Lower every ``normonnx`` norm node through the selector for ``target``, clean up, and record
    the run in the model's metadata. Returns the model and the lowering records (objects with
    ``as_dict``; CUDA contrib lowerings as dicts)."""
    from ..lowering.graph import lower_model, norm_nodes

    records: list[Any] = []
    if norm_nodes(model):
        if target == "cuda":
            from . import lower_cuda

            model, cuda_records = lower_cuda.lower_for_cuda(model, report, allow_unstable=allow_unstable)
            records += cuda_records
        model, lowered = lower_model(model, provider=target, prefer=prefer, allow_unstable=allow_unstable)
        records += lowered
    model = cleanup(model)
    record(model, report)
    return model, records


def record(model: onnx.ModelProto, report: Report) -> None:
    """Store what fired and what was refused (with the reasons) in the model's metadata."""
    keep = [p for p in model.metadata_props if p.key != RECORD_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(keep)
    data = {"fired": dict(report.fired), "refused": [r.as_dict() for r in report.refused]}
    model.metadata_props.add(key=RECORD_KEY, value=json.dumps(data))


def recorded(model: onnx.ModelProto) -> dict[str, Any]:
    """The pipeline record stored in a model (``{}`` if none)."""
    for p in model.metadata_props:
        if p.key == RECORD_KEY:
            return dict(json.loads(p.value))
    return {}
