"""Lower every ``normonnx``-domain norm node of a model through the selector.

This is the one place where a portable ``normonnx.<Op>`` node becomes concrete ONNX: export
produces such nodes from torch's aten norms, the optimizer's fusions produce them from
decomposed subgraphs, and both then call :func:`lower_model` for the target opset and provider.
Each lowering is recorded (node, kind, strategy, rejected alternatives with reasons) in the
returned records, on the replacement nodes' metadata, and in the model's ``normonnx.lowerings``
metadata entry.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable

import onnx
from onnx import helper

from ..dtypes import FLOAT_NAMES
from ..errors import LoweringError
from ..norms import BY_OP, get_kind
from ..spec import NormSpec
from . import function, get_strategy, select
from .builder import Builder

DOMAIN = function.DOMAIN
_DTYPE_NAMES = FLOAT_NAMES
META_KEY = "normonnx.lowerings"


@dataclasses.dataclass
class LoweringRecord:
    """How one norm node was lowered."""

    node: str
    kind: str
    strategy: str
    spec: str
    rejected: list[tuple[str, str]]
    scope: str = ""
    activation: str = ""  # fused after the norm ("silu", "relu"): the node's output is act(norm(x))

    def as_dict(self) -> dict[str, object]:
        return dataclasses.asdict(self)


def value_types(model: onnx.ModelProto) -> dict[str, onnx.TypeProto]:
    """Known types of values: graph inputs/outputs, value_info, initializers."""
    g = model.graph
    types = {v.name: v.type for v in (*g.input, *g.output, *g.value_info)}
    for t in g.initializer:
        types.setdefault(t.name, helper.make_tensor_type_proto(t.data_type, list(t.dims)))
    return types


def norm_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """The ``normonnx``-domain norm nodes of the main graph, in order."""
    return [n for n in model.graph.node if n.domain == DOMAIN and n.op_type in BY_OP]


def spec_of(node: onnx.NodeProto, types: dict[str, onnx.TypeProto]) -> NormSpec:
    """The :class:`NormSpec` a ``normonnx`` node describes (dtype and rank from ``types``)."""
    kind = BY_OP[node.op_type]
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if isinstance(attrs.get("activation"), bytes):
        attrs["activation"] = attrs["activation"].decode()
    t = types.get(node.input[0]) or (types.get(node.output[0]) if node.output else None)
    if t is None or not t.HasField("tensor_type") or t.tensor_type.elem_type not in _DTYPE_NAMES:
        raise LoweringError(
            f"cannot lower {node.op_type} node {node.name!r}: the element type of its input {node.input[0]!r} is unknown",
            note="run onnx.shape_inference.infer_shapes on the model first, or annotate value_info",
        )
    dtype = _DTYPE_NAMES[t.tensor_type.elem_type]
    rank = len(t.tensor_type.shape.dim) if t.tensor_type.HasField("shape") else None
    # has γ / has β, read from the kind's input positions (RMSNorm has no β slot)
    given = dict(zip(kind.input_slots, (bool(v) for v in node.input[1:])))
    present = [given.get("weight", False), given.get("bias", False)]
    return kind.spec_from_attributes(attrs, present, dtype, rank)


def _scope(node: onnx.NodeProto) -> str:
    for p in node.metadata_props:
        if p.key == "namespace":
            return p.value
    return ""


def lower_model(
    model: onnx.ModelProto,
    *,
    provider: str = "cpu",
    prefer: Iterable[str] | None = None,
    allow_unstable: bool = False,
) -> tuple[onnx.ModelProto, list[LoweringRecord]]:
    """Replace each ``normonnx`` node by its selected strategy at the model's own opset.

    The function strategy keeps the node and adds its ``FunctionProto``. Returns a new model
    and one record per node.
    """
    function.register_schemas()
    model = _copy(model)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset is None:
        raise LoweringError("the model imports no default-domain opset")
    types = value_types(model)
    new_nodes: list[onnx.NodeProto] = []
    records: list[LoweringRecord] = []
    functions = {(f.domain, f.name, f.overload): f for f in model.functions}
    prefer = tuple(prefer) if prefer is not None else None
    extra_opsets: dict[str, int] = {}
    for i, node in enumerate(model.graph.node):
        if not (node.domain == DOMAIN and node.op_type in BY_OP):
            new_nodes.append(node)
            continue
        spec = spec_of(node, types)
        sel = select(spec, opset, provider, prefer=prefer, allow_unstable=allow_unstable)
        strategy = get_strategy(sel.strategy)
        name = node.name or f"{node.op_type}_{i}"
        b = Builder(opset, prefix=name)
        slots = function.function_inputs(spec)[1:]
        params = {s: v for s, v in zip(slots, node.input[1:]) if v}
        y = strategy.lower(b, spec, node.input[0], params)
        # the last node computing y takes over the original output name
        for n in reversed(b.nodes):
            if y in n.output:
                n.output[list(n.output).index(y)] = node.output[0]
                break
        unread_sum = False
        if "sum" in b.named:
            _wire_sum(b.nodes, b.named["sum"], node.output[1] if len(node.output) > 1 else "")
            unread_sum = _own_overload_for_unread_sum(b.nodes)
        scope = _scope(node)
        for n in b.nodes:
            n.metadata_props.extend(node.metadata_props)
            n.metadata_props.add(key="normonnx.norm", value=name)
            n.metadata_props.add(key="normonnx.strategy", value=sel.strategy)
        new_nodes.extend(b.nodes)
        for f in strategy.functions(spec, opset):
            if unread_sum:
                f = _without_sum_output(f)
            functions.setdefault((f.domain, f.name, f.overload), f)
        for domain, version in strategy.extra_opsets().items():
            extra_opsets[domain] = max(version, extra_opsets.get(domain, version))
        records.append(
            LoweringRecord(name, spec.kind, sel.strategy, spec.key(), list(sel.rejected), scope, spec.activation)
        )
    del model.graph.node[:]
    model.graph.node.extend(new_nodes)
    used_domains = {n.domain for n in new_nodes}
    del model.functions[:]
    model.functions.extend(f for (d, _, _), f in functions.items() if d in used_domains)
    _set_opsets(model, {d: v for d, v in extra_opsets.items() if d in used_domains and d != DOMAIN})
    if model.functions:
        model.ir_version = max(model.ir_version, 10)  # function overloads
    _record(model, records)
    return model, records


def _wire_sum(nodes: list[onnx.NodeProto], built: str, wanted: str) -> None:
    """Give a residual norm's sum ``built`` the node's second output name ``wanted``; with none
    (nothing reads the sum), drop it from a node's outputs unless the subgraph itself reads it, so
    a kernel does not write a tensor nobody reads."""
    read_inside = any(built in n.input for n in nodes)
    for n in nodes:
        for k, o in enumerate(n.input):
            if o == built and wanted:
                n.input[k] = wanted
        for k, o in enumerate(n.output):
            if o != built:
                continue
            if wanted:
                n.output[k] = wanted
            elif not read_inside:
                n.output[k] = ""
        while len(n.output) > 1 and not n.output[-1]:
            n.output.pop()


#: overload suffix of a residual norm's function whose node does not output the sum
UNREAD_SUM = "_y"


def _own_overload_for_unread_sum(nodes: list[onnx.NodeProto]) -> bool:
    """A function node whose sum output was dropped gets its own overload (True if one did).

    onnxruntime (1.32, measured) fails to load a model in which nodes with one and with two outputs
    call the same two-output model-local function ("output index 1 is out of range"), e.g. a
    transformer whose last residual norm's sum is unread: without the kernel library, the
    function bodies must still load."""
    changed = False
    for n in nodes:
        if n.overload and len(n.output) == 1 and any(a.name == "has_residual" and a.i for a in n.attribute):
            n.overload += UNREAD_SUM
            changed = True
    return changed


def _without_sum_output(fn: onnx.FunctionProto) -> onnx.FunctionProto:
    """The function ``fn`` with only its first output Y, as overload ``fn.overload + UNREAD_SUM``."""
    out = onnx.FunctionProto()
    out.CopyFrom(fn)
    out.overload = fn.overload + UNREAD_SUM
    dropped = set(fn.output[1:])
    del out.output[1:]
    keep = [n for n in out.node if not (n.op_type == "Identity" and set(n.output) <= dropped)]
    del out.node[:]
    out.node.extend(keep)
    return out


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    m = onnx.ModelProto()
    m.CopyFrom(model)
    return m


def _set_opsets(model: onnx.ModelProto, extra: dict[str, int]) -> None:
    """Import exactly the custom domains the lowered graph uses (``normonnx`` only if a node kept it)."""
    used = {n.domain for n in model.graph.node}
    ops = [o for o in model.opset_import if o.domain != DOMAIN and o.domain not in extra]
    if DOMAIN in used:
        ops.append(helper.make_opsetid(DOMAIN, function.VERSION))
    ops.extend(helper.make_opsetid(d, v) for d, v in sorted(extra.items()))
    del model.opset_import[:]
    model.opset_import.extend(ops)


def _record(model: onnx.ModelProto, records: list[LoweringRecord]) -> None:
    old = [p for p in model.metadata_props if p.key == META_KEY]
    prior = json.loads(old[0].value) if old else []
    keep = [p for p in model.metadata_props if p.key != META_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(keep)
    if records or prior:
        model.metadata_props.add(key=META_KEY, value=json.dumps(prior + [r.as_dict() for r in records]))


def recorded_lowerings(model: onnx.ModelProto) -> list[dict[str, object]]:
    """The lowering records stored in a model's metadata (empty if none)."""
    for p in model.metadata_props:
        if p.key == META_KEY:
            return list(json.loads(p.value))
    return []


def make_norm_node(
    spec: NormSpec, x: str, params: dict[str, str], y: str, name: str, sum_output: str = ""
) -> onnx.NodeProto:
    """A portable ``normonnx.<Op>`` node (no overload) — what export and fusions produce.
    ``sum_output``: for a residual spec, the name of the optional second output ``x + residual``."""
    kind = get_kind(spec.kind)
    outputs = [y, sum_output] if spec.residual and sum_output else [y]
    return helper.make_node(
        kind.normonnx_op,
        function.node_inputs(spec, x, params),
        outputs,
        name=name,
        domain=DOMAIN,
        **kind.attributes(spec),
    )
