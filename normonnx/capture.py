"""The torch side of export: the example inputs checked, ``torch.export`` with the dynamic axes,
the aten norm calls scanned into :class:`~normonnx.spec.NormSpec` s, and torch's ONNX program
captured with a translation table that turns each aten norm into a portable ``normonnx.<Op>``
node (:func:`make_translation_table`).

:mod:`normonnx.exporter` drives it: choose the opset, capture, recognise, lower, check, write.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import logging
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import onnx

from .dtypes import FLOAT_NAMES
from .errors import ExportError, InputError, NormOnnxError
from .norms import KINDS, validate
from .spec import DTYPES, NormSpec

_IR_DTYPES = FLOAT_NAMES  # ONNX / onnx_ir code → dtype name


def training_modules(model: Any) -> list[str]:
    """Names of submodules in training mode ("" is the root)."""
    return [name or "<root>" for name, m in model.named_modules() if m.training]


def _check_inputs(example_inputs: Any) -> tuple[Any, ...]:
    import torch

    if isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)
    if not isinstance(example_inputs, (tuple, list)) or not example_inputs:
        raise InputError("example_inputs must be a tensor or a non-empty tuple of tensors")
    for i, t in enumerate(example_inputs):
        if not isinstance(t, torch.Tensor):
            raise InputError(f"example input {i} is a {type(t).__name__}, not a torch.Tensor")
        if 0 in t.shape:
            raise InputError(
                f"example input {i} has shape {list(t.shape)}: a zero-size dimension (batch 0?) cannot be exported",
                note="export with at least one element along every axis; mark the axis dynamic to run other sizes",
            )
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise InputError(
                f"example input {i} contains NaN or Inf", note="export and verification need finite inputs"
            )
    return tuple(example_inputs)


def _tensors_in(out: Any) -> int:
    """How many tensors a forward result holds (nested tuples, lists and dicts)."""
    import torch

    if isinstance(out, torch.Tensor):
        return 1
    if isinstance(out, dict):
        return sum(_tensors_in(v) for v in out.values())
    if isinstance(out, (tuple, list)):
        return sum(_tensors_in(v) for v in out)
    return 0


def input_names_of(model: Any, n: int) -> list[str]:
    """Names of forward's first ``n`` positional parameters (x, ... ) for ONNX input names."""
    try:
        params = [
            p
            for p in inspect.signature(model.forward).parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        ]
        names = [p.name for p in params[:n]]
        if len(names) == n:
            return names
    except (TypeError, ValueError):
        pass
    return [f"input_{i}" for i in range(n)]


def normalize_dynamic(
    dynamic: Mapping[str, Mapping[int, str]] | Sequence[str] | str | None, names: Sequence[str], ranks: Sequence[int]
) -> dict[str, dict[int, str]]:
    """Accept ``{"x": {0: "batch", 2: "h"}}`` or the CLI's ``"batch,h,w"`` (axes 0, 2, 3... of every input)."""
    if dynamic is None:
        return {}
    if isinstance(dynamic, str):
        dynamic = [d for d in dynamic.split(",") if d]
    if isinstance(dynamic, Mapping):
        out: dict[str, dict[int, str]] = {}
        for name, axes in dynamic.items():
            if name not in names:
                raise InputError(f"dynamic axes given for unknown input {name!r}", note=f"inputs: {', '.join(names)}")
            r = ranks[list(names).index(name)]
            for a in axes:
                if not -r <= int(a) < r:
                    raise InputError(f"dynamic axis {a} out of range for rank-{r} input {name!r}")
            out[name] = {int(a) % r: str(v) for a, v in axes.items()}
        return out
    labels = list(dynamic)
    out = {}
    for name, r in zip(names, ranks):
        # batch is axis 0; the remaining labels name the trailing spatial/sequence axes (2.. or 1..)
        axes: dict[int, str] = {}
        rest = [lab for lab in labels if lab != "batch"]
        if "batch" in labels:
            axes[0] = "batch"
        first = 2 if r >= 3 else 1
        for lab, a in zip(rest, range(first, r)):
            axes[a] = lab
        if rest and r - first < len(rest):
            raise InputError(
                f"{len(rest)} dynamic non-batch axes named ({', '.join(rest)}) but input {name!r} has rank {r}"
            )
        out[name] = axes
    return out


def _dtype_name(value: Any) -> str:
    dt = getattr(value, "dtype", None)
    try:
        return _IR_DTYPES[int(dt)]
    except (KeyError, TypeError, ValueError):
        raise ExportError(
            f"normonnx cannot lower a norm on {dt} tensors", note=f"supported: {', '.join(DTYPES)}"
        ) from None


