"""Shared helpers for the reference models: seeding and randomising normalisation layers.

Every model in this package is built with random weights from a fixed seed. Normalisation layers
get non-trivial parameters so that a wrong ONNX lowering shows up numerically:

- affine weights ``1 + 0.1 * N(0, 1)`` and biases ``0.1 * N(0, 1)``;
- running statistics (BatchNorm, InstanceNorm with ``track_running_stats=True``): mean
  ``0.1 * N(0, 1)`` and variance ``U(0.5, 1.5)``.

Norms written by hand in a model's own code (``models.convnext_hand``, ``models.llama_hand``,
``models.tutorial_gn``) are modules too: their classes declare ``norm_kind = "layer"`` (etc.) so
that they are counted and randomised like torch's own. A class whose scale is stored as an offset
(Gemma's ``x * (1 + weight)``) declares ``weight_center = 0.0`` and gets weights ``0.1 * N(0, 1)``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
from torch import nn


def norm_types() -> dict[str, tuple[type[nn.Module], ...]]:
    """The normalisation module types per registered norm kind, as each kind declares them
    (``NormKind.torch_modules``; "layer" includes ``models.convnext.LayerNorm2d``, which
    subclasses ``nn.LayerNorm``)."""
    from normonnx.norms import KINDS

    return {k: kind.torch_modules() for k, kind in KINDS.items() if kind.torch_modules()}


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run the body with torch's CPU RNG seeded by ``seed``, restoring the global RNG afterwards."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def norm_kind(module: nn.Module) -> str | None:
    """The norm kind (a key of ``normonnx.norms.KINDS``: "batch", "layer", ...) of ``module``, or None.

    A hand-written norm module says its kind in a ``norm_kind`` class attribute.
    """
    declared = getattr(type(module), "norm_kind", None)
    if isinstance(declared, str):
        return declared
    for kind, types in norm_types().items():
        if isinstance(module, types):
            return kind
    return None


@torch.no_grad()
def randomize_norms(model: nn.Module) -> nn.Module:
    """Give every norm layer in ``model`` seeded random affine parameters and running stats.

    Uses the current torch RNG (call inside :func:`seeded`). Returns ``model``.
    """
    for m in model.modules():
        if norm_kind(m) is None:
            continue
        weight = getattr(m, "weight", None)
        bias = getattr(m, "bias", None)
        if isinstance(weight, torch.Tensor):
            weight.copy_(getattr(m, "weight_center", 1.0) + 0.1 * torch.randn_like(weight))
        if isinstance(bias, torch.Tensor):
            bias.copy_(0.1 * torch.randn_like(bias))
        running_mean = getattr(m, "running_mean", None)
        running_var = getattr(m, "running_var", None)
        if isinstance(running_mean, torch.Tensor):
            running_mean.copy_(0.1 * torch.randn_like(running_mean))
        if isinstance(running_var, torch.Tensor):
            running_var.copy_(0.5 + torch.rand_like(running_var))
    return model


def build(factory: Callable[[], nn.Module], seed: int) -> nn.Module:
    """Construct ``factory()`` under ``seed``, randomise its norms and return it in eval mode."""
    with seeded(seed):
        model = factory()
        randomize_norms(model)
    return model.eval()


def randn(*shape: int, seed: int) -> torch.Tensor:
    """A seeded standard-normal float32 tensor (does not disturb the global RNG)."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=gen)


class ConvNeXtTrunk(nn.Module):
    """ConvNeXt's layout (facebookresearch/ConvNeXt, timm): a 4×4 patchify stem and 2×2 downsampling
    convs each next to a channels-first norm, stages of ``block(dim)``, global average pool, a
    final norm over the features, a linear head. The norms and the block are each model's own."""

    def __init__(
        self,
        in_ch: int,
        depths: tuple[int, ...],
        dims: tuple[int, ...],
        num_classes: int,
        block: Callable[[int], nn.Module],
        channels_first_norm: Callable[[int], nn.Module],
        final_norm: Callable[[int], nn.Module],
    ) -> None:
        super().__init__()
        stem = nn.Sequential(nn.Conv2d(in_ch, dims[0], 4, stride=4), channels_first_norm(dims[0]))
        self.downsample_layers = nn.ModuleList([stem])
        for i in range(len(dims) - 1):
            norm = channels_first_norm(dims[i])
            self.downsample_layers.append(nn.Sequential(norm, nn.Conv2d(dims[i], dims[i + 1], 2, stride=2)))
        self.stages = nn.ModuleList(
            nn.Sequential(*(block(d) for _ in range(n))) for d, n in zip(dims, depths, strict=True)
        )
        self.norm = final_norm(dims[-1])
        self.head = nn.Linear(dims[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for down, stage in zip(self.downsample_layers, self.stages, strict=True):
            x = stage(down(x))
        return self.head(self.norm(x.mean(dim=(-2, -1))))
