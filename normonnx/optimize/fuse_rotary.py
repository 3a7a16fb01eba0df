"""Rotary position embeddings written out in primitives → the ONNX ``RotaryEmbedding`` op (opset 23).

Llama-style attention rotates ``q`` and ``k`` by position before the scores: ``x·cos +
rotate_half(x)·sin`` with ``rotate_half(x) = cat(−x₂, x₁)`` (``x₁``, ``x₂`` the two halves of the
head dim). That reaches ONNX as six nodes per tensor (Mul, Split or two Slices, Neg, Concat, Mul,
Add), and it sits between the head split and the attention, so ``attention.heads`` cannot read the
3-D projections either. ``RotaryEmbedding`` does the rotation in one kernel, on CPU and CUDA.

- ``rotary.half``: ``Add(Mul(x, C), Mul(Concat(Neg(x₂), x₁), S))`` (either operand order), ``x``
  of rank 4 ``[B, H, L, D]``, ``x₁, x₂`` its halves on the last axis (one ``Split`` or two
  ``Slice`` s), ``C`` and ``S`` constant tables (or computed as ``Cos`` / ``Sin`` of
  ``cat(f, f)``) → ``RotaryEmbedding(x, cos, sin)`` with ``cos = C[..., :D/2]`` and
  ``sin = S[..., :D/2]`` laid out ``[B, L, D/2]``.
- ``rotary.heads``: ``RotaryEmbedding`` of a 4-D head view ``Transpose(Reshape(x, [B, L, H, D]),
  [0, 2, 1, 3])`` of a 3-D projection → ``RotaryEmbedding(x, num_heads=H)`` and the same view of
  its output; ``attention.heads`` then gives the attention the 3-D projection itself.
- ``rotary.partial``: ``cat(RotaryEmbedding(x[..., :r]), x[..., r:])`` (GPT-NeoX, Phi: only part
  of the head dim rotates) → ``RotaryEmbedding(x, rotary_embedding_dim=r)``.
- ``rotary.batch``: a ``RotaryEmbedding`` with caches of batch 1 against a larger batch (torch's
  exporter emits these for Hugging Face's rotary module with dynamic axes; onnxruntime does not
  broadcast them and fails at batch 2) → the same caches read through position ids
  (:class:`BatchTable` has the proof).

Proof (``check``):
- ``rotary.half``: the ONNX spec defines the non-interleaved, full-dim op (no position ids) per
  batch ``b``, head ``h``, position ``l`` as ``[c·x₁ − s·x₂, s·x₁ + c·x₂]`` with ``c = cos[b, l]``,
  ``s = sin[b, l]`` (``D/2`` values each). The matched graph computes ``[x₁·C₁ + (−x₂)·S₁,
  x₂·C₂ + x₁·S₂]`` (``C₁``, ``C₂`` the halves of ``C``'s row). Equal when ``C₁ = C₂`` and
  ``S₁ = S₂`` elementwise (checked on the constants, exactly: a table ``cat(f, f)`` as Llama and
  Hugging Face build it) and ``C``, ``S`` do not vary over the heads and broadcast to ``x`` without
  growing it (their shapes are checked). The same products and sums, ``a + (−b) = a − b``
  exactly: equal up to rounding (onnxruntime's kernel may contract them into FMAs). float32 only,
  the dtype it is tested in.
- The tables' layout: onnxruntime takes ``[B, L, D/2]`` without position ids, so for a static
  ``x`` the first halves are materialised at ``B`` and ``L``. With a run-time batch or length
  (an export with dynamic axes slices a constant table ``T`` ``[rows, D]`` to the length:
  ``Slice(T, [0], [L], [0])``), the cache is ``T``'s first halves ``[rows, D/2]`` and the position
  ids are ``0 … L−1`` in each of the ``B`` rows: the rows ``Slice`` took, in order. ``L`` must be
  provably ``x``'s length (the same symbol): then the slice has exactly ``L`` rows (a one-row
  table broadcast over the positions is not this form).
- Tables computed at run time, as Hugging Face's rotary module does (``cos = Cos(cat(f, f))``,
  ``sin = Sin(cat(f, f))``, unsqueezed at the heads' axis; ``f`` the angles ``[1 or B, L, D/2]``):
  the halves are equal by construction, and the caches are ``Cos(f)``, ``Sin(f)``, the same
  function of the same numbers. Caches of batch 1 then go through ``rotary.batch``.
  A length past ``rows`` fails in both (the Mul cannot broadcast; onnxruntime refuses it).
- ``rotary.heads``: for a 3-D input the spec reshapes ``[B, L, H·D]`` to ``[B, L, H, D]``; the
  rotation is per ``(b, l, h)`` row of ``D`` with the tables indexed by ``(b, l)``, the same rows
  and tables the 4-D form reads through its transpose. Exact: the same numbers in another layout.

Needs opset 23 (the first with ``RotaryEmbedding``): below it the rules refuse and say so.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..rejection import OK, CheckResult, Rejection
from ._shapes import dims_of, shape_value
from .fuse_attention import ATTENTION_OPSET, _cut, _slice_arg
from .graph import GraphView, attr, dtype_name
from .rewriter import PROOF_KEY, Rewrite
from .rule import Match, Rule

#: the first default-domain opset with ``RotaryEmbedding`` (the same as ``Attention``'s)
ROTARY_OPSET = ATTENTION_OPSET
_FLOAT = onnx.TensorProto.FLOAT
_INT_MAX = 2**62  # a Slice end at or past this means "to the end"


def _needs_opset(g: GraphView) -> CheckResult:
    if g.opset < ROTARY_OPSET:
        return Rejection(
            f"the RotaryEmbedding op needs opset {ROTARY_OPSET}; this model imports opset {g.opset} "
            f"(normonnx optimize --opset {ROTARY_OPSET} converts a file to it)",
            g.opset,
        )
    return OK


def _last_axis(axis: int, rank: int | None) -> bool:
    return axis == -1 or (rank is not None and axis == rank - 1)


def _halves(g: GraphView, h1: str, h2: str) -> tuple[str, list[onnx.NodeProto], dict] | Rejection:
    """``x`` and the nodes when ``h1``, ``h2`` are the first and second half of ``x``'s last axis:
    outputs 0 and 1 of one two-way Split, or two Slices of ``x``. The split point is a fact
    (``check`` proves it is ``D/2``)."""
    s1, s2 = g.op(h1), g.op(h2)
    if s1 is None or s2 is None:
        return Rejection("the rotated halves are not computed from x", h1)
    if s1 is s2 and s1.op_type == "Split" and s1.domain in ("", "ai.onnx"):
        if list(s1.output) != [h1, h2]:
            return Rejection("the Concat does not take the Split's second output first", h1)
        sizes = g.const(s1.input[1]) if len(s1.input) > 1 and s1.input[1] else None
        return s1.input[0], [s1], {"axis": int(attr(s1, "axis", 0)), "sizes": sizes}
    if s1.op_type == "Slice" and s2.op_type == "Slice" and s1.input[0] == s2.input[0]:
        return s1.input[0], [s1, s2], {"slices": (s1, s2)}
    return Rejection("the rotated halves are not one Split or two Slices of the same value", h1)


def _slice(g: GraphView, sl: onnx.NodeProto) -> tuple[int, int, int, int] | None:
    """(start, end, axis, step) of a one-axis Slice with constant arguments, else None."""
    args = tuple(_slice_arg(g, sl, i, d) for i, d in ((1, None), (2, None), (3, 0), (4, 1)))
    return None if None in args else args  # type: ignore[return-value]


def _table(g: GraphView, v: str, dx: list, static: bool) -> tuple[np.ndarray, str | None] | Rejection:
    """A rotation table as ``[1 or B, 1, rows, D]`` and, for a table sliced to the run-time length,
    the value holding that length. Static ``x``: any constant broadcasting to it with one row per
    position (or one for all) shared by the heads. Run-time batch or length: ``Slice(T, [0], [L],
    [axis of the positions])`` of a constant ``T`` ``[rows, D]``, ``L`` proven to be ``x``'s length."""
    b, _, length, d = dx
    t = g.const(v)
    end = None
    if t is None and not static:
        sl = g.op(v, "Slice")
        if sl is None:
            return Rejection(f"the table {v!r} is neither a constant nor a Slice of one", v)
        t = g.const(sl.input[0])
        if t is None or t.ndim < 2:
            return Rejection(f"the table {v!r} is a Slice of a run-time value", v)
        start, axis, step = (_slice_arg(g, sl, i, d) for i, d in ((1, None), (3, None), (4, 1)))
        if start != 0:
            return Rejection(f"the table {v!r} is not sliced from row 0", v)
        if axis not in (t.ndim - 2, -2):
            return Rejection(f"the table {v!r} is not sliced on its positions' axis", v)
        if step != 1:
            return Rejection(f"the table {v!r} is sliced with a step", v)
        end = sl.input[2]
        if shape_value(g, end) != [length]:
            return Rejection(f"the table {v!r} is sliced to {shape_value(g, end)}, not provably x's length {length}", v)
    if t is None:
        return Rejection(f"the table {v!r} is not a constant (x is {dx})", v)
    if t.dtype != np.float32 or t.ndim > 4:
        return Rejection(f"the table {v!r} is not a float32 constant of rank <= 4", v)
    t4 = t.reshape((1,) * (4 - t.ndim) + t.shape)
    rows_ok = t4.shape[2] in (1, length) if end is None else t4.shape[2] >= 1
    if t4.shape[0] not in (1, b) or t4.shape[1] != 1 or not rows_ok or t4.shape[3] != d:
        return Rejection(
            f"the table {list(t.shape)} is not one row of {d} per position shared by the heads (x is {dx})", v
        )
    if end is not None and t4.shape[0] != 1:
        return Rejection("a table sliced at run time must be shared by the batch", v)
    return t4, end


