"""ONNX values → torch module calls: which value is each module's output (or its norm's).

:func:`map_calls` maps, most reliable first:

- ``metadata``: the exporter's ``pkg.torch.onnx.name_scopes`` / ``namespace`` node metadata. A
  module's output is a value produced inside its scope and consumed outside it (or a graph
  output; the same elements in another shape count);
- ``folded``: a BatchNorm folded into the Conv/Linear before it has no node; the folded node's
  value is the pair's output and goes to the BatchNorm's row (the pair is named);
- ``norm``: nodes of a norm lowered by normonnx carry ``normonnx.norm``; the norm subgraphs (in
  graph order) are paired with the torch norm calls / norm points (in execution order) of the
  same kind;
- ``aligned``: only when most nodes lack scope metadata, the remaining leaf calls are aligned
  with the remaining values by a monotone dynamic program on equal shapes. With metadata a
  module whose scope has no node has no value of its own and stays unmapped.

Also the node-metadata readers (scopes, norm records) the other checks share.
"""

from __future__ import annotations

import ast
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import onnx

from .trace import ModuleCall

#: cost of leaving a leaf call unmatched in the alignment (a match costs min(relative error, 10))
_SKIP_COST = 11.0
_MATCH_CAP = 10.0


def node_meta(node: onnx.NodeProto) -> dict[str, str]:
    """A node's metadata properties as a dict."""
    return {p.key: p.value for p in node.metadata_props}


def node_scopes(node: onnx.NodeProto) -> list[str] | None:
    """Module paths enclosing ``node`` (outermost first, root ``""`` included), from exporter metadata."""
    md = node_meta(node)
    raw = md.get("pkg.torch.onnx.name_scopes")
    if raw:
        try:
            scopes = ast.literal_eval(raw)
            if isinstance(scopes, list) and scopes:
                return [str(s) for s in scopes[:-1]]
        except (ValueError, SyntaxError):
            pass
    ns = md.get("namespace")
    if ns:
        parts = [p.split(": ", 1)[0] for p in ns.split("/")]
        return parts[:-1]
    return None


def norm_records(model: onnx.ModelProto) -> dict[str, dict[str, Any]]:
    """normonnx lowering records by norm node name (from the model metadata)."""
    from ..lowering.graph import recorded_lowerings

    return {str(r.get("node")): dict(r) for r in recorded_lowerings(model)}


def _consumers(model: onnx.ModelProto) -> dict[str, list[int]]:
    cons: dict[str, list[int]] = {}
    for i, n in enumerate(model.graph.node):
        for v in n.input:
            if v:
                cons.setdefault(v, []).append(i)
    return cons


def _exits(model: onnx.ModelProto, members: set[int], consumers: Mapping[str, list[int]], outs: set[str]) -> list[str]:
    """Values produced by ``members`` and used outside them (or graph outputs), in node order."""
    result = []
    for i in sorted(members):
        for v in model.graph.node[i].output:
            if v and (v in outs or any(c not in members for c in consumers.get(v, ()))):
                result.append(v)
    return result


def _entries(model: onnx.ModelProto, members: set[int], producer: Mapping[str, int], skip: set[str]) -> list[str]:
    """Values consumed by ``members`` and produced outside them (graph inputs included)."""
    result: list[str] = []
    for i in sorted(members):
        for v in model.graph.node[i].input:
            if v and v not in skip and producer.get(v, -1) not in members and v not in result:
                result.append(v)
    return result


def _rel_err(a: np.ndarray, r: np.ndarray) -> float:
    a64 = a.astype(np.float64)
    r64 = r.astype(np.float64)
    d = np.abs(a64 - r64)
    d = np.where(np.isnan(d), np.inf, d)
    scale = float(np.abs(r64[np.isfinite(r64)]).max()) if np.isfinite(r64).any() else 0.0
    e = float(d.max()) if d.size else 0.0
    return min(_MATCH_CAP, e / scale if scale > 0 else e)


def _align(items: Sequence[ModuleCall], values: Sequence[tuple[str, np.ndarray]]) -> dict[int, int]:
    """Monotone alignment of calls to values on equal shapes (index in items → index in values)."""
    m, n = len(items), len(values)
    if not m or not n:
        return {}
    inf = math.inf
    cost: dict[tuple[int, int], float] = {}
    for i, c in enumerate(items):
        assert c.output is not None
        for j, (_, v) in enumerate(values):
            if v.shape == c.output.shape:
                cost[(i, j)] = _rel_err(v, c.output)
    # f[i][j]: best cost for items[:i] using values[:j]
    f = [[0.0] * (n + 1) for _ in range(m + 1)]
    for i in range(1, m + 1):
        f[i][0] = i * _SKIP_COST
    back: dict[tuple[int, int], str] = {}
    for i in range(1, m + 1):
        for j in range(1, n + 1):
            best, how = f[i][j - 1], "left"
            s = f[i - 1][j] + _SKIP_COST
            if s < best:
                best, how = s, "skip"
            c = cost.get((i - 1, j - 1), inf)
            if c < inf and f[i - 1][j - 1] + c <= best:
                best, how = f[i - 1][j - 1] + c, "match"
            f[i][j] = best
            back[(i, j)] = how
    out: dict[int, int] = {}
    i, j = m, n
    while i > 0 and j > 0:
        how = back[(i, j)]
        if how == "match":
            out[i - 1] = j - 1
            i, j = i - 1, j - 1
        elif how == "left":
            j -= 1
        else:
            i -= 1
    return out


