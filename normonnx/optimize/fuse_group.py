"""GroupNorm fusions: ``y = (x − μ_ng)/√(σ²_ng + ε)·γ_c + β_c`` → ``normonnx.GroupNorm``.

Rules:

- ``group_norm.via_instance``: Reshape(x, [N, G, −1]) → InstanceNormalization → Reshape(back to x's
  shape), what both torch exporters emit for ``nn.GroupNorm`` below opset 21. The instance norm's
  per-group scale a_g / bias b_g (ones/zeros from the exporters) are folded per channel:
  γ_c = a_{g(c)}, β_c = b_{g(c)}.
- ``group_norm.decomposed``: Reshape(x, [N, G, …]) → the moments pattern over every axis ≥ 2 of the
  view → Reshape back: hand-written GroupNorms (the tutorial module with ``x.view(N, G, -1, H, W)``).
  The tutorial's ``x.var()`` is *unbiased* (× N/(N−1)); with N static that is exactly
  ``GN(x; ε' = ε·(N−1)/N)·√((N−1)/N)``, so it fuses with those constants (the proof is kept in the
  node's ``normonnx.proof`` metadata); with N from a dynamic dim it is refused with that reason.
- ``group_norm.split``: ``Split(x, G, axis=1)`` → each chunk normalised over all its non-batch axes →
  ``Concat(axis=1)`` in order (the tutorial's ``torch.cat([... for t in x.split(C // G, 1)], 1)``).
- ``group_norm.native``: GroupNormalization lifted into the portable op. At opsets 18–20 its
  scale/bias are per *group* (the deprecated op): converted to per channel by repeating each group's
  value over its C/G channels. onnxruntime has no kernel for it and inlines a function computing
  σ² = E[x²] − E[x]² (NaN at offset 1e3), so lifting it is also a fix.
- ``group_norm.affine``: a following Mul by γ / Add of β shaped [C, 1, …] (per channel).

The SiLU or ReLU after the norm is fused by the next family (:mod:`.fuse_activation`).

The group view is proven: its shape constant is [N or 0, G, …] (channels are grouped contiguously
only when axis 1 of the view is G), G divides C, and the second Reshape restores x's exact shape.
"""

from __future__ import annotations

import numpy as np
import onnx

from ..rejection import OK, CheckResult, Rejection
from ..spec import NormSpec
from ._rules import NativeNorm, NormAffine
from ._shapes import dims_of, shape_value
from .graph import FLOAT_TYPES, GraphView, attr, dtype_name, norm_axes
from .patterns import check_normalize, decomposed_rewrite, decomposed_spec, match_normalize
from .rewriter import Rewrite, norm_rewrite
from .rule import Match, Rule

DOMAIN = "normonnx"


