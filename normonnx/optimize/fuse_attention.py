"""Attention written out in primitives → the ONNX ``Attention`` op (opset 23).

A transformer's attention reaches ONNX as ~16 nodes per block (head split, scale, ``Q·Kᵀ``,
Softmax, ``·V``, head merge); onnxruntime runs each as its own kernel. ``Attention`` does the same
in one, on CPU and CUDA.

- ``attention.sdpa``: ``MatMul(Softmax(c·MatMul(Q, Kᵀ)), V)``, ``Kᵀ`` a Transpose, with ``Q``,
  ``K``, ``V`` of rank 4 ``[B, H, S, D]`` → ``Attention(Q, K, V, scale=c)``; of rank 3
  ``[B, S, D]`` (one head) → the same with ``q_num_heads = kv_num_heads = 1``, the spec's 3-D
  form of one head. ``c`` is the product of every constant scalar ``Mul`` / ``Div`` on ``Q``, on
  ``Kᵀ`` and on the scores (timm's ``q * scale``, ``scores / sqrt(d)``, ``d**-0.25`` on both;
  none gives ``c = 1``).
- ``attention.heads``: ``Attention`` on 4-D inputs whose heads were split from 3-D ``[B, S, H·D]``
  projections (``Transpose(Reshape(x, [B, S, H, D]), [0, 2, 1, 3])``, or one packed ``qkv``
  projection ``Transpose(Reshape(x, [B, S, n, H, D]), [2, 0, 3, 1, 4])`` unbound by
  ``Squeeze(Slice)`` / ``Gather``) and whose output is merged back (``Reshape(Transpose(y,
  [0, 2, 1, 3]), [B, S, H·Dv])``) → ``Attention`` on the 3-D projections (a packed one cut by one
  ``Split``) with ``q_num_heads`` / ``kv_num_heads``. torch's exporter emits such 4-D
  ``Attention`` nodes itself for ``scaled_dot_product_attention`` at opset 23.

Proof (``check``):
- ``attention.sdpa``: the ONNX spec defines ``Attention`` without mask, cache or softcap as
  ``Softmax(scale·Q·Kᵀ, axis=-1)·V`` per batch and head. The matched graph computes that function
  when the Softmax runs over the last axis, every scale is a positive finite scalar constant
  (``Attention`` requires ``scale > 0``; it multiplies once where the graph multiplied ``Q`` or
  the scores: equal up to rounding) and the MatMuls do not broadcast: ``Q``, ``K``, ``V`` share
  ``B`` and ``H``, ``K``/``V`` share ``L``, ``Q``/``K`` share ``D`` (equal ints or equal
  symbols). ``K`` is ``Kᵀ`` with its last two axes swapped: the input of ``Kᵀ``'s Transpose when
  that Transpose is such a swap, else that input under the composed permutation (exporters merge
  ``k.transpose(1, 2)`` and ``.transpose(2, 3)`` into one ``[0, 2, 3, 1]``; ``K`` is then
  ``Transpose(x, [0, 2, 1, 3])``, the same elements). float32 only: the dtype this rule is tested
  in (onnxruntime's CPU kernel also has float16, where its intermediate roundings differ from
  the graph's; not proven here).
- ``attention.heads``: for 3-D inputs the spec reshapes ``[B, S, H·D]`` to ``[B, S, H, D]`` and
  transposes to ``[B, H, S, D]``, the very view each input's Reshape + Transpose built (the
  Reshape target's dims are checked: ``B`` and ``S`` kept, the last dim cut into ``(H, D)`` or
  ``(n, H, D)`` with static ``H``, ``D``), and it returns ``[B, S, H·Dv]`` — the merged output
  the Reshape built. Slot ``i`` of a packed projection is columns ``[i·H·D, (i+1)·H·D)``, one
  output of an equal ``Split`` on the last axis. Exact: the same numbers in the same layout.

- ``attention.gqa``: 4-D ``Attention`` reading ``repeat_kv`` copies of key/value heads reads the
  heads themselves (grouped-query attention; see :class:`GroupedHeads` for the proof).

Needs opset 23 (the first with ``Attention``): below it both rules refuse and say so;
``normonnx export`` picks 23 by itself for a model with attention written out by hand (see
:func:`normonnx.capture.scan_attention`).
"""