def _computed_table(g: GraphView, v: str, dx: list) -> dict | Rejection | None:
    """A table computed at run time as Hugging Face's rotary module does: ``Unsqueeze(U(Concat(f,
    f)), [1])`` with ``U`` Cos or Sin, ``f`` ``[1 or B, L, D/2]`` → ``{"op": U, "source": f}``: its
    halves are ``U(f)`` both, by construction. None when ``v`` is not of this form."""
    u = g.op(v, "Unsqueeze")
    axes = g.const(u.input[1]) if u is not None and len(u.input) > 1 else None
    if u is None or axes is None or [int(a) for a in axes.reshape(-1)] != [1]:
        return None
    fn = g.op(u.input[0], ("Cos", "Sin"))
    cat = g.op(fn.input[0], "Concat") if fn is not None else None
    if fn is None or cat is None or len(cat.input) != 2 or cat.input[0] != cat.input[1]:
        return None
    if not _last_axis(int(attr(cat, "axis", 0)), g.rank(cat.input[0])):
        return Rejection(f"the table {v!r} concatenates its angles on another axis than the last", v)
    f = cat.input[0]
    df = dims_of(g, f)
    if df is None or len(df) != 3 or df[2] != dx[3] // 2 or df[0] not in (1, dx[0]) or df[1] != dx[2]:
        return Rejection(f"the table {v!r} has angles {df}, not [1 or B, L, D/2] for x {dx}", v)
    return {"op": fn.op_type, "source": f}


