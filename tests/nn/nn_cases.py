"""Every normonnx.nn layer once, with seeded non-trivial parameters, inputs, and an independent
torch reference implementation of its formula (plain aten ops, written out here)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from normonnx import nn as nnx


@dataclasses.dataclass(frozen=True)
class Case:
    id: str
    make: Callable[[], nn.Module]
    shapes: tuple[tuple[int, ...], ...]  # one per input
    reference: Callable[..., torch.Tensor | tuple[torch.Tensor, ...]]  # (module, *inputs)
    kind: str | None  # the one norm node's kind; None: a parameter norm, folded into a constant


def _seeded(m: nn.Module, seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in m.named_parameters():
            noise = torch.randn(p.shape, generator=g, dtype=p.dtype)
            if name.endswith("weight") and not isinstance(m, (nn.Linear, nn.Conv2d)) and "linear" not in name:
                p.copy_(getattr(m, "weight_center", 1.0) + 0.1 * noise)
            else:
                p.copy_(0.1 * noise)
        for name, b in m.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(0.1 * torch.randn(b.shape, generator=g))
            elif name.endswith("running_var"):
                b.copy_(0.5 + torch.rand(b.shape, generator=g))
    return m.eval()


def _ln_cf(m, x):
    return F.layer_norm(x.permute(0, 2, 3, 1), m.normalized_shape, m.weight, m.bias, m.eps).permute(0, 3, 1, 2)


def _grn(m, x):
    cf = m.channels_first
    spatial = (2, 3) if cf else (1, 2)
    ch = 1 if cf else -1
    view = (1, -1, 1, 1) if cf else (-1,)
    g = torch.sqrt((x * x).sum(dim=spatial, keepdim=True))
    n = g / (g.mean(dim=ch, keepdim=True) + m.eps)
    return m.weight.view(view) * (x * n) + m.bias.view(view) + x


def _adaln(m, x, c):
    shift, scale, gate = m.linear(F.silu(c)).chunk(3, dim=1)
    y = F.layer_norm(x, (m.dim,), eps=m.norm.eps) * (1 + scale[:, None]) + shift[:, None]
    return y, gate[:, None]


def _ws(m, x):
    w = m.weight
    mean = w.mean(dim=(1, 2, 3), keepdim=True)
    var = ((w - mean) ** 2).mean(dim=(1, 2, 3), keepdim=True)
    return F.conv2d(x, (w - mean) / torch.sqrt(var + m.eps), m.bias, m.stride, m.padding)


CASES = [
    Case(
        "layer",
        lambda: _seeded(nnx.LayerNorm(16)),
        ((2, 5, 16),),
        lambda m, x: F.layer_norm(x, (16,), m.weight, m.bias, m.eps),
        "layer",
    ),
    Case("layer_cf", lambda: _seeded(nnx.LayerNorm(8, eps=1e-6, channel_axis=1)), ((2, 8, 5, 4),), _ln_cf, "layer"),
    Case(
        "rms",
        lambda: _seeded(nnx.RMSNorm(16, eps=1e-6)),
        ((2, 5, 16),),
        lambda m, x: x * torch.rsqrt((x * x).mean(-1, keepdim=True) + 1e-6) * m.weight,
        "rms",
    ),
    Case(
        "rms_offset",
        lambda: _seeded(nnx.RMSNorm(16, eps=1e-6, weight_offset=1.0)),
        ((2, 5, 16),),
        lambda m, x: x * torch.rsqrt((x * x).mean(-1, keepdim=True) + 1e-6) * (1 + m.weight),
        "rms",
    ),
    Case(
        "group",
        lambda: _seeded(nnx.GroupNorm(4, 8)),
        ((2, 8, 5, 4),),
        lambda m, x: F.group_norm(x, 4, m.weight, m.bias, m.eps),
        "group",
    ),
    Case(
        "group_silu",
        lambda: _seeded(nnx.GroupNorm(2, 8, activation="silu")),
        ((2, 8, 5, 4),),
        lambda m, x: F.silu(F.group_norm(x, 2, m.weight, m.bias, m.eps)),
        "group",
    ),
    Case(
        "group_relu",
        lambda: _seeded(nnx.GroupNorm(2, 8, activation="relu")),
        ((2, 8, 5, 4),),
        lambda m, x: F.relu(F.group_norm(x, 2, m.weight, m.bias, m.eps)),
        "group",
    ),
    Case(
        "batch",
        lambda: _seeded(nnx.BatchNorm(8)),
        ((2, 8, 5, 4),),
        lambda m, x: F.batch_norm(x, m.running_mean, m.running_var, m.weight, m.bias, False, 0.0, m.eps),
        "batch",
    ),
    Case(
        "instance",
        lambda: _seeded(nnx.InstanceNorm(8, affine=True)),
        ((2, 8, 5, 4),),
        lambda m, x: F.instance_norm(x, weight=m.weight, bias=m.bias, eps=m.eps),
        "instance",
    ),
    Case("grn", lambda: _seeded(nnx.GlobalResponseNorm(8)), ((2, 5, 4, 8),), _grn, "grn"),
    Case("grn_cf", lambda: _seeded(nnx.GlobalResponseNorm(8, channel_axis=1)), ((2, 8, 5, 4),), _grn, "grn"),
    Case("adaln_zero", lambda: _seeded(nnx.AdaLayerNorm(16, 12, gate=True)), ((2, 5, 16), (2, 12)), _adaln, "layer"),
    Case("ws_conv", lambda: _seeded(nnx.WSConv2d(4, 8, 3, padding=1)), ((2, 4, 6, 5),), _ws, None),
]
BY_ID = {c.id: c for c in CASES}


def inputs(case: Case, seed: int = 1, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    return tuple((0.5 + 2.0 * torch.randn(s, generator=g, dtype=torch.float64)).to(dtype) for s in case.shapes)
