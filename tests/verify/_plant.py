"""Fault planting on real exports of the reference models, the way conversion bugs look.

Every ``plant_*`` takes a ModelProto and returns an edited copy; the edit touches exactly one
module's ONNX nodes or initializers (shared constants are copied first, so a wrong ε in one norm
does not change its neighbours'). Faults: a wrong epsilon, a wrong scale (γ) or shift (β) on one
channel, a wrong normalisation axis, a perturbed conv/linear weight, a fused activation dropped.
"""

from __future__ import annotations

import ast

import numpy as np
import onnx
from onnx import numpy_helper


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    m = onnx.ModelProto()
    m.CopyFrom(model)
    return m


def _meta(node: onnx.NodeProto) -> dict[str, str]:
    return {p.key: p.value for p in node.metadata_props}


def _scopes(node: onnx.NodeProto) -> list[str]:
    """Module paths around ``node``: ``name_scopes``, else the ``namespace`` normonnx's lowerings keep."""
    md = _meta(node)
    raw = md.get("pkg.torch.onnx.name_scopes")
    if raw:
        return [str(s) for s in ast.literal_eval(raw)[:-1]]
    ns = md.get("namespace")
    return [p.split(": ", 1)[0] for p in ns.split("/")][:-1] if ns else []


def nodes_of(model: onnx.ModelProto, module: str) -> list[onnx.NodeProto]:
    """Nodes whose innermost module scope is ``module`` (the exporter's metadata)."""
    return [n for n in model.graph.node if _scopes(n) and _scopes(n)[-1] == module]


def norm_nodes(model: onnx.ModelProto, module: str) -> list[onnx.NodeProto]:
    """The lowered norm's nodes (``normonnx.norm``) of the norm in ``module``'s scope."""
    names = {_meta(n).get("normonnx.norm") for n in model.graph.node if module in _scopes(n)} - {None}
    assert len(names) == 1, (module, names)
    (name,) = names
    return [n for n in model.graph.node if _meta(n).get("normonnx.norm") == name]


def _init(model: onnx.ModelProto, name: str) -> onnx.TensorProto:
    return next(t for t in model.graph.initializer if t.name == name)


def _private_input(model: onnx.ModelProto, node: onnx.NodeProto, k: int, array: np.ndarray) -> None:
    """Give ``node``'s k-th input a fresh initializer holding ``array`` (no other node sees it)."""
    name = f"planted/{node.name}/{k}"
    model.graph.initializer.append(numpy_helper.from_array(array, name))
    node.input[k] = name


def _edit_initializer(model: onnx.ModelProto, name: str, fn) -> onnx.ModelProto:
    m = _copy(model)
    t = _init(m, name)
    a = numpy_helper.to_array(t).copy()
    t.CopyFrom(numpy_helper.from_array(fn(a).astype(a.dtype), name))
    return m


def plant_eps(model: onnx.ModelProto, module: str, eps: float = 1e-1) -> onnx.ModelProto:
    """ε of the norm in ``module``: the native op's attribute, or the decomposition's Add-ε."""
    m = _copy(model)
    for n in norm_nodes(m, module):
        for a in n.attribute:
            if a.name == "epsilon":
                a.f = eps
                return m
    inits = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
    for n in norm_nodes(m, module):
        if n.op_type == "Add":
            for k, v in enumerate(n.input):
                a = inits.get(v)
                if a is not None and a.ndim == 0 and 0 < float(a) < 1e-2:
                    _private_input(m, n, k, np.asarray(eps, a.dtype))
                    return m
    raise AssertionError(f"no epsilon in the norm of {module!r}")


def plant_scale(model: onnx.ModelProto, initializer: str, channel: int = 1, factor: float = 1.5) -> onnx.ModelProto:
    """γ (or a folded weight's output channel) of one channel multiplied by ``factor``."""

    def fn(a):
        a[channel] *= factor
        return a

    return _edit_initializer(model, initializer, fn)