def _shape_of(value: Any) -> list[Any]:
    shape = getattr(value, "shape", None)
    if shape is None:
        raise ExportError("the exporter gave a norm input without a known rank")
    return [d if isinstance(d, int) else str(d) for d in shape]


def _aten_overload(name: str) -> Any:
    import torch

    packet, _, overload = name.partition(".")
    return getattr(getattr(torch.ops.aten, packet), overload or "default")


def custom_ops() -> dict[Any, tuple[str, Callable[..., NormSpec], Callable[..., dict[str, Any]]]]:
    """torch custom op overloads → (kind, spec(args, shape, dtype), params(args)): normonnx.nn's
    ops and those a registered kind declares (``NormKind.torch_ops``)."""
    from .nn.ops import EXPORTS

    ops = {target: (ex.kind, ex.spec, ex.params) for target, ex in EXPORTS.items()}
    for kind in KINDS.values():
        for target, (spec, params) in kind.torch_ops().items():
            ops[target] = (kind.name, spec, params)
    return ops


def make_translation_table(opset: int) -> dict[Callable[..., Any], Callable[..., Any]]:
    """aten norm overloads → onnxscript functions emitting ``normonnx.<Op>`` nodes."""
    import onnxscript

    from .lowering.function import DOMAIN, VERSION, register_schemas

    register_schemas()
    nop = onnxscript.values.Opset(DOMAIN, VERSION)
    std = onnxscript.values.Opset("", opset)
    table: dict[Callable[..., Any], Callable[..., Any]] = {}
    for kind in KINDS.values():
        for aten in kind.aten_ops:

            def translate(x: Any, *args: Any, _kind: Any = kind, _aten: str = aten) -> Any:
                spec = _kind.from_aten(_aten, args, _shape_of(x), _dtype_name(x))
                named = _kind.aten_params(_aten, args)
                inputs = [named.get(s) if s else None for s in _kind.op_inputs(spec)]
                y = getattr(nop, _kind.normonnx_op)(x, *inputs, **_kind.attributes(spec))
                extra = _kind.aten_outputs(_aten) - 1
                if not extra:
                    return y
                # saved mean / rstd of the private batch-norm overloads: never read in eval
                empty = std.CastLike(std.Constant(value_float=0.0), x)
                return (y, *([empty] * extra))

            table[_aten_overload(aten)] = translate
    # custom ops (normonnx.nn's channels-first LayerNorm, GroupNorm + activation, GRN; a kind's
    # own): one node each
    for target, ex in custom_ops().items():

        def translate_custom(x: Any, *args: Any, _ex: Any = ex) -> Any:
            kind = KINDS[_ex[0]]
            spec = _ex[1](args, _shape_of(x), _dtype_name(x))
            kind.validate(spec)
            named = _ex[2](args)
            inputs = [named.get(s) if s else None for s in kind.op_inputs(spec)]
            return getattr(nop, kind.normonnx_op)(x, *inputs, **kind.attributes(spec))

        table[target] = translate_custom
    return table


def scan_specs(exported_program: Any) -> list[NormSpec]:
    """Specs of the aten norm calls in a ``torch.export`` program (before ONNX conversion)."""
    import torch

    exports = custom_ops()
    by_target = {_aten_overload(a): (k, a) for k in KINDS.values() for a in k.aten_ops}
    specs = []
    for node in exported_program.graph.nodes:
        if node.op == "call_function" and node.target in exports:
            val = node.args[0].meta.get("val")
            dtype = str(val.dtype).removeprefix("torch.")
            args = [a if not isinstance(a, torch.fx.Node) else True for a in node.args[1:]]
            if dtype in DTYPES:
                shape = [int(d) if str(d).isdigit() else str(d) for d in val.shape]
                specs.append(validate(exports[node.target][1](args, shape, dtype)))
            continue
        if node.op != "call_function" or node.target not in by_target:
            continue
        kind, aten = by_target[node.target]
        val = node.args[0].meta.get("val")
        dtype = str(val.dtype).removeprefix("torch.")
        args = [a if not isinstance(a, torch.fx.Node) else True for a in node.args[1:]]
        defaults = {
            "layer_norm": [None, None, None, 1e-5],
            "group_norm": [None, None, None, 1e-5],
            "rms_norm": [None, None, None],
        }
        if aten in defaults:
            d = defaults[aten]
            args = args + d[len(args) :]
            for k, v in node.kwargs.items():
                idx = {"weight": 1, "bias": 2, "eps": 3 if aten != "rms_norm" else 2}.get(k)
                if idx is not None:
                    args[idx] = True if isinstance(v, torch.fx.Node) else v
        if dtype not in DTYPES:
            continue
        specs.append(kind.from_aten(aten, args, [int(d) if str(d).isdigit() else str(d) for d in val.shape], dtype))
    return specs


