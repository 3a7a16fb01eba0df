"""The norms torch has no single aten op for, as registered torch custom ops (``torch.ops.normonnx``).

Each op is one call to torch's exporter, so export needs no pattern matching: the exporter's
translation table turns it into one ``normonnx.<Op>`` node (see :data:`EXPORTS`), lowered by the
selector like every other norm.

- ``normonnx::layer_norm_cf(x, weight, bias, eps)``: LayerNorm over axis 1 of N,C,... (ConvNeXt);
- ``normonnx::group_norm(x, num_groups, weight, bias, eps, activation)``: GroupNorm, ``activation``
  "", "silu" or "relu" fused after the affine (``normonnx.norms.base.ACTIVATIONS``);
- ``normonnx::global_response_norm(x, weight, bias, eps, channels_first)``: GRN (ConvNeXt-V2).

Eager implementations are torch's own ops; float16/bfloat16 inputs are computed in float32 and
cast back once, as the ONNX lowering does (``NormSpec.stash_fp32``). Autograd: the backward of
each op differentiates that same eager implementation (recomputed under ``enable_grad``), so
gradients are torch's gradients of the formula; double backward is not supported.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ..norms.base import ACTIVATIONS
from ..spec import NormSpec

_HALF = (torch.float16, torch.bfloat16)


def _stash(t: torch.Tensor | None) -> torch.Tensor | None:
    return t.float() if t is not None and t.dtype in _HALF else t


def layer_norm_cf_impl(
    x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, eps: float
) -> torch.Tensor:
    """``F.layer_norm`` over axis 1: ``(x − μ)/√(σ² + ε)·γ_c + β_c``, statistics per position."""
    y = F.layer_norm(_stash(x).movedim(1, -1), (x.shape[1],), _stash(weight), _stash(bias), eps)
    return y.movedim(-1, 1).to(x.dtype)


def group_norm_impl(
    x: torch.Tensor,
    num_groups: int,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    eps: float,
    activation: str,
) -> torch.Tensor:
    """``F.group_norm`` then ``activation`` ("", "silu" or "relu"), both in the compute dtype."""
    y = F.group_norm(_stash(x), num_groups, _stash(weight), _stash(bias), eps)
    if activation:
        y = getattr(F, ACTIVATIONS[activation].torch_fn)(y)
    return y.to(x.dtype)


def global_response_norm_impl(
    x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, eps: float, channels_first: bool
) -> torch.Tensor:
    """``G = ‖x‖₂`` over the spatial axes, ``N = G/(mean_c G + ε)``, ``y = γ·(x·N) + β + x``."""
    xs = _stash(x)
    rank = x.dim()
    spatial = tuple(range(2, rank)) if channels_first else tuple(range(1, rank - 1))
    ch = 1 if channels_first else rank - 1
    shape = [1] * rank
    shape[ch] = -1
    gx = torch.linalg.vector_norm(xs, 2, dim=spatial, keepdim=True)
    nx = gx / (gx.mean(dim=ch, keepdim=True) + eps)
    y = xs * nx
    if weight is not None:
        y = y * _stash(weight).reshape(shape)
    if bias is not None:
        y = y + _stash(bias).reshape(shape)
    return (y + xs).to(x.dtype)


def _define(name: str, impl: Callable[..., torch.Tensor]) -> Any:
    """Register ``normonnx::<name>`` with ``impl``, a shape-preserving fake, and autograd through ``impl``."""
    op = torch.library.custom_op(f"normonnx::{name}", mutates_args=())(impl)

    @op.register_fake
    def _(x: torch.Tensor, *args: Any) -> torch.Tensor:
        return torch.empty_like(x)

    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
        tensors = [i if isinstance(i, torch.Tensor) else None for i in inputs]
        ctx.save_for_backward(*[t for t in tensors if t is not None])
        ctx.slots = [t is not None for t in tensors]
        ctx.others = [None if isinstance(i, torch.Tensor) else i for i in inputs]

    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        saved = iter(ctx.saved_tensors)
        args: list[Any] = []
        leaves: list[torch.Tensor] = []
        for i, (is_tensor, other) in enumerate(zip(ctx.slots, ctx.others)):
            if not is_tensor:
                args.append(other)
                continue
            t = next(saved).detach()
            if ctx.needs_input_grad[i]:
                t.requires_grad_(True)
                leaves.append(t)
            args.append(t)
        if not leaves:
            return tuple(None for _ in ctx.slots)
        with torch.enable_grad():
            grads = iter(torch.autograd.grad(impl(*args), leaves, grad, allow_unused=True))
        return tuple(next(grads) if need else None for need in ctx.needs_input_grad)

    op.register_autograd(backward, setup_context=setup_context)
    return op


layer_norm_cf = _define("layer_norm_cf", layer_norm_cf_impl)
group_norm = _define("group_norm", group_norm_impl)
global_response_norm = _define("global_response_norm", global_response_norm_impl)


# ----------------------------------------------------------------------------------------------
# export: what each op means as a NormSpec (read by normonnx.exporter's translation table)


@dataclass(frozen=True)
class Export:
    """How the exporter reads one custom op: its kind, its spec, and which args are the parameters.

    ``spec(args, x_shape, dtype)`` and ``params(args)`` see the op's arguments after ``x``
    (parameters as the exporter's values, or ``True``/``None`` when only presence is known).
    """

    kind: str
    spec: Callable[[Sequence[Any], Sequence[Any], str], NormSpec]
    params: Callable[[Sequence[Any]], dict[str, Any]]


def _layer_cf_spec(args: Sequence[Any], shape: Sequence[Any], dtype: str) -> NormSpec:
    weight, bias, eps = args
    return NormSpec(
        "layer",
        eps=float(eps),
        normalized_shape=(int(shape[1]),),
        channels_first=True,
        has_weight=weight is not None,
        has_bias=bias is not None,
        dtype=dtype,
        rank=len(shape),
    )


def _group_spec(args: Sequence[Any], shape: Sequence[Any], dtype: str) -> NormSpec:
    num_groups, weight, bias, eps, activation = args
    return NormSpec(
        "group",
        eps=float(eps),
        channels=int(shape[1]),
        groups=int(num_groups),
        has_weight=weight is not None,
        has_bias=bias is not None,
        activation=str(activation),
        dtype=dtype,
        rank=len(shape),
    )


def _grn_spec(args: Sequence[Any], shape: Sequence[Any], dtype: str) -> NormSpec:
    weight, bias, eps, channels_first = args
    return NormSpec(
        "grn",
        eps=float(eps),
        channels=int(shape[1] if channels_first else shape[-1]),
        channels_first=bool(channels_first),
        has_weight=weight is not None,
        has_bias=bias is not None,
        dtype=dtype,
        rank=len(shape),
    )


#: custom op overload → how the exporter turns it into a normonnx norm node
EXPORTS: dict[Any, Export] = {
    torch.ops.normonnx.layer_norm_cf.default: Export("layer", _layer_cf_spec, lambda a: {"weight": a[0], "bias": a[1]}),
    torch.ops.normonnx.group_norm.default: Export("group", _group_spec, lambda a: {"weight": a[1], "bias": a[2]}),
    torch.ops.normonnx.global_response_norm.default: Export("grn", _grn_spec, lambda a: {"weight": a[0], "bias": a[1]}),
}
