"""Fold inference BatchNormalization into a neighbouring linear op, in float64.

With ``s = γ/√(σ² + ε)`` and ``t = β − μ·s`` a BatchNorm is the per-channel affine map ``x·s + t``.

- ``batchnorm.into_preceding``: BN(Conv / ConvTranspose / Gemm / MatMul [+ Add b](x)):
  ``W' = W·s`` along the output channels, ``b' = (b − μ)·s + β``. Exact for every padding.
- ``batchnorm.into_following``: Conv / Gemm / MatMul(BN(x)): ``W' = W·s`` along the *input*
  channels, ``b' = b + Σ W·t``. Exact only when the op does not pad its input (a zero pad of the
  normalised input is the value −t/s of the raw one), so a padded Conv is refused; ConvTranspose is
  refused (border outputs receive fewer taps, so the shift is not a constant bias).

Both ONNX's BatchNormalization and the portable ``normonnx.BatchNorm`` (what ``normonnx export``
makes of an eval ``nn.BatchNorm2d``) are folded.

Proof obligations (refused otherwise, with the reason): BN in inference mode with constant
γ/β/μ/σ²; the weight and bias are constant initializers, not graph inputs (a user could feed other
values) and not shared with another node (rewriting them would change that node); the BN
channel axis is the op's output (resp. input) feature axis. The new weights are computed in
float64 from the stored values and cast to the weight's dtype once.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from ..rejection import OK, CheckResult, Rejection
from .graph import GraphView, attr, dtype_name
from .rewriter import Rewrite, tensor
from .rule import Match, Rule

LINEAR_BEFORE = ("Conv", "ConvTranspose", "Gemm", "MatMul")
#: node metadata on a Conv/Gemm/MatMul (and its bias Add) naming the BatchNorm folded into it
FOLDED_KEY = "normonnx.folded"


def is_batchnorm(n: onnx.NodeProto | None) -> bool:
    """ONNX BatchNormalization, or the portable ``normonnx.BatchNorm`` export makes of aten's."""
    if n is None:
        return False
    return (n.op_type == "BatchNormalization" and n.domain in ("", "ai.onnx")) or (
        n.op_type == "BatchNorm" and n.domain == "normonnx"
    )


def bn_affine(g: GraphView, bn: onnx.NodeProto) -> tuple[CheckResult, np.ndarray, np.ndarray]:
    """(verdict, s, t) of an inference BatchNormalization (or ``normonnx.BatchNorm`` with running
    statistics), in float64."""
    none = np.zeros(0)
    portable = bn.domain == "normonnx"
    if int(attr(bn, "training_mode", 0)) or (portable and not int(attr(bn, "running_stats", 0))):
        return Rejection("BatchNorm in training mode (batch statistics)", bn.output[0]), none, none
    act = attr(bn, "activation", "") if portable else ""
    if act:
        return Rejection(f"BatchNorm has a fused activation ({act}): not an affine map", bn.output[0]), none, none
    vals: list[np.ndarray | None] = []
    for what, v in zip(("γ", "β", "μ", "σ²"), bn.input[1:5]):
        if portable and not v and what in ("γ", "β"):
            vals.append(None)  # no affine: γ = 1, β = 0
            continue
        c = g.const(v)
        if c is None:
            why = "a graph input" if g.is_graph_input(v) else "computed at run time"
            return Rejection(f"BatchNorm {what} is not a constant ({v!r} is {why})", v), none, none
        vals.append(c.astype(np.float64).reshape(-1))
    mean, var = vals[2], vals[3]
    assert mean is not None and var is not None
    gamma = vals[0] if vals[0] is not None else np.ones_like(mean)
    beta = vals[1] if vals[1] is not None else np.zeros_like(mean)
    if not (gamma.shape == beta.shape == mean.shape == var.shape):
        return Rejection("BatchNorm parameters differ in length", bn.input[1]), none, none
    eps = float(attr(bn, "epsilon", 1e-5))
    s = gamma / np.sqrt(var + eps)
    return OK, s, beta - mean * s