def _batch_source(g: GraphView, x: str) -> tuple[str, int] | int | None:
    """Where ``x``'s batch size can be read at run time: a graph input and axis with the same
    symbol (shared by every rotation, so the position ids are built once), or the static size."""
    dx = dims_of(g, x)
    if dx is None:
        return None
    b = dx[0]
    if isinstance(b, int):
        return b
    for name in sorted(g.graph_inputs):
        shape = g.shape(name)
        if shape is not None and b in shape and not str(b).startswith("?"):
            return name, list(shape).index(b)
    return None


def _positions(g: GraphView, x: str, length: str) -> tuple[str, list[onnx.NodeProto], list[onnx.TensorProto]]:
    """Position ids ``[B, L]`` = 0 … L−1 in every row. ``B`` is read from a graph input with
    ``x``'s batch symbol (else from ``x``): every rotation of a model then builds the same nodes
    from the same values, and the final cleanup's CSE keeps one set."""
    i64 = lambda hint, v: numpy_helper.from_array(np.asarray(v, np.int64), name=g.fresh(hint))
    zero, one, axes = i64("rotary_zero", 0), i64("rotary_one", 1), i64("rotary_axes", [0])
    consts = [zero, one, axes]
    batch, size, last, ramp, pos = (g.fresh(f"rotary_{n}") for n in ("batch", "bl", "length", "ramp", "positions"))
    src = _batch_source(g, x)
    nodes = []
    if isinstance(src, int):
        consts.append(numpy_helper.from_array(np.asarray([src], np.int64), name=batch))
    else:
        name, axis = src if src is not None else (x, 0)
        nodes.append(
            helper.make_node("Shape", [name], [batch], name=g.fresh(f"{batch}/shape"), start=axis, end=axis + 1)
        )
    nodes += [
        helper.make_node("Concat", [batch, length], [size], name=g.fresh(f"{size}/concat"), axis=0),
        helper.make_node("Squeeze", [length, axes.name], [last], name=g.fresh(f"{last}/squeeze")),
        helper.make_node("Range", [zero.name, last, one.name], [ramp], name=g.fresh(f"{ramp}/range")),
        helper.make_node("Expand", [ramp, size], [pos], name=g.fresh(f"{pos}/expand")),
    ]
    return pos, nodes, consts


