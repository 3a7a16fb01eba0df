"""GroupNorm fusions: ``y = (x − μ_ng)/√(σ²_ng + ε)·γ_c + β_c`` (optionally ·sigmoid) → ``normonnx.GroupNorm``.

Rules:

- ``group_norm.via_instance``: Reshape(x, [N, G, −1]) → InstanceNormalization → Reshape(back to x's
  shape), what both torch exporters emit for ``nn.GroupNorm`` below opset 21. The instance norm's
  per-group scale a_g / bias b_g (ones/zeros from the exporters) are folded per channel:
  γ_c = a_{g(c)}, β_c = b_{g(c)}.
- ``group_norm.decomposed``: Reshape(x, [N, G, …]) → the moments pattern over every axis ≥ 2 of the
  view → Reshape back: hand-written GroupNorms (the tutorial module with ``x.view(N, G, -1, H, W)``).
  The variance must be the biased one: the tutorial's ``x.var()`` is *unbiased* (× N/(N−1)), which
  is not GroupNorm, and is refused with that reason; ``x.var(unbiased=False)`` fuses.
- ``group_norm.native``: GroupNormalization lifted into the portable op. At opsets 18–20 its
  scale/bias are per *group* (the deprecated op): converted to per channel by repeating each group's
  value over its C/G channels. onnxruntime has no kernel for it and inlines a function computing
  σ² = E[x²] − E[x]² (NaN at offset 1e3), so lifting it is also a fix.
- ``group_norm.affine``: a following Mul by γ / Add of β shaped [C, 1, …] (per channel).
- ``group_norm.silu``: the Sigmoid + Mul of SiLU after it becomes ``activation="silu"``.

The group view is proven: its shape constant is [N or 0, G, …] (channels are grouped contiguously
only when axis 1 of the view is G), G divides C, and the second Reshape restores x's exact shape.
"""

from __future__ import annotations

import numpy as np
import onnx

from ..spec import NormSpec
from . import Match, NoMatch, Rule
from ._graph import (
    FLOAT_TYPES,
    LOW_PRECISION,
    OK,
    GraphView,
    Rewrite,
    Verdict,
    attr,
    check_normalize,
    dtype_name,
    match_normalize,
    norm_node_params,
    norm_rewrite,
    spec_of_node,
)
from ._rules import NormAffine

DOMAIN = "normonnx"


