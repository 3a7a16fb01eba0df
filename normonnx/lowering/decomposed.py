"""Decomposed lowering: primitive ops only (opset >= 13), numerically stable.

Each kind writes its own stable decomposition (``NormKind.decompose``, built from the blocks of
:mod:`normonnx.norms.onnx_blocks`: two-pass statistics accumulated in float64, never
E[x²] − E[x]²); this strategy lowers every registered kind that has one, adding what all kinds
share around it: a fused residual input and modulation (:mod:`.fused`), a fused activation, and
the float32 compute of fp16/bf16 inputs (stash_type) cast back at the end.
"""

from __future__ import annotations

from collections.abc import Mapping

from onnx import TensorProto

from ..norms import KINDS, get_kind
from ..norms.base import activate_onnx
from ..norms.onnx_blocks import moments_normalize
from ..spec import NormSpec
from .base import ALL_DTYPES, MIN_OPSET, Capability, Strategy, same_dtypes
from .builder import Builder

_DEC = Capability(MIN_OPSET, same_dtypes(ALL_DTYPES), True, "primitive ops, two-pass statistics in float64")

__all__ = ["STRATEGY", "build_decomposed", "moments_normalize"]


def _compute_type(spec: NormSpec) -> int:
    return TensorProto.FLOAT if spec.stash_fp32 else spec.onnx_dtype


class Decomposed(Strategy):
    name = "decomposed"
    description = "primitive ONNX ops, two-pass statistics in float64"
    builds_fused_forms = True

    @property
    def capabilities(self) -> dict[str, Capability]:  # type: ignore[override]
        """Every registered kind that writes a decomposition."""
        return {k: _DEC for k, kind in KINDS.items() if kind.decompose is not None}

    def build(self, b: Builder, spec: NormSpec, x: str, params: Mapping[str, str]) -> str:
        return build_decomposed(b, spec, x, params)


def build_decomposed(b: Builder, spec: NormSpec, x: str, params: Mapping[str, str]) -> str:
    """The decomposition itself; also the body of the normonnx function strategy. A residual input
    is added and a modulation applied in the norm's dtype around it (:mod:`.fused`)."""
    from .fused import modulate, residual_sum

    plain = {k: v for k, v in params.items() if k not in ("residual", "scale", "shift", "gate")}
    y = _build_norm(b, spec.replace(residual=False, modulation=False), residual_sum(b, spec, x, params), plain)
    return modulate(b, spec, y, params)


def _build_norm(b: Builder, spec: NormSpec, x: str, params: Mapping[str, str]) -> str:
    ct = _compute_type(spec)
    cast_in = (lambda v: b.cast(v, ct)) if spec.stash_fp32 else (lambda v: v)
    p = {k: cast_in(v) for k, v in params.items()}
    xc = cast_in(x)
    y = get_kind(spec.kind).decompose(b, spec, xc, p, ct)
    y = activate_onnx(b, spec, y)
    return b.cast(y, spec.onnx_dtype) if spec.stash_fp32 else y


STRATEGY = Decomposed()