def map_calls(
    model: onnx.ModelProto, calls: Sequence[ModuleCall], values: Mapping[str, np.ndarray]
) -> tuple[dict[str, tuple[str, str]], dict[str, list[str]], dict[str, str], list[str], dict[str, str]]:
    """(call name → (value, how), call name → ONNX entry values, value → norm node name, notes,
    folded pairs: call name → the other call of a Conv/Linear + BatchNorm pair folded into one node).

    A module gets a value of its own or none: with the exporter's scope metadata on most nodes, a
    module whose scope has no node (a constant-folded ``pos(arange(T))``, a fused activation) stays
    unmapped rather than being aligned with a neighbour's value."""
    g = model.graph
    consumers = _consumers(model)
    outs = {o.name for o in g.output}
    producer = {v: i for i, n in enumerate(g.node) for v in n.output if v}
    const_like = {t.name for t in g.initializer} | {v for n in g.node if n.op_type == "Constant" for v in n.output}
    order = {v: producer.get(v, -1) for v in values}
    mapped: dict[str, tuple[str, str]] = {}
    entries: dict[str, list[str]] = {}
    notes: list[str] = []
    used: set[str] = set()

    def fits(c: ModuleCall, v: str, reshaped: bool = False) -> bool:
        # a container's output is its last child's value: containers may share, leaves may not;
        # ``reshaped``: a value of the module's own nodes holding the same elements in another shape
        # (a decomposition that leaves [N, C, H·W] where torch returns [N, C, H, W]) is its output too
        free = v not in used or not c.leaf
        if c.output is None or v not in values or not free:
            return False
        a = values[v]
        return a.shape == c.output.shape or (reshaped and a.size == c.output.size and a.ndim >= 1)

    # 1. exporter scope metadata
    scopes = [node_scopes(n) for n in g.node]
    with_meta = sum(1 for s in scopes if s is not None)
    members: dict[str, set[int]] = {}
    for i, s in enumerate(scopes):
        for path in s or ():
            if path:
                members.setdefault(path, set()).add(i)
    by_module: dict[str, list[ModuleCall]] = {}
    for c in calls:
        by_module.setdefault(c.module, []).append(c)
    for path, cs in by_module.items():
        if path not in members:
            continue
        cs = [c for c in cs if c.point == "output"]  # norm points: by the norm's own nodes below
        ex = _exits(model, members[path], consumers, outs)
        entries_p = [v for v in _entries(model, members[path], producer, const_like) if v in values]
        for c in cs:
            entries[c.name] = entries_p
        live = [c for c in cs if not c.identity and c.output is not None]
        for k, c in enumerate(live):
            cands = [v for v in ex if fits(c, v)] or ([v for v in ex if fits(c, v, True)][-1:] if c.leaf else [])
            if not cands:
                continue
            pick = cands[0] if len(cands) == len(live) - k else min(cands, key=lambda v: _rel_err(values[v], c.output))
            mapped[c.name] = (pick, "metadata")
            if c.leaf:
                used.add(pick)
    folded = _fold_pairs(model, calls, mapped, members, producer, entries)
    for c_name, b_name in folded.items():
        if c_name in mapped and b_name not in mapped:
            mapped[b_name] = (mapped.pop(c_name)[0], "folded")
    folded.update({b: c for c, b in list(folded.items())})
    dense_meta = bool(g.node) and with_meta >= len(g.node) // 2
    if g.node and not dense_meta:
        notes.append(
            f"only {with_meta}/{len(g.node)} ONNX nodes carry module-scope metadata "
            "(torch.onnx drops it when converting to opset 17); mapped by norm metadata and alignment"
        )

    # 2. normonnx norm subgraphs, in graph order, paired with torch norm calls of the same kind
    groups: dict[str, set[int]] = {}
    for i, n in enumerate(g.node):
        name = node_meta(n).get("normonnx.norm")
        if name:
            groups.setdefault(name, set()).add(i)
    records = norm_records(model)
    value_norm: dict[str, str] = {}
    group_out: list[tuple[str, str]] = []  # (norm name, output value)
    for name, idx in sorted(groups.items(), key=lambda kv: min(kv[1])):
        ex = [v for v in _exits(model, idx, consumers, outs) if v in values]
        for v in ex:
            value_norm[v] = name
        if ex:
            group_out.append((name, ex[-1]))
    norm_calls = [c for c in calls if c.norm_kind and not c.identity and c.output is not None]
    pending = [c for c in norm_calls if c.name not in mapped]
    free_groups = [(n, v) for n, v in group_out if v not in used]
    if pending and free_groups:
        kinds_t = [c.norm_kind for c in pending]
        kinds_o = [records.get(n, {}).get("kind") for n, _ in free_groups]
        if len(pending) == len(free_groups) and all(a == b or b is None for a, b in zip(kinds_t, kinds_o)):
            pairs = list(zip(pending, free_groups))
        else:  # pair each call with the next group of its kind and shape, in order
            pairs, j = [], 0
            for c in pending:  # a call with no group of its kind (a folded BatchNorm) consumes none
                k = j
                while k < len(free_groups) and not (
                    records.get(free_groups[k][0], {}).get("kind") in (c.norm_kind, None)
                    and fits(c, free_groups[k][1], True)
                ):
                    k += 1
                if k < len(free_groups):
                    pairs.append((c, free_groups[k]))
                    j = k + 1
        for c, (name, v) in pairs:
            if fits(c, v, True):
                mapped[c.name] = (v, "norm")
                used.add(v)
                if c.name not in entries and name in groups:
                    entries[c.name] = [e for e in _entries(model, groups[name], producer, const_like) if e in values]

    # 3. alignment of the remaining leaf calls between the anchors (only without scope metadata:
    # with it, a leaf whose scope has no node has no value of its own)
    leaves = [c for c in calls if c.leaf and not c.identity and c.output is not None]
    if dense_meta:
        leaves = [c for c in leaves if c.name in mapped]
    cand = sorted((v for v in values if v not in used and order.get(v, -1) >= 0), key=lambda v: order[v])
    segment: list[ModuleCall] = []
    lo = -1

    def flush(hi: float) -> None:
        vals = [(v, values[v]) for v in cand if lo < order.get(v, -1) < hi and v not in used]
        for i, j in _align(segment, vals).items():
            mapped[segment[i].name] = (vals[j][0], "aligned")
            used.add(vals[j][0])

    for c in leaves:
        if c.name in mapped:
            flush(order.get(mapped[c.name][0], -1))
            segment = []
            lo = order.get(mapped[c.name][0], -1)
        else:
            segment.append(c)
    flush(math.inf)
    late = _fold_pairs(model, calls, mapped, members, producer, entries)  # pairs found by alignment
    for c_name, b_name in late.items():
        if c_name in mapped and b_name not in mapped:
            mapped[b_name] = (mapped.pop(c_name)[0], "folded")
            folded.update({c_name: b_name, b_name: c_name})
    by_name = {c.name: c for c in calls}
    for b in calls:  # alignment gave the folded node's value to the BatchNorm itself: name the pair
        src = by_name.get(b.sources[0] or "") if b.norm_kind == "batch" and b.sources else None
        if src is None or b.name not in mapped or src.name in mapped or b.name in folded:
            continue
        i = producer.get(mapped[b.name][0])
        if i is not None and _is_folded_node(g.node[i]):
            mapped[b.name] = (mapped[b.name][0], "folded")
            folded.update({src.name: b.name, b.name: src.name})
    return mapped, entries, value_norm, notes, folded


