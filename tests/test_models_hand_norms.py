"""The hand-written norms of ``models/`` against torch's own norms: the oracles for recognising them.

Each hand-written module (and each parameter norm of ``resnet_ws``) is compared with the torch
functional it is claimed to equal, in float64 to 1e-10 where the spelling computes in the input's
dtype. The RMSNorm spellings compute their statistics in float32 by design (that is their Cast
form), so they are checked in float32 against ``F.rms_norm`` and in float16 against a float64
reference. Every check that depends on a constant (an eps, the unbiased correction) also shows that
a wrong constant would fail it.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import models
from models import convnext_hand, dit_block, llama_hand, resnet_ws, tutorial_gn
from models._common import randomize_norms, seeded

ATOL64 = 1e-10
#: a float32 hand spelling against torch's functional in float32 (and float64): the same formula,
#: so only rounding order differs; far inside the table's float32 entry (1e-4 + 1e-4·|y|), which is
#: for an ONNX graph on another runtime
SPELLING_RTOL, SPELLING_ATOL = 1e-5, 1e-6
#: the float16 Cast spelling against float64: float32 statistics leave one float16 rounding of y
#: (2^-11 ≈ 5e-4 relative); 5x inside the table's float16 entry (1e-2)
HALF_SPELLING_TOL = 2e-3


def _x(*shape: int, seed: int, offset: float = 0.0, scale: float = 1.0, dtype=torch.float64) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return (offset + scale * torch.randn(*shape, generator=gen, dtype=torch.float64)).to(dtype)


def _random(module: nn.Module, seed: int = 0) -> nn.Module:
    """``module`` with seeded random norm parameters (as the models get them), in float64."""
    with seeded(seed):
        randomize_norms(module)
    return module.double().eval()


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max())


# --- LayerNorm (convnext_hand) ------------------------------------------------------------------


@torch.no_grad()
def test_convnext_channels_first_layernorm_is_layer_norm_over_channels() -> None:
    ln = _random(convnext_hand.LayerNorm(8, eps=1e-6, data_format="channels_first"))
    # offset 3 and a variance close to eps: a wrong eps or a mean not subtracted would show
    x = _x(2, 8, 3, 5, seed=1, offset=3.0, scale=2e-3)
    ref = F.layer_norm(x.permute(0, 2, 3, 1), (8,), ln.weight, ln.bias, 1e-6).permute(0, 3, 1, 2)
    assert _max_diff(ln(x), ref) < ATOL64
    wrong_eps = F.layer_norm(x.permute(0, 2, 3, 1), (8,), ln.weight, ln.bias, 1e-5).permute(0, 3, 1, 2)
    assert _max_diff(ref, wrong_eps) > 1e-3


@torch.no_grad()
def test_convnext_channels_last_layernorm_is_layer_norm_over_last_axis() -> None:
    ln = _random(convnext_hand.LayerNorm(16, eps=1e-6))
    x = _x(2, 4, 5, 16, seed=2, offset=-2.0, scale=2e-3)
    ref = F.layer_norm(x, (16,), ln.weight, ln.bias, 1e-6)
    assert _max_diff(ln(x), ref) < ATOL64
    assert _max_diff(ref, F.layer_norm(x, (16,), ln.weight, ln.bias, 1e-5)) > 1e-3


def test_convnext_layernorm_rejects_unknown_layout() -> None:
    with pytest.raises(NotImplementedError):
        convnext_hand.LayerNorm(8, data_format="nhwc")


# --- RMSNorm (llama_hand) -----------------------------------------------------------------------


def _rms64(x: torch.Tensor, scale: torch.Tensor, eps: float) -> torch.Tensor:
    x = x.double()
    return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps) * scale.double()


RMS_CASES = [
    ("llama", lambda: llama_hand.LlamaRMSNorm(64, eps=1e-5), lambda m: m.weight, 1e-5),
    ("t5", lambda: llama_hand.T5LayerNorm(64, eps=1e-6), lambda m: m.weight, 1e-6),
    ("gemma", lambda: llama_hand.GemmaRMSNorm(64, eps=1e-6), lambda m: 1.0 + m.weight, 1e-6),
]


@pytest.mark.parametrize(("factory", "scale_of", "eps"), [c[1:] for c in RMS_CASES], ids=[c[0] for c in RMS_CASES])
@torch.no_grad()
def test_rms_spellings_are_rms_norm(factory, scale_of, eps) -> None:
    norm = _random(factory()).float()
    if isinstance(norm, llama_hand.GemmaRMSNorm):
        assert norm.weight.abs().max() < 0.6  # an offset from one, not a scale near one
    x = _x(3, 7, 64, seed=3, scale=3e-3, dtype=torch.float32)  # mean(x^2) ~ 1e-5 ~ eps
    y = norm(x)
    assert y.dtype == torch.float32
    ref = F.rms_norm(x, (64,), scale_of(norm), eps)
    torch.testing.assert_close(y, ref, rtol=SPELLING_RTOL, atol=SPELLING_ATOL)
    ref64 = _rms64(x, scale_of(norm), eps)
    torch.testing.assert_close(y.double(), ref64, rtol=SPELLING_RTOL, atol=SPELLING_ATOL)
    assert _max_diff(ref64, _rms64(x, scale_of(norm), 10 * eps)) > 1e-2


@pytest.mark.parametrize(("factory", "scale_of", "eps"), [c[1:] for c in RMS_CASES], ids=[c[0] for c in RMS_CASES])
@torch.no_grad()
def test_rms_spellings_keep_float32_statistics_in_half_precision(factory, scale_of, eps) -> None:
    """The Cast form: on float16 input the statistics are float32, so x^2 above 65504 is fine."""
    norm = _random(factory()).half()
    x = _x(2, 5, 64, seed=4, scale=400.0, dtype=torch.float16)
    assert torch.isinf(x.pow(2)).any()  # float16 statistics would overflow
    y = norm(x)
    assert y.dtype == torch.float16
    assert torch.isfinite(y).all()
    ref = _rms64(x, scale_of(norm), eps)
    torch.testing.assert_close(y.double(), ref, rtol=HALF_SPELLING_TOL, atol=HALF_SPELLING_TOL)


# --- GroupNorm (tutorial_gn) --------------------------------------------------------------------

GN_SHAPES = [(2, 16, 3, 5), (1, 128, 16, 16)]  # the second is the unbiased block's shape in the model


def _gn_module(cls: type[nn.Module], channels: int, groups: int) -> nn.Module:
    return _random(cls(channels, groups))


@pytest.mark.parametrize("cls", [tutorial_gn.GroupNormView, tutorial_gn.GroupNormSplit, tutorial_gn.GroupNorm5d])
@pytest.mark.parametrize("shape", GN_SHAPES, ids=lambda s: "x".join(map(str, s)))
@torch.no_grad()
def test_tutorial_group_norms_are_group_norm(cls, shape) -> None:
    groups = 4 if shape[1] == 16 else 8
    gn = _gn_module(cls, shape[1], groups)
    x = _x(*shape, seed=5, offset=2.0, scale=3e-3)
    ref = F.group_norm(x, groups, gn.weight.flatten(), gn.bias.flatten(), gn.eps)
    assert _max_diff(gn(x), ref) < ATOL64
    assert _max_diff(ref, F.group_norm(x, groups, gn.weight.flatten(), gn.bias.flatten(), 2 * gn.eps)) > 1e-3


@pytest.mark.parametrize("shape", GN_SHAPES, ids=lambda s: "x".join(map(str, s)))
@torch.no_grad()
def test_unbiased_tutorial_group_norm_is_a_rescaled_group_norm(shape) -> None:
    """With n = (C/G)*H*W: (x - m)/sqrt(var_u + eps) = sqrt((n-1)/n) * (x - m)/sqrt(var + eps(n-1)/n),
    since var_u = var * n/(n-1); so the module is GroupNorm(eps') with weight w*sqrt((n-1)/n)."""
    _, c, h, w = shape
    groups = 4 if c == 16 else 32
    gn = _gn_module(tutorial_gn.GroupNormUnbiased, c, groups)
    n = c // groups * h * w
    x = _x(*shape, seed=6, offset=-1.0, scale=3e-3)  # var ~ 1e-5 ~ eps: eps' matters
    factor = (n - 1) / n
    weight, bias = gn.weight.flatten(), gn.bias.flatten()
    ref = F.group_norm(x, groups, weight * math.sqrt(factor), bias, gn.eps * factor)
    y = gn(x)
    assert _max_diff(y, ref) < ATOL64
    # neither plain GroupNorm nor the rescaling with the unchanged eps is it
    assert _max_diff(y, F.group_norm(x, groups, weight, bias, gn.eps)) > 1e-6
    assert _max_diff(y, F.group_norm(x, groups, weight * math.sqrt(factor), bias, gn.eps)) > 1e-7


# --- weight standardization and weight norm (resnet_ws) -----------------------------------------


def _standardized(weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Per output channel: (W - mean) / sqrt(var + eps), biased var, in float64."""
    w = weight.double()
    m = w.mean(dim=(1, 2, 3), keepdim=True)
    v = ((w - m) ** 2).mean(dim=(1, 2, 3), keepdim=True)
    return (w - m) / torch.sqrt(v + eps)


def _ws_model() -> nn.Module:
    return copy.deepcopy(models.get("resnet_ws").factory()).double()


@torch.no_grad()
def test_weight_standardized_convs_are_convs_with_standardized_weights() -> None:
    model = _ws_model()
    seen = {resnet_ws.TimmStdConv2d: 0, resnet_ws.BiTStdConv2d: 0}
    for i, conv in enumerate(m for m in model.modules() if type(m) in seen):
        seen[type(conv)] += 1
        eps = conv.eps if isinstance(conv, resnet_ws.TimmStdConv2d) else 1e-10
        x = _x(2, conv.in_channels, 9, 7, seed=10 + i)
        ref = F.conv2d(x, _standardized(conv.weight, eps), None, conv.stride, conv.padding)
        assert _max_diff(conv(x), ref) < ATOL64, conv
        if isinstance(conv, resnet_ws.TimmStdConv2d):
            assert conv.eps == 1e-6
            assert _max_diff(ref, F.conv2d(x, _standardized(conv.weight, 0.0), None, conv.stride, conv.padding)) > 1e-8
    assert seen == {resnet_ws.TimmStdConv2d: 5, resnet_ws.BiTStdConv2d: 3}


@torch.no_grad()
def test_weight_norm_conv_is_conv_with_g_times_unit_v() -> None:
    model = _ws_model()
    (conv,) = [m for m in model.modules() if hasattr(m, "parametrizations")]
    g, v = conv.parametrizations.weight.original0, conv.parametrizations.weight.original1
    weight = g * v / v.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    x = _x(2, conv.in_channels, 8, 6, seed=20)
    assert _max_diff(conv(x), F.conv2d(x, weight, None, conv.stride)) < ATOL64
    assert _max_diff(weight, v) > 1e-3  # g is not ||v||


@torch.no_grad()
def test_resnet_ws_with_folded_weights_is_the_same_model() -> None:
    """What an export that folds the parameter norms computes: plain convs with constant weights."""
    model = _ws_model()
    folded = copy.deepcopy(model)
    for name, conv in list(folded.named_modules()):
        if isinstance(conv, (resnet_ws.TimmStdConv2d, resnet_ws.BiTStdConv2d)) or hasattr(conv, "parametrizations"):
            if isinstance(conv, resnet_ws.TimmStdConv2d):
                weight = _standardized(conv.weight, conv.eps)
            elif isinstance(conv, resnet_ws.BiTStdConv2d):
                weight = _standardized(conv.weight, 1e-10)
            else:
                weight = conv.weight.detach().clone()  # the parametrization's g * v / ||v||
            plain = nn.Conv2d(
                conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, bias=False
            )
            plain.weight = nn.Parameter(weight)
            parent, _, attr = name.rpartition(".")
            setattr(folded.get_submodule(parent) if parent else folded, attr, plain.double())
    assert not any(isinstance(m, (resnet_ws.TimmStdConv2d, resnet_ws.BiTStdConv2d)) for m in folded.modules())
    assert not any(hasattr(m, "parametrizations") for m in folded.modules())
    for x in (models.get("resnet_ws").example_inputs()[0], models.get("resnet_ws").second_size_inputs()[0]):
        assert _max_diff(folded(x.double()), model(x.double())) < ATOL64


# --- AdaLN (dit_block) --------------------------------------------------------------------------


def _ln64(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    m = x.mean(-1, keepdim=True)
    return (x - m) / torch.sqrt(((x - m) ** 2).mean(-1, keepdim=True) + eps)


def _dit64() -> nn.Module:
    return copy.deepcopy(models.get("dit_block").factory()).double()


@torch.no_grad()
def test_modulate_is_layer_norm_times_one_plus_scale_plus_shift() -> None:
    x, shift, scale = _x(2, 7, 32, seed=30, offset=1.0), _x(2, 32, seed=31), _x(2, 32, seed=32)
    ln = nn.LayerNorm(32, elementwise_affine=False, eps=1e-6).double()
    y = dit_block.modulate(ln(x), shift, scale)
    ref = F.layer_norm(x, (32,), eps=1e-6) * (1 + scale[:, None]) + shift[:, None]
    assert _max_diff(y, ref) < ATOL64
    assert _max_diff(y, _ln64(x) * (1 + scale[:, None]) + shift[:, None]) < ATOL64
    # the per-sample scale and shift really differ per sample (broadcast over tokens only)
    assert _max_diff(y[0], F.layer_norm(x[0], (32,), eps=1e-6) * (1 + scale[1]) + shift[1]) > 1e-2


@torch.no_grad()
def test_dit_blocks_feed_modulated_norms_in_chunk_order() -> None:
    """attn sees LN(x)(1 + scale_msa) + shift_msa, mlp sees LN(x1)(1 + scale_mlp) + shift_mlp with
    x1 = x + gate_msa * attn(...), and the block returns x1 + gate_mlp * mlp(...)."""
    model = _dit64()
    x, c = _x(2, 11, 128, seed=33, offset=0.5), _x(2, 128, seed=34)
    for block in model.blocks:
        seen: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        hooks = [
            getattr(block, n).register_forward_hook(lambda _m, i, o, n=n, seen=seen: seen.__setitem__(n, (i[0], o)))
            for n in ("attn", "mlp")
        ]
        out = block(x, c)
        for h in hooks:
            h.remove()
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = (
            t[:, None] for t in block.adaLN_modulation(c).chunk(6, dim=1)
        )
        attn_in, attn_out = seen["attn"]
        assert _max_diff(attn_in, _ln64(x) * (1 + scale_msa) + shift_msa) < ATOL64
        x1 = x + gate_msa * attn_out
        mlp_in, mlp_out = seen["mlp"]
        assert _max_diff(mlp_in, _ln64(x1) * (1 + scale_mlp) + shift_mlp) < ATOL64
        assert _max_diff(out, x1 + gate_mlp * mlp_out) < ATOL64
        x = out


@torch.no_grad()
def test_dit_final_layer_is_linear_of_modulated_norm() -> None:
    model = _dit64()
    final = model.final_layer
    x, c = _x(2, 9, 128, seed=35, offset=-0.5), _x(2, 128, seed=36)
    shift, scale = final.adaLN_modulation(c).chunk(2, dim=1)
    ref = final.linear(_ln64(x) * (1 + scale[:, None]) + shift[:, None])
    assert _max_diff(final(x, c), ref) < ATOL64
    swapped = final.linear(_ln64(x) * (1 + shift[:, None]) + scale[:, None])
    assert _max_diff(ref, swapped) > 1e-2
