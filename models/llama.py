"""Llama-style decoder (exercises the "rms" norm kind: nn.RMSNorm with eps=1e-6).

Architecture (Touvron et al., Llama 2 / 3 layout at toy size): two decoder blocks, each

- ``h = x + Attention(RMSNorm(x))``: grouped-query causal self-attention (4 query heads, 2
  key/value heads, head dim 32, no biases) with rotary position embeddings applied to q and k;
- ``out = h + SwiGLU(RMSNorm(h))``: ``w2(silu(w1 h) * w3 h)`` with hidden size 352
  (``8/3 * 128`` rounded up to a multiple of 32);

then a final RMSNorm and a linear LM head (vocabulary 256).

The input is the float hidden-state sequence ``x`` of shape ``[batch, seq, 128]`` (no embedding
table), so batch and sequence length may be dynamic (``seq <= 64``, the rotary/mask cache size).
Rotary embeddings use precomputed ``cos``/``sin`` buffers in the "rotate half" form (real
arithmetic, no complex numbers); the causal mask is a precomputed boolean lower-triangular buffer.
Both are sliced to the sequence length.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ._common import build, randn

SEED = 6


def rotary_cache(
    head_dim: int,
    max_seq: int,
    theta: float = 10000.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``cos`` and ``sin`` tables ``[max_seq, head_dim]`` for rotary embeddings (rotate-half)."""
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    freqs = torch.outer(torch.arange(max_seq, dtype=torch.float32), inv_freq)
    emb = torch.cat([freqs, freqs], dim=-1)
    return emb.cos(), emb.sin()


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """``[x1, x2] -> [-x2, x1]`` on the last dimension."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


class Attention(nn.Module):
    """Causal grouped-query self-attention with rotary embeddings."""

    def __init__(self, dim: int, n_heads: int, n_kv_heads: int, max_seq: int) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.n_kv_heads = n_kv_heads
        self.head_dim = dim // n_heads
        self.wq = nn.Linear(dim, n_heads * self.head_dim, bias=False)
        self.wk = nn.Linear(dim, n_kv_heads * self.head_dim, bias=False)
        self.wv = nn.Linear(dim, n_kv_heads * self.head_dim, bias=False)
        self.wo = nn.Linear(n_heads * self.head_dim, dim, bias=False)
        cos, sin = rotary_cache(self.head_dim, max_seq)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)
        mask = torch.ones(max_seq, max_seq, dtype=torch.bool).tril()
        self.register_buffer("causal_mask", mask, persistent=False)

    def _repeat_kv(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, kv_heads, T, D] -> [B, heads, T, D]`` by repeating each kv head."""
        b, h, t, d = x.shape
        rep = self.n_heads // self.n_kv_heads
        return x[:, :, None].expand(b, h, rep, t, d).reshape(b, h * rep, t, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        q = self.wq(x).view(b, t, self.n_heads, self.head_dim).transpose(1, 2)
        k = self.wk(x).view(b, t, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = self.wv(x).view(b, t, self.n_kv_heads, self.head_dim).transpose(1, 2)
        cos, sin = self.cos[:t], self.sin[:t]
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        k, v = self._repeat_kv(k), self._repeat_kv(v)
        scores = (q @ k.transpose(-2, -1)) * self.head_dim**-0.5
        scores = scores.masked_fill(~self.causal_mask[:t, :t], float("-inf"))
        out = torch.softmax(scores, dim=-1) @ v  # [B, heads, T, D]
        return self.wo(out.transpose(1, 2).reshape(b, t, self.n_heads * self.head_dim))


class FeedForward(nn.Module):
    """SwiGLU MLP: ``w2(silu(w1 x) * w3 x)``."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.w1 = nn.Linear(dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, dim, bias=False)
        self.w3 = nn.Linear(dim, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class DecoderBlock(nn.Module):
    """Pre-norm Llama block: RMSNorm + attention, RMSNorm + SwiGLU, both residual."""

    def __init__(self, dim: int, n_heads: int, n_kv_heads: int, hidden: int, max_seq: int) -> None:
        super().__init__()
        self.attention_norm = nn.RMSNorm(dim, eps=1e-6)
        self.attention = Attention(dim, n_heads, n_kv_heads, max_seq)
        self.ffn_norm = nn.RMSNorm(dim, eps=1e-6)
        self.feed_forward = FeedForward(dim, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x + self.attention(self.attention_norm(x))
        return h + self.feed_forward(self.ffn_norm(h))


class Llama(nn.Module):
    """Decoder blocks, final RMSNorm, LM head; input is float hidden states ``[B, T, dim]``."""

    def __init__(
        self,
        dim: int = 128,
        n_layers: int = 2,
        n_heads: int = 4,
        n_kv_heads: int = 2,
        vocab: int = 256,
        max_seq: int = 64,
        multiple_of: int = 32,
    ) -> None:
        super().__init__()
        hidden = int(2 * 4 * dim / 3)
        hidden = multiple_of * ((hidden + multiple_of - 1) // multiple_of)
        blocks = [DecoderBlock(dim, n_heads, n_kv_heads, hidden, max_seq) for _ in range(n_layers)]
        self.layers = nn.ModuleList(blocks)
        self.norm = nn.RMSNorm(dim, eps=1e-6)
        self.output = nn.Linear(dim, vocab, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return self.output(self.norm(x))


def llama() -> nn.Module:
    """Two-block Llama-style decoder (dim 128, GQA 4/2 heads, RMSNorm), in eval mode."""
    return build(Llama, SEED)


def example_inputs() -> tuple[torch.Tensor, ...]:
    """One sequence of 16 hidden states of width 128."""
    return (randn(1, 16, 128, seed=160),)


def second_size_inputs() -> tuple[torch.Tensor, ...]:
    """Two sequences of length 24 (dynamic batch and sequence length)."""
    return (randn(2, 24, 128, seed=161),)