def weight_check(g: GraphView, value: str, owner: onnx.NodeProto, what: str) -> tuple[CheckResult, np.ndarray]:
    """A weight/bias we may rewrite: a constant that is not a graph input and has no other reader."""
    if g.is_graph_input(value):
        return Rejection(f"{what} {value!r} is a graph input (its value can change at run time)", value), np.zeros(0)
    c = g.const(value)
    if c is None:
        return Rejection(f"{what} {value!r} is computed at run time", value), np.zeros(0)
    others = [u for u in g.users(value) if u is not owner]
    src = g.source(value)
    if src != value:  # reached through Identity: the initializer itself must have no other reader
        others += [u for u in g.users(src) if u is not g.producer.get(value)]
    if others:
        return Rejection(
            f"{what} {value!r} is shared with {others[0].op_type} node {others[0].name!r}", value
        ), np.zeros(0)
    return OK, c


def _copy_node(node: onnx.NodeProto, inputs: list[str], outputs: list[str], name: str, **drop: bool) -> onnx.NodeProto:
    n = helper.make_node(node.op_type, inputs, outputs, name=name, domain=node.domain or None)
    n.attribute.extend(a for a in node.attribute if a.name not in drop)
    n.metadata_props.extend(node.metadata_props)
    return n


def _folded(g: GraphView, m: Match, op: onnx.NodeProto, bn: onnx.NodeProto, x: str, y: str) -> Rewrite:
    """``op`` with the folded weight / bias (``m.facts`` w2, b2) computing ``y`` from ``x``, in place of
    the pair: a MatMul becomes MatMul + Add (it has no bias input), a Gemm drops its ``beta``."""
    wt = tensor(g, f"{op.input[1]}/bn_folded", m.facts["w2"])
    bt = tensor(g, f"{bn.name or bn.output[0]}/bn_folded_bias", m.facts["b2"])
    name = g.fresh(f"{op.name or op.output[0]}/bn_folded")
    if op.op_type == "MatMul":
        mid = g.fresh(f"{name}/matmul")
        nodes = [
            _copy_node(op, [x, wt.name], [mid], name),
            helper.make_node("Add", [mid, bt.name], [y], name=g.fresh(f"{name}/bias")),
        ]
    else:
        drop = {"beta": True} if op.op_type == "Gemm" else {}
        nodes = [_copy_node(op, [x, wt.name, bt.name], [y], name, **drop)]
    for n in nodes:  # verification compares the pair as one: say which BatchNorm went in
        n.metadata_props.add(key=FOLDED_KEY, value=bn.name or bn.output[0])
    return Rewrite(m.nodes, nodes, [wt, bt])


