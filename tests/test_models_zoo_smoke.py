"""Smoke tests for the reference models in ``models/`` (build, run, determinism, norm kinds and
counts). No ONNX export here (``test_models_export.py`` covers it); every test runs the models in
eager PyTorch. The hand-written norm modules are checked against torch's own norms in
``test_models_hand_norms.py``.
"""

from __future__ import annotations

import functools

import pytest
import torch
from torch import nn

import models
from models import convnext_hand, llama_hand, tutorial_gn
from models.convnext import LayerNorm2d
from normonnx import nn as nnx
from normonnx.verify import tolerance

NAMES = models.names()
#: the channel mean of a normalised output is 0 up to a few float32 roundings of 8 terms: stricter than
#: the table's float32 atol (1e-4), which is for outputs of another runtime
MEAN_ZERO_ATOL = 1e-5
HAND_WRITTEN = ("convnext_hand", "llama_hand", "tutorial_gn", "resnet_ws", "dit_block")

#: norm modules per kind, torch's and the models' hand-written ones (listed here, not read from the
#: classes' ``norm_kind`` attribute, so a class that forgets to declare its kind is caught)
_KIND_TYPES: dict[str, tuple[type[nn.Module], ...]] = {
    "batch": (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nnx.BatchNorm),
    "layer": (nn.LayerNorm, LayerNorm2d, convnext_hand.LayerNorm, nnx.LayerNorm),
    "instance": (nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d, nnx.InstanceNorm),
    "group": (
        nn.GroupNorm,
        tutorial_gn.GroupNormView,
        tutorial_gn.GroupNormSplit,
        tutorial_gn.GroupNormUnbiased,
        tutorial_gn.GroupNorm5d,
        nnx.GroupNorm,
    ),
    "rms": (nn.RMSNorm, llama_hand.LlamaRMSNorm, llama_hand.T5LayerNorm, llama_hand.GemmaRMSNorm, nnx.RMSNorm),
    "grn": (nnx.GlobalResponseNorm,),
}


def norm_kind_of(m: nn.Module) -> str | None:
    """The kind of ``m`` by this test's own type table, or None."""
    return next((k for k, t in _KIND_TYPES.items() if isinstance(m, t)), None)


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
        "convnext_v2",
        *HAND_WRITTEN,
    }
    for name, entry in models.MODELS.items():
        assert entry.name == name
        assert models.get(name) is entry
    assert {n for n, e in models.MODELS.items() if e.hand_written} == set(HAND_WRITTEN)


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
    assert set(entry.expected_norms) == set(entry.norm_kinds)
    assert all(isinstance(n, int) and n > 0 for n in entry.expected_norms.values())
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
def test_expected_norms_count_the_norm_modules(name: str) -> None:
    """One norm node per norm module or hand-written norm; parameter norms are not modules here."""
    model, _, _ = _built(name)
    assert _norm_counts(model) == models.get(name).expected_norms


@pytest.mark.parametrize("name", NAMES)
def test_norm_kind_declared_by_hand_written_modules(name: str) -> None:
    """``models._common.norm_kind`` (which randomises the norms) sees the same modules as this test."""
    from models._common import norm_kind

    model, _, _ = _built(name)
    for m in model.modules():
        assert norm_kind(m) == norm_kind_of(m), m


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
            assert not torch.allclose(weight, torch.zeros_like(weight)), m  # Gemma's 1 + w offset
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
    torch.testing.assert_close(ln(x).mean(dim=1), torch.zeros(2, 3, 5), atol=MEAN_ZERO_ATOL, rtol=0)


def test_hand_written_models_use_no_torch_norm_for_their_hand_norms() -> None:
    """The hand-written models really write their norms out (else export would see aten norms)."""
    torch_norms = (nn.LayerNorm, nn.GroupNorm, nn.RMSNorm)
    for name, allowed in (("convnext_hand", 1), ("llama_hand", 0), ("tutorial_gn", 0)):
        model, _, _ = _built(name)
        assert sum(isinstance(m, torch_norms) for m in model.modules()) == allowed, name


def test_convnext_hand_has_both_layouts() -> None:
    model, _, _ = _built("convnext_hand")
    layouts = [m.data_format for m in model.modules() if isinstance(m, convnext_hand.LayerNorm)]
    assert layouts.count("channels_first") == 4 and layouts.count("channels_last") == 5


def test_llama_hand_has_each_rms_spelling() -> None:
    model, _, _ = _built("llama_hand")
    types = [type(m) for m in model.modules() if isinstance(m, tuple(_KIND_TYPES["rms"]))]
    assert types.count(llama_hand.LlamaRMSNorm) == 3
    assert types.count(llama_hand.T5LayerNorm) == 1
    assert types.count(llama_hand.GemmaRMSNorm) == 1


def test_llama_hand_runs_in_half_precision() -> None:
    """The Cast form is exercised in float16: the model must run and agree with float32."""
    entry = models.get("llama_hand")
    _, y, _ = _built("llama_hand")
    with torch.no_grad():
        y16 = entry.factory().half()(entry.example_inputs()[0].half())
    assert y16.dtype == torch.float16 and torch.isfinite(y16).all()
    # measured 1.4e-3 on outputs up to 2.4; the table's float16 atol without its rtol (stricter)
    torch.testing.assert_close(y16.float(), y, rtol=0, atol=tolerance("float16").atol)


def test_tutorial_gn_has_each_group_norm_spelling() -> None:
    model, _, _ = _built("tutorial_gn")
    norms = {type(m): m for m in model.modules() if norm_kind_of(m) == "group"}
    assert set(norms) == set(_KIND_TYPES["group"][1:5])  # the four tutorial spellings
    assert norms[tutorial_gn.GroupNormSplit].num_groups <= 8  # one graph branch per group


def test_dit_block_norms_are_non_affine_and_modulated() -> None:
    model, _, _ = _built("dit_block")
    lns = [m for m in model.modules() if isinstance(m, nn.LayerNorm)]
    assert len(lns) == 5 and all(m.weight is None and m.bias is None for m in lns)
    # the modulation is random, not adaLN-Zero's zeros: a wrong modulated norm must show
    for m in model.modules():
        if hasattr(m, "adaLN_modulation"):
            assert m.adaLN_modulation[-1].weight.abs().max() > 1e-2


def test_resnet_ws_weight_norm_magnitudes_are_randomized() -> None:
    model, _, _ = _built("resnet_ws")
    wn = [m for m in model.modules() if hasattr(m, "parametrizations")]
    assert len(wn) == 1
    p = wn[0].parametrizations.weight
    g, v = p.original0, p.original1
    assert not torch.allclose(g, v.flatten(1).norm(dim=1).view_as(g))
