"""The portable fallback: a ``normonnx``-domain op carried with its own ONNX function body.

The node is ``normonnx.<Op>(X, weight, bias[, mean, var])`` with the spec in its attributes and
``overload = spec.key()``; the model carries a model-local ``FunctionProto`` of the same
(domain, name, overload) whose body is the stable decomposition. Any runtime that inlines
functions (onnxruntime does; so does ``onnx.inliner``) runs it with no library of ours, and a
native kernel library can register the same op to replace the body.

The op schemas are also registered with ``onnx.defs`` so that the checker and onnxscript (used
inside torch's exporter) know the ops.
"""

from __future__ import annotations

from collections.abc import Mapping

import onnx
from onnx import helper
from onnx.defs import OpSchema

from ..norms import BY_OP, KINDS
from ..rejection import CheckResult
from ..spec import NormSpec
from .base import ALL_DTYPES, MIN_OPSET, Capability, Strategy, same_dtypes
from .builder import Builder
from .decomposed import STRATEGY as DECOMPOSED
from .decomposed import build_decomposed

DOMAIN = "normonnx"
VERSION = 1
_CAP = Capability(MIN_OPSET, same_dtypes(ALL_DTYPES), True, "normonnx-domain op with a stable function body")
_TYPES = ["tensor(float)", "tensor(float16)", "tensor(double)", "tensor(bfloat16)"]
#: op types whose schema this process has registered (or found registered)
_REGISTERED: set[str] = set()


def register_schemas() -> None:
    """Register ``normonnx.<Op>`` schemas with onnx for every registered kind (idempotent,
    process-wide; a kind registered later gets its schema at the next call)."""
    opt = OpSchema.FormalParameterOption.Optional
    for kind in KINDS.values():
        if kind.normonnx_op in _REGISTERED:
            continue
        _REGISTERED.add(kind.normonnx_op)
        try:
            onnx.defs.get_schema(kind.normonnx_op, VERSION, DOMAIN)
            continue
        except onnx.defs.SchemaError:
            pass
        inputs = [OpSchema.FormalParameter("X", "T")]
        inputs += [OpSchema.FormalParameter(n, "T", param_option=opt) for n in input_slots(kind.normonnx_op)]
        # Y, then a residual norm's optional sum X + residual. Declared variadic rather than as a
        # second optional output: torch's exporter gives a call as many outputs as the schema
        # declares, and the aten norms it translates have one.
        variadic = "residual" in kind.fused_forms
        outputs = [
            OpSchema.FormalParameter(
                "Y", "T", "Y[, sum]", param_option=OpSchema.FormalParameterOption.Variadic, min_arity=1
            )
            if variadic
            else OpSchema.FormalParameter("Y", "T")
        ]
        attrs = [
            OpSchema.Attribute("epsilon", helper.make_attribute("epsilon", 1e-5), "ε added to the variance"),
            OpSchema.Attribute("channels", OpSchema.AttrType.INT, "C (size of axis 1)", required=False),
            OpSchema.Attribute("normalized_shape", OpSchema.AttrType.INTS, "trailing normalised shape", required=False),
            OpSchema.Attribute("num_groups", OpSchema.AttrType.INT, "groups (group norm)", required=False),
            OpSchema.Attribute("channels_first", OpSchema.AttrType.INT, "layer norm over axis 1", required=False),
            OpSchema.Attribute("running_stats", OpSchema.AttrType.INT, "use mean/var inputs", required=False),
            OpSchema.Attribute(
                "activation", OpSchema.AttrType.STRING, "fused activation ('silu' or 'relu')", required=False
            ),
            OpSchema.Attribute("has_residual", OpSchema.AttrType.INT, "normalise X + residual", required=False),
            OpSchema.Attribute("modulation", OpSchema.AttrType.INT, "·(1 + scale) + shift after", required=False),
            OpSchema.Attribute("has_gate", OpSchema.AttrType.INT, "normalise X + gate·residual", required=False),
            OpSchema.Attribute(
                "sample_operands",
                OpSchema.AttrType.INT,
                "scale/shift/gate are [N or 1, *normalized_shape], aligned to X's axis 0 and broadcast over the "
                "axes between (else [N or 1, 1, ..., 1, *normalized_shape], right-aligned)",
                required=False,
            ),
        ]
        schema = OpSchema(
            kind.normonnx_op,
            DOMAIN,
            VERSION,
            doc=f"normonnx {kind.name} norm; see normonnx/norms/{kind.name}.py for the math.",
            inputs=inputs,
            outputs=outputs,
            type_constraints=[("T", _TYPES, "float tensors")],
            attributes=attrs,
        )
        onnx.defs.register_schema(schema)