class RotateHalf(Rule):
    name = "rotary.half"
    anchor_ops = ("Add",)

    def match(self, g: GraphView, node: onnx.NodeProto) -> Match | Rejection:
        muls = [g.op(v, "Mul") for v in node.input]
        if len(node.input) != 2 or None in muls:
            return Rejection("the Add does not sum two products")
        rotated = plain = None
        for i, m in enumerate(muls):
            cat = next((g.op(v, "Concat") for v in m.input if g.op(v, "Concat") is not None), None)
            if cat is not None and rotated is None:
                rotated, plain, cat_node = m, muls[1 - i], cat
        if rotated is None:
            return Rejection("neither product has a Concat (rotate_half) operand")
        tables = [v for v in rotated.input if v != cat_node.output[0]]
        if len(tables) != 1 or len(cat_node.input) != 2:
            return Rejection("the Concat does not join two halves", cat_node.output[0])
        neg = g.op(cat_node.input[0], "Neg")
        if neg is None:
            return Rejection("the Concat's first part is not a negated half (cat(-x2, x1))", cat_node.output[0])
        got = _halves(g, cat_node.input[1], neg.input[0])
        if isinstance(got, Rejection):
            return got
        x, split_nodes, split = got
        if x not in plain.input:
            return Rejection("the other product does not multiply the rotated value itself", plain.output[0])
        table_c = plain.input[1] if plain.input[0] == x else plain.input[0]
        nodes = [node, plain, rotated, cat_node, neg, *split_nodes]
        facts = {"x": x, "cos": table_c, "sin": tables[0], "concat": cat_node, "split": split}
        return Match(node, nodes, node.output[0], facts)

    def check(self, g: GraphView, m: Match) -> CheckResult:
        if not (ok := _needs_opset(g)):
            return ok
        x = m.facts["x"]
        if g.elem_type(x) != _FLOAT:
            return Rejection(f"{x!r} is {dtype_name(g.elem_type(x))}; the rule is proven for float32 only", x)
        dx = dims_of(g, x)
        if dx is None or len(dx) != 4:
            return Rejection(f"x has rank {None if dx is None else len(dx)}; the rule needs [B, H, L, D]", x)
        d = dx[3]
        if not (isinstance(d, int) and d > 0):
            return Rejection(f"x is {dx}: the head dim must be static", x)
        if d % 2:
            return Rejection(f"the head dim {d} is odd", d)
        half = d // 2
        if not _last_axis(int(attr(m.facts["concat"], "axis", 0)), 4):
            return Rejection("the Concat is not on the last axis", m.facts["concat"].output[0])
        split = m.facts["split"]
        if "slices" in split:
            a, c = (_slice(g, s) for s in split["slices"])
            if a is None or c is None:
                return Rejection("the halves' Slices have non-constant or multi-axis arguments", x)
            if not (_last_axis(a[2], 4) and _last_axis(c[2], 4)) or a[3] != 1 or c[3] != 1:
                return Rejection("the halves are not unit-step Slices of the last axis", x)
            if a[0] != 0 or a[1] != half or c[0] != half or not (c[1] == d or c[1] >= _INT_MAX):
                return Rejection(f"the Slices take [{a[0]}:{a[1]}] and [{c[0]}:{c[1]}], not the halves of {d}", x)
        else:
            sizes = split["sizes"]
            if not _last_axis(split["axis"], 4):
                return Rejection(f"the Split is on axis {split['axis']}, not the last", x)
            if sizes is not None and [int(s) for s in sizes.reshape(-1)] != [half, half]:
                return Rejection(f"the Split cuts {d} into {sizes.reshape(-1).tolist()}, not two halves", x)
        static = all(isinstance(v, int) and v > 0 for v in dx)
        tables: dict = {}
        computed = {key: _computed_table(g, m.facts[key], dx) for key in ("cos", "sin")}
        for plan in computed.values():
            if isinstance(plan, Rejection):
                return plan
        if all(computed.values()):  # both computed at run time: the caches are U(f), computed too
            m.facts["tables"] = computed
            return OK
        for key in ("cos", "sin"):
            got = _table(g, m.facts[key], dx, static)
            if isinstance(got, Rejection):
                return got
            t4, end = got
            if not np.array_equal(t4[..., :half], t4[..., half:]):
                return Rejection(
                    f"the {key} table's two halves differ: rotate_half pairs element i with i + {half}, "
                    "so each pair needs one angle",
                    m.facts[key],
                )
            if static:  # [B, L, D/2], as onnxruntime takes it without position ids
                b, length = int(dx[0]), int(dx[2])  # type: ignore[arg-type]
                tables[key] = np.ascontiguousarray(np.broadcast_to(t4[:, 0, :, :half], (b, length, half)))
            else:  # [rows, D/2], read at positions 0 … L−1 (position ids)
                if t4.shape[0] != 1:
                    return Rejection(f"the {key} table varies over a run-time batch", m.facts[key])
                if end is None and not isinstance(dx[2], int):
                    return Rejection(f"a constant {key} table against a run-time length {dx[2]}", m.facts[key])
                rows = t4[0, 0, :, :half] if end is not None else np.broadcast_to(t4[0, 0, :, :half], (dx[2], half))
                tables[key] = np.ascontiguousarray(rows)
                m.facts["length"] = end if end is not None else int(dx[2])  # type: ignore[arg-type]
        m.facts["tables"] = tables
        return OK

    def rewrite(self, g: GraphView, m: Match) -> Rewrite:
        inits: list[onnx.TensorProto] = []
        add: list[onnx.NodeProto] = []
        infos: list[onnx.ValueInfoProto] = []
        inputs = [m.facts["x"]]
        for key in ("cos", "sin"):
            t = m.facts["tables"][key]
            if isinstance(t, dict):  # U(f), with f's shape (rotary.batch reads it)
                out = g.fresh(f"{t['source']}_{t['op'].lower()}")
                add.append(helper.make_node(t["op"], [t["source"]], [out], name=g.fresh(f"{out}/{t['op']}")))
                if (ty := g.types.get(t["source"])) is not None:
                    vi = onnx.ValueInfoProto(name=out)
                    vi.type.CopyFrom(ty)
                    infos.append(vi)
                inputs.append(out)
            else:
                inits.append(numpy_helper.from_array(t, name=g.fresh(f"{m.facts[key]}_rotary_{key}")))
                inputs.append(inits[-1].name)
        if "length" in m.facts:
            length = m.facts["length"]
            if isinstance(length, int):  # a static length (the batch is not)
                t = numpy_helper.from_array(np.asarray([length], np.int64), name=g.fresh("rotary_length"))
                inits.append(t)
                length = t.name
            pos, nodes, consts = _positions(g, m.facts["x"], length)
            add += nodes
            inits += consts
            inputs.append(pos)
        node = helper.make_node(
            "RotaryEmbedding",
            inputs,
            [m.output],
            name=g.fresh((m.anchor.name or "rotary") + "/rotary"),
        )
        node.metadata_props.add(
            key=PROOF_KEY,
            value="x·C + cat(−x₂, x₁)·S = [c·x₁ − s·x₂, s·x₁ + c·x₂] with c, s the first halves of C, S "
            "(their halves are equal)",
        )
        return Rewrite(remove=m.nodes, add=[*add, node], initializers=inits, value_info=infos)


