"""The sub-patterns the norm rules share: the normalising division and the statistics under it.

Every decomposed norm is made of

    n = (x − μ) / √(σ² + ε)        μ = ReduceMean(x), σ² = ReduceMean((x − μ)²)   (layer, group)
    n =  x      / √(ms + ε)        ms = ReduceMean(x²)                            (rms)

:func:`match_normalize` recognises that shape in every spelling the exporters use (Div by Sqrt,
Mul by Reciprocal(Sqrt), Mul by 1/Sqrt, Mul by Pow(·, −0.5); Pow(d, 2) or d·d; keepdims=0
reductions restored by a Reshape; the variance scaled by constants, which is how an unbiased
``x.var()`` shows up) and returns the facts; :func:`check_normalize` decides whether they
describe the biased statistics a norm computes (:class:`Moments`), and says why not.
:func:`decomposed_spec` / :func:`decomposed_rewrite` turn a proven match into the norm node, and
:func:`affine_param` proves a following Mul/Add is a per-feature γ/β.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import onnx

from ..rejection import OK, CheckResult, Rejection
from ._shapes import dims_of, shape_value, static_scalar
from .graph import (
    FLOAT_TYPES,
    LOW_PRECISION,
    REDUCE_OPS,
    GraphView,
    Reduction,
    _op_in,
    attr,
    dtype_name,
    norm_axes,
    reduced_count,
    reduction_of,
    scalar,
)
from .rewriter import Rewrite, norm_rewrite


@dataclasses.dataclass
class Normalize:
    """Facts of ``n = (x − μ)/√(σ² + ε)`` (centered) or ``n = x/√(mean(x²) + ε)`` (not centered)."""

    x: str
    output: str
    anchor: onnx.NodeProto
    centered: bool
    mean: Reduction | None
    var: Reduction
    square: onnx.NodeProto | None  # Pow / Mul (None for ReduceSumSquare)
    squared: str  # the value that is squared
    eps: str | None  # value name of ε (None: no Add, ε = 0)
    scales: list[tuple[onnx.NodeProto, str, str]]  # (node, "mul" | "div", other operand) on σ²
    restore: onnx.NodeProto | None  # Reshape restoring σ²'s reduced dims after keepdims=0
    inverse: str  # "div" | "reciprocal" | "one_div" | "pow"
    inverse_operand: str | None  # the 1 of 1/√, or the −0.5 exponent
    nodes: list[onnx.NodeProto]
    eps_outside: bool = False  # ε added to √σ² (std + ε), not to σ² under the root


def _strip_var_chain(
    view: GraphView, v: str
) -> tuple[Reduction, list[tuple[onnx.NodeProto, str, str]], onnx.NodeProto | None, list[onnx.NodeProto]] | Rejection:
    """Walk from σ² (the Add's input) down to its reduction through at most one Reshape and any
    Mul/Div by another operand. Returns the reduction, the scales, the Reshape and the nodes; or the
    Rejection saying what was found instead."""
    scales: list[tuple[onnx.NodeProto, str, str]] = []
    restore = None
    nodes: list[onnx.NodeProto] = []
    cur = v
    for _ in range(6):
        n = view.producer.get(cur)
        if n is None:
            return Rejection(f"{cur!r} is not computed by a reduction")
        if _op_in(n, REDUCE_OPS):
            red = reduction_of(view, n)
            assert red is not None
            red.restore = restore
            return red, scales, restore, nodes
        if _op_in(n, "Reshape") and restore is None:
            restore = n
            nodes.append(n)
            cur = n.input[0]
            continue
        if _op_in(n, ("Mul", "Div")):
            # σ² · k or σ² / k: the data side is the one that leads to the reduction
            a, b = n.input[0], n.input[1]
            if _leads_to_reduce(view, a):
                data, other = a, b
            elif n.op_type == "Mul" and _leads_to_reduce(view, b):
                data, other = b, a
            else:
                return Rejection(f"{n.op_type} {n.name!r} does not scale the variance")
            scales.append((n, n.op_type.lower(), other))
            nodes.append(n)
            cur = data
            continue
        return Rejection(f"{cur!r} is computed by {n.op_type}, not by a reduction")
    return Rejection("variance chain too long")


def _leads_to_reduce(view: GraphView, v: str, depth: int = 4) -> bool:
    n = view.producer.get(v)
    if n is None or depth == 0:
        return False
    if _op_in(n, REDUCE_OPS):
        return True
    if _op_in(n, ("Reshape", "Mul", "Div")):
        return any(_leads_to_reduce(view, i, depth - 1) for i in n.input[:2] if i)
    return False


def match_normalize(view: GraphView, anchor: onnx.NodeProto) -> Normalize | Rejection:
    """Recognise the normalising division at ``anchor`` (a Div or Mul); a Rejection says why not."""
    nodes = [anchor]
    eps_outside: str | None = None
    if _op_in(anchor, "Div"):
        d, s = anchor.input[0], anchor.input[1]
        sq = view.op(s, "Sqrt")
        if sq is None:
            # (x − μ)/(√σ² + ε): the std + ε spelling (the Annotated Transformer's LayerNorm)
            outer = view.op(s, "Add")
            inner = [i for i in (outer.input if outer is not None else []) if view.op(i, "Sqrt") is not None]
            if outer is None or len(inner) != 1:
                return Rejection("divisor is not a Sqrt")
            sq = view.producer[inner[0]]
            eps_outside = next(i for i in outer.input if i != inner[0])
            nodes.append(outer)
        nodes.append(sq)
        inverse, inv_operand, ve = "div", None, sq.input[0]
    elif _op_in(anchor, "Mul"):
        found = None
        for d, r in ((anchor.input[0], anchor.input[1]), (anchor.input[1], anchor.input[0])):
            rn = view.producer.get(r)
            if rn is None:
                continue
            if _op_in(rn, "Reciprocal") and view.op(rn.input[0], "Sqrt") is not None:
                sq = view.producer[rn.input[0]]
                found = (d, [rn, sq], "reciprocal", None, sq.input[0])
            elif _op_in(rn, "Div") and view.op(rn.input[1], "Sqrt") is not None:
                sq = view.producer[rn.input[1]]
                found = (d, [rn, sq], "one_div", rn.input[0], sq.input[0])
            elif _op_in(rn, "Pow") and _leads_to_add_or_reduce(view, rn.input[0]):
                found = (d, [rn], "pow", rn.input[1], rn.input[0])
            if found:
                break
        if not found:
            return Rejection("neither factor is 1/√(·)")
        d, extra, inverse, inv_operand, ve = found
        nodes += extra
    else:
        return Rejection(f"{anchor.op_type} is not Div or Mul")
    # ve = σ² + ε (either operand order), or σ² itself (ε = 0)
    eps: str | None = None
    add = view.op(ve, "Add") if eps_outside is None else None
    if add is not None:
        a, b = add.input[0], add.input[1]
        if _leads_to_reduce(view, a):
            v, eps = a, b
        elif _leads_to_reduce(view, b):
            v, eps = b, a
        else:
            return Rejection("the value under the square root is not σ² + ε")
        nodes.append(add)
    else:
        v = ve
    chain = _strip_var_chain(view, v)
    if isinstance(chain, Rejection):
        return chain
    var, scales, restore, chain_nodes = chain
    nodes += [*chain_nodes, var.node]
    # the squared value
    square = None
    if var.op == "ReduceSumSquare":
        squared = var.input
    else:
        square = view.producer.get(var.input)
        if square is None or not _op_in(square, ("Pow", "Mul")):
            return Rejection(f"the reduced value is not a square ({square.op_type if square else 'graph input'})")
        squared = square.input[0]
        nodes.append(square)
    # numerator: x − μ (centered) or x
    sub = view.op(d, "Sub")
    mean = None
    centered = False
    x = d
    if sub is not None:
        mn = view.producer.get(sub.input[1])
        m_red = reduction_of(view, mn) if mn is not None else None
        restore_m = None
        if mn is not None and _op_in(mn, "Reshape"):
            inner = view.producer.get(mn.input[0])
            m_red = reduction_of(view, inner) if inner is not None else None
            restore_m = mn
        if m_red is not None and m_red.op == "ReduceMean" and view.same_value(m_red.input, sub.input[0]):
            m_red.restore = restore_m
            mean, centered, x = m_red, True, sub.input[0]
            nodes += [sub, *m_red.nodes]
    if centered:
        if not view.same_value(squared, d):
            return Rejection("the variance squares a different value than the numerator's x − μ")
        if squared != d:  # a duplicated x − μ (legacy exporter): its nodes belong to the pattern too
            nodes += _duplicate_chain(view, squared, d)
    elif not view.same_value(squared, x):
        return Rejection("the mean square is not of the normalised value")
    return Normalize(
        x,
        anchor.output[0],
        anchor,
        centered,
        mean,
        var,
        square,
        squared,
        eps if eps_outside is None else eps_outside,
        scales,
        restore,
        inverse,
        inv_operand,
        _dedupe(nodes),
        eps_outside is not None,
    )


def _leads_to_add_or_reduce(view: GraphView, v: str) -> bool:
    n = view.producer.get(v)
    return n is not None and (_op_in(n, "Add") or _leads_to_reduce(view, v))


def _duplicate_chain(view: GraphView, dup: str, orig: str, depth: int = 4) -> list[onnx.NodeProto]:
    """Nodes computing ``dup`` that are not shared with ``orig``'s computation."""
    if dup == orig or depth == 0 or view.const(dup) is not None:
        return []
    n = view.producer.get(dup)
    o = view.producer.get(orig)
    if n is None or n is o:
        return []
    out = [n]
    for a, b in zip(n.input, o.input if o is not None else []):
        out += _duplicate_chain(view, a, b, depth - 1)
    return out


def _dedupe(nodes: Iterable[onnx.NodeProto]) -> list[onnx.NodeProto]:
    seen: set[int] = set()
    out = []
    for n in nodes:
        if id(n) not in seen:
            seen.add(id(n))
            out.append(n)
    return out


def check_restore(view: GraphView, red: Reduction, x: str, axes: tuple[int, ...]) -> CheckResult:
    """A keepdims=0 reduction must be followed by a Reshape that puts the reduced dims back as 1s."""
    what = f"{red.op} {red.node.name!r}"
    if red.keepdims and red.restore is None:
        return OK
    if red.restore is None:
        return Rejection(
            f"{what} has keepdims=0, so its result broadcasts against the wrong axes of x", red.node.output[0]
        )
    target = shape_value(view, red.restore.input[1])
    if target is None:
        return Rejection(f"{what} is reshaped to a shape computed at run time", red.restore.input[1])
    shape = dims_of(view, x)
    if shape is None or len(target) != len(shape):
        return Rejection(f"cannot prove that Reshape {red.restore.name!r} restores the reduced axes of {what}", target)
    allow_zero = attr(red.restore, "allowzero", 0)
    kept_mismatch = [i for i, (w, d) in enumerate(zip(target, shape)) if i not in axes and w != d]
    if target.count(-1) == 1 and kept_mismatch == [target.index(-1)]:
        # one −1 on a kept axis, every other entry proven: the element count fixes it to that dim
        target = [shape[i] if w == -1 else w for i, w in enumerate(target)]
    for i, (want, dim) in enumerate(zip(target, shape)):
        if i in axes:
            if want != 1:
                return Rejection(f"Reshape {red.restore.name!r} does not put a 1 at reduced axis {i}", target)
        # a 0 copies the reshaped tensor's own dim i: x's dim i when the reduction kept its dims or
        # when i comes before the first reduced axis
        elif not (want == dim or (want == 0 and not allow_zero and (red.keepdims or i < min(axes)))):
            return Rejection(f"Reshape {red.restore.name!r} changes kept axis {i} ({want} vs {dim})", target)
    return OK


@dataclasses.dataclass(frozen=True)
class Moments:
    """What :func:`check_normalize` proved: the statistics are taken over ``axes`` and the written
    variance is ``factor · σ²`` (σ² the biased one, ``factor`` a positive constant: 1 for a norm,
    N/(N−1) for an unbiased ``x.var()``), with ``eps`` added before the square root.

    Because ``(x − μ)/√(f·σ² + ε) = f^(−1/2) · (x − μ)/√(σ² + ε/f)``, every such spelling is the
    norm with ``ε' = ε/f`` followed by the constant scale ``k = f^(−1/2)`` (exact up to rounding);
    :attr:`proof` says so in words for the node's metadata.
    """

    axes: tuple[int, ...]
    eps: float
    factor: float = 1.0
    count: int | None = None

    @property
    def corrected(self) -> bool:
        return self.factor != 1.0

    @property
    def norm_eps(self) -> float:
        """ε of the equivalent norm (ε/f)."""
        return self.eps / self.factor

    @property
    def scale(self) -> float:
        """The constant the equivalent norm's output is multiplied by (f^(−1/2))."""
        return float(1.0 / np.sqrt(self.factor))

    @property
    def proof(self) -> str:
        if not self.corrected:
            return ""
        n = self.count
        what = (
            f"unbiased variance σ²·N/(N−1) with N={n}"
            if n and n > 1 and np.isclose(self.factor, n / (n - 1), rtol=2e-7)
            else f"variance scaled by {self.factor:.9g}"
        )
        return (
            f"{what}: (x−μ)/√(f·σ²+ε) = f^(−1/2)·(x−μ)/√(σ²+ε/f) with f={self.factor:.9g}, "
            f"so ε'={self.norm_eps:.9g} and the output (and β's partner γ) is scaled by {self.scale:.9g}"
        )


def check_normalize(view: GraphView, nm: Normalize, *, want_centered: bool) -> tuple[CheckResult, Moments]:
    """Prove that ``nm`` computes a norm's statistics up to a constant factor on the variance;
    returns (verdict, :class:`Moments`)."""
    none = Moments((), 0.0)
    if nm.centered != want_centered:
        return Rejection("x − mean(x) is subtracted" if nm.centered else "no mean is subtracted"), none
    et = view.elem_type(nm.x)
    if et not in FLOAT_TYPES:
        return Rejection(f"input {nm.x!r} has element type {dtype_name(et)}, not a float type", nm.x), none
    if et in LOW_PRECISION:
        return (
            Rejection(
                f"statistics are computed in {dtype_name(et)} (no Cast to float32 before the reductions); normonnx "
                f"{dtype_name(et)} norms compute them in float32, so fusing would change the numbers",
                nm.x,
            ),
            none,
        )
    for n in nm.nodes:  # every value on the way must be of x's type (no hidden Casts)
        t = view.elem_type(n.output[0])
        if t is not None and t != et:
            return (
                Rejection(f"{n.op_type} {n.name!r} computes in {dtype_name(t)}, not {dtype_name(et)}", n.output[0]),
                none,
            )
    rank = view.rank(nm.x)
    if rank is None:
        return Rejection(f"rank of {nm.x!r} is unknown", nm.x), none
    # ε
    eps = 0.0
    if nm.eps is not None:
        c = view.const(nm.eps)
        if c is None:
            why = "a graph input" if view.is_graph_input(nm.eps) else "computed at run time"
            return Rejection(f"ε is not a constant ({nm.eps!r} is {why})", nm.eps), none
        e = scalar(c)
        if e is None:
            return Rejection(f"ε is not a single number (shape {list(c.shape)})", c), none
        if not e >= 0:
            return Rejection(f"ε = {e} is negative", c), none
        if nm.eps_outside and e != 0:
            return (
                Rejection(
                    f"ε = {e:.3g} is added outside the square root, (x − μ)/(√σ² + ε), which is not "
                    "(x − μ)/√(σ² + ε) (no constant ε' makes them equal): left as written",
                    c,
                ),
                none,
            )
        eps = e
    # 1/√ spellings
    if nm.inverse == "one_div":
        c = view.const(nm.inverse_operand or "")
        if c is None or not np.all(c == 1):
            return (
                Rejection("numerator of 1/√(·) is not the constant 1", c if c is not None else nm.inverse_operand),
                none,
            )
    if nm.inverse == "pow":
        p = scalar(view.const(nm.inverse_operand or ""))
        if p != -0.5:
            return Rejection(f"Pow exponent {p} is not −0.5", nm.inverse_operand), none
    # the square
    if nm.square is not None:
        if nm.square.op_type == "Pow":
            p = scalar(view.const(nm.square.input[1]))
            if p != 2.0:
                return Rejection(f"Pow exponent {p} is not 2", nm.square.input[1]), none
        elif not view.same_value(nm.square.input[0], nm.square.input[1]):
            return Rejection("Mul is not a square (different operands)", nm.square.output[0]), none
    # axes
    for red in [r for r in (nm.mean, nm.var) if r is not None]:
        if red.dynamic_axes:
            return Rejection(f"{red.op} {red.node.name!r} reduces run-time axes", red.dynamic_axes), none
    var_axes = norm_axes(nm.var.axes, rank)
    if var_axes is None or not var_axes:
        return Rejection(f"invalid axes {nm.var.axes} for a rank-{rank} input", nm.var.node.output[0]), none
    if nm.mean is not None:
        mean_axes = norm_axes(nm.mean.axes, rank)
        if mean_axes != var_axes:
            return (
                Rejection(f"mean over axes {mean_axes} but variance over axes {var_axes}", nm.mean.node.output[0]),
                none,
            )
        v = check_restore(view, nm.mean, nm.x, var_axes)
        if not v:
            return v, none
    v = check_restore(view, nm.var, nm.x, var_axes)
    if not v:
        return v, none
    # the variance's normaliser: 1/N (biased) or another constant (1/(N−1): unbiased), which the
    # equivalent norm absorbs into ε and a scale; a count computed at run time cannot be absorbed
    factor = 1.0
    for _node, how, other in nm.scales:
        c = static_scalar(view, other)
        if c is None:
            why = "not a single constant" if view.const(other) is not None else "computed at run time"
            return (
                Rejection(
                    f"σ² is scaled by {other!r} ({why}): the {how} by a count that an unbiased x.var() computes from "
                    "a dynamic shape, so N is not static and the exact rewrite ε' = ε·(N−1)/N has no constant ε'",
                    other,
                ),
                none,
            )
        factor = factor * c if how == "mul" else factor / c
    n = reduced_count(view, nm.x, var_axes)
    if nm.var.op != "ReduceMean":
        if not n:
            return Rejection(f"{nm.var.op} over dynamic dims: the count N is unknown", nm.var.node.output[0]), none
        factor *= n  # ReduceSum = N · mean
    if np.isclose(factor, 1.0, rtol=2e-7, atol=0.0):
        factor = 1.0
    if not (np.isfinite(factor) and factor > 0):
        return Rejection(f"σ² is scaled by {factor:.7g}, not by a positive constant", f"factor {factor:.7g}"), none
    return OK, Moments(var_axes, eps, factor, n)


def corrected_weight(mo: Moments, shape: Sequence[int]) -> dict[str, np.ndarray]:
    """The weight of the norm equivalent to a spelling whose variance is scaled (see :class:`Moments`)."""
    return {"weight": np.full(tuple(shape), mo.scale)} if mo.corrected else {}


def decomposed_spec(
    m: Any, mo: Moments, kind: str, affine_shape: Sequence[int], *, dtype: str, rank: int | None, **fields: Any
) -> CheckResult:
    """Record in match ``m`` the affine-free norm a proven decomposition computes: its spec (ε/f),
    the corrected weight when the variance was scaled, and the proof (see :class:`Moments`)."""
    from ..spec import NormSpec

    m.facts["params"] = corrected_weight(mo, affine_shape)
    m.facts["proof"] = mo.proof
    m.facts["spec"] = NormSpec(
        kind, eps=mo.norm_eps, has_weight=mo.corrected, has_bias=False, dtype=dtype, rank=rank, **fields
    )
    return OK


def decomposed_rewrite(view: GraphView, m: Any, x: str, hint: str) -> Rewrite:
    """The rewrite of a match recorded by :func:`decomposed_spec`: one norm node reading ``x``."""
    return norm_rewrite(
        view, m.nodes, m.output, m.facts["spec"], x, m.facts["params"], m.anchor, hint, m.facts["proof"]
    )


def affine_param(
    view: GraphView, operand: str, *, rank: int, axes: Sequence[int], target: Sequence[int], what: str
) -> tuple[np.ndarray | None, CheckResult]:
    """The per-feature parameter a Mul/Add ``operand`` applies to a norm's output.

    It must be a constant that varies only along ``axes`` (the normalised or channel axes) of a
    rank-``rank`` input and does not grow the output; it is returned reshaped/broadcast to ``target``.
    """
    c = view.const(operand)
    if c is None:
        why = "a graph input" if view.is_graph_input(operand) else "computed at run time"
        return None, Rejection(f"{what} is not a constant ({operand!r} is {why})", operand)
    if c.ndim > rank:
        return None, Rejection(f"{what} of shape {list(c.shape)} has more dims than the rank-{rank} input", c)
    padded = (1,) * (rank - c.ndim) + tuple(c.shape)
    kept = []
    for i, d in enumerate(padded):
        if i in axes:
            want = target[list(axes).index(i)] if len(target) == len(axes) else None
            if d not in (1, want):
                return None, Rejection(
                    f"{what} of shape {list(c.shape)} has {d} elements on axis {i}, expected {want}", c
                )
            kept.append(d)
        elif d != 1:
            return None, Rejection(
                f"{what} of shape {list(c.shape)} varies along axis {i}, which the norm does not normalise", c
            )
    arr = np.broadcast_to(c.reshape(kept), tuple(target)) if len(target) == len(axes) else c.reshape(target)
    return np.ascontiguousarray(arr), OK