def check_group_view(g: GraphView, view_node: onnx.NodeProto, x0: str) -> tuple[CheckResult, int, int]:
    """(verdict, C, G) for ``Reshape(x0, target)`` grouping the channels of ``x0``.

    The target may be computed from shapes (a dynamic export's ``Concat(Shape(x)[0:1], [G], [-1])``):
    it is evaluated symbolically, and its axis 0 must provably be x0's batch dim."""
    shape = dims_of(g, x0)
    if shape is None or len(shape) < 2:
        return Rejection(f"shape of {x0!r} is unknown or of rank < 2", x0), 0, 0
    c = shape[1]
    if not isinstance(c, int):
        return Rejection(f"channel dim of {x0!r} is not static", x0), 0, 0
    t = shape_value(g, view_node.input[1])
    if t is None:
        return Rejection("the group view's shape is computed at run time", view_node.input[1]), 0, 0
    if len(t) < 3 or not isinstance(t[1], int):
        return Rejection(f"view shape {t} has no [N, G, …] layout", view_node.input[1]), 0, 0
    groups = t[1]
    if groups < 1 or c % groups:
        return Rejection(f"view shape {t}: {groups} does not divide C={c}", view_node.input[1]), 0, 0
    allow_zero = int(attr(view_node, "allowzero", 0))
    n = shape[0]
    spatial = shape[2:]
    rest = t[2:]
    if t[0] == n or (t[0] == 0 and not allow_zero):
        pass
    elif t[0] == -1:
        rest_static = all(isinstance(v, int) and v > 0 for v in rest) and all(isinstance(d, int) for d in spatial)
        per_group = (c // groups) * int(np.prod([d for d in spatial if isinstance(d, int)] or [1]))
        if not (rest_static and int(np.prod(rest)) == per_group):  # type: ignore[arg-type]
            return Rejection(f"view shape {t}: −1 on the batch axis is not provably N", view_node.input[1]), 0, 0
    else:
        return Rejection(f"view shape {t}: axis 0 is not the batch size ({n})", view_node.input[1]), 0, 0
    # the rest is the per-group size whatever its spelling: the element count fixes it
    return OK, c, groups


def check_restored(g: GraphView, back: onnx.NodeProto, x0: str) -> CheckResult:
    """The Reshape after the norm must give back exactly x0's shape."""
    src = g.op(back.input[1], "Shape")
    if src is not None and src.input[0] == x0 and not attr(src, "start") and attr(src, "end") is None:
        return OK
    s_in, s_out = dims_of(g, x0), dims_of(g, back.output[0])
    t = shape_value(g, back.input[1])
    if t is not None and s_in is not None:
        # a 0 copies the *view's* dim: only axis 0 (N) is the same in the view and in x0
        zero_ok = not attr(back, "allowzero", 0)
        same = [a == b or (i == 0 and a == 0 and zero_ok) for i, (a, b) in enumerate(zip(t, s_in))]
        if len(t) == len(s_in) and (
            all(same) or (t.count(-1) == 1 and sum(not x for x in same) == 1 and t[same.index(False)] == -1)
        ):
            return OK
    if s_in is not None and s_out is not None and s_in == s_out and not any(str(d).startswith("?") for d in s_in):
        return OK
    return Rejection(f"cannot prove that Reshape {back.name!r} restores the shape of {x0!r}", back.input[1])


def _dtype(g: GraphView, x: str) -> tuple[CheckResult, str]:
    et = g.elem_type(x)
    if et not in FLOAT_TYPES:
        return Rejection(f"input {x!r} has element type {dtype_name(et)}", x), ""
    return OK, FLOAT_TYPES[et]


def _check_grouped(g: GraphView, view: onnx.NodeProto, back: onnx.NodeProto) -> tuple[CheckResult, str, int, int]:
    """(verdict, dtype, C, G) of ``back(norm(view(x0)))``: x0 a float tensor, ``view`` the Reshape to
    [N, G, …] (:func:`check_group_view`), ``back`` the Reshape that restores x0's shape."""
    x0 = view.input[0]
    v, dt = _dtype(g, x0)
    if not v:
        return v, "", 0, 0
    v, c, groups = check_group_view(g, view, x0)
    if not v:
        return v, "", 0, 0
    return check_restored(g, back, x0), dt, c, groups


class GroupNormViaInstance(Rule):
    name = "group_norm.via_instance"
    anchor_ops = ("Reshape",)
    skip_lowered = True

    def match(self, g: GraphView, node: onnx.NodeProto) -> Match | Rejection:
        inorm = g.op(node.input[0], "InstanceNormalization")
        if inorm is None:
            return Rejection("input is not an InstanceNormalization")
        view = g.op(inorm.input[0], "Reshape")
        if view is None:
            return Rejection("the InstanceNormalization's input is not a Reshape")
        return Match(node, [view, inorm, node], node.output[0], {"view": view, "inorm": inorm})

    def check(self, g: GraphView, m: Match) -> CheckResult:
        view, inorm = m.facts["view"], m.facts["inorm"]
        x0 = view.input[0]
        v, dt, c, groups = _check_grouped(g, view, m.anchor)
        if not v:
            return v
        params: dict[str, object] = {}
        for slot, value, neutral in (("weight", inorm.input[1], 1.0), ("bias", inorm.input[2], 0.0)):
            arr = g.const(value)
            if arr is None:
                return Rejection(f"instance-norm {slot} is not a constant", value)
            if arr.shape != (groups,):
                return Rejection(f"instance-norm {slot} of shape {list(arr.shape)}, expected [{groups}]", arr)
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

    def match(self, g: GraphView, node: onnx.NodeProto) -> Match | Rejection:
        a = g.op(node.input[0], ("Div", "Mul"))
        if a is None:
            return Rejection("input is not a Div/Mul")
        nm = match_normalize(g, a)
        if isinstance(nm, Rejection):
            return nm
        if not nm.centered:
            return Rejection("no mean is subtracted")
        view = g.op(nm.x, "Reshape")
        if view is None:
            return Rejection("the normalised value is not a Reshape of the input")
        return Match(node, [view, *nm.nodes, node], node.output[0], {"nm": nm, "view": view})

    def check(self, g: GraphView, m: Match) -> CheckResult:
        nm, view = m.facts["nm"], m.facts["view"]
        x0 = view.input[0]
        v, mo = check_normalize(g, nm, want_centered=True)
        if not v:
            return v
        axes = mo.axes
        r = g.rank(nm.x) or 0
        if axes != tuple(range(2, r)):
            return Rejection(
                f"statistics over axes {list(axes)} of the [N, G, …] view, not over all of 2..{r - 1}", nm.x
            )
        v, dt, c, groups = _check_grouped(g, view, m.anchor)
        if not v:
            return v
        return decomposed_spec(m, mo, "group", (c,), dtype=dt, rank=g.rank(x0), channels=c, groups=groups)

    def rewrite(self, g: GraphView, m: Match) -> Rewrite:
        return decomposed_rewrite(g, m, m.facts["view"].input[0], "group_norm")


class GroupNormSplit(Rule):
    """``torch.cat([norm(t) for t in x.split(C // G, dim=1)], 1)``: the tutorial GroupNorm that
    normalises each chunk of channels over all of its non-batch axes is GroupNorm(G)."""

    name = "group_norm.split"
    anchor_ops = ("Concat",)
    skip_lowered = True

    def match(self, g: GraphView, node: onnx.NodeProto) -> Match | Rejection:
        if len(node.input) < 2:
            return Rejection("fewer than two chunks")
        split = None
        chunks = []
        nodes: list[onnx.NodeProto] = [node]
        for v in node.input:
            a = g.op(v, ("Div", "Mul"))
            if a is None:
                return Rejection(f"chunk {v!r} is not a normalising Div/Mul")
            nm = match_normalize(g, a)
            if isinstance(nm, Rejection):
                return Rejection(f"chunk {v!r}: {nm.reason}")
            sp = g.op(nm.x, "Split")
            if sp is None or (split is not None and sp is not split):
                return Rejection("the chunks are not the outputs of one Split")
            split = sp
            chunks.append(nm)
            nodes += nm.nodes
        assert split is not None
        return Match(node, [split, *nodes], node.output[0], {"split": split, "chunks": chunks})

    def check(self, g: GraphView, m: Match) -> CheckResult:
        split, chunks, cat = m.facts["split"], m.facts["chunks"], m.anchor
        x0 = split.input[0]
        r = g.rank(x0)
        if r is None or r < 3:
            return Rejection(f"rank of {x0!r} is unknown or < 3", x0)
        if norm_axes([int(attr(split, "axis", 0))], r) != (1,) or norm_axes([int(attr(cat, "axis", 0))], r) != (1,):
            return Rejection("Split and Concat are not both along the channel axis 1", split.output[0])
        if [nm.x for nm in chunks] != list(split.output):
            return Rejection("the chunks are not concatenated in the order of the Split's outputs", cat.output[0])
        v, dt = _dtype(g, x0)
        if not v:
            return v
        shape = g.shape(x0)
        c = shape[1] if shape is not None else None
        if not isinstance(c, int):
            return Rejection(f"channel dim of {x0!r} is not static", x0)
        groups = len(chunks)
        sizes = [(g.shape(o) or (None, None))[1] for o in split.output]
        if c % groups or any(s != c // groups for s in sizes):
            return Rejection(f"chunks of {sizes} channels are not {groups} equal groups of C={c}", split.output[0])
        moments = []
        for nm in chunks:
            v, mo = check_normalize(g, nm, want_centered=True)
            if not v:
                return v
            if mo.axes != tuple(range(1, r)):
                return Rejection(f"a chunk is normalised over axes {list(mo.axes)}, not over 1..{r - 1}", nm.x)
            moments.append(mo)
        if len({(mo.eps, mo.factor) for mo in moments}) != 1:
            return Rejection("the chunks use different ε or variance normalisers", chunks[0].x)
        return decomposed_spec(m, moments[0], "group", (c,), dtype=dt, rank=r, channels=c, groups=groups)

    def rewrite(self, g: GraphView, m: Match) -> Rewrite:
        return decomposed_rewrite(g, m, m.facts["split"].input[0], "group_norm")


class GroupNormNative(NativeNorm):
    name = "group_norm.native"
    anchor_ops = ("GroupNormalization",)
    hint = "group_norm"

    def check(self, g: GraphView, m: Match) -> CheckResult:
        node = m.anchor
        x = node.input[0]
        v, dt = _dtype(g, x)
        if not v:
            return v
        shape = g.shape(x)
        if shape is None or len(shape) < 2 or not isinstance(shape[1], int):
            return Rejection(f"channel dim of {x!r} is unknown", x)
        c = int(shape[1])
        groups = int(attr(node, "num_groups", 0))
        if groups < 1 or c % groups:
            return Rejection(f"num_groups={groups} does not divide C={c}", x)
        per_group = g.opset < 21  # GroupNormalization-18: scale/bias per group
        v = self.float32_stats(g, node)
        if not v:
            return v
        params: dict[str, object] = {}
        for slot, value in (("weight", node.input[1]), ("bias", node.input[2])):
            if per_group:
                arr = g.const(value)
                if arr is None:
                    return Rejection(
                        f"per-group {slot} (GroupNormalization-18) is not a constant, cannot repeat it per channel",
                        value,
                    )
                if arr.shape != (groups,):
                    return Rejection(f"per-group {slot} of shape {list(arr.shape)}, expected [{groups}]", arr)
                params[slot] = np.repeat(arr, c // groups)
            elif g.shape(value) == (c,):
                params[slot] = value
            else:
                return Rejection(f"{slot} of shape {g.shape(value)}, expected [{c}]", value)
        m.facts["params"] = params
        m.facts["spec"] = NormSpec(
            "group", eps=float(attr(node, "epsilon", 1e-5)), channels=c, groups=groups, dtype=dt, rank=len(shape)
        )
        return OK


class GroupNormAffine(NormAffine):
    name = "group_norm.affine"
    anchor_ops = ("GroupNorm",)
    op = "GroupNorm"


RULES: list[Rule] = [
    GroupNormViaInstance(),
    GroupNormDecomposed(),
    GroupNormSplit(),
    GroupNormNative(),
    GroupNormAffine(),
]