class RotaryHeads(Rule):
    name = "rotary.heads"
    anchor_ops = ("RotaryEmbedding",)

    def match(self, g: GraphView, node: onnx.NodeProto) -> Match | Rejection:
        t = g.op(node.input[0], "Transpose")
        r = g.op(t.input[0], "Reshape") if t is not None else None
        if t is None or r is None:
            return Rejection("the rotated value is not a head view (Transpose of a Reshape)", node.input[0])
        return Match(node, [node, t], node.output[0], {"transpose": t, "reshape": r})

    def check(self, g: GraphView, m: Match) -> CheckResult:
        if not (ok := _needs_opset(g)):
            return ok
        t, r = m.facts["transpose"], m.facts["reshape"]
        if [int(p) for p in attr(t, "perm", []) or []] != [0, 2, 1, 3]:
            return Rejection(f"heads transposed by {list(attr(t, 'perm', []) or [])}, not [0, 2, 1, 3]", t.output[0])
        got = _cut(g, r, 2)
        if isinstance(got, Rejection):
            return got
        given = int(attr(m.anchor, "num_heads", 0) or 0)
        if given and given != got[0]:
            return Rejection(f"num_heads is {given}, the head view has {got[0]}", m.anchor.output[0])
        m.facts["heads"] = got[0]
        return OK

    def rewrite(self, g: GraphView, m: Match) -> Rewrite:
        node, r = m.anchor, m.facts["reshape"]
        flat = g.fresh(f"{m.output}_flat")
        view = g.fresh(f"{m.output}_heads")
        rot = helper.make_node(
            "RotaryEmbedding",
            [r.input[0], *node.input[1:]],
            [flat],
            name=g.fresh(f"{node.name or 'rotary'}/flat"),
        )
        rot.attribute.extend(a for a in node.attribute if a.name != "num_heads")  # interleaved, a partial dim
        rot.attribute.append(helper.make_attribute("num_heads", int(m.facts["heads"])))
        rot.metadata_props.add(key=PROOF_KEY, value="the spec's 3-D form rotates the same [B, L, H, D] rows")
        reshape = helper.make_node("Reshape", [flat, r.input[1]], [view], name=g.fresh(f"{flat}/view"))
        for a in r.attribute:
            reshape.attribute.append(a)
        transpose = helper.make_node("Transpose", [view], [m.output], name=g.fresh(f"{view}/heads"), perm=[0, 2, 1, 3])
        # the new values have the shapes of the values they mirror (later rules read them this pass)
        infos = []
        for new, like in ((flat, r.input[0]), (view, r.output[0])):
            t = g.types.get(like)
            if t is not None:
                vi = onnx.ValueInfoProto(name=new)
                vi.type.CopyFrom(t)
                infos.append(vi)
        return Rewrite(remove=m.nodes, add=[rot, reshape, transpose], value_info=infos)


