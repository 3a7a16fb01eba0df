"""Small torch models used by the pipeline and CLI tests (loaded as path/to/file.py:factory)."""

from __future__ import annotations

import torch
import torch.nn as nn


class AllNorms(nn.Module):
    """Conv → BatchNorm → GroupNorm+SiLU → InstanceNorm → LayerNorm(last) → RMSNorm(last)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.gn = nn.GroupNorm(4, 8)
        self.inorm = nn.InstanceNorm2d(8, affine=True)
        self.ln = nn.LayerNorm(8)
        self.rms = nn.RMSNorm(8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn(self.conv(x))
        x = nn.functional.silu(self.gn(x))
        x = self.inorm(x)
        x = x.permute(0, 2, 3, 1)  # N,H,W,C
        return self.rms(self.ln(x))


def _seeded(m: nn.Module, seed: int) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in m.named_parameters():
            p.copy_(
                (1.0 if name.endswith("weight") and p.dim() == 1 else 0.0) + 0.2 * torch.randn(p.shape, generator=g)
            )
        for name, b in m.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(0.3 * torch.randn(b.shape, generator=g))
            elif name.endswith("running_var"):
                b.copy_(0.5 + torch.rand(b.shape, generator=g))
    return m


def all_norms() -> nn.Module:
    return _seeded(AllNorms(), 0).eval()


def all_norms_other_weights() -> nn.Module:
    return _seeded(AllNorms(), 1).eval()


def all_norms_training() -> nn.Module:
    return _seeded(AllNorms(), 0).train()


def all_norms_with_inputs() -> tuple[nn.Module, torch.Tensor]:
    return all_norms(), torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))


def not_a_module() -> int:
    return 3


class _LayerNorm(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.ln = nn.LayerNorm(8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ln(x)


def layer_norm() -> nn.Module:
    """The smallest model with a norm: LayerNorm(8) on (N, 8)."""
    return _LayerNorm().eval()


def layer_norm_bf16() -> tuple[nn.Module, torch.Tensor]:
    return _LayerNorm().eval().to(torch.bfloat16), torch.randn(2, 8).to(torch.bfloat16)


def layer_norm_batch0() -> tuple[nn.Module, torch.Tensor]:
    return _LayerNorm().eval(), torch.randn(0, 8)


def all_norms_float64() -> tuple[nn.Module, torch.Tensor]:
    return all_norms().double(), torch.randn(2, 3, 8, 8, dtype=torch.float64)


class _ReturnsNone(nn.Module):
    def forward(self, x: torch.Tensor) -> None:
        return None


def returns_none() -> tuple[nn.Module, torch.Tensor]:
    return _ReturnsNone().eval(), torch.randn(2, 8)