def _is_folded_node(node: onnx.NodeProto) -> bool:
    """A Conv/Gemm/MatMul that normonnx's pipeline folded a BatchNorm into: its ``normonnx.folded``
    metadata names the BatchNorm (files from before that metadata: the ``…/bn_folded`` naming)."""
    if any(p.key == "normonnx.folded" for p in node.metadata_props):
        return True
    return node.name.endswith("/bn_folded") or any(v.endswith("/bn_folded_bias") for v in node.input)


def _fold_pairs(
    model: onnx.ModelProto,
    calls: Sequence[ModuleCall],
    mapped: Mapping[str, tuple[str, str]],
    members: Mapping[str, set[int]],
    producer: Mapping[str, int],
    entries: dict[str, list[str]],
) -> dict[str, str]:
    """{linear call: batchnorm call} for BatchNorms folded into the op before them: the BatchNorm's
    scope has no node, its input comes from the linear call, and the value mapped to the linear
    call is produced by a folded node (so it is the pair's output, not the linear op's)."""
    out: dict[str, str] = {}
    by_name = {c.name: c for c in calls}
    for b in calls:
        if b.norm_kind != "batch" or b.name in mapped or not b.sources:
            continue
        if b.point == "output" and members.get(b.module):
            continue  # the BatchNorm has nodes of its own
        c = by_name.get(b.sources[0] or "")
        if c is None or c.name not in mapped or c.name in out:
            continue
        i = producer.get(mapped[c.name][0])
        if i is None or not _is_folded_node(model.graph.node[i]):
            continue
        out[c.name] = b.name
        entries[b.name] = list(entries.get(c.name, []))
    return out


__all__ = ["map_calls", "node_meta", "node_scopes", "norm_records"]
