"""What the pipeline would make of a file's norms, and the numerical hazards its ops carry as they are.

:func:`diagnose` runs the recognition passes (:func:`normonnx.optimize.pipeline.recognise`) on a
copy of the model — nothing is written — and lists every norm they would turn into one node (so a
plain export's ``Reshape → InstanceNormalization → Reshape`` shows as the GroupNorm it is, and a
decomposed LayerNorm as a LayerNorm), with the rules that fired and the refusals. It then lists the
hazards of the ops the file holds *now*, with the reason, from the same capability notes the
selector uses (:mod:`normonnx.lowering.native`):

- ``GroupNormalization`` (onnxruntime has no kernel and inlines the function body,
  σ² = E[x²] − E[x]²), ``InstanceNormalization`` (float32 statistics);
- ``LayerNormalization`` / ``RMSNormalization`` over more elements per row than they are stable for;
- ``BatchNormalization`` (x·s + t in float32, weak near a large running mean);
- onnxruntime contrib norm ops that have no CPU kernel (``com.microsoft.GroupNorm``).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
import onnx

#: contrib norm ops onnxruntime implements only for CUDA/ROCm
NO_CPU_KERNEL = {("com.microsoft", "GroupNorm"): "CUDA/ROCm only: onnxruntime has no CPU kernel for it"}
_BN_NOTE = "onnxruntime evaluates x·s + t in float32: 2.8x torch's error vs float64 near a running mean of 1e3"


def hazards(model: onnx.ModelProto) -> list[dict[str, str]]:
    """The numerical or availability hazards of the norm ops in ``model`` as it is."""
    from ..norms import KINDS
    from .graph import GraphView

    g = GraphView(model)
    out: list[dict[str, str]] = []
    for n in model.graph.node:
        name = n.name or n.output[0]
        domain = n.domain if n.domain not in ("", "ai.onnx") else ""
        if (domain, n.op_type) in NO_CPU_KERNEL:
            out.append({"node": name, "op": f"{domain}.{n.op_type}", "hazard": NO_CPU_KERNEL[(domain, n.op_type)]})
            continue
        if domain:
            continue
        # the kind whose native op this is declares the op's facts (NormKind.native)
        kind = next((k for k in KINDS.values() if k.native is not None and k.native_op == n.op_type), None)
        if n.op_type == "BatchNormalization":
            out.append({"node": name, "op": n.op_type, "hazard": _BN_NOTE})
        elif kind is not None:
            cap = kind.native
            if not cap.stable:
                out.append({"node": name, "op": n.op_type, "hazard": cap.note})
            elif cap.stable_up_to is not None:
                shape = g.shape(n.input[0])
                axis = next((a.i for a in n.attribute if a.name == "axis"), -1)
                if shape is not None:
                    axis = axis + len(shape) if axis < 0 else axis
                    dims = shape[axis:]
                    size = int(np.prod(dims)) if all(isinstance(d, int) for d in dims) else None
                    if size is None or size > cap.stable_up_to:
                        what = f"{size} elements per row" if size else "a dynamic row size"
                        out.append({"node": name, "op": n.op_type, "hazard": f"{what}: {cap.note}"})
    return out


def diagnose(model: onnx.ModelProto) -> dict[str, Any]:
    """``{"recognisable": [...], "fired": {...}, "refused": [...], "hazards": [...]}`` for ``model``."""
    from ..lowering.graph import norm_nodes, spec_of, value_types
    from .families import family_rules
    from .pipeline import recognise
    from .result import Report

    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    report = Report()
    note = ""
    try:
        rec = recognise(copy, report, family_rules())
        types = value_types(rec)
        found = [
            {"node": n.name, "kind": (s := spec_of(n, types)).kind, "spec": s.key(), "scope": _scope(n)}
            for n in norm_nodes(rec)
        ]
    except Exception as e:  # a diagnosis never fails the command: say why it is missing
        found, note = [], f"recognition did not run: {str(e).splitlines()[0] if str(e) else type(e).__name__}"
    return {
        "recognisable": found,
        "recognisable_kinds": dict(Counter(f["kind"] for f in found)),
        "fired": dict(report.fired),
        "refused": [r.as_dict() for r in report.refused],
        "hazards": hazards(model),
        "note": note,
    }


def _scope(n: onnx.NodeProto) -> str:
    return next((p.value for p in n.metadata_props if p.key == "namespace"), "")
