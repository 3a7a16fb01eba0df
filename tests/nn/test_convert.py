"""normonnx.nn.convert on the reference models with hand-written norms: the same outputs (1e-6
relative), the original state dict loads strictly, and the converted model exports with one norm
node per norm. Refusals are data with a reason; a module that only looks like a norm is refused."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from torch import nn

import models
from normonnx import nn as nnx
from normonnx.exporter import export

HAND = [n for n, e in models.MODELS.items() if e.hand_written]
#: modules convert must refuse, per model: (path, words of the reason)
#: a converted model against the original, both torch float32: the same formulas (a swap is refused
#: when it is not), so only rounding order differs; far inside the table's float32 entry
CONVERT_REL = 1e-6
REFUSED = {"tutorial_gn": {"blocks.2.norm": "differs by"}}


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / a.abs().max())


def test_every_hand_written_model_is_covered():
    assert set(HAND) == {"convnext_hand", "llama_hand", "tutorial_gn", "resnet_ws", "dit_block"}


@pytest.mark.parametrize("name", HAND)
def test_convert_keeps_outputs_and_exports_one_node_per_norm(name, tmp_path):
    entry = models.get(name)
    model = entry.factory()
    swaps = nnx.plan(model)
    refused = {s.name: s.reason for s in swaps if s.target is None}
    assert set(refused) == set(REFUSED.get(name, {}))
    for path, words in REFUSED.get(name, {}).items():
        assert words in refused[path]
    converted = nnx.convert(model)
    ours = [m for m in converted.modules() if type(m).__module__ == "normonnx.nn.layers"]
    assert len(ours) == len(swaps) - len(refused) > 0
    converted.load_state_dict(model.state_dict(), strict=True)  # state dicts load unchanged
    assert set(converted.state_dict()) == set(model.state_dict())
    with torch.no_grad():
        for args in (entry.example_inputs(), entry.second_size_inputs()):
            assert _rel(model(*args), converted(*args)) <= CONVERT_REL
    res = export(converted, entry.example_inputs(), tmp_path / "c.onnx", dynamic=entry.dynamic_axes)
    norms = Counter(r.kind for r in res.lowerings)
    # an eval BatchNorm folded into its conv is still one norm of expected_norms (exporter's choice)
    norms["batch"] += res.fired.get("batchnorm.into_preceding", 0)
    assert {k: v for k, v in norms.items() if v} == entry.expected_norms


def test_weight_standardized_convs_become_wsconv2d_with_their_eps():
    model = models.get("resnet_ws").factory()
    swaps = {s.name: s for s in nnx.plan(model)}
    assert "eps=1e-06" in swaps["stem.0"].reason  # timm StdConv2d: its eps attribute
    assert "eps=1e-10" in swaps["layer2.conv1"].reason  # BiT: eps hard-coded, found by the probes
    assert not any("parametrizations" in n for n in swaps)  # weight_norm is not a standardization
    converted = nnx.convert(model)
    assert sum(isinstance(m, nnx.WSConv2d) for m in converted.modules()) == 8


def test_torch_norm_modules_convert_exactly():
    model = models.get("style_transfer").factory()  # InstanceNorm2d, one with running statistics
    converted = nnx.convert(model)
    assert sum(isinstance(m, nnx.InstanceNorm) for m in converted.modules()) == 11
    x = models.get("style_transfer").example_inputs()
    with torch.no_grad():
        assert torch.equal(model(*x), converted(*x))


class LooksLikeANorm(nn.Module):
    """Named like a norm, has weight/bias/eps, but is only an affine map."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(c))
        self.bias = nn.Parameter(torch.zeros(c))
        self.eps = 1e-5

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight + self.bias


class WrongEpsLayerNorm(LooksLikeANorm):
    """A LayerNorm whose forward hard-codes eps 1e-5 while its attribute says 1e-6."""

    def __init__(self, c: int) -> None:
        super().__init__(c)
        self.eps = 1e-6

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.layer_norm(x, x.shape[-1:], self.weight, self.bias, 1e-5)


@pytest.mark.parametrize("cls", [LooksLikeANorm, WrongEpsLayerNorm])
def test_a_module_that_is_not_the_norm_it_looks_like_is_refused(cls):
    model = nn.Sequential(nn.Linear(8, 8), cls(8))
    (swap,) = nnx.plan(model)
    assert swap.target is None and "differs by" in swap.reason and swap.error > 1e-6
    converted = nnx.convert(model)
    assert type(converted[1]) is cls


def test_already_converted_layers_are_left_alone():
    model = nnx.convert(models.get("convnext_hand").factory())
    assert nnx.plan(model) == []