from __future__ import annotations

import math

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..rejection import OK, CheckResult, Rejection
from ._shapes import dims_of
from .graph import GraphView, attr, dtype_name, scalar
from .rewriter import PROOF_KEY, Rewrite
from .rule import Match, Rule

#: the first default-domain opset with ``Attention``
ATTENTION_OPSET = 23
_PLAIN = ("", "ai.onnx")
_FLOAT = onnx.TensorProto.FLOAT


def _needs_opset(g: GraphView) -> CheckResult:
    if g.opset < ATTENTION_OPSET:
        return Rejection(
            f"the Attention op needs opset {ATTENTION_OPSET}; this model imports opset {g.opset} "
            f"(normonnx export chooses {ATTENTION_OPSET} for such a model; normonnx optimize --opset "
            f"{ATTENTION_OPSET} converts a file to it)",
            g.opset,
        )
    return OK


def _scaled(g: GraphView, v: str, nodes: list[onnx.NodeProto], consts: list[tuple[str, str]]) -> str:
    """Strip ``Mul(v, c)`` / ``Mul(c, v)`` / ``Div(v, c)`` by constant scalars (one element) off ``v``,
    recording the nodes and each constant as a factor; returns the unscaled value. A Mul by a
    constant of more elements (a per-head scale, RoPE's cos) stays: it is part of the operand."""
    for _ in range(4):
        n = g.producer.get(v)
        if n is None or n.domain not in _PLAIN or n.op_type not in ("Mul", "Div") or len(n.input) != 2:
            return v
        a, b = n.input
        ca, cb = g.const(a), g.const(b)
        one_a, one_b = ca is not None and ca.size == 1, cb is not None and cb.size == 1
        if n.op_type == "Div" and one_b and ca is None:
            nodes.append(n)
            consts.append((b, "div"))
            v = a
        elif n.op_type == "Mul" and ((one_b and ca is None) or (one_a and cb is None)):
            nodes.append(n)
            consts.append((b, "mul") if one_b else (a, "mul"))
            v = a if one_b else b
        else:
            return v
    return v


