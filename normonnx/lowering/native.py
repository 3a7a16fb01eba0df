"""Native lowering: the standard ONNX op of each kind, at the opset that gave it its semantics.

- batch:    BatchNormalization (eval, running statistics; inference signature stable since 9)
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

import numpy as np
from onnx import helper

from ..rejection import OK, CheckResult, Rejection
from ..spec import NormSpec
from .base import Capability, Strategy, same_dtypes
from .builder import Builder

_F = {"float32", "float16", "float64"}
_CAPS = {
    "batch": Capability(13, same_dtypes(_F), True, "BatchNormalization (eval)"),
    "instance": Capability(
        13,
        {"cpu": frozenset({"float32", "float16"}), "cuda": frozenset(_F)},
        False,
        "InstanceNormalization-6: onnxruntime fp32 statistics, 4-45x torch's error at offset 1e3 / 1M elements;"
        " CPU kernel is fp32 only (fp16 runs through inserted casts)",
    ),
    "layer": Capability(
        17,
        same_dtypes(_F | {"bfloat16"}),
        True,
        "LayerNormalization-17: onnxruntime accumulates in fp32, >2x torch's error past ~16K elements",
        stable_up_to=4096,
    ),
    "group": Capability(
        21,
        same_dtypes(_F),
        False,
        "GroupNormalization-21: onnxruntime inlines its function body, σ²=E[x²]−E[x]² gives NaN at offset 1e3",
    ),
    "rms": Capability(
        23,
        {"cpu": frozenset(_F), "cuda": frozenset(_F | {"bfloat16"})},  # CPU: no bf16 kernel, body's Mul has none either
        True,
        "RMSNormalization-23: onnxruntime accumulates in fp32, >2x torch's error past ~16K elements",
        stable_up_to=4096,
    ),
}


def _np_dtype(spec: NormSpec) -> np.dtype:
    return np.dtype(helper.tensor_dtype_to_np_dtype(spec.onnx_dtype))


class Native(Strategy):
    name = "native"
    description = "the standard ONNX op for the kind"
    capabilities = _CAPS

    def capability(self, spec: NormSpec) -> Capability | None:
        # an instance norm with running statistics is emitted as BatchNormalization: its facts apply
        if spec.kind == "instance" and spec.running_stats:
            return self.capabilities["batch"]
        return super().capability(spec)

    def check_spec(self, spec: NormSpec, opset: int, provider: str) -> CheckResult:
        if spec.kind == "batch" and not spec.running_stats:
            return Rejection(
                "BatchNormalization in inference uses running statistics; batch statistics need the decomposition",
            )
        if spec.kind == "layer" and spec.channels_first:
            return Rejection("LayerNormalization normalises trailing axes; channels-first needs the decomposition")
        if (
            spec.kind == "instance"
            and spec.running_stats
            and spec.dtype not in self.capabilities["batch"].dtypes[provider]
        ):
            return Rejection(f"{spec.dtype} BatchNormalization not available on {provider}")
        if spec.stash_fp32 and spec.kind in ("batch", "instance", "group") and opset < 15:
            return Rejection("fp16 native lowering of this kind needs opset >= 15")
        return OK

    def build(self, b: Builder, spec: NormSpec, x: str, params: Mapping[str, str]) -> str:
        dt = _np_dtype(spec)

        def param(name: str, fill: float, shape: tuple[int, ...]) -> str:
            return params[name] if name in params else b.const(np.full(shape, fill), dt)

        kind = spec.kind
        if kind in ("batch", "instance") and spec.running_stats:
            c = spec.channels or 0
            return b.op(
                "BatchNormalization",
                [x, param("weight", 1.0, (c,)), param("bias", 0.0, (c,)), params["mean"], params["var"]],
                epsilon=spec.eps,
            )
        if kind == "instance":
            c = spec.channels or 0
            return b.op(
                "InstanceNormalization", [x, param("weight", 1.0, (c,)), param("bias", 0.0, (c,))], epsilon=spec.eps
            )
        if kind == "layer":
            ns = spec.normalized_shape or ()
            # an absent bias is omitted, not passed as "": onnxruntime 1.32's graph optimizer (level
            # EXTENDED, so every default session) segfaults on LayerNormalization(x, γ, "") followed
            # by a Mul and an Add of run-time values (the unfused modulation), measured here
            return b.op(
                "LayerNormalization",
                [x, param("weight", 1.0, ns)] + ([params["bias"]] if "bias" in params else []),
                axis=-len(ns),
                epsilon=spec.eps,
                stash_type=1,
            )
        if kind == "group":
            c = spec.channels or 0
            y = b.op(
                "GroupNormalization",
                [x, param("weight", 1.0, (c,)), param("bias", 0.0, (c,))],
                num_groups=spec.groups,
                epsilon=spec.eps,
                stash_type=11 if spec.dtype == "float64" else 1,  # statistics in double for double inputs
            )
            return b.op("Mul", [y, b.op("Sigmoid", [y])]) if spec.activation == "silu" else y
        if kind == "rms":
            ns = spec.normalized_shape or ()
            return b.op(
                "RMSNormalization", [x, param("weight", 1.0, ns)], axis=-len(ns), epsilon=spec.eps, stash_type=1
            )
        raise AssertionError(kind)


STRATEGY = Native()
