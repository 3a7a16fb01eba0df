"""Shape arithmetic the exporters emit, evaluated symbolically.

A dynamic export spells a group view as ``Reshape(x, Concat(Shape(x)[0:1], [8], [-1]))`` and the
unbiased variance's count as ``Cast(ReduceProd(Gather(Shape(v), [2])))``. :func:`shape_value`
evaluates such int64 vectors to a list whose elements are ints (static) or symbols: the
``dim_param`` of the dim they were read from (the same name wherever shape inference or the
exporter proved two dims equal), or a unique ``"?value:axis"`` when the dim has no name. Two
elements are equal only when they are the same int or the same symbol, so every proof that uses
them holds for every size the symbols can take.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from .graph import GraphView

Sym = int | str
_PLAIN = ("", "ai.onnx")


def dims_of(g: GraphView, v: str, depth: int = 4) -> list[Sym] | None:
    """The shape of ``v`` with a symbol for every non-static dim (None if the rank is unknown).

    Dims shape inference left unnamed are derived, where it can be proven, from the Reshape that
    produced ``v`` (its target evaluated symbolically, a −1 solved from the element count)."""
    from .graph import norm_axes, reduction_of

    shape = g.shape(v)
    n = g.producer.get(v)
    derived = None
    unknown = shape is None or any(not (isinstance(d, int) or d) or str(d).startswith("unk__") for d in shape)
    if depth and unknown and n is not None and n.domain in _PLAIN:
        red = reduction_of(g, n)
        if n.op_type == "Reshape":
            derived = _reshaped_dims(g, n, depth - 1)
        elif red is not None and red.dynamic_axes is None:  # a rewrite's new reduction has no value_info yet
            src = dims_of(g, red.input, depth - 1)
            axes = norm_axes(red.axes, len(src)) if src is not None else None
            if src is not None and axes is not None:
                derived = [1 if i in axes else d for i, d in enumerate(src) if red.keepdims or i not in axes]
    if shape is None:
        return derived
    out: list[Sym] = []
    for i, d in enumerate(shape):
        if isinstance(d, int):
            out.append(d)
        elif isinstance(d, str) and d and not d.startswith("unk__"):
            out.append(d)
        elif derived is not None and len(derived) == len(shape):
            out.append(derived[i])
        else:
            out.append(f"?{v}:{i}")
    return out


def _reshaped_dims(g: GraphView, n: Any, depth: int) -> list[Sym] | None:
    from .graph import attr

    src = dims_of(g, n.input[0], depth)
    target = shape_value(g, n.input[1])
    if src is None or target is None:
        return None
    allow_zero = int(attr(n, "allowzero", 0))
    out: list[Sym | None] = []
    for i, t in enumerate(target):
        if t == 0 and not allow_zero:
            out.append(src[i] if i < len(src) else None)
        elif t == -1:
            out.append(None)
        else:
            out.append(t)
    if out.count(None) == 1:
        # solve the −1: total elements of the source divided by the other target dims
        const, syms = _product(src)
        for d in out:
            if d is None:
                continue
            if isinstance(d, int):
                if d == 0 or const % d:
                    return None
                const //= d
            elif d in syms:
                syms.remove(d)
            else:
                return None
        if const == 1 and len(syms) == 1:
            out[out.index(None)] = syms[0]
        elif not syms:
            out[out.index(None)] = const
    if any(d is None or str(d).startswith("?") for d in out):
        return None
    return out  # type: ignore[return-value]


def _product(dims: list[Sym]) -> tuple[int, list[str]]:
    const, syms = 1, []
    for d in dims:
        if isinstance(d, int):
            const *= d
        else:
            syms.append(d)
    return const, syms


def shape_value(g: GraphView, v: str, depth: int = 16) -> list[Sym] | None:
    """The elements of a 0-D/1-D integer (or integral float) tensor ``v``, symbolically; None if unknown."""
    from .graph import attr

    c = g.const(v)
    if c is not None:
        if c.ndim > 1 or c.dtype.kind not in "iuf":
            return None
        flat = c.reshape(-1)
        if c.dtype.kind == "f" and not np.all(flat == np.round(flat)):
            return None
        return [int(x) for x in flat]
    if depth == 0:
        return None
    n = g.producer.get(v)
    if n is None or n.domain not in _PLAIN:
        return None
    op = n.op_type
    sub = lambda i: shape_value(g, n.input[i], depth - 1) if len(n.input) > i and n.input[i] else None
    if op == "Shape":
        dims = dims_of(g, n.input[0])
        if dims is None:
            return None
        r = len(dims)
        start, end = int(attr(n, "start", 0)), attr(n, "end")
        start = max(0, start + r if start < 0 else start)
        end = r if end is None else int(end)
        end = max(0, min(r, end + r if end < 0 else end))
        return dims[start:end]
    if op in ("Identity", "Cast", "Squeeze", "Unsqueeze", "Flatten") or (op == "Reshape"):
        return sub(0)
    if op == "Concat":
        out: list[Sym] = []
        for i in range(len(n.input)):
            part = sub(i)
            if part is None:
                return None
            out += part
        return out
    if op == "Gather":
        data, idx = sub(0), g.const(n.input[1])
        if data is None or idx is None or int(attr(n, "axis", 0)) != 0:
            return None
        try:
            return [data[int(i)] for i in idx.reshape(-1)]
        except IndexError:
            return None
    if op == "Slice":
        data = sub(0)
        consts = [g.const(i) if i else None for i in n.input[1:]]
        if data is None or any(c is None for c in consts[:2]):
            return None
        starts, ends = int(consts[0].reshape(-1)[0]), int(consts[1].reshape(-1)[0])  # type: ignore[union-attr]
        step = int(consts[3].reshape(-1)[0]) if len(consts) > 3 and consts[3] is not None else 1
        return data[slice(starts, ends, step)]
    if op == "ReduceProd":
        data = sub(0)
        if data is None or not all(isinstance(d, int) for d in data):
            return None
        return [int(np.prod(data, dtype=np.int64))]
    if op in ("Mul", "Add", "Sub", "Div"):
        a, b = sub(0), sub(1)
        if a is None or b is None or len(a) != 1 or len(b) != 1:
            return None
        x, y = a[0], b[0]
        if not (isinstance(x, int) and isinstance(y, int)):
            return None
        if op == "Div":
            return [x // y] if y and x % y == 0 else None
        return [x * y if op == "Mul" else x + y if op == "Add" else x - y]
    return None


def static_scalar(g: GraphView, v: str) -> float | None:
    """A single number that is a constant or a shape computation of static dims; else None."""
    from .graph import scalar

    c = g.const(v)
    if c is not None:
        return scalar(c)
    sv = shape_value(g, v)
    return float(sv[0]) if sv is not None and len(sv) == 1 and isinstance(sv[0], int) else None