class ScaledDotProduct(Rule):
    name = "attention.sdpa"
    anchor_ops = ("MatMul",)

    def match(self, g: GraphView, node: onnx.NodeProto) -> Match | Rejection:
        sm = g.op(node.input[0], "Softmax")
        if sm is None:
            return Rejection("the MatMul's first operand is not a Softmax")
        nodes: list[onnx.NodeProto] = [node, sm]
        consts: list[tuple[str, str]] = []
        scores = _scaled(g, sm.input[0], nodes, consts)
        mask = None
        w = g.op(scores, "Where")
        if w is not None:  # masked_fill: Where(cond, fill, s) or Where(cond, s, fill), fill a constant
            cond, a, b = w.input
            ca, cb = g.const(a), g.const(b)
            if ca is not None and cb is None:
                mask, scores = {"cond": cond, "fill": a, "fill_when": True}, b
            elif cb is not None and ca is None:
                mask, scores = {"cond": cond, "fill": b, "fill_when": False}, a
            else:
                return Rejection("the Where before the Softmax does not fill the scores with a constant", w.output[0])
            mask["after"] = list(consts)  # the scales applied to the masked scores (they scale the fill too)
            nodes.append(w)
            scores = _scaled(g, scores, nodes, consts)
        qk = g.op(scores, "MatMul")
        if qk is None:
            return Rejection("the Softmax's input is not a (scaled) MatMul", scores)
        nodes.append(qk)
        q = _scaled(g, qk.input[0], nodes, consts)
        kt = _scaled(g, qk.input[1], nodes, consts)
        tr = g.op(kt, "Transpose")
        if tr is None:
            return Rejection("the scores' second operand is not a transposed K", kt)
        nodes.append(tr)
        k = _scaled(g, tr.input[0], nodes, consts)
        facts = {"softmax": sm, "transpose": tr, "q": q, "k": k, "v": node.input[1], "consts": consts, "mask": mask}
        return Match(node, nodes, node.output[0], facts)

    def check(self, g: GraphView, m: Match) -> CheckResult:
        if not (ok := _needs_opset(g)):
            return ok
        sm, tr = m.facts["softmax"], m.facts["transpose"]
        q, k, v = m.facts["q"], m.facts["k"], m.facts["v"]
        for x in (q, k, v):
            if g.elem_type(x) != _FLOAT:
                return Rejection(f"{x!r} is {dtype_name(g.elem_type(x))}; the rule is proven for float32 only", x)
        dq, dx, dv = (dims_of(g, x) for x in (q, k, v))
        ranks = [None if d is None else len(d) for d in (dq, dx, dv)]
        if dq is None or dx is None or dv is None or ranks not in ([4] * 3, [3] * 3):
            return Rejection(f"Q, K, V ranks {ranks}: the rule needs [B, H, S, D] (or one head, [B, S, D]) tensors", q)
        rank = ranks[0]
        axis = int(attr(sm, "axis", -1))
        if axis not in (-1, rank - 1):  # type: ignore[operator]
            return Rejection(f"Softmax over axis {axis}, not the last (the keys)", axis)
        perm = [int(p) for p in attr(tr, "perm", []) or []] or list(range(rank))[::-1]
        if sorted(perm) != list(range(rank)):
            return Rejection(f"the Transpose's perm {perm} is not a permutation of rank {rank}", perm)
        # Kᵀ = Transpose(x, perm), so K (Kᵀ with its last two axes swapped) = Transpose(x, k_perm):
        # the same element order, as a value of its own when k_perm is not the identity
        k_perm = [*perm[:-2], perm[-1], perm[-2]]
        dk = [dx[p] for p in k_perm]
        if len(dq) == 3:  # one head: the axis Attention's 3-D form has H = 1 on
            dq, dk, dv = ([d[0], 1, *d[1:]] for d in (dq, dk, dv))
        for what, a, b in (
            ("batch of Q and K", dq[0], dk[0]),
            ("batch of K and V", dk[0], dv[0]),
            ("heads of Q and K", dq[1], dk[1]),
            ("heads of K and V", dk[1], dv[1]),
            ("keys of K and V", dk[2], dv[2]),
            ("head size of Q and K", dq[3], dk[3]),
        ):
            if a != b:
                return Rejection(f"the {what} are {a} and {b}, not provably equal (the MatMuls would broadcast)", a)
        scale = _product(g, m.facts["consts"])
        if isinstance(scale, Rejection):
            return scale
        if not (math.isfinite(scale) and scale > 0):
            return Rejection(f"the scale is {scale}; Attention needs a positive finite scale", scale)
        m.facts.update(scale=scale, rank=rank, k_perm=k_perm)
        if m.facts["mask"] is not None:
            return self._check_mask(g, m, [dq[0], dq[1], dq[2], dk[2]], rank)
        return OK

    @staticmethod
    def _check_mask(g: GraphView, m: Match, score_dims: list, rank: int) -> CheckResult:
        """A ``Where`` mask is ``Attention``'s additive ``attn_mask`` ``where(cond, f, 0)``: ``s + 0 = s``,
        and ``s + f = f`` for every finite score ``s`` when ``f`` (the fill times the scales after
        the Where, which scale it too) is −∞, or so large that ``|s| < ulp(f)/2`` for any
        ``|s| < 2⁷⁵`` (``f ≤ −2¹⁰⁰``; ``torch.finfo(float32).min`` is). Then a fully masked row is
        uniform (finite ``f``) or NaN (−∞) in both. A smaller fill (−1e4, −1e9) gives a fully
        masked row another value: refused."""
        mask = m.facts["mask"]
        cond = mask["cond"]
        if g.elem_type(cond) != onnx.TensorProto.BOOL:
            return Rejection(f"the Where's condition {cond!r} is {dtype_name(g.elem_type(cond))}, not bool", cond)
        fill = g.const(mask["fill"])
        f = scalar(fill)
        if f is None or fill is None or fill.dtype != np.float32:
            return Rejection(f"the fill {mask['fill']!r} is not a float32 scalar", fill)
        after = _product(g, mask["after"])
        if isinstance(after, Rejection):
            return after
        f = float(np.float32(f) * np.float32(after))
        if not (f == -math.inf or f <= -(2.0**100)):
            return Rejection(f"the mask fills {f:g}: adding it is the Where only for a fill of -inf or <= -2^100", f)
        dc = dims_of(g, cond)
        if dc is None or len(dc) > rank:
            return Rejection(f"the mask's rank is {None if dc is None else len(dc)}, the scores' {rank}", cond)
        dims = score_dims if rank == 4 else [score_dims[0], score_dims[2], score_dims[3]]
        for c, d in zip(reversed(dc), reversed(dims)):
            if c != 1 and c != d:
                return Rejection(f"the mask {dc} does not broadcast to the scores {dims} without growing them", cond)
        if rank == 3 and len(dc) == 3 and g.const(cond) is None:
            return Rejection("a run-time [B, S, L] mask of one head would need its head axis inserted", cond)
        mask["value"] = f
        return OK

    def rewrite(self, g: GraphView, m: Match) -> Rewrite:
        node, k, k_perm = m.anchor, m.facts["k"], m.facts["k_perm"]
        add = []
        if k_perm != list(range(len(k_perm))):  # K itself was never a value of the graph
            k_new = g.fresh(f"{k}_keys")
            add.append(helper.make_node("Transpose", [k], [k_new], name=g.fresh(f"{k}/keys"), perm=k_perm))
            k = k_new
        inputs = [m.facts["q"], k, m.facts["v"]]
        inits: list[onnx.TensorProto] = []
        mask = m.facts["mask"]
        if mask is not None:
            f, when = np.float32(mask["value"]), bool(mask["fill_when"])
            cond = g.const(mask["cond"])
            if cond is not None:  # a constant mask: its additive form is a constant too
                bias = np.where(cond == when, f, np.float32(0)).astype(np.float32)
                if m.facts["rank"] == 3 and bias.ndim == 3:  # [B, S, L] → [B, 1, S, L]: the head axis
                    bias = bias[:, None]
                t = numpy_helper.from_array(bias, name=g.fresh(f"{mask['cond']}_additive"))
                inits.append(t)
                inputs.append(t.name)
            else:
                pair = [
                    numpy_helper.from_array(np.float32(v), name=g.fresh(f"{mask['cond']}_{n}"))
                    for n, v in (("fill", f), ("keep", 0))
                ]
                inits += pair
                out = g.fresh(f"{mask['cond']}_additive")
                a, b = (pair[0].name, pair[1].name) if when else (pair[1].name, pair[0].name)
                add.append(helper.make_node("Where", [mask["cond"], a, b], [out], name=g.fresh(f"{out}/where")))
                inputs.append(out)
        att = helper.make_node(
            "Attention",
            inputs,
            [m.output],
            name=g.fresh((node.name or "attention") + "/attention"),
            scale=float(m.facts["scale"]),
            **({"q_num_heads": 1, "kv_num_heads": 1} if m.facts["rank"] == 3 else {}),
        )
        att.metadata_props.add(
            key=PROOF_KEY,
            value=f"softmax(c·Q·Kᵀ{' + M' if mask is not None else ''})·V with c = {m.facts['scale']:.9g}, "
            "the product of the graph's scales"
            + (f"; M = where(mask, {mask['value']:g}, 0), the masked fill" if mask is not None else ""),
        )
        return Rewrite(remove=m.nodes, add=[*add, att], initializers=inits)


