"""Modulated norms: a norm without affine followed by ``· (1 + scale) + shift`` with scale and shift
computed at run time (adaptive LayerNorm / AdaLN of diffusion transformers, FiLM).

- ``modulated.layer``: ``y = LN(x); z = y·(1 + s) + t`` with ``LN`` a normonnx LayerNorm over
  trailing axes with neither γ nor β (or constant γ ≡ 1, β ≡ 0, as torch's exporter spells an
  ``elementwise_affine=False`` LayerNorm: ``n·1 + 0 = n`` exactly) → one LayerNorm node with ``modulation=1`` and inputs
  ``scale = s``, ``shift = t``. Proof: the node computes ``LN(x)·(1 + s) + t`` in the norm's dtype
  in that order, so it is the same function when ``s`` and ``t`` have the norm's dtype and the
  shape ``[N or 1, 1, …, 1, *normalized_shape]`` (per sample and feature, broadcast over the
  tokens: the output does not grow, and the kernel's indexing holds), checked statically.
  The ``1 + s`` Add is left to the cleanup (it may have other readers).
- ``modulated.record``: ``y = N(x); z = y·(1 + s) + t`` (either operand order, ``s + 1`` or
  ``1 + s``) where ``N`` is a normonnx LayerNorm / RMSNorm / GroupNorm with neither γ nor β and
  ``s``, ``t`` are not constants. The graph is left as it is (its numbers are those of the norm
  and two element-wise ops); the norm node is marked ``normonnx.modulation`` = the names of ``s``
  and ``t`` and the rule's fired count says how many such norms the model has, so a fused
  modulated kernel can take them (see the transformer-performance work).

A constant scale/shift is not a modulation: ``layer_norm.affine`` absorbs it into γ/β instead.
"""

from __future__ import annotations

import json

import numpy as np
import onnx

from ..rejection import OK, CheckResult, Rejection
from .graph import GraphView, dtype_name, norm_node_params, scalar, spec_of_node
from .rewriter import Rewrite, norm_rewrite
from .rule import Match, Rule

DOMAIN = "normonnx"
META_KEY = "normonnx.modulation"
NORM_OPS = ("LayerNorm", "RMSNorm", "GroupNorm")


def _plain(n: onnx.NodeProto | None, op: str) -> bool:
    return n is not None and n.op_type == op and n.domain in ("", "ai.onnx")


class ModulatedNorm(Rule):
    name = "modulated.record"
    anchor_ops = NORM_OPS
    anchor_domain = DOMAIN

    def match(self, g: GraphView, node: onnx.NodeProto) -> Match | Rejection:
        if any(p.key == META_KEY for p in node.metadata_props):
            return Rejection("already recorded")
        if attr_int(node, "modulation"):
            return Rejection("already modulated")
        if attr_int(node, "sample_operands"):  # a [N or 1, 1, …, C] scale/shift would not fit it
            return Rejection("the node reads per-sample [N, C] operands (sample_operands=1)")
        if not _identity_affine(g, node):
            return Rejection("the norm has its own affine parameters")
        mul = g.single_user(node.output[0])
        if not _plain(mul, "Mul"):
            return Rejection("output is not read by a single Mul")
        assert mul is not None
        scale_in = mul.input[1] if mul.input[0] == node.output[0] else mul.input[0]
        one_plus = g.op(scale_in, "Add")
        if one_plus is None:
            return Rejection("the factor is not 1 + scale")
        ones = [i for i in one_plus.input if scalar(g.const(i)) == 1.0]
        if len(ones) != 1:
            return Rejection("the factor is not 1 + scale")
        scale = next(i for i in one_plus.input if i != ones[0])
        add = g.single_user(mul.output[0])
        if not _plain(add, "Add"):
            return Rejection("the scaled value is not shifted by an Add")
        assert add is not None
        shift = add.input[1] if add.input[0] == mul.output[0] else add.input[0]
        return Match(
            node, [node], node.output[0], {"scale": scale, "shift": shift, "out": add.output[0], "mul": mul, "add": add}
        )

    def check(self, g: GraphView, m: Match) -> CheckResult:
        for what in ("scale", "shift"):
            v = m.facts[what]
            if g.const(v) is not None:
                return Rejection(f"the {what} is a constant (an affine, not a modulation)", v)
        return OK

    def rewrite(self, g: GraphView, m: Match) -> Rewrite:
        node = onnx.NodeProto()
        node.CopyFrom(m.anchor)
        info = {
            "scale": m.facts["scale"],
            "shift": m.facts["shift"],
            "output": m.facts["out"],
            "form": "x*(1+scale)+shift",
        }
        node.metadata_props.add(key=META_KEY, value=json.dumps(info))
        return Rewrite([m.anchor], [node])