def check_group_view(g: GraphView, view_node: onnx.NodeProto, x0: str) -> tuple[Verdict, int, int]:
    """(verdict, C, G) for ``Reshape(x0, target)`` grouping the channels of ``x0``."""
    shape = g.shape(x0)
    if shape is None or len(shape) < 2:
        return Verdict.fail(f"shape of {x0!r} is unknown or of rank < 2", x0), 0, 0
    c = shape[1]
    if not isinstance(c, int):
        return Verdict.fail(f"channel dim of {x0!r} is not static", x0), 0, 0
    target = g.const(view_node.input[1])
    if target is None:
        return Verdict.fail("the group view's shape is computed at run time", view_node.input[1]), 0, 0
    t = [int(v) for v in target.reshape(-1)]
    if len(t) < 3:
        return Verdict.fail(f"view shape {t} has no [N, G, …] layout", target), 0, 0
    groups = t[1]
    if groups < 1 or c % groups:
        return Verdict.fail(f"view shape {t}: {groups} does not divide C={c}", target), 0, 0
    allow_zero = int(attr(view_node, "allowzero", 0))
    n = shape[0]
    spatial = [d for d in shape[2:]]
    if t[0] == 0 and not allow_zero:
        pass
    elif t[0] == -1:
        rest_static = all(v > 0 for v in t[2:]) and all(isinstance(d, int) for d in spatial)
        per_group = (c // groups) * int(np.prod([d for d in spatial if isinstance(d, int)] or [1]))
        if not (rest_static and int(np.prod(t[2:])) == per_group):
            return Verdict.fail(f"view shape {t}: −1 on the batch axis is not provably N", target), 0, 0
    elif not (isinstance(n, int) and t[0] == n):
        return Verdict.fail(f"view shape {t}: axis 0 is not the batch size ({n})", target), 0, 0
    return OK, c, groups


def check_restored(g: GraphView, back: onnx.NodeProto, x0: str) -> Verdict:
    """The Reshape after the norm must give back exactly x0's shape."""
    src = g.op(back.input[1], "Shape")
    if src is not None and src.input[0] == x0 and not attr(src, "start") and attr(src, "end") is None:
        return OK
    s_in, s_out = g.shape(x0), g.shape(back.output[0])
    target = g.const(back.input[1])
    if target is not None and s_in is not None and all(isinstance(d, int) for d in s_in):
        t = [int(v) for v in target.reshape(-1)]
        # a 0 copies the *view's* dim: only axis 0 (N) is the same in the view and in x0
        zero_ok = not attr(back, "allowzero", 0)
        same = [a == b or (i == 0 and a == 0 and zero_ok) for i, (a, b) in enumerate(zip(t, s_in))]
        if len(t) == len(s_in) and (
            all(same) or (t.count(-1) == 1 and sum(not x for x in same) == 1 and t[same.index(False)] == -1)
        ):
            return OK
    if s_in is not None and s_out is not None and s_in == s_out and all(d is not None for d in s_in):
        return OK
    return Verdict.fail(f"cannot prove that Reshape {back.name!r} restores the shape of {x0!r}", back.input[1])


def _dtype(g: GraphView, x: str) -> tuple[Verdict, str]:
    et = g.elem_type(x)
    if et not in FLOAT_TYPES:
        return Verdict.fail(f"input {x!r} has element type {dtype_name(et)}", x), ""
    return OK, FLOAT_TYPES[et]


class GroupNormViaInstance(Rule):
    name = "group_norm.via_instance"
    anchor_ops = ("Reshape",)
    skip_lowered = True

    def match(self, g: GraphView, node: onnx.NodeProto) -> Match | NoMatch:
        inorm = g.op(node.input[0], "InstanceNormalization")
        if inorm is None:
            return NoMatch("input is not an InstanceNormalization")
        view = g.op(inorm.input[0], "Reshape")
        if view is None:
            return NoMatch("the InstanceNormalization's input is not a Reshape")
        return Match(node, [view, inorm, node], node.output[0], {"view": view, "inorm": inorm})

    def check(self, g: GraphView, m: Match) -> Verdict:
        view, inorm = m.facts["view"], m.facts["inorm"]
        x0 = view.input[0]
        v, dt = _dtype(g, x0)
        if not v:
            return v
        v, c, groups = check_group_view(g, view, x0)
        if not v:
            return v
        v = check_restored(g, m.anchor, x0)
        if not v:
            return v
        params: dict[str, object] = {}
        for slot, value, neutral in (("weight", inorm.input[1], 1.0), ("bias", inorm.input[2], 0.0)):
            arr = g.const(value)
            if arr is None:
                return Verdict.fail(f"instance-norm {slot} is not a constant", value)
            if arr.shape != (groups,):
                return Verdict.fail(f"instance-norm {slot} of shape {list(arr.shape)}, expected [{groups}]", arr)
            if not np.all(arr == neutral):
                params[slot] = np.repeat(arr, c // groups)
        m.facts["params"] = params
        m.facts["spec"] = NormSpec(
            "group",
            eps=float(attr(inorm, "epsilon", 1e-5)),
            channels=c,
            groups=groups,
            has_weight="weight" in params,
            has_bias="bias" in params,
            dtype=dt,
            rank=g.rank(x0),
        )
        return OK

    def rewrite(self, g: GraphView, m: Match) -> Rewrite:
        return norm_rewrite(
            g, m.nodes, m.output, m.facts["spec"], m.facts["view"].input[0], m.facts["params"], m.anchor, "group_norm"
        )


class GroupNormDecomposed(Rule):
    name = "group_norm.decomposed"
    anchor_ops = ("Reshape",)
    skip_lowered = True

    def match(self, g: GraphView, node: onnx.NodeProto) -> Match | NoMatch:
        a = g.op(node.input[0], ("Div", "Mul"))
        if a is None:
            return NoMatch("input is not a Div/Mul")
        nm = match_normalize(g, a)
        if isinstance(nm, str):
            return NoMatch(nm)
        if not nm.centered:
            return NoMatch("no mean is subtracted")
        view = g.op(nm.x, "Reshape")
        if view is None:
            return NoMatch("the normalised value is not a Reshape of the input")
        return Match(node, [view, *nm.nodes, node], node.output[0], {"nm": nm, "view": view})

    def check(self, g: GraphView, m: Match) -> Verdict:
        nm, view = m.facts["nm"], m.facts["view"]
        x0 = view.input[0]
        v, axes, eps = check_normalize(g, nm, want_centered=True)
        if not v:
            return v
        r = g.rank(nm.x) or 0
        if axes != tuple(range(2, r)):
            return Verdict.fail(
                f"statistics over axes {list(axes)} of the [N, G, …] view, not over all of 2..{r - 1}", nm.x
            )
        v, dt = _dtype(g, x0)
        if not v:
            return v
        v, c, groups = check_group_view(g, view, x0)
        if not v:
            return v
        v = check_restored(g, m.anchor, x0)
        if not v:
            return v
        m.facts["spec"] = NormSpec(
            "group", eps=eps, channels=c, groups=groups, has_weight=False, has_bias=False, dtype=dt, rank=g.rank(x0)
        )
        return OK

    def rewrite(self, g: GraphView, m: Match) -> Rewrite:
        return norm_rewrite(g, m.nodes, m.output, m.facts["spec"], m.facts["view"].input[0], {}, m.anchor, "group_norm")


class GroupNormNative(Rule):
    name = "group_norm.native"
    anchor_ops = ("GroupNormalization",)
    skip_lowered = True

    def match(self, g: GraphView, node: onnx.NodeProto) -> Match | NoMatch:
        return Match(node, [node], node.output[0])

    def check(self, g: GraphView, m: Match) -> Verdict:
        node = m.anchor
        x = node.input[0]
        v, dt = _dtype(g, x)
        if not v:
            return v
        shape = g.shape(x)
        if shape is None or len(shape) < 2 or not isinstance(shape[1], int):
            return Verdict.fail(f"channel dim of {x!r} is unknown", x)
        c = int(shape[1])
        groups = int(attr(node, "num_groups", 0))
        if groups < 1 or c % groups:
            return Verdict.fail(f"num_groups={groups} does not divide C={c}", x)
        per_group = g.opset < 21  # GroupNormalization-18: scale/bias per group
        if g.elem_type(x) in LOW_PRECISION and int(attr(node, "stash_type", 1)) != 1:
            return Verdict.fail("stash_type=0: statistics in low precision; normonnx computes them in float32", x)
        params: dict[str, object] = {}
        for slot, value in (("weight", node.input[1]), ("bias", node.input[2])):
            if per_group:
                arr = g.const(value)
                if arr is None:
                    return Verdict.fail(
                        f"per-group {slot} (GroupNormalization-18) is not a constant, cannot repeat it per channel",
                        value,
                    )
                if arr.shape != (groups,):
                    return Verdict.fail(f"per-group {slot} of shape {list(arr.shape)}, expected [{groups}]", arr)
                params[slot] = np.repeat(arr, c // groups)
            elif g.shape(value) == (c,):
                params[slot] = value
            else:
                return Verdict.fail(f"{slot} of shape {g.shape(value)}, expected [{c}]", value)
        m.facts["params"] = params
        m.facts["spec"] = NormSpec(
            "group", eps=float(attr(node, "epsilon", 1e-5)), channels=c, groups=groups, dtype=dt, rank=len(shape)
        )
        return OK

    def rewrite(self, g: GraphView, m: Match) -> Rewrite:
        return norm_rewrite(
            g, m.nodes, m.output, m.facts["spec"], m.anchor.input[0], m.facts["params"], m.anchor, "group_norm"
        )


class GroupNormAffine(NormAffine):
    name = "group_norm.affine"
    anchor_ops = ("GroupNorm",)
    op = "GroupNorm"


class GroupNormSiLU(Rule):
    name = "group_norm.silu"
    anchor_ops = ("GroupNorm",)
    anchor_domain = DOMAIN

    def match(self, g: GraphView, node: onnx.NodeProto) -> Match | NoMatch:
        y = node.output[0]
        users = g.users(y)
        if y in g.graph_outputs or len(users) != 2:
            return NoMatch("output is not read by exactly Sigmoid and Mul")
        sig = next((u for u in users if u.op_type == "Sigmoid" and u.domain in ("", "ai.onnx")), None)
        mul = next((u for u in users if u.op_type == "Mul" and u.domain in ("", "ai.onnx")), None)
        if sig is None or mul is None or sorted(mul.input) != sorted([y, sig.output[0]]):
            return NoMatch("not y·sigmoid(y)")
        return Match(node, [node, sig, mul], mul.output[0])

    def check(self, g: GraphView, m: Match) -> Verdict:
        spec = spec_of_node(g, m.anchor)
        if spec is None:
            return Verdict.fail("the norm's input type is unknown", m.anchor.input[0])
        if spec.activation:
            return Verdict.fail(f"already has activation {spec.activation!r}", m.anchor.output[0])
        m.facts["spec"] = spec.replace(activation="silu")
        return OK

    def rewrite(self, g: GraphView, m: Match) -> Rewrite:
        return norm_rewrite(
            g,
            m.nodes,
            m.output,
            m.facts["spec"],
            m.anchor.input[0],
            norm_node_params(m.anchor),
            m.anchor,
            "group_norm_silu",  # type: ignore[arg-type]
        )


RULES: list[Rule] = [
    GroupNormViaInstance(),
    GroupNormDecomposed(),
    GroupNormNative(),
    GroupNormAffine(),
    GroupNormSiLU(),
]