def _product(g: GraphView, consts: list[tuple[str, str]]) -> float | Rejection:
    """The product of the scales ``_scaled`` recorded (a Div's constant divides)."""
    scale = 1.0
    for name, how in consts:
        arr = g.const(name)
        c = scalar(arr)
        if c is None or arr is None or arr.dtype != np.float32:
            return Rejection(f"scale {name!r} is not a float32 scalar constant", arr if arr is not None else name)
        if how == "div" and c == 0:
            return Rejection(f"the scores are divided by {name!r} = 0", c)
        scale = scale / c if how == "div" else scale * c
    return scale


def _split_heads(g: GraphView, x4: str) -> tuple[list[onnx.NodeProto], dict] | Rejection:
    """How the 4-D ``x4`` ``[B, H, S, D]`` was cut from a 3-D projection: the nodes, and
    ``{"x": 3-D value, "heads": H, "dim": D, "slot": i, "of": n}`` (``of`` 0: not packed)."""
    t = g.op(x4, "Transpose")
    if t is not None:
        r = g.op(t.input[0], "Reshape")
        if r is None:
            return Rejection("the head transpose's input is not a Reshape", t.input[0])
        if list(attr(t, "perm", []) or []) != [0, 2, 1, 3]:
            return Rejection(f"heads transposed by {list(attr(t, 'perm', []) or [])}, not [0, 2, 1, 3]", x4)
        got = _cut(g, r, 2)
        if isinstance(got, Rejection):
            return got
        return [t, r], {"x": r.input[0], "heads": got[0], "dim": got[1], "slot": 0, "of": 0}
    nodes: list[onnx.NodeProto] = []
    if (n := g.op(x4, "Squeeze")) is not None:
        axes = g.const(n.input[1]) if len(n.input) > 1 and n.input[1] else None
        sl = g.op(n.input[0], "Slice")
        if axes is None or [int(a) for a in axes.reshape(-1)] != [0] or sl is None:
            return Rejection("the head split is a Squeeze that is not of a Slice on axis 0", x4)
        start, end, axis, step = (_slice_arg(g, sl, i, d) for i, d in ((1, None), (2, None), (3, 0), (4, 1)))
        if None in (start, end, axis, step):
            return Rejection("the Slice of the packed projection has non-constant or multi-axis arguments", x4)
        if axis != 0 or step != 1 or end != start + 1 or start < 0:  # type: ignore[operator]
            return Rejection(f"the Slice takes [{start}:{end}:{step}] of axis {axis}, not one slot of axis 0", x4)
        nodes, packed, slot = [n, sl], sl.input[0], start
    elif (n := g.op(x4, "Gather")) is not None:
        idx = g.const(n.input[1])
        if idx is None or idx.ndim != 0 or int(attr(n, "axis", 0)) != 0:
            return Rejection("the head split is a Gather that is not of one slot of axis 0", x4)
        nodes, packed, slot = [n], n.input[0], int(idx)
    else:
        return Rejection("the 4-D input is not split from a projection (Transpose, Squeeze(Slice) or Gather)", x4)
    t = g.op(packed, "Transpose")
    r = g.op(t.input[0], "Reshape") if t is not None else None
    if t is None or r is None:
        return Rejection("the packed projection is not a Transpose of a Reshape", packed)
    if list(attr(t, "perm", []) or []) != [2, 0, 3, 1, 4]:
        return Rejection(
            f"the packed projection is transposed by {list(attr(t, 'perm', []) or [])}, not [2, 0, 3, 1, 4]", packed
        )
    got = _cut(g, r, 3)
    if isinstance(got, Rejection):
        return got
    n_slots, heads, dim = got
    if not 0 <= slot < n_slots:
        return Rejection(f"slot {slot} of a packed projection of {n_slots}", slot)
    return [*nodes, t, r], {"x": r.input[0], "heads": heads, "dim": dim, "slot": slot, "of": n_slots}


