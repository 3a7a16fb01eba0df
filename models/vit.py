"""ViT-style image encoder (exercises the "layer" norm kind: nn.LayerNorm over the last dim).

Architecture (Dosovitskiy et al. 2021, timm ``VisionTransformer`` layout at small size):
``Conv2d(3, 128, 4, stride 4)`` patch embedding of a 32x32 image (8x8 = 64 patches), a learned
class token, learned positional embedding (65 positions), four pre-LN transformer blocks
(``x + Attn(LN(x))``, ``x + MLP(LN(x))``; 4 heads of 32, MLP 128 -> 512 -> 128 with exact GELU),
a final LayerNorm and a linear head on the class token.

Attention is hand-written (fused ``qkv`` linear, ``softmax(q k^T / sqrt(d)) v``), as in timm's
``Attention`` without the fused kernel. The positional embedding fixes the number of patches, so
only the batch axis is dynamic.
"""

from __future__ import annotations

import torch
from torch import nn

from ._common import build, randn

SEED = 3


class Attention(nn.Module):
    """Multi-head self-attention with a fused qkv projection."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each [B, heads, N, head_dim]
        attn = torch.softmax((q * self.scale) @ k.transpose(-2, -1), dim=-1)
        out = (attn @ v).transpose(1, 2).reshape(b, n, c)
        return self.proj(out)


class Mlp(nn.Module):
    """``Linear - GELU - Linear``."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-LN transformer block."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: int = 4) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, mlp_ratio * dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ViT(nn.Module):
    """Vision transformer: patch embedding, cls token, pos. embedding, blocks, LN, head."""

    def __init__(
        self,
        img_size: int = 32,
        patch: int = 4,
        in_ch: int = 3,
        dim: int = 128,
        depth: int = 4,
        num_heads: int = 4,
        num_classes: int = 10,
    ) -> None:
        super().__init__()
        num_patches = (img_size // patch) ** 2
        self.patch_embed = nn.Conv2d(in_ch, dim, patch, stride=patch)
        self.cls_token = nn.Parameter(0.02 * torch.randn(1, 1, dim))
        self.pos_embed = nn.Parameter(0.02 * torch.randn(1, num_patches + 1, dim))
        self.blocks = nn.Sequential(*(Block(dim, num_heads) for _ in range(depth)))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x).flatten(2).transpose(1, 2)  # [B, N, dim]
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1) + self.pos_embed
        x = self.norm(self.blocks(x))
        return self.head(x[:, 0])


def vit() -> nn.Module:
    """ViT encoder (dim 128, 4 blocks, 4 heads) on 32x32 images, in eval mode."""
    return build(ViT, SEED)


def example_inputs() -> tuple[torch.Tensor, ...]:
    """Two 32x32 RGB images."""
    return (randn(2, 3, 32, 32, seed=130),)


def second_size_inputs() -> tuple[torch.Tensor, ...]:
    """Three 32x32 images (only the batch axis is dynamic)."""
    return (randn(3, 3, 32, 32, seed=131),)
