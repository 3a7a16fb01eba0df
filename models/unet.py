"""Diffusion-style UNet (exercises the "group" norm kind: GroupNorm(32) everywhere).

Architecture, after the DDPM / Stable Diffusion UNet (Ho et al. 2020; Rombach et al. 2022), on a
4-channel latent, with widths 64/128:

- ``conv_in`` 4 -> 64 channels and a stride-2 downsample (full resolution -> 1/2);
- encoder: ``ResBlock(64, 64)`` at 1/2 (skip 1), downsample, ``ResBlock(64, 128)`` at 1/4
  (skip 2);
- middle (lowest resolution, 1/4): ``ResBlock(128, 128)``, a single-head spatial
  ``AttentionBlock`` (GroupNorm, 1x1 q/k/v convs, softmax attention over H*W, 1x1 output
  projection, residual), ``ResBlock(128, 128)``;
- decoder, as in SD's up blocks (ResBlock on the concatenated skip, then upsampler):
  ``ResBlock(128 + 128, 128)``, upsample; ``ResBlock(128 + 64, 64)``, upsample to full size;
- ``GroupNorm(32) + SiLU + conv_out`` back to 4 channels.

Six ResBlocks in all, each ``GroupNorm(32)-SiLU-Conv3x3``, plus a projected time embedding, then
``GroupNorm(32)-SiLU-Conv3x3`` and a (1x1-conv when the width changes) residual. The model takes
only the noisy latent: the timestep embedding is a fixed sinusoidal embedding of an internal
timestep (``t = 500``) stored as a buffer and passed through the usual ``Linear-SiLU-Linear``
MLP, so the graph still contains the embedding broadcast-add of a real diffusion UNet.

Upsampling (nearest + 3x3 conv) interpolates to the size of the matching encoder tensor (as
diffusers does with ``upsample_size``), so any input height/width works and both may be dynamic.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ._common import build, randn

SEED = 2


def timestep_embedding(t: float, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal timestep embedding ``[cos | sin]`` of shape ``[1, dim]`` (DDPM / ADM style)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half)
    args = t * freqs
    return torch.cat([torch.cos(args), torch.sin(args)])[None]


class ResBlock(nn.Module):
    """``GN-SiLU-Conv`` + time embedding, ``GN-SiLU-Conv``, residual (1x1 conv if widths differ)."""

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, groups: int = 32) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb_proj = nn.Linear(emb_dim, out_ch)
        self.norm2 = nn.GroupNorm(groups, out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.skip: nn.Module = nn.Identity() if in_ch == out_ch else nn.Conv2d(in_ch, out_ch, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.emb_proj(F.silu(emb))[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x) + h


class AttentionBlock(nn.Module):
    """Single-head spatial self-attention with a GroupNorm in front and a residual connection."""

    def __init__(self, channels: int, groups: int = 32) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(groups, channels)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)
        self.scale = channels**-0.5

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        hn = self.norm(x)
        q = self.q(hn).reshape(b, c, h * w).transpose(1, 2)  # [B, HW, C]
        k = self.k(hn).reshape(b, c, h * w)  # [B, C, HW]
        v = self.v(hn).reshape(b, c, h * w).transpose(1, 2)  # [B, HW, C]
        attn = torch.softmax(torch.bmm(q, k) * self.scale, dim=-1)  # [B, HW, HW]
        out = torch.bmm(attn, v).transpose(1, 2).reshape(b, c, h, w)
        return x + self.proj_out(out)


class Downsample(nn.Module):
    """3x3 convolution with stride 2."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Nearest-neighbour upsampling to the size of the skip tensor, then a 3x3 convolution."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, size: torch.Size) -> torch.Tensor:
        return self.conv(F.interpolate(x, size=size, mode="nearest"))


class UNet(nn.Module):
    """Two-level diffusion UNet with six ResBlocks and one attention block (see module doc)."""

    def __init__(
        self,
        in_ch: int = 4,
        ch: int = 64,
        mult: tuple[int, int] = (1, 2),
        t: float = 500.0,
    ) -> None:
        super().__init__()
        c1, c2 = ch * mult[0], ch * mult[1]
        emb_dim = 4 * ch
        self.register_buffer("t_freq", timestep_embedding(t, ch))
        self.time_mlp = nn.Sequential(
            nn.Linear(ch, emb_dim),
            nn.SiLU(),
            nn.Linear(emb_dim, emb_dim),
        )
        self.conv_in = nn.Conv2d(in_ch, ch, 3, padding=1)
        self.down0 = Downsample(ch)
        self.down1 = ResBlock(ch, c1, emb_dim)
        self.pool1 = Downsample(c1)
        self.down2 = ResBlock(c1, c2, emb_dim)
        self.mid1 = ResBlock(c2, c2, emb_dim)
        self.mid_attn = AttentionBlock(c2)
        self.mid2 = ResBlock(c2, c2, emb_dim)
        self.dec2 = ResBlock(c2 + c2, c2, emb_dim)
        self.up2 = Upsample(c2)
        self.dec1 = ResBlock(c2 + c1, c1, emb_dim)
        self.up1 = Upsample(c1)
        self.norm_out = nn.GroupNorm(32, c1)
        self.conv_out = nn.Conv2d(c1, in_ch, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        emb = self.time_mlp(self.t_freq)  # [1, emb_dim], broadcast over the batch
        h0 = self.conv_in(x)
        h1 = self.down1(self.down0(h0), emb)  # 1/2
        h2 = self.down2(self.pool1(h1), emb)  # 1/4
        h = self.mid2(self.mid_attn(self.mid1(h2, emb)), emb)
        h = self.up2(self.dec2(torch.cat([h, h2], dim=1), emb), h1.shape[-2:])
        h = self.up1(self.dec1(torch.cat([h, h1], dim=1), emb), h0.shape[-2:])
        return self.conv_out(F.silu(self.norm_out(h)))


def unet() -> nn.Module:
    """Diffusion-style UNet (64/128 channels, GroupNorm(32), one attention block), in eval mode."""
    return build(UNet, SEED)


def example_inputs() -> tuple[torch.Tensor, ...]:
    """One 4-channel 32x32 latent."""
    return (randn(1, 4, 32, 32, seed=120),)


def second_size_inputs() -> tuple[torch.Tensor, ...]:
    """Two 24x40 latents (dynamic batch, height and width)."""
    return (randn(2, 4, 24, 40, seed=121),)