def _slice_arg(g: GraphView, sl: onnx.NodeProto, i: int, default: int | None) -> int | None:
    """Slice input ``i`` as one int: its default when absent, None when not a 1-element constant."""
    if len(sl.input) <= i or not sl.input[i]:
        return default
    c = g.const(sl.input[i])
    return int(c.reshape(-1)[0]) if c is not None and c.size == 1 and c.dtype.kind in "iu" else None


def _cut(g: GraphView, r: onnx.NodeProto, parts: int) -> tuple[int, ...] | Rejection:
    """The static ``(H, D)`` (``parts`` 2) or ``(n, H, D)`` (3) that Reshape ``r`` cuts its 3-D
    input's last dim into, keeping ``B`` and ``S``."""
    src, out = dims_of(g, r.input[0]), dims_of(g, r.output[0])
    if src is None or out is None or len(src) != 3 or len(out) != 2 + parts:
        return Rejection(f"the head Reshape maps rank {None if src is None else len(src)} to "
                         f"{None if out is None else len(out)}, not 3 to {2 + parts}", r.output[0])  # fmt: skip
    if out[:2] != src[:2]:
        return Rejection(f"the head Reshape does not keep [B, S] = {src[:2]} (gives {out[:2]})", r.output[0])
    tail = out[2:]
    if not all(isinstance(d, int) and d > 0 for d in (*tail, src[2])) or math.prod(tail) != src[2]:  # type: ignore[arg-type]
        return Rejection(f"the head Reshape cuts {src[2]} into {tail}, not a static product", r.output[0])
    return tuple(int(d) for d in tail)  # type: ignore[arg-type]


