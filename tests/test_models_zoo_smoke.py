"""Smoke tests for the reference models in ``models/`` (build, run, determinism, norm kinds).

No ONNX export here (that is covered elsewhere); every test runs the models in eager PyTorch.
"""

from __future__ import annotations

import functools

import pytest
import torch
from torch import nn

import models
from models.convnext import LayerNorm2d

NAMES = models.names()

_KIND_TYPES: dict[str, tuple[type[nn.Module], ...]] = {
    "batch": (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d),
    "layer": (nn.LayerNorm, LayerNorm2d),
    "instance": (nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d),
    "group": (nn.GroupNorm,),
    "rms": (nn.RMSNorm,),
}


def _norm_counts(model: nn.Module) -> dict[str, int]:
    """How many modules of each norm kind ``model`` contains."""
    counts: dict[str, int] = {}
    for m in model.modules():
        for kind, types in _KIND_TYPES.items():
            if isinstance(m, types):
                counts[kind] = counts.get(kind, 0) + 1
    return counts


@functools.cache
def _built(name: str) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """The model and its outputs on the example and second-size inputs (built once per name)."""
    entry = models.get(name)
    model = entry.factory()
    with torch.no_grad():
        y = model(*entry.example_inputs())
        y2 = model(*entry.second_size_inputs())
    return model, y, y2


def test_registry() -> None:
    assert NAMES == list(models.MODELS)
    assert set(NAMES) == {
        "resnet",
        "resnet_gn",
        "unet",
        "vit",
        "convnext",
        "style_transfer",
        "llama",
    }
    for name, entry in models.MODELS.items():
        assert entry.name == name
        assert models.get(name) is entry


def test_get_unknown_lists_names() -> None:
    with pytest.raises(KeyError) as info:
        models.get("no_such_model")
    message = str(info.value)
    assert "no_such_model" in message
    for name in NAMES:
        assert name in message


@pytest.mark.parametrize("name", NAMES)
def test_entry_metadata(name: str) -> None:
    entry = models.get(name)
    assert entry.description
    assert entry.norm_kinds
    assert set(entry.norm_kinds) <= set(models.NORM_KINDS)
    x = entry.example_inputs()
    x2 = entry.second_size_inputs()
    assert len(x) == len(x2) == len(entry.input_names)
    assert set(entry.dynamic_axes) <= set(entry.input_names)
    for n, a, b in zip(entry.input_names, x, x2, strict=True):
        assert a.dtype == b.dtype == torch.float32
        assert a.dim() == b.dim()
        dyn = entry.dynamic_axes.get(n, {})
        assert all(0 <= axis < a.dim() for axis in dyn)
        for axis in range(a.dim()):
            if axis not in dyn:
                assert a.shape[axis] == b.shape[axis], f"{n}: static axis {axis} differs"
    assert any(a.shape != b.shape for a, b in zip(x, x2, strict=True))
    # inputs are seeded: the same on every call
    for a, b in zip(x, entry.example_inputs(), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("name", NAMES)
def test_eval_mode_and_finite(name: str) -> None:
    model, y, y2 = _built(name)
    assert not model.training
    assert all(not m.training for m in model.modules())
    entry = models.get(name)
    assert y.shape[0] == entry.example_inputs()[0].shape[0]
    assert y2.shape[0] == entry.second_size_inputs()[0].shape[0]
    assert torch.isfinite(y).all() and torch.isfinite(y2).all()
    assert y.abs().max() > 1e-3, "output is (nearly) zero: a lowering error would go unnoticed"


@pytest.mark.parametrize("name", NAMES)
def test_deterministic(name: str) -> None:
    entry = models.get(name)
    _, y, y2 = _built(name)
    torch.manual_seed(1234)
    before = torch.rand(4)
    torch.manual_seed(1234)
    other = entry.factory()  # a second, independent build
    assert torch.equal(torch.rand(4), before), "the factory must not disturb the global RNG"
    with torch.no_grad():
        assert torch.equal(other(*entry.example_inputs()), y)
        assert torch.equal(other(*entry.second_size_inputs()), y2)


@pytest.mark.parametrize("name", NAMES)
def test_norm_kinds_match_modules(name: str) -> None:
    model, _, _ = _built(name)
    counts = _norm_counts(model)
    assert set(counts) == set(models.get(name).norm_kinds), counts


@pytest.mark.parametrize("name", NAMES)
def test_norms_are_randomized(name: str) -> None:
    model, _, _ = _built(name)
    for m in model.modules():
        if not any(isinstance(m, t) for t in _KIND_TYPES.values()):
            continue
        weight = getattr(m, "weight", None)
        bias = getattr(m, "bias", None)
        if weight is not None:
            assert not torch.allclose(weight, torch.ones_like(weight)), m
        if bias is not None:
            assert not torch.allclose(bias, torch.zeros_like(bias)), m
        running_var = getattr(m, "running_var", None)
        if running_var is not None:
            mean = m.running_mean
            assert not torch.allclose(running_var, torch.ones_like(running_var)), m
            assert not torch.allclose(mean, torch.zeros_like(mean)), m
            assert (running_var >= 0.5).all() and (running_var <= 1.5).all(), m


def test_style_transfer_covers_instance_norm_running_stats() -> None:
    model, _, _ = _built("style_transfer")
    norms = [m for m in model.modules() if isinstance(m, nn.InstanceNorm2d)]
    tracking = [m for m in norms if m.track_running_stats]
    assert len(tracking) == 1 and tracking[0].affine


def test_convnext_has_channels_first_layernorm() -> None:
    model, _, _ = _built("convnext")
    assert any(isinstance(m, LayerNorm2d) for m in model.modules())
    x = torch.randn(2, 8, 3, 5)
    ln = LayerNorm2d(8, eps=1e-6)
    ref = nn.functional.layer_norm(x.permute(0, 2, 3, 1), (8,), eps=1e-6).permute(0, 3, 1, 2)
    torch.testing.assert_close(ln(x), ref)
    torch.testing.assert_close(ln(x).mean(dim=1), torch.zeros(2, 3, 5), atol=1e-5, rtol=0)
