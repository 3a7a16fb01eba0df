"""List the norm nodes of an ONNX file: native norm ops, normonnx-domain ops, and the
subgraphs normonnx lowered (from node metadata), with their strategy, opset, inputs and outputs;
then every norm the export/optimize pipeline would recognise in it (a plain export's
Reshape→InstanceNormalization→Reshape as the GroupNorm it is, decomposed LayerNorms, ...) and the
numerical hazards of its ops as they are (:mod:`normonnx.optimize.diagnose`)."""

from __future__ import annotations

import argparse
import os

import onnx

from . import final_line, write_json
from ._common import add_json

HELP = "show the norm nodes of an ONNX file and how they were lowered"

NATIVE = {
    "BatchNormalization",
    "InstanceNormalization",
    "LayerNormalization",
    "GroupNormalization",
    "RMSNormalization",
    "SkipLayerNormalization",
    "SimplifiedLayerNormalization",
    "SkipSimplifiedLayerNormalization",
    "GroupNorm",
}


def inspect_model(path: str) -> dict[str, object]:
    from .. import io as nio
    from ..lowering.graph import recorded_lowerings
    from ..optimize.diagnose import diagnose

    model = nio.load(path, load_external=False)
    has_external = any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)
    diagnosis = diagnose(nio.load(path) if not has_external or os.path.getsize(path) < 2**30 else model)
    opsets = {o.domain or "ai.onnx": o.version for o in model.opset_import}
    nodes = []
    groups: dict[str, dict[str, object]] = {}
    for n in model.graph.node:
        meta = {p.key: p.value for p in n.metadata_props}
        norm = meta.get("normonnx.norm")
        if norm:  # a node of a normonnx-lowered norm: group them
            g = groups.setdefault(
                norm,
                {
                    "name": norm,
                    "strategy": meta.get("normonnx.strategy"),
                    "op_types": [],
                    "inputs": list(n.input[:1]),
                    "outputs": [],
                    "scope": meta.get("namespace", ""),
                },
            )
            g["op_types"].append(n.op_type)  # type: ignore[union-attr]
            g["outputs"] = list(n.output)
        elif n.op_type in NATIVE or n.domain == "normonnx":
            nodes.append(
                {
                    "name": n.name,
                    "op_type": n.op_type,
                    "domain": n.domain or "ai.onnx",
                    "inputs": list(n.input),
                    "outputs": list(n.output),
                    "scope": meta.get("namespace", ""),
                }
            )
    return {
        "path": path,
        "opsets": opsets,
        "ir_version": model.ir_version,
        "norm_nodes": nodes,
        "lowered_norms": list(groups.values()),
        "lowerings": recorded_lowerings(model),
        "functions": [f"{f.domain}.{f.name}:{f.overload}" for f in model.functions],
        "node_count": len(model.graph.node),
        **diagnosis,
    }


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("onnx", metavar="ONNX")
    add_json(p, "the findings")


def run(args: argparse.Namespace) -> int:
    info = inspect_model(args.onnx)
    if args.json:
        write_json(args.json, info)
    else:
        print(f"{info['path']}: {info['node_count']} nodes, opsets {info['opsets']}, IR {info['ir_version']}")
        rec = {r["node"]: r for r in info["lowerings"]}  # type: ignore[index,union-attr]
        for g in info["lowered_norms"]:  # type: ignore[union-attr]
            r = rec.get(g["name"], {})
            print(
                f"  {g['name']:40s} {r.get('kind', '?'):8s} {g['strategy']:12s} {len(g['op_types'])} nodes  {g['inputs']} -> {g['outputs']}"
            )
        for n in info["norm_nodes"]:  # type: ignore[union-attr]
            print(f"  {n['name']:40s} {n['domain']}.{n['op_type']}  {n['inputs']} -> {n['outputs']}")
        for f in info["functions"]:  # type: ignore[union-attr]
            print(f"  function {f}")
        kinds = info["recognisable_kinds"]
        print(
            "recognisable as one node each: "
            + (", ".join(f"{k}×{v}" for k, v in kinds.items()) if kinds else "none")  # type: ignore[union-attr]
            + (f" ({info['note']})" if info["note"] else "")
        )
        for r in info["refused"]:  # type: ignore[union-attr]
            print(f"  not recognised: {r['rule']} at {r['node']!r}: {r['reason']}")
        for h in info["hazards"]:  # type: ignore[union-attr]
            print(f"  hazard: {h['node']} ({h['op']}): {h['hazard']}")
    n = len(info["lowered_norms"]) + len(info["norm_nodes"])  # type: ignore[arg-type]
    final_line(True, f"{n} norms in {args.onnx}")
    return 0