class BatchTable(Rule):
    """A ``RotaryEmbedding`` whose cos/sin caches are ``[1, L, D/2]`` against a batch that may be
    larger (torch's exporter emits these at opset 23 for Hugging Face's rotary module, whose
    position ids have one row) → the same caches read through position ids.

    Proof: the spec broadcasts a one-row cache over the batch (row ``(b, l)`` reads ``cos[0, l]``);
    with the cache ``cos[0]`` ``[L, D/2]`` and position ids ``p[b, l] = l``, row ``(b, l)`` reads
    ``cos[0][l]``: the same values. onnxruntime's kernel does not broadcast: without this, such a
    file fails for a batch other than 1. ``L`` must be provably ``x``'s length."""

    name = "rotary.batch"
    anchor_ops = ("RotaryEmbedding",)

    def match(self, g: GraphView, node: onnx.NodeProto) -> Match | Rejection:
        if len([i for i in node.input if i]) != 3 or len(node.input) > 3:
            return Rejection("the RotaryEmbedding reads position ids")
        dx, dc = dims_of(g, node.input[0]), dims_of(g, node.input[1])
        if dx is not None and dc is not None and len(dc) == 3 and (dc[0] == dx[0] or dx[0] == 1):
            return Rejection("the caches have the input's batch")
        return Match(node, [node], node.output[0], {})

    def check(self, g: GraphView, m: Match) -> CheckResult:
        node = m.anchor
        dx, dc, ds = (dims_of(g, v) for v in node.input[:3])
        if dx is None or len(dx) not in (3, 4) or dc is None or ds is None or len(dc) != 3 or dc != ds:
            return Rejection("the input or cache shapes are unknown", node.input[0])
        batch, length = dx[0], dx[2] if len(dx) == 4 else dx[1]
        if dc[0] != 1:
            return Rejection(f"the caches' batch {dc[0]} is neither 1 nor the input's {batch}", node.input[1])
        if dc[1] != length:
            return Rejection(f"the caches have {dc[1]} positions, not provably the input's {length}", node.input[1])
        return OK

    def rewrite(self, g: GraphView, m: Match) -> Rewrite:
        node = m.anchor
        axes = numpy_helper.from_array(np.asarray([0], np.int64), name=g.fresh("rotary_cache_axes"))
        add, caches = [], []
        for v in node.input[1:3]:
            out = g.fresh(f"{v}_rows")
            add.append(helper.make_node("Squeeze", [v, axes.name], [out], name=g.fresh(f"{out}/squeeze")))
            caches.append(out)
        length = g.fresh(f"{node.input[1]}_positions")
        add.append(
            helper.make_node("Shape", [node.input[1]], [length], name=g.fresh(f"{length}/shape"), start=1, end=2)
        )
        x = node.input[0]
        pos, nodes, consts = _positions(g, x, length)
        rot = helper.make_node(
            "RotaryEmbedding", [x, *caches, pos], [m.output], name=g.fresh(f"{node.name or 'rotary'}/positions")
        )
        rot.attribute.extend(node.attribute)
        rot.metadata_props.add(key=PROOF_KEY, value="a one-row cache broadcast over the batch = position ids 0…L−1")
        return Rewrite(remove=[node], add=[*add, *nodes, rot], initializers=[axes, *consts])


