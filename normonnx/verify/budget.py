"""Memory budgets for the steps that expose a model's intermediate values (``localize``).

Exposing every intermediate of a deep or large model as a graph output makes onnxruntime keep
them all alive at once (no buffer reuse) and hand each back as a NumPy copy. With a budget
(``max_memory``, CLI ``--max-memory 8G``) the values are exposed in groups instead, one
onnxruntime session per group, freed before the next: the peak is then the session's weights,
the values already returned (the caller keeps them to compare) and one group in flight.

:func:`plan` sizes each value from its inferred type and shape (symbolic dims bound from the
actual inputs; a value of unknown size counts as the largest known one) and packs them in graph
order. A budget that cannot hold the weights, the values kept and the largest single value is
refused up front with :class:`~normonnx.errors.UnsupportedHere`, saying what each part needs,
instead of failing in an allocation halfway.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import numpy as np
import onnx

from ..errors import InputError, UnsupportedHere

_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(text: str | int) -> int:
    """Bytes of ``"8G"``, ``"512M"``, ``"1.5GiB"``, ``"2048"`` (binary units; ints pass through)."""
    if isinstance(text, int) and not isinstance(text, bool):
        if text <= 0:
            raise InputError(f"a memory budget must be positive, got {text}")
        return text
    m = re.fullmatch(r"\s*(\d+(?:\.\d*)?)\s*([KMGT]?)(?:i?B)?\s*", str(text), re.IGNORECASE)
    if m is None or float(m[1]) <= 0:
        raise InputError(f"cannot read {text!r} as a memory size", note="e.g. 8G, 512M, 1.5GiB or a number of bytes")
    return int(float(m[1]) * _UNITS[m[2].upper()])


def gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**28 else f"{n / 2**20:.1f} MiB"


def value_bytes(t: onnx.TypeProto | None, dims: Mapping[str, int]) -> int | None:
    """Bytes of a tensor of type ``t`` with symbolic dims bound by ``dims`` (None: not known)."""
    if t is None or not t.HasField("tensor_type") or not t.tensor_type.HasField("shape"):
        return None
    try:
        size = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t.tensor_type.elem_type)).itemsize
    except (KeyError, TypeError, ValueError):
        return None
    for d in t.tensor_type.shape.dim:
        if d.HasField("dim_value"):
            size *= d.dim_value
        elif d.dim_param in dims:
            size *= dims[d.dim_param]
        else:
            return None
    return size


def bound_dims(model: onnx.ModelProto, arrays: Mapping[str, np.ndarray]) -> dict[str, int]:
    """Symbolic dims of the graph inputs bound to the sizes of the arrays fed."""
    out: dict[str, int] = {}
    for vi in model.graph.input:
        a = arrays.get(vi.name)
        if a is None:
            continue
        for d, n in zip(vi.type.tensor_type.shape.dim, a.shape):
            if d.dim_param:
                out.setdefault(d.dim_param, int(n))
    return out


def plan(
    names: Sequence[str],
    sizes: Mapping[str, int | None],
    weights: int,
    max_memory: int,
    what: str = "localize",
) -> list[list[str]]:
    """``names`` (in graph order) in groups whose bytes fit ``max_memory`` beside ``weights`` and
    every value already returned. Raises UnsupportedHere when even one value cannot fit."""
    known = [s for s in sizes.values() if s is not None]
    largest = max(known, default=0)
    est = {n: sizes.get(n) if sizes.get(n) is not None else largest for n in names}
    kept = sum(est.values())
    room = max_memory - weights - kept
    biggest = max(est.values(), default=0)
    if room < biggest:
        raise UnsupportedHere(
            f"{what} needs at least {gib(weights + kept + biggest)} here: onnxruntime's weights {gib(weights)}, "
            f"the {len(names)} values it compares {gib(kept)} and the largest value in flight {gib(biggest)}; "
            f"the budget is {gib(max_memory)}",
            note="raise --max-memory (or max_memory=), or compare the model's outputs only (verify --no-localize)",
        )
    groups: list[list[str]] = [[]]
    used = 0
    for n in names:
        if groups[-1] and used + est[n] > room:
            groups.append([])
            used = 0
        groups[-1].append(n)
        used += est[n]
    return [g for g in groups if g]
