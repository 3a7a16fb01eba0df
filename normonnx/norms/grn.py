"""Global response normalization (ConvNeXt-V2, Woo et al. 2023): per-channel spatial L2 norms,
divided by their mean over channels, gate the input.

For each sample and channel c, with the spatial axes S (axes 2.. of N,C,... when
``channels_first``, else axes 1..r-2 of N,...,C)::

    G_c = ‖x_c‖₂ over S                      (global aggregation)
    N_c = G_c / (mean_c' G_c' + ε)           (divisive normalisation across channels)
    y   = γ_c · (x · N_c) + β_c + x          (calibration, with the residual)

ε is added to the channel mean of G, not under a square root. γ, β are per channel (timm's
``GlobalResponseNorm`` stores them as ``(C,)`` initialised to zero, so the layer starts as the
identity); a missing γ means 1, a missing β means 0. There is no native ONNX op: the stable
decomposition (sums of squares in float64) is the lowering, and the function strategy carries it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from onnx import TensorProto

from ..errors import SpecError
from ..spec import NormSpec
from .base import Example, NormKind, Params


class GlobalResponseNorm(NormKind):
    name = "grn"
    normonnx_op = "GlobalResponseNorm"
    #: no native ONNX op; torch has no aten op for it either: normonnx.nn's
    #: ``normonnx::global_response_norm`` is the call (the compiled kernel library has no GRN op)
    aten_ops = ()
    min_rank, max_rank = 3, 5

    def validate(self, spec: NormSpec) -> None:
        super().validate(spec)
        if spec.channels is None or spec.channels < 1:
            raise SpecError("global response norm needs a positive number of channels")
        if spec.groups is not None or spec.normalized_shape is not None or spec.running_stats:
            raise SpecError("global response norm takes no groups, normalized_shape or running statistics")

    def axes(self, spec: NormSpec, rank: int) -> tuple[tuple[int, ...], int]:
        """(spatial axes, channel axis) for an input of ``rank``."""
        if spec.channels_first:
            return tuple(range(2, rank)), 1
        return tuple(range(1, rank - 1)), rank - 1

    def _view(self, spec: NormSpec, a: np.ndarray, rank: int) -> np.ndarray:
        a = np.asarray(a, np.float64)
        return self._channel_view(a, rank) if spec.channels_first else a

    def reference(self, spec: NormSpec, x: np.ndarray, params: Mapping[str, np.ndarray]) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        spatial, ch = self.axes(spec, x.ndim)
        if x.shape[ch] != spec.channels:
            raise SpecError(f"global response norm: input of shape {x.shape} does not have {spec.channels} channels")
        gx = np.sqrt((x * x).sum(axis=spatial, keepdims=True))
        nx = gx / (gx.mean(axis=ch, keepdims=True) + spec.eps)
        xn = x * nx
        y = xn * self._view(spec, params["weight"], x.ndim) if spec.has_weight else xn
        if spec.has_bias:
            y = y + self._view(spec, params["bias"], x.ndim)
        return y + x

    def random_params(self, spec: NormSpec, rng: np.random.Generator) -> Params:
        # γ≈0.5 (not 0: a zero γ would make the layer the identity and hide the normalisation)
        p: Params = {}
        if spec.has_weight:
            p["weight"] = 0.5 + 0.25 * rng.standard_normal(spec.affine_shape)
        if spec.has_bias:
            p["bias"] = 0.25 * rng.standard_normal(spec.affine_shape)
        return p

    def examples(self) -> list[Example]:
        cases = [
            ("cl-r4", NormSpec("grn", channels=8, eps=1e-6), (2, 5, 4, 8)),
            ("cf-r4", NormSpec("grn", channels=6, channels_first=True, eps=1e-6), (2, 6, 3, 5)),
            ("cf-r3-b1", NormSpec("grn", channels=4, channels_first=True), (1, 4, 9)),
            ("cl-hw1", NormSpec("grn", channels=4), (2, 1, 1, 4)),
            ("noaffine", NormSpec("grn", channels=4, has_weight=False, has_bias=False), (2, 3, 3, 4)),
        ]
        return [(i, s.replace(rank=len(shape)), shape) for i, s, shape in cases]

    def example_specs(self) -> list[NormSpec]:
        return [NormSpec("grn", channels=96, eps=1e-6, rank=4)]  # ConvNeXt-V2's channels-last GRN

    def large_spec(self) -> NormSpec:
        return NormSpec("grn", channels=2, channels_first=True, rank=4)

    def torch_modules(self) -> tuple[type, ...]:
        from ..nn import GlobalResponseNorm as Layer

        return (Layer,)

    def from_module(self, module: Any, rank: int | None = None) -> tuple[NormSpec, Params]:
        return self._module_spec(
            module, rank, channels=int(module.num_features), channels_first=bool(module.channels_first)
        )

    def torch_forward(self, spec: NormSpec, x: Any, params: Mapping[str, Any]) -> Any:
        """torch's own ops, in the input dtype: what a torch user of the formula gets."""
        import torch

        rank = x.dim()
        spatial, ch = self.axes(spec, rank)
        shape = [1] * rank
        shape[ch] = -1
        gx = torch.linalg.vector_norm(x, 2, dim=spatial, keepdim=True)
        nx = gx / (gx.mean(dim=ch, keepdim=True) + spec.eps)
        y = x * nx
        if params.get("weight") is not None:
            y = y * params["weight"].reshape(shape)
        if params.get("bias") is not None:
            y = y + params["bias"].reshape(shape)
        return y + x

    def from_aten(self, op: str, args: Sequence[Any], x_shape: Sequence[Any], dtype: str) -> NormSpec:
        raise NotImplementedError("global response norm has no aten op; normonnx.nn's custom op describes it")

    def attributes(self, spec: NormSpec) -> dict[str, Any]:
        attrs = super().attributes(spec)
        if spec.channels_first:
            attrs["channels_first"] = 1
        return attrs

    def decompose(self, b: Any, spec: NormSpec, x: str, p: Mapping[str, str], compute: int) -> str:
        """The stable decomposition on an ``[N, C, -1]`` (or ``[N, -1, C]``) view of ``x`` (already
        in the ``compute`` dtype): the spatial sums of squares and the channel mean in float64,
        the gate ``N`` rounded once to ``compute``. Zero inputs give ``G = 0``, ``N = 0``, ``y = β``."""
        c = int(spec.channels or 0)
        f64 = TensorProto.DOUBLE
        shape = b.op("Shape", [x])
        if spec.channels_first:
            x3 = b.op("Reshape", [x, b.ints([0, c, -1])])
            spatial, ch, col = [2], [1], b.ints([c, 1])
            view = lambda v: b.op("Reshape", [v, col])
        else:
            x3 = b.op("Reshape", [x, b.ints([0, -1, c])])
            spatial, ch = [1], [2]
            view = lambda v: v
        x64 = x3 if compute == f64 else b.cast(x3, f64)
        gx = b.op("Sqrt", [b.reduce("ReduceSumSquare", x64, spatial)])
        den = b.op("Add", [b.reduce("ReduceMean", gx, ch), b.const(spec.eps, np.float64)])
        nx = b.op("Div", [gx, den])
        y = b.op("Mul", [x3, nx if compute == f64 else b.cast(nx, compute)])
        if "weight" in p:
            y = b.op("Mul", [y, view(p["weight"])])
        if "bias" in p:
            y = b.op("Add", [y, view(p["bias"])])
        y = b.op("Add", [y, x3])
        return b.op("Reshape", [y, shape])


KIND = GlobalResponseNorm()
