"""Oracle 2: real torch modules in eval mode vs the ONNX graph of every valid strategy.

The spec and parameters come from the module itself (``kind.from_module``), so this also tests
recognition: a wrong eps, affine flag or running-stat reading would show up as a mismatch."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

from normonnx.lowering import STRATEGIES, build_model, check
from normonnx.norms import KINDS, get_kind
from normonnx.verify import compare_arrays, tolerance


def _randomize(m: nn.Module, seed: int) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in m.named_parameters():
            p.copy_((1.0 if "weight" in name else 0.0) + 0.3 * torch.randn(p.shape, generator=g))
        for name, b in m.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(0.5 * torch.randn(b.shape, generator=g))
            elif name.endswith("running_var"):
                b.copy_(0.5 + torch.rand(b.shape, generator=g))
    return m.eval()


MODULES = [
    ("batch", lambda: nn.BatchNorm1d(6), (4, 6)),
    ("batch", lambda: nn.BatchNorm1d(6, affine=False), (2, 6, 9)),
    ("batch", lambda: nn.BatchNorm2d(5, eps=1e-3), (2, 5, 4, 3)),
    ("batch", lambda: nn.BatchNorm3d(3), (1, 3, 2, 3, 4)),
    ("batch", lambda: nn.BatchNorm2d(4, track_running_stats=False), (3, 4, 5, 5)),
    ("layer", lambda: nn.LayerNorm(16), (2, 7, 16)),
    ("layer", lambda: nn.LayerNorm((4, 5), eps=1e-6), (2, 3, 4, 5)),
    ("layer", lambda: nn.LayerNorm(8, elementwise_affine=False), (3, 8)),
    ("layer", lambda: nn.LayerNorm(8, bias=False), (3, 2, 8)),
    ("instance", lambda: nn.InstanceNorm1d(4, affine=True), (2, 4, 11)),
    ("instance", lambda: nn.InstanceNorm2d(4), (2, 4, 6, 5)),
    ("instance", lambda: nn.InstanceNorm3d(3, affine=True), (1, 3, 3, 4, 5)),
    ("instance", lambda: nn.InstanceNorm2d(4, affine=True, track_running_stats=True), (2, 4, 6, 5)),
    ("group", lambda: nn.GroupNorm(4, 8), (2, 8, 5, 5)),
    ("group", lambda: nn.GroupNorm(1, 6), (2, 6, 4)),
    ("group", lambda: nn.GroupNorm(6, 6, affine=False), (2, 6, 3, 3)),
    ("group", lambda: nn.GroupNorm(2, 4, eps=1e-3), (2, 4)),
    ("group", lambda: nn.GroupNorm(2, 4), (1, 4, 2, 3, 4)),
    ("rms", lambda: nn.RMSNorm(16), (2, 5, 16)),
    ("rms", lambda: nn.RMSNorm(16, eps=1e-6), (2, 16)),
    ("rms", lambda: nn.RMSNorm((3, 4), elementwise_affine=False), (2, 3, 4)),
]
CASES = [
    (i, k, f, s, st) for i, (k, f, s) in enumerate(MODULES) for st in STRATEGIES if k in STRATEGIES[st].capabilities
]


@pytest.mark.parametrize(
    ("i", "kind", "factory", "shape", "strategy"), CASES, ids=[f"{c[1]}{c[0]}-{c[4]}" for c in CASES]
)
def test_module_matches_onnx(i, kind, factory, shape, strategy, ort_run):
    m = _randomize(factory(), i)
    k = get_kind(kind)
    assert isinstance(m, k.torch_modules())
    spec, params = k.from_module(m, rank=len(shape))
    opset = 23
    if not check(spec, strategy, opset):
        pytest.skip(f"{strategy}: {check(spec, strategy, opset).reason}")
    x = torch.randn(shape, generator=torch.Generator().manual_seed(100 + i)) * 1.5 + 0.3
    with torch.no_grad():
        expected = m(x).numpy()
    (y,) = ort_run(build_model(spec, params, opset, strategy, allow_unstable=True), {"X": x.numpy()})
    cmp = compare_arrays("Y", y, expected, tolerance("float32", kind))
    assert cmp.passed, cmp


def test_rms_default_eps_is_torch_finfo_eps():
    m = nn.RMSNorm(8)  # eps=None: torch uses finfo(dtype).eps
    spec, _ = KINDS["rms"].from_module(m)
    assert spec.eps == float(torch.finfo(torch.float32).eps)


#: stricter than the table's float32 atol (1e-4): a 6-channel normalisation sums 6 terms, so torch and
#: onnxruntime differ by a few ulps; the table's headroom is for long reductions
CHANNELS_FIRST_ATOL = 2e-5


def test_channels_first_layernorm_matches_permute_form(ort_run):
    """ConvNeXt's LayerNorm2d: permute → layer_norm over C → permute back."""
    c = 6
    ln = _randomize(nn.LayerNorm(c), 7)
    x = torch.randn(2, c, 4, 5)
    with torch.no_grad():
        expected = ln(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2).numpy()
    spec, params = KINDS["layer"].from_module(ln, rank=4)
    spec = spec.replace(channels_first=True)
    for strategy in ("decomposed", "function"):
        (y,) = ort_run(build_model(spec, params, 18, strategy), {"X": x.numpy()})
        np.testing.assert_allclose(y, expected, atol=CHANNELS_FIRST_ATOL, err_msg=strategy)
