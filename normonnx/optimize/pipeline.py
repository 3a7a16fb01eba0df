"""The one recognition-and-lowering pipeline that ``normonnx export`` and ``normonnx optimize`` share.

    ONNX graph ─shape facts─▶ fold_batchnorm ─▶ fold_param_norms ─cleanup─▶ canonical ─cleanup─▶
        fuse_group ─▶ fuse_channel ─▶ activation ─▶ fuse_layer ─▶ fuse_rms ─▶ modulated ─▶ residual ─▶
        sample_operands ─▶ rotary ─▶ attention ─▶ lower (selector) ─cleanup─▶ ONNX graph

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

from .cleanup import cleanup, infer
from .families import FOLDS, FUSIONS
from .result import Report
from .rule import Rule, RulePass

#: model metadata entry with the fired counts and refusals of the last pipeline run
RECORD_KEY = "normonnx.optimize"


def recognise(
    model: onnx.ModelProto, report: Report, families: Mapping[str, Sequence[Rule]], *, fuse: bool = True
) -> onnx.ModelProto:
    """Fold BatchNorms and norms of parameters, then (``fuse``) turn every norm spelling into one
    ``normonnx.<Op>`` node. ``families`` maps each family name to the rules to run (empty: skip)."""
    model = fold_static_shapes(model, report)
    folded = False
    for fam in FOLDS:
        if families.get(fam):
            model, changed = RulePass(fam, families[fam]).run(model, report)
            folded |= changed
    if folded:  # a folded weight gives its Conv a static shape again: more Shape ops become constants
        model = fold_static_shapes(model, report)
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


def fold_static_shapes(model: onnx.ModelProto, report: Report, max_rounds: int = 64) -> onnx.ModelProto:
    """Shape facts before the fusions: every ``Shape(v)`` whose ``v`` has a static shape becomes that
    constant (exact), and inference runs again, until nothing changes.

    Legacy (TorchScript) exports spell ``Reshape(InstanceNorm(…), Shape(x))``; ONNX inference stops
    at such a Reshape, so each GroupNorm's input shape is unknown until the one before it is
    resolved. Returns the model with inferred shapes."""
    import numpy as np
    from onnx import helper, numpy_helper

    model = infer(model)
    folded = 0
    for _ in range(max_rounds):
        shapes = {
            v.name: [d.dim_value if d.HasField("dim_value") else None for d in v.type.tensor_type.shape.dim]
            for v in (*model.graph.input, *model.graph.value_info, *model.graph.output)
            if v.type.HasField("tensor_type") and v.type.tensor_type.HasField("shape")
        }
        for t in model.graph.initializer:
            shapes.setdefault(t.name, list(t.dims))
        changed = 0
        for i, n in enumerate(model.graph.node):
            if n.op_type != "Shape" or n.domain not in ("", "ai.onnx"):
                continue
            dims = shapes.get(n.input[0])
            if dims is None or any(d is None for d in dims):
                continue
            attrs = {a.name: a.i for a in n.attribute}
            r = len(dims)
            start, end = attrs.get("start", 0), attrs.get("end", r)
            start, end = (start + r if start < 0 else start), (end + r if end < 0 else end)
            value = np.asarray(dims[max(0, start) : max(0, min(r, end))], np.int64)
            c = helper.make_node("Constant", [], list(n.output), name=n.name, value=numpy_helper.from_array(value))
            c.metadata_props.extend(n.metadata_props)
            model.graph.node[i].CopyFrom(c)
            changed += 1
        if not changed:
            break
        folded += changed
        model = infer(model)
    if folded:
        report.notes.append(f"{folded} Shape ops of statically shaped values folded to constants")
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
    ``as_dict``). onnxruntime's contrib ops are one strategy among the others (``contrib``)."""
    from ..lowering.graph import lower_model, norm_nodes

    records: list[Any] = []
    if norm_nodes(model):
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
