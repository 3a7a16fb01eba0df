"""Native lowering: the standard ONNX op of each kind, at the opset that gave it its semantics.

Each kind declares its op (``NormKind.native``: op, opset, dtypes per provider, stability) and
builds it (``NormKind.build_native``); this strategy turns the declaration into its capability
and asks the kind. Today:

- batch:    BatchNormalization (eval, running statistics; inference semantics stable since 9)
- instance: InstanceNormalization-6 (input statistics); with running statistics it *is* a batch
            norm in eval, so BatchNormalization is emitted.
- layer:    LayerNormalization-17 over trailing axes (stash_type=1: fp32 statistics).
- group:    GroupNormalization-21, per-channel scale. Never the deprecated opset-18 op, whose
            scale was per group. onnxruntime has no kernel for it and inlines the ONNX function
            body, which computes σ² = E[x²] − E[x]²: NaN on offset-1e3 inputs, so it is marked
            unstable and is only chosen on request.
- rms:      RMSNormalization-23.
Optional scale/bias become constant ones/zeros because the native ops require them.
"""

from __future__ import annotations

from collections.abc import Mapping

from ..norms import KINDS, NativeOp, get_kind
from ..rejection import OK, CheckResult, Rejection
from ..spec import NormSpec
from .base import MIN_OPSET, Capability, Strategy
from .builder import Builder


def capability_of(native: NativeOp) -> Capability:
    """The strategy's capability entry for a kind's declared native op."""
    return Capability(
        max(MIN_OPSET, native.since), native.dtypes, native.stable, native.note, stable_up_to=native.stable_up_to
    )


class Native(Strategy):
    name = "native"
    description = "the standard ONNX op for the kind"

    @property
    def capabilities(self) -> dict[str, Capability]:  # type: ignore[override]
        """Every registered kind that declares a native op."""
        return {k: capability_of(kind.native) for k, kind in KINDS.items() if kind.native is not None}

    def capability(self, spec: NormSpec) -> Capability | None:
        # the kind may emit another kind's op for this spec (instance with running statistics)
        native = get_kind(spec.kind).native_for(spec) if spec.kind in KINDS else None
        return capability_of(native) if native is not None else None

    def check_spec(self, spec: NormSpec, opset: int, provider: str) -> CheckResult:
        why = get_kind(spec.kind).native_check(spec, opset, provider)
        if why:
            return Rejection(why)
        native = get_kind(spec.kind).native_for(spec)
        since = native.low_precision_since if native is not None else None
        if spec.stash_fp32 and since is not None and opset < since:
            return Rejection(f"fp16 native lowering of this kind needs opset >= {since}")
        return OK

    def build(self, b: Builder, spec: NormSpec, x: str, params: Mapping[str, str]) -> str:
        return get_kind(spec.kind).build_native(b, spec, x, params)


STRATEGY = Native()