class HeadLayout(Rule):
    name = "attention.heads"
    anchor_ops = ("Reshape",)

    def match(self, g: GraphView, node: onnx.NodeProto) -> Match | Rejection:
        t = g.op(node.input[0], "Transpose")
        att = g.op(t.input[0], "Attention") if t is not None else None
        if t is None or att is None:
            return Rejection("the Reshape's input is not a transposed Attention output")
        if len(att.input) > 4 or not all(att.input) or len([o for o in att.output if o]) != 1 or len(att.output) > 1:
            return Rejection("the Attention has a cache or extra outputs", att.output[0])
        if any(a.name in ("q_num_heads", "kv_num_heads") for a in att.attribute):
            return Rejection("the Attention already has 3-D inputs", att.output[0])
        nodes = [node, t, att]
        sides = []
        for x in att.input[:3]:  # a mask (input 3) broadcasts to [B, H, S, L] in both forms: kept as it is
            got = _split_heads(g, x)
            if isinstance(got, Rejection):
                return got
            for n in got[0]:
                if all(n is not o for o in nodes):
                    nodes.append(n)
            sides.append(got[1])
        return Match(node, nodes, node.output[0], {"transpose": t, "attention": att, "sides": sides})

    def check(self, g: GraphView, m: Match) -> CheckResult:
        if not (ok := _needs_opset(g)):
            return ok
        t, att, sides = m.facts["transpose"], m.facts["attention"], m.facts["sides"]
        if list(attr(t, "perm", []) or []) != [0, 2, 1, 3]:
            return Rejection(
                f"the output is transposed by {list(attr(t, 'perm', []) or [])}, not [0, 2, 1, 3]", t.output[0]
            )
        y4, out = dims_of(g, att.output[0]), dims_of(g, m.output)
        if y4 is None or out is None or len(y4) != 4 or len(out) != 3:
            return Rejection("the merged output's shape is unknown or not [B, S, H·Dv]", m.output)
        if (
            out[:2] != [y4[0], y4[2]]
            or not (isinstance(y4[1], int) and isinstance(y4[3], int))
            or out[2] != y4[1] * y4[3]
        ):
            return Rejection(f"the output Reshape maps {y4} to {out}, not [B, S, H·Dv]", m.output)
        q, k, v = sides
        if k["heads"] != v["heads"]:
            return Rejection(f"K has {k['heads']} heads and V {v['heads']}", att.input[2])
        if q["heads"] % k["heads"]:
            return Rejection(f"{q['heads']} query heads are not a multiple of {k['heads']} key heads", att.input[1])
        return OK

    def rewrite(self, g: GraphView, m: Match) -> Rewrite:
        att, sides = m.facts["attention"], m.facts["sides"]
        add: list[onnx.NodeProto] = []
        inits: list[onnx.TensorProto] = []
        splits: dict[str, list[str]] = {}
        inputs = []
        for s in sides:
            if not s["of"]:
                inputs.append(s["x"])
                continue
            if s["x"] not in splits:
                width = s["heads"] * s["dim"]
                sizes = numpy_helper.from_array(
                    np.full(s["of"], width, np.int64), name=g.fresh(f"{s['x']}_split_sizes")
                )
                inits.append(sizes)
                outs = [g.fresh(f"{s['x']}_slot{i}") for i in range(s["of"])]
                add.append(
                    helper.make_node("Split", [s["x"], sizes.name], outs, name=g.fresh(f"{s['x']}/split"), axis=-1)
                )
                splits[s["x"]] = outs
            inputs.append(splits[s["x"]][s["slot"]])
        keep = [a for a in att.attribute if a.name not in ("q_num_heads", "kv_num_heads")]
        node = helper.make_node(
            "Attention",
            [*inputs, *att.input[3:]],
            [m.output],
            name=g.fresh((att.name or "attention") + "/3d"),
            q_num_heads=sides[0]["heads"],
            kv_num_heads=sides[1]["heads"],
        )
        node.attribute.extend(keep)
        node.metadata_props.extend(att.metadata_props)
        add.append(node)
        return Rewrite(remove=m.nodes, add=add, initializers=inits)


