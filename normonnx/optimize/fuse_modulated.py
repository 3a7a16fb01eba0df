"""Modulated norms: a norm without affine followed by ``· (1 + scale) + shift`` with scale and shift
computed at run time (adaptive LayerNorm / AdaLN of diffusion transformers, FiLM).

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

import onnx

from . import Match, NoMatch, Rule
from ._graph import OK, GraphView, Rewrite, Verdict, norm_node_params, scalar

DOMAIN = "normonnx"
META_KEY = "normonnx.modulation"
NORM_OPS = ("LayerNorm", "RMSNorm", "GroupNorm")


def _plain(n: onnx.NodeProto | None, op: str) -> bool:
    return n is not None and n.op_type == op and n.domain in ("", "ai.onnx")


class ModulatedNorm(Rule):
    name = "modulated.record"
    anchor_ops = NORM_OPS
    anchor_domain = DOMAIN

    def match(self, g: GraphView, node: onnx.NodeProto) -> Match | NoMatch:
        if any(p.key == META_KEY for p in node.metadata_props):
            return NoMatch("already recorded")
        if norm_node_params(node):
            return NoMatch("the norm has its own affine parameters")
        mul = g.single_user(node.output[0])
        if not _plain(mul, "Mul"):
            return NoMatch("output is not read by a single Mul")
        assert mul is not None
        scale_in = mul.input[1] if mul.input[0] == node.output[0] else mul.input[0]
        one_plus = g.op(scale_in, "Add")
        if one_plus is None:
            return NoMatch("the factor is not 1 + scale")
        ones = [i for i in one_plus.input if scalar(g.const(i)) == 1.0]
        if len(ones) != 1:
            return NoMatch("the factor is not 1 + scale")
        scale = next(i for i in one_plus.input if i != ones[0])
        add = g.single_user(mul.output[0])
        if not _plain(add, "Add"):
            return NoMatch("the scaled value is not shifted by an Add")
        assert add is not None
        shift = add.input[1] if add.input[0] == mul.output[0] else add.input[0]
        return Match(node, [node], node.output[0], {"scale": scale, "shift": shift, "out": add.output[0]})

    def check(self, g: GraphView, m: Match) -> Verdict:
        for what in ("scale", "shift"):
            v = m.facts[what]
            if g.const(v) is not None:
                return Verdict.fail(f"the {what} is a constant (an affine, not a modulation)", v)
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


RULES: list[Rule] = [ModulatedNorm()]