class PartialRotation(Rule):
    """GPT-NeoX / Phi's partial rotary embedding: ``cat(RotaryEmbedding(x[..., :r]), x[..., r:])``
    → ``RotaryEmbedding(x, rotary_embedding_dim=r)``.

    Proof: the spec rotates the first ``rotary_embedding_dim`` elements of each row with the
    caches (``r/2`` wide, as they already are for the slice) and copies the rest unchanged: the
    Concat's two parts. Exact."""

    name = "rotary.partial"
    anchor_ops = ("Concat",)

    def match(self, g: GraphView, node: onnx.NodeProto) -> Match | Rejection:
        rot = g.op(node.input[0], "RotaryEmbedding") if len(node.input) == 2 else None
        rest = g.op(node.input[1], "Slice") if rot is not None else None
        head = g.op(rot.input[0], "Slice") if rot is not None else None
        if rot is None or rest is None or head is None or head.input[0] != rest.input[0]:
            return Rejection("the Concat does not join a rotated slice and the rest of the same value")
        return Match(node, [node, rot, head, rest], node.output[0], {"rot": rot, "head": head, "rest": rest})

    def check(self, g: GraphView, m: Match) -> CheckResult:
        rot, head, rest = m.facts["rot"], m.facts["head"], m.facts["rest"]
        x = head.input[0]
        dx = dims_of(g, x)
        if dx is None or len(dx) != 4 or not isinstance(dx[3], int):
            return Rejection(f"x is {dx}: the rule needs [B, H, L, D] with a static D", x)
        d = dx[3]
        if any(attr(rot, a, 0) for a in ("rotary_embedding_dim", "interleaved", "num_heads")):
            return Rejection("the rotation already has a partial dim, interleaving or num_heads", rot.output[0])
        if not _last_axis(int(attr(m.anchor, "axis", 0)), 4):
            return Rejection("the Concat is not on the last axis", m.output)
        a, b = _slice(g, head), _slice(g, rest)
        if a is None or b is None or not (_last_axis(a[2], 4) and _last_axis(b[2], 4)) or a[3] != 1 or b[3] != 1:
            return Rejection("the parts are not unit-step constant Slices of the last axis", x)
        r = a[1]
        if a[0] != 0 or b[0] != r or not (b[1] == d or b[1] >= _INT_MAX) or not (0 < r < d) or r % 2:
            return Rejection(f"the parts are [0:{a[1]}] and [{b[0]}:{b[1]}] of {d}, not [0:r] and [r:] with r even", x)
        dc = dims_of(g, rot.input[1])
        if dc is None or dc[-1] != r // 2:
            return Rejection(f"the caches are {dc} wide, not r/2 = {r // 2}", rot.input[1])
        m.facts.update(x=x, r=r)
        return OK

    def rewrite(self, g: GraphView, m: Match) -> Rewrite:
        rot = m.facts["rot"]
        node = helper.make_node(
            "RotaryEmbedding",
            [m.facts["x"], *rot.input[1:]],
            [m.output],
            name=g.fresh(f"{rot.name or 'rotary'}/partial"),
            rotary_embedding_dim=int(m.facts["r"]),
        )
        node.metadata_props.add(key=PROOF_KEY, value="rotates the first rotary_embedding_dim elements, copies the rest")
        return Rewrite(remove=m.nodes, add=[node])


RULES = [RotateHalf(), BatchTable(), PartialRotation(), RotaryHeads()]