class BatchNormIntoPreceding(Rule):
    name = "batchnorm.into_preceding"
    anchor_ops = ("BatchNormalization",)

    def candidates(self, g: GraphView) -> list[onnx.NodeProto]:
        return [n for n in g.nodes if is_batchnorm(n)]

    def match(self, g: GraphView, node: onnx.NodeProto) -> Match | Rejection:
        p = g.producer.get(node.input[0])
        if p is None or p.domain not in ("", "ai.onnx"):
            return Rejection("input is not produced by an op")
        if p.op_type in LINEAR_BEFORE:
            return Match(node, [p, node], node.output[0], {"op": p, "add": None})
        if p.op_type == "Add":
            for data, other in ((p.input[0], p.input[1]), (p.input[1], p.input[0])):
                mm = g.op(data, "MatMul")
                if mm is not None:
                    return Match(node, [mm, p, node], node.output[0], {"op": mm, "add": p, "add_bias": other})
        return Rejection(f"input is produced by {p.op_type}, not by {'/'.join(LINEAR_BEFORE)}")

    def check(self, g: GraphView, m: Match) -> CheckResult:
        bn, op = m.anchor, m.facts["op"]
        v, s, t = bn_affine(g, bn)
        if not v:
            return v
        c = s.shape[0]
        v, w = weight_check(g, op.input[1], op, "weight")
        if not v:
            return v
        if w.dtype.kind != "f" or g.elem_type(bn.input[0]) != helper.np_dtype_to_tensor_dtype(w.dtype):
            return Rejection(
                f"weight dtype {w.dtype} differs from the BatchNorm's {dtype_name(g.elem_type(bn.input[0]))}",
                op.input[1],
            )
        bias_name = m.facts["add_bias"] if m.facts["add"] is not None else (op.input[2] if len(op.input) > 2 else "")
        b = None
        if bias_name:
            v, b = weight_check(g, bias_name, m.facts["add"] or op, "bias")
            if not v:
                return v
        kind = op.op_type
        out_rank = g.rank(bn.input[0])
        w64 = w.astype(np.float64)
        if kind == "Conv":
            if w.shape[0] != c:
                return Rejection(f"Conv has {w.shape[0]} output channels, BatchNorm {c}", op.input[1])
            w2 = w64 * s.reshape((c,) + (1,) * (w.ndim - 1))
        elif kind == "ConvTranspose":
            group = int(attr(op, "group", 1))
            cin, cog = w.shape[0], w.shape[1]
            if cog * group != c or cin % group:
                return Rejection(f"ConvTranspose has {cog * group} output channels, BatchNorm {c}", op.input[1])
            # W[i, j]: input channel i of group i // (cin/group) feeds output channel group·cog + j
            wg = w64.reshape(group, cin // group, cog, *w.shape[2:])
            w2 = (wg * s.reshape(group, 1, cog, *([1] * (w.ndim - 2)))).reshape(w.shape)
        elif kind == "Gemm":
            if out_rank != 2 or w.ndim != 2:
                return Rejection("Gemm output is not rank 2", bn.input[0])
            trans_b = int(attr(op, "transB", 0))
            m_dim = w.shape[0] if trans_b else w.shape[1]
            if m_dim != c:
                return Rejection(f"Gemm has {m_dim} outputs, BatchNorm {c}", op.input[1])
            w2 = w64 * (s.reshape(c, 1) if trans_b else s.reshape(1, c))  # alpha is kept
            if b is not None:
                b = float(attr(op, "beta", 1.0)) * b.astype(np.float64)  # beta folded into C'
        else:  # MatMul (+ Add)
            if w.ndim != 2 or out_rank != 2:
                return Rejection(
                    f"BatchNorm normalises axis 1 of the rank-{out_rank} MatMul output, which is not its feature axis",
                    bn.input[0],
                )
            if w.shape[1] != c:
                return Rejection(f"MatMul has {w.shape[1]} outputs, BatchNorm {c}", op.input[1])
            w2 = w64 * s.reshape(1, c)
        if b is None:
            b2 = t
        else:
            b64 = np.asarray(b, dtype=np.float64)
            ok_shapes = [(c,)] if kind in ("Conv", "ConvTranspose") else [(c,), (1, c), (1,), ()]
            if kind == "Gemm" and b64.ndim == 2 and b64.shape[1] == c:
                ok_shapes.append(b64.shape)
            if b64.shape not in ok_shapes:
                return Rejection(f"bias of shape {list(b64.shape)} is not per output feature ({c})", bias_name)
            b2 = b64 * s + t  # (b − μ)·s + β
        m.facts.update(w2=w2.astype(w.dtype), b2=np.asarray(b2).astype(w.dtype))
        return OK

    def rewrite(self, g: GraphView, m: Match) -> Rewrite:
        bn, op = m.anchor, m.facts["op"]
        return _folded(g, m, op, bn, op.input[0], bn.output[0])


class BatchNormIntoFollowing(Rule):
    name = "batchnorm.into_following"
    anchor_ops = ("Conv", "ConvTranspose", "Gemm", "MatMul")

    def match(self, g: GraphView, node: onnx.NodeProto) -> Match | Rejection:
        bn = g.producer.get(node.input[0])
        if not is_batchnorm(bn):
            return Rejection("input is not a BatchNormalization")
        assert bn is not None
        return Match(node, [bn, node], node.output[0], {"bn": bn})

    def check(self, g: GraphView, m: Match) -> CheckResult:
        op, bn = m.anchor, m.facts["bn"]
        kind = op.op_type
        if kind == "ConvTranspose":
            return Rejection(
                "a BatchNorm before ConvTranspose cannot be folded exactly: border outputs receive fewer taps, "
                "so its shift is not a constant bias",
                bn.output[0],
            )
        v, s, t = bn_affine(g, bn)
        if not v:
            return v
        c = s.shape[0]
        v, w = weight_check(g, op.input[1], op, "weight")
        if not v:
            return v
        bias_name = op.input[2] if len(op.input) > 2 and op.input[2] else ""
        b = None
        if bias_name:
            v, b = weight_check(g, bias_name, op, "bias")
            if not v:
                return v
        w64 = w.astype(np.float64)
        if kind == "Conv":
            pads = list(attr(op, "pads", []) or [])
            auto_pad = attr(op, "auto_pad", "NOTSET")
            if any(pads) or auto_pad not in ("NOTSET", "VALID"):
                return Rejection(
                    f"Conv pads its input (pads={pads}, auto_pad={auto_pad}): the zero padding of the normalised input "
                    "is not a zero of the raw input, so folding would change the border outputs",
                    op.input[1],
                )
            group = int(attr(op, "group", 1))
            cout, cin_g = w.shape[0], w.shape[1]
            if cin_g * group != c:
                return Rejection(f"Conv reads {cin_g * group} channels, BatchNorm has {c}", op.input[1])
            og = cout // group
            # input channel of W[o, i] is (o // og)·cin_g + i
            idx = (np.arange(cout)[:, None] // og) * cin_g + np.arange(cin_g)[None, :]
            s_oi, t_oi = s[idx], t[idx]
            kshape = (1,) * (w.ndim - 2)
            w2 = w64 * s_oi.reshape(cout, cin_g, *kshape)
            shift = (w64 * t_oi.reshape(cout, cin_g, *kshape)).reshape(cout, -1).sum(axis=1)
            b2 = (np.zeros(cout) if b is None else b.astype(np.float64)) + shift
        elif kind == "Gemm":
            if int(attr(op, "transA", 0)) or g.rank(op.input[0]) != 2:
                return Rejection("Gemm with transA or a non-2D input", op.input[0])
            trans_b = int(attr(op, "transB", 0))
            bmat = w64.T if trans_b else w64  # [K, M]
            if bmat.shape[0] != c:
                return Rejection(f"Gemm reads {bmat.shape[0]} features, BatchNorm has {c}", op.input[1])
            alpha, beta = float(attr(op, "alpha", 1.0)), float(attr(op, "beta", 1.0))
            b_new = bmat * s.reshape(c, 1)
            w2 = b_new.T if trans_b else b_new
            b2 = alpha * (t @ bmat) + (0.0 if b is None else beta * b.astype(np.float64))
        else:  # MatMul
            if g.rank(op.input[0]) != 2 or w.ndim != 2:
                return Rejection("BatchNorm's axis 1 is not the MatMul's reduction axis (input not 2-D)", op.input[0])
            if w.shape[0] != c:
                return Rejection(f"MatMul reads {w.shape[0]} features, BatchNorm has {c}", op.input[1])
            w2 = w64 * s.reshape(c, 1)
            b2 = t @ w64
        m.facts.update(w2=w2.astype(w.dtype), b2=np.asarray(b2).astype(w.dtype))
        return OK

    def rewrite(self, g: GraphView, m: Match) -> Rewrite:
        op, bn = m.anchor, m.facts["bn"]
        return _folded(g, m, op, bn, bn.input[0], op.output[0])


RULES: list[Rule] = [BatchNormIntoPreceding(), BatchNormIntoFollowing()]