def plant_bias(model: onnx.ModelProto, initializer: str, channel: int = 2, delta: float = 0.5) -> onnx.ModelProto:
    def fn(a):
        a[channel] += delta
        return a

    return _edit_initializer(model, initializer, fn)


def plant_weight(model: onnx.ModelProto, initializer: str, delta: float = 0.5) -> onnx.ModelProto:
    """One element of a conv/linear weight moved by ``delta``."""

    def fn(a):
        a.flat[a.size // 3] += delta
        return a

    return _edit_initializer(model, initializer, fn)


def plant_axis(model: onnx.ModelProto, module: str, axis: int) -> onnx.ModelProto:
    """LayerNormalization of ``module`` normalising from ``axis`` on."""
    m = _copy(model)
    for n in norm_nodes(m, module):
        if n.op_type == "LayerNormalization":
            for a in n.attribute:
                if a.name == "axis":
                    a.i = axis
                    return m
    raise AssertionError(f"no LayerNormalization in {module!r}")


def plant_drop_activation(model: onnx.ModelProto, module: str) -> onnx.ModelProto:
    """The SiLU fused into the norm of ``module`` dropped: the fused node's ``activation``
    attribute, or the decomposition's Sigmoid + Mul (its nodes then end at the affine output)."""
    m = _copy(model)
    nodes = norm_nodes(m, module)
    for n in nodes:  # one fused node (normonnx's GroupNorm kernel): its activation attribute
        keep = [a for a in n.attribute if a.name != "activation"]
        if len(keep) < len(n.attribute):
            del n.attribute[:]
            n.attribute.extend(keep)
            return m
    sig = next(n for n in nodes if n.op_type == "Sigmoid")
    mul = next(n for n in nodes if n.op_type == "Mul" and sig.output[0] in n.input)
    pre, out = sig.input[0], mul.output[0]
    keep = [n for n in m.graph.node if n is not sig and n is not mul]
    for n in keep:
        for i, o in enumerate(n.output):
            if o == pre:
                n.output[i] = out
        for i, v in enumerate(n.input):
            if v == pre:
                n.input[i] = out
    del m.graph.node[:]
    m.graph.node.extend(keep)
    return m


def weight_of(model: onnx.ModelProto, module: str) -> str:
    """The weight initializer (rank >= 2) read by ``module``'s nodes (folded or transposed ones too)."""
    ranks = {t.name: len(t.dims) for t in model.graph.initializer}
    for n in nodes_of(model, module):
        for v in n.input:
            if ranks.get(v, 0) >= 2:
                return v
    raise AssertionError(f"no weight initializer in {module!r}")


def folded_bias_of(model: onnx.ModelProto, module: str) -> str:
    """The bias a BatchNorm folded into ``module``'s conv left behind."""
    for n in nodes_of(model, module):
        for v in n.input:
            if v.endswith("/bn_folded_bias"):
                return v
    raise AssertionError(f"no folded BatchNorm in {module!r}")


def affine_of(model: onnx.ModelProto, module: str, which: str) -> str:
    """The initializer holding γ (``which="scale"``) or β (``"bias"``) of the norm in ``module``:
    the native op's input 1 / 2, or the decomposition's last Mul / Add by a per-channel constant."""
    inits = {t.name: t for t in model.graph.initializer}
    nodes = norm_nodes(model, module)
    for n in nodes:
        if n.op_type in ("LayerNormalization", "GroupNormalization", "BatchNormalization"):
            return n.input[1 if which == "scale" else 2]
    op = "Mul" if which == "scale" else "Add"
    for n in reversed(nodes):
        if n.op_type == op:
            for v in n.input:
                if v in inits and int(np.prod(inits[v].dims)) > 1:
                    return v
    raise AssertionError(f"no {which} initializer in the norm of {module!r}")


def plant_element(model: onnx.ModelProto, initializer: str, index: tuple[int, ...], delta: float) -> onnx.ModelProto:
    """One element of ``initializer`` moved by ``delta``."""

    def fn(a):
        a[index] += delta
        return a

    return _edit_initializer(model, initializer, fn)
