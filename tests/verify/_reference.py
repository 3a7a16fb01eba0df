"""Reference models with the module shapes of real libraries, small enough for a fast suite.

Each factory returns ``(model in eval mode, example inputs)``; weights and running statistics are
deterministic and non-trivial. The shapes they reproduce:

- ``norm_act``: norm modules that apply their activation inside their own ``forward``
  (timm's ``BatchNormAct2d`` / ``GroupNormAct`` / ``LayerNormAct``): the module output is
  ``act(norm(x))``, the norm's own output never leaves the module;
- ``tok_pos``: ``fc(ln(tok(ids) + pos(arange)))`` — token + position embeddings summed before the
  first norm, as every text transformer starts; ``pos`` has no ONNX value of its own (the exporter
  folds ``pos(arange(T))`` to a constant);
- ``deep_resnet``: ≥ 50 leaf layers of conv → BN → ReLU residual blocks with realistic running
  statistics (activations of scale ~1000), zero-initialised last BN in every block, the names
  ``bn1`` at the top level and ``blocks.4.0.bn1`` deeper;
- ``ws_attn``: weight-standardised convs (BiT's ``StdConv2d``: the weight is normalised in
  ``forward``), GroupNorm, a diffusers-style attention block with GroupNorm, and a reused
  module (one ``SiLU`` instance called at several places).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

# ---------------------------------------------------------------------------------------------
# norm modules with the activation inside (timm's norm_act.py)


class BatchNormAct2d(nn.BatchNorm2d):
    def __init__(self, c: int, act: type[nn.Module] = nn.ReLU) -> None:
        super().__init__(c)
        self.act = act()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(super().forward(x))


class GroupNormAct(nn.GroupNorm):
    def __init__(self, g: int, c: int) -> None:
        super().__init__(g, c)
        self.act = nn.SiLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(F.group_norm(x, self.num_groups, self.weight, self.bias, self.eps))


class LayerNormAct(nn.LayerNorm):
    def __init__(self, c: int) -> None:
        super().__init__(c)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps))


def _randomise_norms(model: nn.Module, var_scale: float = 1.0, mean_scale: float = 0.5) -> None:
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.BatchNorm2d, nn.GroupNorm, nn.LayerNorm)) and m.weight is not None:
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0.0, 0.3)
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0.0, mean_scale)
                m.running_var.uniform_(0.5 * var_scale, 2.0 * var_scale)


class NormActNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = BatchNormAct2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.gn = GroupNormAct(4, 8)
        self.head = nn.Linear(8, 8)
        self.ln = LayerNormAct(8)
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.gn(self.conv2(self.bn1(self.stem(x))))
        y = y.mean((2, 3))
        return self.fc(self.ln(self.head(y)))


def norm_act() -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    torch.manual_seed(0)
    m = NormActNet()
    _randomise_norms(m)
    return m.eval(), (torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1)),)


# ---------------------------------------------------------------------------------------------
# token + position embeddings


class TokPos(nn.Module):
    def __init__(self, vocab: int = 50, t: int = 6, d: int = 16) -> None:
        super().__init__()
        self.tok = nn.Embedding(vocab, d)
        self.pos = nn.Embedding(t, d)
        self.ln = nn.LayerNorm(d)
        self.mlp = nn.Sequential(nn.Linear(d, 32), nn.GELU(), nn.Linear(32, d))
        self.ln_f = nn.LayerNorm(d)
        self.fc = nn.Linear(d, vocab)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.tok(ids) + self.pos(torch.arange(ids.shape[1]))
        h = self.ln(h)
        h = h + self.mlp(h)
        return self.fc(self.ln_f(h))


def tok_pos() -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    torch.manual_seed(0)
    m = TokPos()
    _randomise_norms(m)
    ids = torch.randint(0, 50, (2, 6), generator=torch.Generator().manual_seed(1))
    return m.eval(), (ids,)


# ---------------------------------------------------------------------------------------------
# deep residual CNN


class Block(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)  # zero-initialised weight (timm's zero_init_last)
        self.act2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act1(self.bn1(self.conv1(x)))
        return self.act2(x + self.bn2(self.conv2(y)))


class DeepResNet(nn.Module):
    """stem (conv1, bn1, act1) + 6 stages × 2 blocks × 6 leaves = 75 leaf layers."""

    def __init__(self, c: int = 8, stages: int = 6, depth: int = 2) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, c, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.act1 = nn.ReLU()
        self.blocks = nn.Sequential(*[nn.Sequential(*[Block(c) for _ in range(depth)]) for _ in range(stages)])
        self.fc = nn.Linear(c, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.blocks(self.act1(self.bn1(self.conv1(x))))
        return self.fc(y.mean((2, 3)))


def deep_resnet() -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    """Realistic statistics: unnormalised pixels (0..255) into a stem whose BatchNorm keeps their
    scale (activations ~1000), running_var ~1e3 inside the blocks, a residual stream that grows."""
    torch.manual_seed(0)
    m = DeepResNet()
    _randomise_norms(m, var_scale=1e3, mean_scale=5.0)
    with torch.no_grad():
        m.conv1.weight.mul_(5.0)
        m.bn1.running_var.uniform_(0.5, 2.0)
        for b in m.modules():
            if isinstance(b, Block):
                b.bn2.weight.zero_()  # zero_init_last: the block starts as identity (+ β)
                b.bn2.bias.uniform_(0.0, 40.0)
        m.blocks[3][1].bn2.weight.uniform_(0.5, 1.5)  # one trained block: not every bn2 is zero
    x = 255.0 * torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    return m.eval(), (x,)


# ---------------------------------------------------------------------------------------------
# weight-standardised convs, GroupNorm, attention with GroupNorm, a reused module


class StdConv2d(nn.Conv2d):
    """BiT / timm ``StdConv2d``: the weight is standardised per output channel in ``forward``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = F.batch_norm(
            self.weight.reshape(1, self.out_channels, -1), None, None, training=True, momentum=0.0, eps=1e-6
        )
        return F.conv2d(x, w.reshape_as(self.weight), self.bias, self.stride, self.padding)


