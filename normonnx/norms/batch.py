"""Batch normalization: ``y = (x − μ_c)/√(σ²_c + ε)·γ_c + β_c`` over channel axis 1.

In eval mode μ, σ² are the stored running statistics (``running_stats=True``), so the op is a
per-channel affine map. A BatchNorm built with ``track_running_stats=False`` (or
``F.batch_norm(training=True)``, as weight standardization code uses) normalises with the
statistics of the batch itself over every axis but 1 (``running_stats=False``); torch does that
in eval mode too, and so do we. ``activation="relu"`` / ``"silu"`` fuses the activation after
the affine (pre-activation ResNets and DenseNets run BatchNorm → ReLU with no conv to fold into).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..errors import SpecError
from ..spec import NormSpec
from . import onnx_blocks as ob
from .base import (
    NCHW_BENCH_SHAPES,
    NCHW_QUICK_SHAPES,
    Example,
    NativeOp,
    NormKind,
    Params,
    activate_onnx,
    activate_torch,
)

_F = frozenset({"float32", "float16", "float64"})
#: BatchNormalization in eval: ``(x − mean)/√(var + ε)·scale + B`` per channel has been the op's
#: meaning since opset 9 (which dropped ``spatial``); 14 added ``training_mode`` and 15 let
#: scale/mean have their own types, neither of which inference relies on. onnxruntime's float16
#: kernel is only reached from opset 15 on (``low_precision_since``).
NATIVE = NativeOp(
    "BatchNormalization", 9, {"cpu": _F, "cuda": _F}, True, "BatchNormalization (eval)", low_precision_since=15
)


def build_running_stats(b: Any, spec: NormSpec, x: str, params: Mapping[str, str]) -> str:
    """BatchNormalization with the stored mean/var (batch in eval, instance with tracked stats),
    then the spec's fused activation."""
    c = spec.channels or 0
    y = b.op(
        "BatchNormalization",
        [
            x,
            ob.param_or_fill(b, spec, params, "weight", 1.0, (c,)),
            ob.param_or_fill(b, spec, params, "bias", 0.0, (c,)),
            params["mean"],
            params["var"],
        ],
        epsilon=spec.eps,
    )
    return activate_onnx(b, spec, y)


class BatchNorm(NormKind):
    name = "batch"
    normonnx_op = "BatchNorm"
    native = NATIVE
    # batch_norm before the exporter's decompositions; the two private overloads after them
    aten_ops = ("batch_norm", "_native_batch_norm_legit_no_training", "_native_batch_norm_legit.no_stats")
    min_rank, max_rank = 2, 5
    activations = frozenset({"silu", "relu"})
    bench_shapes, quick_bench_shapes = NCHW_BENCH_SHAPES, NCHW_QUICK_SHAPES

    def validate(self, spec: NormSpec) -> None:
        super().validate(spec)
        self._check_channels(spec)
        if spec.groups is not None or spec.channels_first or spec.normalized_shape is not None:
            raise SpecError("batch norm takes no groups, channels_first or normalized_shape")

    def reference(self, spec: NormSpec, x: np.ndarray, params: Mapping[str, np.ndarray]) -> np.ndarray:
        # batch statistics: per channel over N and the spatial axes
        return self._channelwise_reference(spec, x, params, (0, *range(2, np.ndim(x))))

    def native_check(self, spec: NormSpec, opset: int, provider: str) -> str:
        if not spec.running_stats:
            return "BatchNormalization in inference uses running statistics; batch statistics need the decomposition"
        return ""

    def build_native(self, b: Any, spec: NormSpec, x: str, params: Mapping[str, str]) -> str:
        return build_running_stats(b, spec, x, params)

    def decompose(self, b: Any, spec: NormSpec, x: str, p: Mapping[str, str], compute: int) -> str:
        """Per channel over N and the spatial axes (axes 0, 2 of ``[N, C, -1]``), or the stored
        statistics as a per-channel affine map ``(x − mean)·γ/√(var + ε) + β``."""
        return ob.channelwise(b, spec, x, p, compute, [0, 2])

    def examples(self) -> list[Example]:
        return [
            ("r4", NormSpec("batch", channels=6, running_stats=True, rank=4), (2, 6, 5, 4)),
            ("r2", NormSpec("batch", channels=6, running_stats=True, rank=2), (8, 6)),
            (
                "r3-noaffine",
                NormSpec("batch", channels=3, running_stats=True, has_weight=False, has_bias=False, rank=3),
                (1, 3, 7),
            ),
            ("r5-c1", NormSpec("batch", channels=1, running_stats=True, rank=5), (2, 1, 2, 3, 4)),
            ("batchstats", NormSpec("batch", channels=4, running_stats=False, rank=4), (8, 4, 3, 3)),
            ("relu", NormSpec("batch", channels=6, running_stats=True, activation="relu", rank=4), (2, 6, 5, 4)),
            (
                "batchstats-silu",
                NormSpec("batch", channels=4, running_stats=False, activation="silu", rank=4),
                (8, 4, 3, 3),
            ),
        ]

    def example_specs(self) -> list[NormSpec]:
        return [NormSpec("batch", channels=64, running_stats=True, rank=4)]

    def large_spec(self) -> NormSpec:
        return NormSpec("batch", channels=2, running_stats=False, rank=4)

    def bench_spec(self, shape: Sequence[int]) -> NormSpec:
        return NormSpec("batch", channels=shape[1], running_stats=True, rank=len(shape))

    def torch_modules(self) -> tuple[type, ...]:
        import torch.nn as nn

        return (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)

    def from_module(self, module: Any, rank: int | None = None) -> tuple[NormSpec, Params]:
        running = module.running_mean is not None and module.track_running_stats
        return self._module_spec(module, rank, channels=int(module.num_features), running_stats=bool(running))

    def torch_forward(self, spec: NormSpec, x: Any, params: Mapping[str, Any]) -> Any:
        import torch.nn.functional as F

        y = F.batch_norm(
            x,
            params.get("mean"),
            params.get("var"),
            params.get("weight"),
            params.get("bias"),
            training=not spec.running_stats,
            eps=spec.eps,
        )
        return activate_torch(spec, y)

    def _normalize_args(self, op: str, args: Sequence[Any]) -> tuple[Any, ...]:
        """(weight, bias, running_mean, running_var, training, eps) of any of the overloads."""
        a = list(args) + [None] * 8
        if op == "_native_batch_norm_legit_no_training":  # (w, b, rm, rv, momentum, eps)
            return a[0], a[1], a[2], a[3], False, a[5]
        if op == "_native_batch_norm_legit.no_stats":  # (w, b, training, momentum, eps)
            return a[0], a[1], None, None, True, a[4]
        return a[0], a[1], a[2], a[3], a[4], a[6]  # batch_norm(w, b, rm, rv, training, momentum, eps, cudnn)

    def aten_params(self, op: str, args: Sequence[Any]) -> dict[str, Any]:
        w, b, rm, rv, _, _ = self._normalize_args(op, args)
        return {"weight": w, "bias": b, "mean": rm, "var": rv}

    def aten_outputs(self, op: str) -> int:
        return 1 if op == "batch_norm" else 3

    def from_aten(self, op: str, args: Sequence[Any], x_shape: Sequence[Any], dtype: str) -> NormSpec:
        weight, bias, rmean, rvar, training, eps = self._normalize_args(op, args)
        running = (not training) and rmean is not None and rvar is not None
        return self._aten_spec(x_shape, dtype, weight, bias, eps, channels=int(x_shape[1]), running_stats=running)


KIND = BatchNorm()