#: ops between the scores MatMul and the Softmax that a scale may be written with
_SCALE_OPS = ("aten.mul.Tensor", "aten.mul.Scalar", "aten.div.Tensor", "aten.div.Scalar")
_MATMUL_OPS = ("aten.matmul.default", "aten.bmm.default")


def _huge_negative(value: Any) -> bool:
    """A masked_fill value that ``attention.sdpa`` accepts as a mask: −∞ or ≤ −2¹⁰⁰."""
    return isinstance(value, (int, float)) and (value == float("-inf") or value <= -(2.0**100))


def scan_attention(exported_program: Any) -> int:
    """How many attention blocks written out by hand a ``torch.export`` program has, that the
    ``attention`` rules can turn into ONNX's ``Attention`` op: ``softmax(c·(q @ kᵀ)) @ v`` (a Softmax
    between MatMuls, only constant scales in between, ``kᵀ`` a transpose), a ``masked_fill`` with
    −∞ (or ≤ −2¹⁰⁰) allowed before the Softmax. A count for choosing the opset; the rules
    themselves prove each match.

    ``scaled_dot_product_attention`` counts when its ``q``, ``k``, ``v`` are head views (a
    transpose or permute of a projection, or one slot of an unbound packed one) and its output is
    merged back by ``transpose(1, 2)``: at opset 23 torch emits it as ``Attention`` and
    ``attention.heads`` gives it the projections (models/dit_block: 69 → 37 nodes, 1.08–1.10× the
    opset-20 file, where onnxruntime runs the decomposition as MatMul / Softmax / MatMul)."""

    def fx(a: Any) -> bool:
        return hasattr(a, "target")

    def head_view(a: Any) -> bool:  # a transpose / permute, or one slot of an unbound one
        if fx(a) and "getitem" in str(a.target) and fx(a.args[0]) and str(a.args[0].target) == "aten.unbind.int":
            a = a.args[0].args[0]
        return fx(a) and str(a.target) in ("aten.transpose.int", "aten.permute.default")

    def unscaled(a: Any) -> Any:  # strip constant scales: a mul/div with one tensor operand
        for _ in range(3):
            operands = [b for b in a.args if fx(b)] if fx(a) and str(a.target) in _SCALE_OPS else []
            if len(operands) != 1 or len(a.args) != 2:
                break
            a = operands[0]
        return a

    count = 0
    for node in exported_program.graph.nodes:
        if node.op == "call_function" and str(node.target) == "aten.scaled_dot_product_attention.default":
            merged = any(
                str(u.target) == "aten.transpose.int" and tuple(u.args[1:3]) in ((1, 2), (2, 1)) for u in node.users
            )
            count += merged and all(head_view(a) for a in node.args[:3])
            continue
        if node.op != "call_function" or str(node.target) not in ("aten.softmax.int", "aten._softmax.default"):
            continue
        src = unscaled(node.args[0])
        if fx(src) and str(src.target) == "aten.masked_fill.Scalar" and _huge_negative(src.args[2]):
            src = unscaled(src.args[0])  # a mask the rule turns into Attention's additive attn_mask
        if not (fx(src) and str(src.target) in _MATMUL_OPS and len(src.args) > 1):
            continue
        kt = str(getattr(unscaled(src.args[1]), "target", ""))
        users = list(node.users)
        count += (
            kt in ("aten.transpose.int", "aten.permute.default")
            and bool(users)
            and all(str(u.target) in _MATMUL_OPS and u.args[0] is node for u in users)
        )
    return count


def scan_rotary(exported_program: Any) -> int:
    """How many rotary embeddings written out by hand a ``torch.export`` program has, in the
    rotate-half form the ``rotary`` rules turn into ONNX's ``RotaryEmbedding`` op: ``cat([-x2,
    x1], -1)`` of the two halves of one tensor (``chunk`` / ``split`` or two slices), multiplied
    by a table. A count for choosing the opset; the rules themselves prove each match (the
    tables' halves, the layout). Counted with or without attention written by hand: Hugging
    Face's models rotate, then call ``scaled_dot_product_attention``."""

    def base(a: Any) -> Any:  # the tensor a half was cut from (None when it is not a cut)
        if not hasattr(a, "target"):
            return None
        if str(a.target) == "aten.slice.Tensor":
            return a.args[0]
        if "getitem" in str(a.target) and hasattr(a.args[0], "target"):
            if str(a.args[0].target) in ("aten.split.Tensor", "aten.chunk.default", "aten.split_with_sizes.default"):
                return a.args[0].args[0]
        return None

    count = 0
    for node in exported_program.graph.nodes:
        if node.op != "call_function" or str(node.target) != "aten.cat.default":
            continue
        parts = node.args[0] if node.args else None
        if not isinstance(parts, (list, tuple)) or len(parts) != 2:
            continue
        neg, x1 = parts
        if not (hasattr(neg, "target") and str(neg.target) == "aten.neg.default"):
            continue
        src = base(x1)
        count += (
            src is not None and base(neg.args[0]) is src and any(str(u.target) == "aten.mul.Tensor" for u in node.users)
        )
    return count


