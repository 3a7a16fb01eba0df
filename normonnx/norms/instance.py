"""Instance normalization: statistics per (sample, channel) over the spatial axes 2...

``y = (x − μ_nc)/√(σ²_nc + ε)·γ_c + β_c``. With ``track_running_stats=True`` torch uses the
stored running mean/var in eval mode instead (``running_stats=True``): per channel, exactly a
batch norm in eval. ``activation="relu"`` / ``"silu"`` fuses the activation after the affine
(fast style transfer's InstanceNorm → ReLU, CycleGAN / pix2pix generators).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..errors import SpecError
from ..spec import NormSpec
from . import batch
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

NATIVE = NativeOp(
    "InstanceNormalization",
    6,
    {"cpu": frozenset({"float32", "float16"}), "cuda": frozenset({"float32", "float16", "float64"})},
    False,
    "InstanceNormalization-6: onnxruntime fp32 statistics, 4-45x torch's error at offset 1e3 / 1M elements;"
    " CPU kernel is fp32 only (fp16 runs through inserted casts)",
    low_precision_since=15,
)


class InstanceNorm(NormKind):
    name = "instance"
    normonnx_op = "InstanceNorm"
    native = NATIVE
    aten_ops = ("instance_norm",)
    min_rank, max_rank = 3, 5
    activations = frozenset({"silu", "relu"})
    bench_shapes, quick_bench_shapes = NCHW_BENCH_SHAPES, NCHW_QUICK_SHAPES

    def validate(self, spec: NormSpec) -> None:
        super().validate(spec)
        self._check_channels(spec)
        if spec.groups is not None or spec.channels_first or spec.normalized_shape is not None:
            raise SpecError("instance norm takes no groups, channels_first or normalized_shape")

    def reference(self, spec: NormSpec, x: np.ndarray, params: Mapping[str, np.ndarray]) -> np.ndarray:
        # per (sample, channel) over the spatial axes
        return self._channelwise_reference(spec, x, params, tuple(range(2, np.ndim(x))))

    def native_for(self, spec: NormSpec) -> NativeOp | None:
        # with running statistics it *is* a batch norm in eval: BatchNormalization, and its facts
        return batch.NATIVE if spec.running_stats else self.native

    def build_native(self, b: Any, spec: NormSpec, x: str, params: Mapping[str, str]) -> str:
        if spec.running_stats:
            return batch.build_running_stats(b, spec, x, params)
        c = spec.channels or 0
        y = b.op(
            "InstanceNormalization",
            [
                x,
                ob.param_or_fill(b, spec, params, "weight", 1.0, (c,)),
                ob.param_or_fill(b, spec, params, "bias", 0.0, (c,)),
            ],
            epsilon=spec.eps,
        )
        return activate_onnx(b, spec, y)

    def decompose(self, b: Any, spec: NormSpec, x: str, p: Mapping[str, str], compute: int) -> str:
        """Per (sample, channel) over the spatial axes (axis 2 of ``[N, C, -1]``), or the stored
        statistics as batch norm uses them."""
        return ob.channelwise(b, spec, x, p, compute, [2])

    def examples(self) -> list[Example]:
        return [
            ("r4", NormSpec("instance", channels=5, rank=4), (2, 5, 6, 7)),
            ("r3-b1", NormSpec("instance", channels=3, rank=3), (1, 3, 9)),
            ("r5", NormSpec("instance", channels=2, rank=5), (2, 2, 3, 4, 5)),
            ("noaffine", NormSpec("instance", channels=4, has_weight=False, has_bias=False, rank=4), (8, 4, 4, 4)),
            ("running", NormSpec("instance", channels=4, running_stats=True, rank=4), (2, 4, 5, 5)),
            ("relu", NormSpec("instance", channels=5, activation="relu", rank=4), (2, 5, 6, 7)),
            (
                "running-relu",
                NormSpec("instance", channels=4, running_stats=True, activation="relu", rank=4),
                (2, 4, 5, 5),
            ),
            ("silu", NormSpec("instance", channels=3, activation="silu", rank=3), (2, 3, 9)),
        ]

    def example_specs(self) -> list[NormSpec]:
        return [NormSpec("instance", channels=64, rank=4)]

    def large_spec(self) -> NormSpec:
        return NormSpec("instance", channels=2, rank=4)

    def bench_spec(self, shape: Sequence[int]) -> NormSpec:
        return NormSpec("instance", channels=shape[1], rank=len(shape))

    def torch_modules(self) -> tuple[type, ...]:
        import torch.nn as nn

        return (nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)

    def from_module(self, module: Any, rank: int | None = None) -> tuple[NormSpec, Params]:
        running = bool(module.track_running_stats and module.running_mean is not None)
        return self._module_spec(module, rank, channels=int(module.num_features), running_stats=running)

    def torch_forward(self, spec: NormSpec, x: Any, params: Mapping[str, Any]) -> Any:
        import torch.nn.functional as F

        y = F.instance_norm(
            x,
            params.get("mean"),
            params.get("var"),
            params.get("weight"),
            params.get("bias"),
            use_input_stats=not spec.running_stats,
            eps=spec.eps,
        )
        return activate_torch(spec, y)

    def aten_params(self, op: str, args: Sequence[Any]) -> dict[str, Any]:
        a = list(args) + [None] * 4
        return {"weight": a[0], "bias": a[1], "mean": a[2], "var": a[3]}

    def from_aten(self, op: str, args: Sequence[Any], x_shape: Sequence[Any], dtype: str) -> NormSpec:
        # aten::instance_norm(input, weight, bias, running_mean, running_var, use_input_stats, momentum, eps, cudnn)
        weight, bias, rmean, rvar, use_input_stats, _momentum, eps = (list(args) + [None] * 7)[:7]
        running = (not use_input_stats) and rmean is not None and rvar is not None
        return self._aten_spec(x_shape, dtype, weight, bias, eps, channels=int(x_shape[1]), running_stats=bool(running))


KIND = InstanceNorm()