def _identity_affine(g: GraphView, node: onnx.NodeProto) -> bool:
    """The norm has no γ/β, or only γ ≡ 1 / β ≡ 0 constants (an affine-free norm spelled with them)."""
    for slot, v in norm_node_params(node).items():
        if slot not in ("weight", "bias"):
            continue
        c = g.const(v)
        if c is None or not np.all(c == (1.0 if slot == "weight" else 0.0)):
            return False
    return True


def attr_int(node: onnx.NodeProto, name: str) -> int:
    return next((a.i for a in node.attribute if a.name == name), 0)


class ModulatedLayerNorm(ModulatedNorm):
    name = "modulated.layer"
    anchor_ops = ("LayerNorm",)

    def match(self, g: GraphView, node: onnx.NodeProto) -> Match | Rejection:
        m = super().match(g, node)
        if isinstance(m, Rejection):
            return m
        return Match(node, [node, m.facts["mul"], m.facts["add"]], m.facts["out"], m.facts)

    def check(self, g: GraphView, m: Match) -> CheckResult:
        v = super().check(g, m)
        if not v:
            return v
        node = m.anchor
        spec = spec_of_node(g, node)
        if spec is None:
            return Rejection("the norm's input type is unknown", node.input[0])
        if spec.channels_first:
            return Rejection("a channels-first LayerNorm has no fused modulation form", node.input[0])
        x_shape = g.shape(node.input[0])
        ns = spec.normalized_shape or ()
        for what in ("scale", "shift"):
            val = m.facts[what]
            if g.elem_type(val) != spec.onnx_dtype:
                return Rejection(f"the {what} is {dtype_name(g.elem_type(val))}, the norm {spec.dtype}", val)
            shape = g.shape(val)
            if shape is None or x_shape is None or None in shape:
                return Rejection(f"the static shape of the {what} {val!r} is unknown", val)
            why = _modulation_shape(tuple(shape), tuple(x_shape), ns)
            if why:
                return Rejection(f"the {what} has shape {list(shape)}: {why}", val)
        # γ ≡ 1 and β ≡ 0 (the exporters' LayerNormalization(x, ones, zeros) for elementwise_affine=False)
        # are dropped: n·1 + 0 = n exactly
        m.facts["spec"] = spec.replace(modulation=True, has_weight=False, has_bias=False)
        return OK

    def rewrite(self, g: GraphView, m: Match) -> Rewrite:
        node = m.anchor
        plain = {k: v for k, v in norm_node_params(node).items() if k not in ("weight", "bias")}
        params = {**plain, "scale": m.facts["scale"], "shift": m.facts["shift"]}
        return norm_rewrite(g, m.nodes, m.output, m.facts["spec"], node.input[0], params, node, "modulated")  # type: ignore[arg-type]


def _modulation_shape(shape: tuple[object, ...], x_shape: tuple[object, ...], ns: tuple[int, ...]) -> str:
    """Why a scale/shift of ``shape`` is not ``[N or 1, 1, …, 1, *ns]`` against ``x_shape`` ("" if it is)."""
    r = len(x_shape)
    if len(shape) > r:
        return f"more dims than the rank-{r} input"
    padded = (1,) * (r - len(shape)) + shape
    if tuple(padded[r - len(ns) :]) != tuple(ns):
        return f"its trailing dims are not the normalised shape {list(ns)}"
    if r - len(ns) >= 1 and padded[0] not in (1, x_shape[0]):
        return f"its first dim is neither 1 nor the input's {x_shape[0]}"
    if any(d != 1 for d in padded[1 : r - len(ns)]):
        return "it varies along the token axes (a modulation is per sample and feature)"
    return ""


RULES: list[Rule] = [ModulatedLayerNorm(), ModulatedNorm()]