def _first_line(e: BaseException) -> str:
    s = str(e).strip()
    return s.splitlines()[0] if s else type(e).__name__


def _widen_unit_dims(t: Any, axes: Mapping[int, str]) -> Any:
    """Repeat every size-1 dynamic axis of ``t`` to size 2 (for tracing only)."""
    for ax in axes:
        if t.shape[ax] == 1:
            t = t.repeat_interleave(2, dim=ax)
    return t


def _torch_export(model: Any, args: tuple[Any, ...], names: Sequence[str], dyn: Mapping[str, Mapping[int, str]]) -> Any:
    import torch

    shapes = None
    if dyn:
        shapes = tuple({a: torch.export.Dim.DYNAMIC for a in dyn.get(n, {})} or None for n in names)
        # torch.export specialises size-1 dims (0/1 specialisation), so a dynamic batch of 1
        # would be frozen: trace with that axis repeated to size 2 instead (same program).
        args = tuple(_widen_unit_dims(a, dyn.get(n, {})) for n, a in zip(names, args))
    try:
        with _quiet():
            return torch.export.export(model, args, dynamic_shapes=shapes, strict=False)
    except Exception as e:
        text = str(e)
        hint = "a dynamic axis was specialised by the model (e.g. a fixed reshape or positional table); drop it from --dynamic"
        detail = next((ln.strip("- ").strip() for ln in text.splitlines() if ln.startswith("- ")), "")
        raise ExportError(
            f"torch.export could not capture the model: {_first_line(e)}" + (f" {detail}" if detail else ""),
            note=hint
            if dyn and ("Constraint" in text or "specializ" in text or "guard" in text.lower())
            else "make the forward pass traceable by torch.export (no data-dependent Python control flow)",
        ) from None


def _onnx_export(
    ep: Any,
    args: tuple[Any, ...],
    opset: int,
    names: Sequence[str],
    output_names: Sequence[str] | None,
    stage: Any = None,
) -> onnx.ModelProto:
    import torch

    table = make_translation_table(opset)
    try:
        with _quiet():
            prog = torch.onnx.export(
                ep,
                args,
                dynamo=True,
                opset_version=opset,
                custom_translation_table=table,
                input_names=list(names),
                output_names=list(output_names) if output_names else None,
                optimize=True,
                verbose=False,
            )
    except NormOnnxError:
        raise
    except Exception as e:
        cause = e
        while cause.__cause__ is not None:
            if isinstance(cause.__cause__, NormOnnxError):
                raise cause.__cause__ from None
            cause = cause.__cause__
        raise ExportError(f"torch.onnx.export failed at opset {opset}: {_first_line(cause)}") from e
    assert prog is not None
    if stage is not None:
        # straight from torch's tensors to the data file: the proto below is references only
        # (``prog.model_proto`` would copy every weight into one message, > 2 GiB impossible)
        stage.unload(prog.model)
    return prog.model_proto


@contextlib.contextmanager
def _quiet() -> Any:
    """Silence torch's exporter chatter (progress lines, torchvision warnings)."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._dynamo", "torch.fx")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with (
            warnings.catch_warnings(),
            contextlib.redirect_stdout(io.StringIO()),
            contextlib.redirect_stderr(io.StringIO()),
        ):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, lv in zip(loggers, levels):
            lg.setLevel(lv)


def _name_dynamic_dims(model: onnx.ModelProto, dyn: Mapping[str, Mapping[int, str]]) -> None:
    """Rename the exporter's symbolic dims (``s77``) to the user's names (``batch``) everywhere."""
    rename: dict[str, str] = {}
    for vi in model.graph.input:
        for axis, label in dyn.get(vi.name, {}).items():
            dims = vi.type.tensor_type.shape.dim
            if axis < len(dims) and dims[axis].dim_param:
                rename.setdefault(dims[axis].dim_param, label)
    if not rename:
        return
    for vi in (*model.graph.input, *model.graph.output, *model.graph.value_info):
        for d in vi.type.tensor_type.shape.dim:
            if d.dim_param in rename:
                d.dim_param = rename[d.dim_param]
