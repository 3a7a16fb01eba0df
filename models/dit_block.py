"""Diffusion-transformer (DiT) block stack with adaptive LayerNorm modulation (AdaLN).

After facebookresearch/DiT ``models.py`` (Peebles & Xie, 2023), at toy size: two ``DiTBlock`` s
(hidden 128, 4 heads, MLP ratio 4 with tanh-GELU) and the ``FinalLayer`` (patch 2, 4 output
channels), on ``x`` = a sequence of patch tokens ``[N, T, 128]`` (T = 64 for a 16x16 latent in
2x2 patches) and ``c`` = the timestep + class conditioning embedding ``[N, 128]``.

Each norm is ``nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)`` followed by a
data-dependent scale and shift computed from ``c`` -- a *modulated* LayerNorm::

    def modulate(x, shift, scale):
        return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)

    shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(c).chunk(6, dim=1)
    x = x + gate_msa.unsqueeze(1) * self.attn(modulate(self.norm1(x), shift_msa, scale_msa))
    x = x + gate_mlp.unsqueeze(1) * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))

i.e. ``y[n, t] = LN(x[n, t]) * (1 + scale[n]) + shift[n]`` with ``adaLN_modulation = SiLU ->
Linear(hidden, 6 * hidden)``. The final layer has its own modulation (``chunk(2)``: shift,
scale). 5 modulated LayerNorms in all.

DiT's "adaLN-Zero" initialisation zeroes the modulation Linears (and the final Linear), so every
block starts as the identity. Here they keep torch's seeded default init: with zero scales and
shifts a wrong modulation lowering would not show in the outputs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ._common import build, randn

SEED = 11


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``x * (1 + scale) + shift`` with per-sample ``scale``/``shift`` ``[N, D]`` broadcast over tokens."""
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


class Attention(nn.Module):
    """timm ``Attention``: fused qkv projection, ``scaled_dot_product_attention``, output projection."""

    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = False) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        x = F.scaled_dot_product_attention(q, k, v)
        x = x.transpose(1, 2).reshape(B, N, C)
        return self.proj(x)


class Mlp(nn.Module):
    """``fc2(GELU_tanh(fc1(x)))``."""

    def __init__(self, in_features: int, hidden_features: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(hidden_features, in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class DiTBlock(nn.Module):
    """A DiT block with adaptive layer norm zero (adaLN-Zero) conditioning."""

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(hidden_size, num_heads=num_heads, qkv_bias=True)
        self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(hidden_size, int(hidden_size * mlp_ratio))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 6 * hidden_size, bias=True))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(c).chunk(6, dim=1)
        x = x + gate_msa.unsqueeze(1) * self.attn(modulate(self.norm1(x), shift_msa, scale_msa))
        x = x + gate_mlp.unsqueeze(1) * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))
        return x


class FinalLayer(nn.Module):
    """The final layer of DiT: modulated LayerNorm and a linear map to patch pixels."""

    def __init__(self, hidden_size: int, patch_size: int, out_channels: int) -> None:
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden_size, patch_size * patch_size * out_channels, bias=True)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size, bias=True))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        x = modulate(self.norm_final(x), shift, scale)
        return self.linear(x)


class DiT(nn.Module):
    """DiT blocks and final layer on patch tokens ``x`` ``[N, T, hidden]`` conditioned on ``c`` ``[N, hidden]``."""

    def __init__(
        self,
        hidden_size: int = 128,
        depth: int = 2,
        num_heads: int = 4,
        patch_size: int = 2,
        out_channels: int = 4,
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(DiTBlock(hidden_size, num_heads) for _ in range(depth))
        self.final_layer = FinalLayer(hidden_size, patch_size, out_channels)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x, c)
        return self.final_layer(x, c)


def dit_block() -> nn.Module:
    """Two DiT blocks (hidden 128, 4 heads) and the final layer, in eval mode."""
    return build(DiT, SEED)


def example_inputs() -> tuple[torch.Tensor, ...]:
    """One sample: 64 patch tokens of width 128 and its conditioning embedding."""
    return (randn(1, 64, 128, seed=220), randn(1, 128, seed=221))


def second_size_inputs() -> tuple[torch.Tensor, ...]:
    """Two samples of 48 tokens (dynamic batch and token count)."""
    return (randn(2, 48, 128, seed=222), randn(2, 128, seed=223))