def _repeated_heads(g: GraphView, x: str) -> tuple[list[onnx.NodeProto], str, int] | Rejection:
    """``Reshape(Expand(Unsqueeze(kv, 2), [B, Hkv, r, L, D]), [B, Hkv·r, L, D])`` (Llama's
    ``repeat_kv``): its nodes, ``kv`` and ``r``."""
    r = g.op(x, "Reshape")
    e = g.op(r.input[0], "Expand") if r is not None else None
    u = g.op(e.input[0], "Unsqueeze") if e is not None else None
    if r is None or e is None or u is None:
        return Rejection("not a repeat of key/value heads (Reshape(Expand(Unsqueeze)))", x)
    axes = g.const(u.input[1]) if len(u.input) > 1 and u.input[1] else None
    if axes is None or [int(a) for a in axes.reshape(-1)] != [2]:
        return Rejection("the Unsqueeze of the repeated heads is not at axis 2", x)
    src, exp, out = dims_of(g, u.input[0]), dims_of(g, e.output[0]), dims_of(g, x)
    if src is None or exp is None or out is None or (len(src), len(exp), len(out)) != (4, 5, 4):
        return Rejection("the repeated heads' shapes are unknown or not [B, Hkv, L, D] → [B, Hkv·r, L, D]", x)
    b, h, ln, d = src
    rep = exp[2]
    if exp != [b, h, rep, ln, d] or not (isinstance(h, int) and isinstance(rep, int)) or out != [b, h * rep, ln, d]:
        return Rejection(f"{src} expanded to {exp} and reshaped to {out} is not a repeat of heads", x)
    return [r, e, u], u.input[0], rep


class GroupedHeads(Rule):
    """``attention.gqa``: 4-D ``Attention`` whose K and V are ``repeat_kv`` copies of ``Hkv`` heads →
    the same ``Attention`` on the ``Hkv`` heads themselves (grouped-query attention). Proof: the
    repeat makes head ``j`` a copy of head ``j // r`` (``Unsqueeze`` at axis 2, ``Expand`` of that
    axis to ``r``, the merge of axes 1 and 2), and the spec's grouped attention has query head
    ``j`` read key/value head ``j // (H / Hkv)``; with ``H = Hkv·r`` that is the same head. Exact."""

    name = "attention.gqa"
    anchor_ops = ("Attention",)

    def match(self, g: GraphView, node: onnx.NodeProto) -> Match | Rejection:
        if any(a.name in ("q_num_heads", "kv_num_heads") for a in node.attribute):
            return Rejection("3-D inputs: the repeat would be of a projection, not of heads")
        if len(node.input) > 4 or len([o for o in node.output if o]) != 1 or len(node.output) > 1:
            return Rejection("the Attention has a cache or extra outputs", node.output[0])
        k, v = (_repeated_heads(g, x) for x in node.input[1:3])
        if isinstance(k, Rejection):
            return k
        if isinstance(v, Rejection):
            return v
        if k[2] != v[2]:
            return Rejection(f"K repeats its heads {k[2]} times, V {v[2]} times", node.input[2])
        return Match(node, [node, *k[0], *v[0]], node.output[0], {"k": k[1], "v": v[1]})

    def rewrite(self, g: GraphView, m: Match) -> Rewrite:
        node = m.anchor
        new = onnx.NodeProto()
        new.CopyFrom(node)
        new.input[1], new.input[2] = m.facts["k"], m.facts["v"]
        return Rewrite(remove=m.nodes, add=[new])


RULES: list[Rule] = [ScaledDotProduct(), HeadLayout(), GroupedHeads()]
