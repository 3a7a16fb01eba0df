"""Opsets below 18 for torch's exports: onnx's version converter, with the ops it cannot convert
but that mean the same thing at the lower opset hidden from it and restored.

torch's dynamo exporter starts at opset 18. :func:`convert_down` reaches 13–17 through
``onnx.version_converter`` after hiding what it has no adapter for: Pad-18 without ``axes``
(a valid Pad-13), Split-18's ``num_outputs`` on a static dim (Split-13's sizes), and below 14
Add/Sub/Mul/Div on float inputs (the -14 versions only added integer types) and Reshape without
``allowzero`` semantics. Node scope metadata, which the converter drops, is restored by name.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx.numpy_helper

from .errors import ExportError

TORCH_MIN_OPSET = 18


def convert_down(model: onnx.ModelProto, opset: int) -> onnx.ModelProto:
    """Convert the default domain down to ``opset`` (normonnx nodes are left as they are: they
    are lowered afterwards, directly at the target opset)."""
    from onnx import version_converter

    # onnx's converter has no Pad 18→17 adapter; Pad-18 only added the optional `axes` input,
    # so a Pad without it is also a valid Pad-13: hide those from the converter and restore.
    # Split-18 added `num_outputs`; with a static dim it is the same as Split-13's sizes input.
    hidden = "normonnx.hidden"
    model = _copy_model(model)
    dims = _static_dims(model)
    elem = _elem_types(model)
    extra: list[onnx.NodeProto] = []
    for node in model.graph.node:
        if node.domain not in ("", "ai.onnx"):
            continue
        if node.op_type in _TYPES_ONLY_14 and opset < 14 and all(elem.get(i) in _FLOAT_13 for i in node.input):
            # Add/Sub/Mul/Div-14 only added small integer types: on float inputs they are the -13 op
            # (the converter has no 14→13 adapter for them)
            node.domain = hidden
        elif node.op_type == "Reshape" and opset < 14:
            # Reshape-14 added allowzero; with allowzero=0, or a target holding no 0, it is Reshape-5
            attrs = {a.name: a for a in node.attribute}
            target = _const_of(model, node.input[1])
            if "allowzero" in attrs and attrs["allowzero"].i and (target is None or 0 in target):
                raise ExportError(
                    f"Reshape {node.name!r} with allowzero=1 and a 0 in its shape has no form below opset 14",
                    note="use opset >= 14",
                )
            if "allowzero" in attrs:
                node.attribute.remove(attrs["allowzero"])
            node.domain = hidden
        elif node.op_type == "Pad":
            if len(node.input) > 3 and node.input[3]:
                raise ExportError(
                    "Pad with an axes input (opset 18) cannot be expressed below opset 18", note="use opset >= 18"
                )
            node.domain = hidden
        elif node.op_type == "Split":
            attrs = {a.name: a for a in node.attribute}
            if "num_outputs" in attrs:
                axis = attrs["axis"].i if "axis" in attrs else 0
                shape = dims.get(node.input[0])
                if shape is None or not isinstance(shape[axis], int):
                    raise ExportError(
                        f"Split {node.name!r} uses num_outputs on a dynamic dim: no opset-17 form",
                        note="use opset >= 18",
                    )
                n, size = attrs["num_outputs"].i, shape[axis]
                chunk = -(-size // n)
                sizes = [chunk] * (size // chunk) + ([size % chunk] if size % chunk else [])
                name = f"{node.name or node.output[0]}_split_sizes"
                extra.append(
                    onnx.helper.make_node(
                        "Constant", [], [name], value=onnx.numpy_helper.from_array(np.array(sizes, np.int64))
                    )
                )
                node.input[:] = [node.input[0], name]
                node.attribute.remove(attrs["num_outputs"])
            node.domain = hidden
    for c in reversed(extra):  # Constants have no inputs: first in the graph precedes every use
        model.graph.node.insert(0, c)
    model.opset_import.add(domain=hidden, version=1)
    try:
        converted = version_converter.convert_version(model, opset)
    except Exception as e:
        raise ExportError(
            f"converting the exported model down to opset {opset} failed: {_first_line(e)}",
            note=f"use opset >= {TORCH_MIN_OPSET} (torch's exporter starts there)",
        ) from None
    # the converter drops node metadata (torch's `namespace` scope, which localization reports): restore by name
    meta = {n.name: list(n.metadata_props) for n in model.graph.node if n.name and n.metadata_props}
    for node in converted.graph.node:
        if node.domain == hidden:
            node.domain = ""
        if not node.metadata_props and node.name in meta:
            node.metadata_props.extend(meta[node.name])
    keep = [o for o in converted.opset_import if o.domain != hidden]
    del converted.opset_import[:]
    converted.opset_import.extend(keep)
    # onnx's converter keeps ReduceX-18's noop_with_empty_axes when going below 18; at its
    # default (0) the attribute means exactly what the older ops do, so it can be dropped.
    for node in converted.graph.node:
        if node.op_type.startswith("Reduce"):
            for i, a in reversed(list(enumerate(node.attribute))):
                if a.name == "noop_with_empty_axes":
                    if a.i != 0:
                        raise ExportError(
                            f"{node.op_type} with noop_with_empty_axes=1 has no equivalent below opset 18"
                        )
                    del node.attribute[i]
    return converted


#: ops whose opset-14 version only widened the integer types they accept
_TYPES_ONLY_14 = frozenset({"Add", "Sub", "Mul", "Div"})
_FLOAT_13 = frozenset(
    {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16}
)


def _const_of(model: onnx.ModelProto, name: str) -> list[int] | None:
    """The values of an integer constant (initializer or Constant node), else None."""
    for t in model.graph.initializer:
        if t.name == name:
            return [int(v) for v in onnx.numpy_helper.to_array(t).reshape(-1)]
    for n in model.graph.node:
        if n.op_type == "Constant" and name in n.output:
            for a in n.attribute:
                if a.name == "value":
                    return [int(v) for v in onnx.numpy_helper.to_array(a.t).reshape(-1)]
                if a.name in ("value_int", "value_ints"):
                    return [a.i] if a.name == "value_int" else list(a.ints)
    return None


def _elem_types(model: onnx.ModelProto) -> dict[str, int]:
    """Element types of values, from inference where it works (graph inputs, value_info, initializers)."""
    from .optimize import infer

    m = infer(model)
    g = m.graph
    out = {vi.name: vi.type.tensor_type.elem_type for vi in (*g.input, *g.output, *g.value_info)}
    out.update({t.name: t.data_type for t in g.initializer})
    for n in g.node:
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value":
                    out[n.output[0]] = a.t.data_type
                elif a.name in ("value_float", "value_floats"):
                    out[n.output[0]] = onnx.TensorProto.FLOAT
    return out


def _static_dims(model: onnx.ModelProto) -> dict[str, list[int | str]]:
    """Known shapes of values (ints for static dims) from value_info and graph inputs."""
    g = model.graph
    out: dict[str, list[int | str]] = {}
    for vi in (*g.input, *g.output, *g.value_info):
        t = vi.type.tensor_type
        if t.HasField("shape"):
            out[vi.name] = [d.dim_value if d.HasField("dim_value") else d.dim_param for d in t.shape.dim]
    return out


def _copy_model(model: onnx.ModelProto) -> onnx.ModelProto:
    m = onnx.ModelProto()
    m.CopyFrom(model)
    return m


def _first_line(e: BaseException) -> str:
    s = str(e).strip()
    return s.splitlines()[0] if s else type(e).__name__
