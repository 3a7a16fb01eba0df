"""The ops a norm's fused forms stand for, shared by every lowering that spells them out.

- residual:   ``s = x + r`` (same shapes, no broadcasting), then the norm of ``s``; ``s`` is also the
              node's optional second output (``b.named["sum"]``), which the residual stream reads.
              Gated: ``s = x + gate·r``, gate ``[N or 1, 1, …, C]`` (the Mul, then the Add).
- modulation: ``y·(1 + scale) + shift`` after a norm without γ/β, scale/shift ``[N or 1, 1, …, C]``.
- sample operands (``spec.sample_operands``): scale, shift and gate are ``[N or 1, C]`` (``C`` for
              ``*normalized_shape``) and are first unsqueezed at axes ``1 … rank − 1 − len(ns)``
              (:func:`row_operand`), the op the rewrite ``sample_operands.*`` absorbed; the rest is
              the same graph, so every lowering computes what it computed before the absorption.

Both are written in the norm's own dtype and in the order the exporters emit them (``1 + scale``
first), so a lowering that spells them out computes bitwise what the unfused graph computed.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from onnx import helper

from ..spec import NormSpec
from .builder import Builder


def row_operand(b: Builder, spec: NormSpec, v: str) -> str:
    """A scale / shift / gate in the ``[N or 1, 1, …, 1, *ns]`` form that broadcasts against X:
    ``v`` itself, or for a ``sample_operands`` spec ``Unsqueeze(v, [1, …, rank − 1 − len(ns)])``."""
    if not spec.sample_operands:
        return v
    assert spec.rank is not None  # NormKind.validate: sample_operands needs the rank
    axes = list(range(1, spec.rank - len(spec.normalized_shape or ())))
    return b.op("Unsqueeze", [v, b.ints(axes)]) if axes else v  # opset >= 13 (MIN_OPSET): axes an input


def residual_sum(b: Builder, spec: NormSpec, x: str, params: Mapping[str, str]) -> str:
    """``x + residual`` (recorded as ``b.named["sum"]``), or ``x`` for a spec without residual."""
    if not spec.residual:
        return x
    r = b.op("Mul", [row_operand(b, spec, params["gate"]), params["residual"]]) if spec.gated else params["residual"]
    s = b.op("Add", [x, r])
    b.named["sum"] = s
    return s


def modulate(b: Builder, spec: NormSpec, y: str, params: Mapping[str, str]) -> str:
    """``y·(1 + scale) + shift``, or ``y`` for a spec without modulation."""
    if not spec.modulation:
        return y
    one = b.const(1.0, helper.tensor_dtype_to_np_dtype(spec.onnx_dtype) or np.float32)
    scale, shift = row_operand(b, spec, params["scale"]), row_operand(b, spec, params["shift"])
    return b.op("Add", [b.op("Mul", [y, b.op("Add", [one, scale])]), shift])
