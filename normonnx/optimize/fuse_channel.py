"""InstanceNormalization and (unfolded) BatchNormalization lifted into the portable ``normonnx`` ops.

- ``instance_norm.native``: ``InstanceNormalization(x, scale, B)`` → ``normonnx.InstanceNorm``
  with γ = scale, β = B: the same function (statistics per sample and channel over the spatial
  axes, ``(x − μ)/√(σ² + ε)·γ_c + β_c``). onnxruntime's CPU kernel keeps its statistics in float32
  (4–45× torch's error at offset 1e3 or over 1M elements, measured: ``normonnx capabilities``),
  so lifting it is also a fix; the selector then lowers the node as ``normonnx export`` does.
- ``batch_norm.native``: an inference ``BatchNormalization(x, scale, B, mean, var)`` that
  :mod:`.fold_batchnorm` could not fold (no linear op beside it: pre-activation ResNets, DenseNets,
  a BatchNorm1d after a pooling) → ``normonnx.BatchNorm`` with ``running_stats=1``:
  ``(x − mean)/√(var + ε)·γ + β`` per channel, exactly the op's meaning since opset 9. Refused in
  training mode (``training_mode=1`` or the running-statistics outputs requested).

Both run after :mod:`.fuse_group`, whose ``group_norm.via_instance`` claims the
``Reshape → InstanceNormalization → Reshape`` of a GroupNorm first, and before
:mod:`.fuse_activation`, which then fuses a following SiLU / ReLU into the lifted node.
"""

from __future__ import annotations

from typing import ClassVar

import onnx

from ..rejection import OK, CheckResult, Rejection
from ..spec import NormSpec
from ._rules import NativeNorm
from .graph import FLOAT_TYPES, GraphView, attr, dtype_name
from .rule import Match, Rule


def _channels(g: GraphView, node: onnx.NodeProto, min_rank: int) -> tuple[CheckResult, str, int, int]:
    """(verdict, dtype, C, rank) of the node's float input of static channel dim and rank ≥ ``min_rank``."""
    x = node.input[0]
    et = g.elem_type(x)
    if et not in FLOAT_TYPES:
        return Rejection(f"input {x!r} has element type {dtype_name(et)}", x), "", 0, 0
    shape = g.shape(x)
    if shape is None or len(shape) < min_rank:
        return Rejection(f"rank of {x!r} is unknown or below {min_rank}", x), "", 0, 0
    if not isinstance(shape[1], int):
        return Rejection(f"channel dim of {x!r} is not static", x), "", 0, 0
    return OK, FLOAT_TYPES[et], int(shape[1]), len(shape)  # type: ignore[index]


def _per_channel(g: GraphView, node: onnx.NodeProto, slots: tuple[str, ...], c: int) -> CheckResult | dict:
    """Inputs 1… of the node by slot name, each of shape [C]."""
    params: dict[str, object] = {}
    for slot, value in zip(slots, node.input[1:]):
        if not value:
            return Rejection(f"{slot} input is missing", node.output[0])
        if g.shape(value) != (c,):
            return Rejection(f"{slot} of shape {g.shape(value)}, expected [{c}]", value)
        params[slot] = value
    return params


class _ChannelNative(NativeNorm):
    """A native per-channel norm op lifted: its float input with a static channel dim, inputs 1…
    the per-channel ``slots`` of shape [C], the spec of ``kind`` with ``fields``."""

    min_rank: ClassVar[int] = 2
    slots: ClassVar[tuple[str, ...]] = ()
    fields: ClassVar[dict[str, object]] = {}

    def refuse(self, node: onnx.NodeProto) -> CheckResult:
        return OK

    def check(self, g: GraphView, m: Match) -> CheckResult:
        v = self.refuse(m.anchor)
        if not v:
            return v
        v, dt, c, rank = _channels(g, m.anchor, self.min_rank)
        if not v:
            return v
        params = _per_channel(g, m.anchor, self.slots, c)
        if not isinstance(params, dict):
            return params
        m.facts["params"] = params
        eps = float(attr(m.anchor, "epsilon", 1e-5))
        m.facts["spec"] = NormSpec(self.kind, eps=eps, channels=c, dtype=dt, rank=rank, **self.fields)  # type: ignore[arg-type]
        return OK


class InstanceNormNative(_ChannelNative):
    name = "instance_norm.native"
    anchor_ops = ("InstanceNormalization",)
    hint = "instance_norm"
    kind, min_rank, slots = "instance", 3, ("weight", "bias")


class BatchNormNative(_ChannelNative):
    name = "batch_norm.native"
    anchor_ops = ("BatchNormalization",)
    hint = "batch_norm"
    kind, min_rank, slots = "batch", 2, ("weight", "bias", "mean", "var")
    fields: ClassVar[dict[str, object]] = {"running_stats": True}

    def refuse(self, node: onnx.NodeProto) -> CheckResult:
        if int(attr(node, "training_mode", 0)) or len([o for o in node.output if o]) > 1:
            return Rejection("BatchNormalization in training mode (batch statistics, running-statistics outputs)")
        return OK


RULES: list[Rule] = [InstanceNormNative(), BatchNormNative()]
