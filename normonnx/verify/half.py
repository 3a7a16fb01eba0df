"""fp16 / bf16 conversion of an fp32 ONNX model, norm statistics kept in fp32.

:func:`convert` (``dtype`` float16 or bfloat16):

- every float32 tensor computed *outside* norms becomes ``dtype``: initializers, ``Constant`` /
  ``ConstantOfShape`` values, ``Cast(to=float)``, graph inputs/outputs (unless ``keep_io_types``);
- ``norms="fp32"`` (default, the stash): the nodes of every norm lowered by normonnx (node
  metadata ``normonnx.norm``) and every ``normonnx``-domain node keep their fp32 computation;
  ``Cast`` nodes are inserted where values cross the boundary, so statistics (Σx², E[x]...) never
  see fp16's 65504 ceiling;
- ``norms="fp16"``: the norms are converted too, statistics included (the decomposition's float64
  casts become ``dtype``) — what a generic float16 converter makes of a decomposed norm; kept to
  show the failure the stash prevents;
- inputs that ONNX requires in float32 whatever the data type (``Resize`` scales/roi) stay float32;
- ``block_ops``: op types kept in fp32 with casts around them. onnxruntime's CPU provider inserts
  such casts itself for ops without an fp16 kernel (InstanceNormalization, Conv, ...); if a
  session still fails with NOT_IMPLEMENTED, :func:`check_precision` adds the op type to
  ``block_ops`` and converts again. :func:`ort_fp32_nodes` reports which nodes onnxruntime ran in
  fp32 (from its saved session graph), so the report says what really ran in fp16.

:func:`export_half` is the other path: export ``model.half()`` (normonnx lowers a norm whose spec
dtype is float16 with fp32 statistics).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..dtypes import FLOAT_NAMES, FLOATS, HALF, SHORT
from ..errors import InputError
from .expose import infer_types
from .mapping import node_meta

ELEM = {d: FLOATS[d] for d in HALF}  # the deployment dtypes → ONNX code (normonnx.dtypes)
#: (max finite, smallest normal) per dtype
LIMITS = {"float16": (65504.0, 6.103515625e-05), "bfloat16": (3.3895313892515355e38, 1.1754943508222875e-38)}
#: inputs that ONNX types as float32 whatever the data type
_FLOAT32_INPUTS = {"Resize": {1, 2}, "Upsample": {1}}
_SUFFIX = {code: SHORT[name] for code, name in FLOAT_NAMES.items()}  # 10 → "fp16"


@dataclasses.dataclass
class Conversion:
    """What :func:`convert` did."""

    dtype: str
    norms: str
    kept_fp32: dict[str, list[str]]  # norm (or op type) → node names kept in fp32
    casts: int
    block_ops: list[str]
    keep_io_types: bool

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _is_protected(node: onnx.NodeProto, norms: str, block: set[str]) -> str | None:
    """Why ``node`` stays fp32 (a norm name or op type), or None."""
    if node.op_type in block:
        return node.op_type
    if norms == "fp32":
        name = node_meta(node).get("normonnx.norm")
        if name:
            return name
    if node.domain == "normonnx":
        return node.name or node.op_type
    return None


def convert(
    model: onnx.ModelProto,
    dtype: str = "float16",
    *,
    norms: str = "fp32",
    keep_io_types: bool | None = None,
    block_ops: Iterable[str] = (),
) -> tuple[onnx.ModelProto, Conversion]:
    """A copy of the fp32 ``model`` computing in ``dtype`` (see the module docstring)."""
    if dtype not in ELEM:
        raise InputError(f"cannot convert to {dtype!r}", note=f"valid: {', '.join(ELEM)}")
    if norms not in ("fp32", "fp16"):
        raise InputError(f"norms={norms!r}", note="valid: fp32 (statistics kept in fp32) or fp16")
    D = ELEM[dtype]
    F = TensorProto.FLOAT
    if keep_io_types is None:
        keep_io_types = dtype == "bfloat16"  # numpy has no bfloat16: feed and fetch float32
    block = set(block_ops)
    types = infer_types(model)
    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    inits = {t.name: t for t in g.initializer}
    graph_inputs = {vi.name for vi in g.input if vi.name not in inits}
    protected = [_is_protected(n, norms, block) for n in g.node]
    naive_norm = [norms == "fp16" and "normonnx.norm" in node_meta(n) for n in g.node]

    def et(v: str) -> int:
        t = types.get(v)
        return int(t.tensor_type.elem_type) if t is not None and t.HasField("tensor_type") else 0

    # where each float value lives after conversion
    lives: dict[str, int] = {}
    for vi in g.input:
        if vi.name in graph_inputs and vi.type.tensor_type.elem_type == F:
            lives[vi.name] = F if keep_io_types else D
    for i, n in enumerate(g.node):
        for v in n.output:
            t = et(v)
            if t == F or (naive_norm[i] and t == TensorProto.DOUBLE):
                lives[v] = F if protected[i] else D
            elif t == 0 and not protected[i] and _float_producing(n):
                lives[v] = D
    # graph outputs: rename a producer whose dtype differs from the wanted output dtype
    renames: dict[str, str] = {}
    tail: list[onnx.NodeProto] = []
    want_out = F if keep_io_types else D
    for o in g.output:
        if o.name in lives and lives[o.name] != want_out:
            new = f"{o.name}::{_SUFFIX[lives[o.name]]}"
            renames[o.name] = new
            lives[new] = lives[o.name]
            tail.append(helper.make_node("Cast", [new], [o.name], to=want_out, name=f"{o.name}/to_{_SUFFIX[want_out]}"))
        if o.name in lives:
            o.type.tensor_type.elem_type = want_out
    for vi in g.input:
        if vi.name in graph_inputs and vi.type.tensor_type.elem_type == F and not keep_io_types:
            vi.type.tensor_type.elem_type = D

    casts: dict[tuple[str, int], str] = {}
    init_copies: dict[str, str] = {}
    new_inits: list[onnx.TensorProto] = []
    new_nodes: list[onnx.NodeProto] = []
    n_casts = 0
    consumers_protected: dict[str, bool] = {}
    for i, n in enumerate(g.node):
        for v in n.input:
            if v in inits and protected[i]:
                consumers_protected[v] = True

    _producer = {v: n for n in g.node for v in n.output}

    def as_type(v: str, need: int, consumer: onnx.NodeProto) -> str:
        """``v`` cast to ``need``; the Cast belongs to the fp32 side (a norm's scope) so module
        boundaries stay where they were: entering a kept-fp32 node it takes the consumer's
        metadata, leaving one the producer's."""
        nonlocal n_casts
        key = (v, need)
        if key not in casts:
            out = f"{v}::{_SUFFIX[need]}"
            c = helper.make_node("Cast", [v], [out], to=need, name=f"{v}/to_{_SUFFIX[need]}")
            owner = consumer if need == F else _producer.get(v, consumer)
            c.metadata_props.extend(owner.metadata_props)
            new_nodes.append(c)
            lives[out] = need
            casts[key] = out
            n_casts += 1
        return casts[key]

    def init_in(v: str, need: int) -> str:
        if need == F:
            return v
        if v not in init_copies:
            arr = numpy_helper.to_array(inits[v])
            name = f"{v}::{_SUFFIX[need]}" if consumers_protected.get(v) else v
            new_inits.append(_tensor(arr, need, name))
            init_copies[v] = name
        return init_copies[v]

    kept: dict[str, list[str]] = {}
    for i, node in enumerate(g.node):
        n = onnx.NodeProto()
        n.CopyFrom(node)
        prot = protected[i]
        if prot:
            kept.setdefault(prot, []).append(n.name or n.op_type)
        need = F if prot else D
        f32_slots = _FLOAT32_INPUTS.get(n.op_type, set())
        for k, v in enumerate(n.input):
            if not v:
                continue
            v = renames.get(v, v)
            n.input[k] = v
            want = F if k in f32_slots else need
            # float32 initializers, and in a naive norm its float64 statistics constants (the
            # export keeps the decomposition's constants as initializers, not Constant nodes)
            if v in inits and (
                inits[v].data_type == F or (naive_norm[i] and not prot and inits[v].data_type == TensorProto.DOUBLE)
            ):
                if prot and node.op_type in block and k not in f32_slots:
                    # an op without a dtype kernel: its weights are still *stored* in dtype
                    n.input[k] = as_type(init_in(v, D), F, n)
                elif v in init_copies or want != F:
                    n.input[k] = init_in(v, want)
                continue
            have = lives.get(v)
            if have is not None and have != want:
                n.input[k] = as_type(v, want, n)
        for k, v in enumerate(n.output):
            if v in renames:
                n.output[k] = renames[v]
        if not prot:
            _convert_attributes(n, D, naive_norm[i])
        new_nodes.append(n)
    new_nodes.extend(tail)
    # initializers converted in place (no fp32 consumer left) replace the originals
    replaced = {t.name for t in new_inits}
    keep_inits = [t for t in g.initializer if t.name not in replaced]
    del g.initializer[:]
    g.initializer.extend(keep_inits + new_inits)
    del g.node[:]
    g.node.extend(new_nodes)
    converted_inits = {t.name: t.data_type for t in new_inits}
    for vi in g.value_info:
        if vi.name in lives and vi.type.HasField("tensor_type"):
            vi.type.tensor_type.elem_type = lives[vi.name]
        elif vi.name in converted_inits and vi.type.HasField("tensor_type"):
            vi.type.tensor_type.elem_type = converted_inits[vi.name]
    info = Conversion(dtype, norms, kept, n_casts + len(tail), sorted(block), bool(keep_io_types))
    m.metadata_props.add(key="normonnx.verify.precision", value=f"{dtype} norms={norms}")
    return m, info


def _float_producing(node: onnx.NodeProto) -> bool:
    return node.op_type not in ("Shape", "Size", "NonZero", "ArgMax", "ArgMin", "Cast", "Equal", "Greater", "Less")


def _tensor(arr: np.ndarray, elem: int, name: str) -> onnx.TensorProto:
    if elem == TensorProto.FLOAT16:
        return numpy_helper.from_array(arr.astype(np.float16), name)
    if elem == TensorProto.BFLOAT16:
        t = helper.make_tensor(name, TensorProto.BFLOAT16, arr.shape, arr.astype(np.float32).ravel().tolist())
        return t
    return numpy_helper.from_array(arr.astype(np.float32), name)


def _convert_attributes(n: onnx.NodeProto, D: int, naive_norm: bool) -> None:
    """Cast targets and constant values of an unprotected node: float32 (and in a naive norm,
    float64) → ``D``."""
    src = {TensorProto.FLOAT} | ({TensorProto.DOUBLE} if naive_norm else set())
    for a in n.attribute:
        if n.op_type == "Cast" and a.name == "to" and a.i in src:
            a.i = D
        elif (
            a.type == onnx.AttributeProto.TENSOR
            and a.t.data_type in src
            and n.op_type in ("Constant", "ConstantOfShape")
        ):
            arr = numpy_helper.to_array(a.t)
            a.t.CopyFrom(_tensor(arr, D, a.t.name))
        elif n.op_type == "Constant" and a.name == "value_float":
            a.CopyFrom(helper.make_attribute("value", _tensor(np.asarray(a.f, np.float32), D, "")))
        elif n.op_type == "Constant" and a.name == "value_floats":
            a.CopyFrom(helper.make_attribute("value", _tensor(np.asarray(list(a.floats), np.float32), D, "")))


def export_half(model: Any, example_inputs: Sequence[Any], path: str | os.PathLike[str], **export_kw: Any) -> Any:
    """Export a float16 copy of ``model``: normonnx lowers its norms with fp32 statistics
    (spec dtype float16 ⇒ ``stash_fp32``). Needs torch fp16 kernels on CPU for one check run."""
    import copy

    import torch

    from ..exporter import export

    half = copy.deepcopy(model).half().eval()
    args = [t.half() if isinstance(t, torch.Tensor) and t.is_floating_point() else t for t in example_inputs]
    return export(half, tuple(args), path, **export_kw)


__all__ = ["ELEM", "LIMITS", "Conversion", "convert", "export_half"]