def input_slots(op_type: str) -> tuple[str, ...]:
    """Every input slot of the normonnx op ``op_type`` after X, in position order (its kind's)."""
    return BY_OP[op_type].input_slots


def function_inputs(spec: NormSpec) -> list[str]:
    """Formal inputs of the function, positional like the node's (absent ones passed as "")."""
    if spec.running_stats:
        return ["X", "weight", "bias", "mean", "var"]
    kind = KINDS[spec.kind]
    slots = kind.input_slots
    n = len(kind.affine_slots)
    if spec.gated:
        n = slots.index("gate") + 1
    elif spec.modulation:
        n = slots.index("shift") + 1
    elif spec.residual:
        n = slots.index("residual") + 1
    return ["X", *slots[:n]]


def function_outputs(spec: NormSpec) -> list[str]:
    """Formal outputs: Y, and the sum X + residual of a residual norm (optional on the node)."""
    return ["Y", "sum"] if spec.residual else ["Y"]


def node_inputs(spec: NormSpec, x: str, params: Mapping[str, str]) -> list[str]:
    names = function_inputs(spec)[1:]
    return [x] + [params.get(n, "") for n in names]


def build_node(b: Builder, spec: NormSpec, x: str, params: Mapping[str, str], domain: str) -> str:
    """The one node of the function / native-kernel strategies; a residual norm's sum is its
    second output (``b.named["sum"]``; lowering drops it when nothing reads it)."""
    kind = KINDS[spec.kind]
    n_out = len(function_outputs(spec))
    y = b.op(
        kind.normonnx_op,
        node_inputs(spec, x, params),
        domain=domain,
        outputs=n_out,
        overload=spec.key(),
        **kind.attributes(spec),
    )
    if spec.residual:
        b.named["sum"] = b.nodes[-1].output[1]
    return y


def make_function(spec: NormSpec, opset: int) -> onnx.FunctionProto:
    """The FunctionProto ``normonnx.<Op>`` overload ``spec.key()`` with the decomposed body."""
    kind = KINDS[spec.kind]
    b = Builder(opset, prefix="f")
    ins = function_inputs(spec)
    params = {n: n for n in ins[1:] if n in kind.param_names(spec) or n in ("residual", "scale", "shift", "gate")}
    y = build_decomposed(b, spec, "X", params)
    b.nodes.append(helper.make_node("Identity", [y], ["Y"]))
    if spec.residual:
        b.nodes.append(helper.make_node("Identity", [b.named["sum"]], ["sum"]))
    fn = helper.make_function(
        DOMAIN,
        kind.normonnx_op,
        ins,
        function_outputs(spec),
        b.nodes,
        [helper.make_opsetid("", opset)],
        attributes=sorted(kind.attributes(spec)),
        doc_string=f"stable decomposition of {spec}",
    )
    fn.overload = spec.key()
    return fn


class Function(Strategy):
    name = "function"
    description = "normonnx-domain op + model-local ONNX function (stable body)"
    builds_fused_forms = True

    @property
    def capabilities(self) -> dict[str, Capability]:  # type: ignore[override]
        """The kinds the decomposed strategy lowers (the body is the decomposition)."""
        return dict.fromkeys(DECOMPOSED.capabilities, _CAP)

    def check_spec(self, spec: NormSpec, opset: int, provider: str) -> CheckResult:
        return DECOMPOSED.check_spec(spec, opset, provider)  # the body is the decomposition

    def build(self, b: Builder, spec: NormSpec, x: str, params: Mapping[str, str]) -> str:
        return build_node(b, spec, x, params, DOMAIN)

    def functions(self, spec: NormSpec, opset: int) -> list[onnx.FunctionProto]:
        return [make_function(spec, opset)]

    def extra_opsets(self) -> dict[str, int]:
        return {DOMAIN: VERSION}


STRATEGY = Function()
