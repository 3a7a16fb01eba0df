"""Llama-style decoder whose RMSNorms are written by hand, in the spellings of Hugging Face models.

The layout is :mod:`models.llama`'s (two pre-norm decoder blocks, dim 128, rotary GQA causal
attention with 4/2 heads, SwiGLU MLP of width 352, final norm, LM head of 256; input float hidden
states ``[batch, seq <= 64, 128]``); only the norms differ. All compute
``y = x / sqrt(mean(x^2) + eps) * scale`` over the last axis, i.e. ``F.rms_norm``:

- :class:`LlamaRMSNorm` (``transformers`` ``modeling_llama.py``), statistics in float32 wrapped in
  Casts, ``scale = weight``, eps 1e-5 (Llama 2)::

      input_dtype = h.dtype
      h = h.to(torch.float32)
      variance = h.pow(2).mean(-1, keepdim=True)
      h = h * torch.rsqrt(variance + self.variance_epsilon)
      return self.weight * h.to(input_dtype)

- :class:`T5LayerNorm` (``modeling_t5.py``), weight multiplied from the left, eps 1e-6;
- :class:`GemmaRMSNorm` (``modeling_gemma.py``), scale stored as an offset:
  ``scale = 1 + weight``, weight initialised to zero in Gemma (here seeded ``0.1 N(0, 1)``).

Placement: both norms of block 0 and the attention norm of block 1 are ``LlamaRMSNorm``, the MLP
norm of block 1 is ``T5LayerNorm`` and the final norm is ``GemmaRMSNorm``: 5 RMSNorms.

In this float32 model the ``.to(torch.float32)`` / ``.float()`` / ``.type_as`` calls are no-ops and
torch's exporter drops them. In half precision (``llama_hand().half()`` with float16 inputs) they
are Casts: ``torch.onnx.export(..., dynamo=True)`` then emits 10 Casts around the 5 norms' fp32
statistics (measured, torch 2.13), and the file runs in onnxruntime CPU.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from ._common import build, randn
from .llama import Attention, FeedForward

SEED = 8


class LlamaRMSNorm(nn.Module):
    """RMSNorm as ``transformers``' ``LlamaRMSNorm`` writes it (float32 statistics)."""

    norm_kind: ClassVar[str] = "rms"

    def __init__(self, hidden_size: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        input_dtype = hidden_states.dtype
        hidden_states = hidden_states.to(torch.float32)
        variance = hidden_states.pow(2).mean(-1, keepdim=True)
        hidden_states = hidden_states * torch.rsqrt(variance + self.variance_epsilon)
        return self.weight * hidden_states.to(input_dtype)


class T5LayerNorm(nn.Module):
    """T5's scale-only LayerNorm (an RMSNorm: no mean subtraction, no bias)."""

    norm_kind: ClassVar[str] = "rms"

    def __init__(self, hidden_size: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        variance = hidden_states.to(torch.float32).pow(2).mean(-1, keepdim=True)
        hidden_states = hidden_states * torch.rsqrt(variance + self.variance_epsilon)
        if self.weight.dtype in [torch.float16, torch.bfloat16]:
            hidden_states = hidden_states.to(self.weight.dtype)
        return self.weight * hidden_states


class GemmaRMSNorm(nn.Module):
    """Gemma's RMSNorm: scale ``1 + weight`` (weight stored as an offset from one)."""

    norm_kind: ClassVar[str] = "rms"
    weight_center: ClassVar[float] = 0.0

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.zeros(dim))

    def _norm(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        output = self._norm(x.float())
        output = output * (1.0 + self.weight.float())
        return output.type_as(x)


class DecoderBlock(nn.Module):
    """Pre-norm Llama block with the given norm modules: norm + attention, norm + SwiGLU."""

    def __init__(
        self,
        dim: int,
        n_heads: int,
        n_kv_heads: int,
        hidden: int,
        max_seq: int,
        attention_norm: nn.Module,
        ffn_norm: nn.Module,
    ) -> None:
        super().__init__()
        self.attention_norm = attention_norm
        self.attention = Attention(dim, n_heads, n_kv_heads, max_seq)
        self.ffn_norm = ffn_norm
        self.feed_forward = FeedForward(dim, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x + self.attention(self.attention_norm(x))
        return h + self.feed_forward(self.ffn_norm(h))


class LlamaHand(nn.Module):
    """Two decoder blocks, final norm, LM head; input is float hidden states ``[B, T, dim]``."""

    def __init__(
        self,
        dim: int = 128,
        n_heads: int = 4,
        n_kv_heads: int = 2,
        vocab: int = 256,
        max_seq: int = 64,
        hidden: int = 352,
    ) -> None:
        super().__init__()
        norms = [
            (LlamaRMSNorm(dim, eps=1e-5), LlamaRMSNorm(dim, eps=1e-5)),
            (LlamaRMSNorm(dim, eps=1e-5), T5LayerNorm(dim, eps=1e-6)),
        ]
        self.layers = nn.ModuleList(
            DecoderBlock(dim, n_heads, n_kv_heads, hidden, max_seq, attn_norm, ffn_norm)
            for attn_norm, ffn_norm in norms
        )
        self.norm = GemmaRMSNorm(dim, eps=1e-6)
        self.output = nn.Linear(dim, vocab, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return self.output(self.norm(x))


def llama_hand() -> nn.Module:
    """Two-block Llama-style decoder with hand-written RMSNorms (Llama, T5, Gemma), in eval mode."""
    return build(LlamaHand, SEED)


def example_inputs() -> tuple[torch.Tensor, ...]:
    """One sequence of 16 hidden states of width 128."""
    return (randn(1, 16, 128, seed=190),)


def second_size_inputs() -> tuple[torch.Tensor, ...]:
    """Two sequences of length 24 (dynamic batch and sequence length)."""
    return (randn(2, 24, 128, seed=191),)