class AttnBlock(nn.Module):
    """diffusers / LDM ``AttnBlock``: GroupNorm → q, k, v 1×1 convs → softmax attention → proj, residual."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(4, c)
        self.q = nn.Conv2d(c, c, 1)
        self.k = nn.Conv2d(c, c, 1)
        self.v = nn.Conv2d(c, c, 1)
        self.proj = nn.Conv2d(c, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        y = self.norm(x)
        q = self.q(y).reshape(n, c, h * w).transpose(1, 2)
        k = self.k(y).reshape(n, c, h * w)
        v = self.v(y).reshape(n, c, h * w).transpose(1, 2)
        a = torch.softmax(q @ k / c**0.5, dim=-1)
        return x + self.proj((a @ v).transpose(1, 2).reshape(n, c, h, w))


class WSAttnNet(nn.Module):
    def __init__(self, c: int = 8) -> None:
        super().__init__()
        self.conv1 = StdConv2d(3, c, 3, padding=1)
        self.gn1 = nn.GroupNorm(4, c)
        self.act = nn.SiLU()  # reused after gn1 and gn2
        self.conv2 = StdConv2d(c, c, 3, padding=1)
        self.gn2 = nn.GroupNorm(2, c)
        self.attn = AttnBlock(c)
        self.out = nn.Conv2d(c, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act(self.gn1(self.conv1(x)))
        y = self.act(self.gn2(self.conv2(y)))
        return self.out(self.attn(y))


def ws_attn() -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    torch.manual_seed(0)
    m = WSAttnNet()
    _randomise_norms(m)
    return m.eval(), (torch.randn(1, 3, 6, 6, generator=torch.Generator().manual_seed(1)),)


REFERENCE = {"norm_act": norm_act, "tok_pos": tok_pos, "deep_resnet": deep_resnet, "ws_attn": ws_attn}
