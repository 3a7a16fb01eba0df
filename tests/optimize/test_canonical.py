"""The canonical forms and the spellings of issue 11 (normonnx/optimize/canonical.py, group_norm.split,
modulated.record, the ε-outside refusal), each rule with its negative tests and reasons."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from optimize_helpers import _quiet, check_numbers, model, ops, optimize, refusal, rng, run, torch64_out
from strict_tolerances import REWRITE_ATOL
from test_fuse_layer import BETA, GAMMA, ln_text

from normonnx.optimize import optimize_model


def _dynamo(module, x, opset=18, dynamic=None):
    with _quiet(), torch.no_grad():
        return torch.onnx.export(
            module.eval(), (x,), dynamo=True, opset_version=opset, dynamic_shapes=dynamic
        ).model_proto


class SplitGN(torch.nn.Module):
    """The tutorial GroupNorm: normalise each chunk of channels, concatenate (var_mean keepdim=False)."""

    def __init__(self, c=16, g=4, order=None, axes=(1, 2, 3)):
        super().__init__()
        self.g, self.order, self.axes = g, order, list(axes)
        self.weight = torch.nn.Parameter(1 + 0.2 * torch.randn(1, c, 1, 1))
        self.bias = torch.nn.Parameter(0.2 * torch.randn(1, c, 1, 1))

    def forward(self, x):
        chunks = []
        for t in x.split(x.shape[1] // self.g, dim=1):
            var, mean = torch.var_mean(t, dim=self.axes, unbiased=False)
            shape = [t.shape[0]] + [1 if d in self.axes else t.shape[d] for d in range(1, t.dim())]
            chunks.append((t - mean.reshape(shape)) / torch.sqrt(var.reshape(shape) + 1e-5))
        if self.order is not None:
            chunks = [chunks[i] for i in self.order]
        return torch.cat(chunks, 1) * self.weight + self.bias


def test_split_cat_groupnorm_fuses_to_one_node():
    torch.manual_seed(0)
    mod, x = SplitGN(), torch.randn(2, 16, 5, 6)
    res = optimize(_dynamo(mod, x))
    assert res.fired.get("group_norm.split") == 1 and res.fired.get("canonical.sum_to_mean") == 4, res.fired
    assert [r["kind"] for r in res.lowerings] == ["group"] and "Concat" not in ops(res.model)
    np.testing.assert_allclose(run(res.model, x.numpy())[0], torch64_out(mod, x), atol=REWRITE_ATOL)
    x3 = x + 1e3
    err = np.abs(run(res.model, x3.numpy())[0] - torch64_out(mod, x3)).max()
    with torch.no_grad():
        err_torch = (mod(x3).double() - torch.from_numpy(torch64_out(mod, x3))).abs().max().item()
    assert err <= 2 * err_torch, (err, err_torch)


def test_split_cat_in_another_order_is_not_groupnorm():
    """A near-miss: chunks concatenated out of order permute the channels, so it stays as written."""
    torch.manual_seed(0)
    mod, x = SplitGN(order=[1, 0, 2, 3]), torch.randn(2, 16, 5, 6)
    res = optimize(_dynamo(mod, x))
    assert "not concatenated in the order" in refusal(res, "group_norm.split")
    assert "group_norm.split" not in res.fired
    np.testing.assert_allclose(run(res.model, x.numpy())[0], torch64_out(mod, x), atol=REWRITE_ATOL)


def test_split_chunks_normalised_over_spatial_axes_only_are_instance_like_not_groupnorm():
    """Wrong axis: each chunk normalised over (2, 3) only is not a GroupNorm over the chunk."""
    torch.manual_seed(0)
    mod, x = SplitGN(axes=(2, 3)), torch.randn(2, 16, 5, 6)
    res = optimize(_dynamo(mod, x))
    assert "not over 1..3" in refusal(res, "group_norm.split")
    assert "group_norm.split" not in res.fired
    np.testing.assert_allclose(run(res.model, x.numpy())[0], torch64_out(mod, x), atol=REWRITE_ATOL)


def test_epsilon_outside_the_square_root_refused():
    """(x − μ)/(σ + ε) (std + ε) is not (x − μ)/√(σ² + ε): refused, with the reason, and left as written."""
    text = ln_text().replace(" ve = Add(var, eps)\n s = Sqrt(ve)", " sd = Sqrt(var)\n s = Add(sd, eps)")
    m = model(text, gamma=GAMMA, beta=BETA)
    res = optimize(m)
    assert "outside the square root" in refusal(res, "layer_norm.decomposed")
    assert not res.fired.get("layer_norm.decomposed")
    check_numbers(res, m, rng().standard_normal((2, 5, 16)).astype(np.float32))


def test_epsilon_zero_outside_the_square_root_is_a_norm():
    """With ε = 0 the two spellings are the same function: fused."""
    text = ln_text(eps="eps = Constant <value = float {0.0}> ()").replace(
        " ve = Add(var, eps)\n s = Sqrt(ve)", " sd = Sqrt(var)\n s = Add(sd, eps)"
    )
    m = model(text, gamma=GAMMA, beta=BETA)
    res = optimize(m)
    assert res.fired.get("layer_norm.decomposed") == 1, (res.fired, res.refused)


def test_sum_over_other_count_is_not_a_mean():
    """A negative for canonical.sum_to_mean: ReduceSum / (N − 1) is not the mean."""
    text = """<ir_version: 8, opset_import: ["" : 17]>
m (float[2,5,16] x) => (float[2,5,1] y) {
 s = ReduceSum <keepdims = 1> (x, ax)
 y = Div(s, k)
}"""
    res = optimize_model(
        model(text, ax=np.array([-1], np.int64), k=np.array(15.0, np.float32)), verify=False, rules=["canonical"]
    )
    assert "not by its count 16" in refusal(res, "canonical.sum_to_mean")


def test_shared_gamma_with_another_node_still_fuses_without_touching_it():
    """A γ initializer read by a second node is copied into the norm's weight, the other reader unchanged."""
    text = (
        ln_text()
        .replace("=> (float[2,5,16] y)", "=> (float[2,5,16] y, float[16] g2)")
        .replace(" y = Add(g, beta)", " y = Add(g, beta)\n g2 = Mul(gamma, gamma)")
    )
    m = model(text, gamma=GAMMA, beta=BETA)
    res = optimize(m)
    assert res.fired.get("layer_norm.affine") == 2, (res.fired, res.refused)
    x = rng().standard_normal((2, 5, 16)).astype(np.float32)
    got, ref = run(res.model, x), run(m, x)
    np.testing.assert_allclose(got[1], ref[1], rtol=0, atol=0)
    np.testing.assert_allclose(got[0], ref[0], atol=REWRITE_ATOL)


@pytest.mark.parametrize("dynamic", [False, True])
def test_view_groupnorm_with_dynamic_batch_and_spatial_dims(dynamic):
    """A dynamic export spells the [N, G, −1] view from Shape ops; it is evaluated symbolically."""

    class ViewGN(torch.nn.Module):
        def forward(self, x):
            n, c, h, w = x.shape
            v = x.view(n, 4, -1)
            y = (v - v.mean(-1, keepdim=True)) / (v.var(-1, keepdim=True, unbiased=False) + 1e-5).sqrt()
            return y.view(n, c, h, w)

    x = torch.randn(2, 16, 5, 6)
    d = {0: torch.export.Dim.DYNAMIC, 2: torch.export.Dim.DYNAMIC, 3: torch.export.Dim.DYNAMIC}
    res = optimize(_dynamo(ViewGN(), x, dynamic=({**d},) if dynamic else None), inputs={"x": [2, 16, 5, 6]})
    assert res.fired.get("group_norm.decomposed") == 1, (res.fired, res.refused)
    x2 = torch.randn(3, 16, 7, 4) if dynamic else x
    np.testing.assert_allclose(run(res.model, x2.numpy())[0], torch64_out(ViewGN(), x2), atol=REWRITE_ATOL)


def test_modulation_with_constant_scale_is_an_affine_not_a_modulation():
    """y·(1 + s) + t with constant s, t is absorbed as γ = 1 + s, β = t: no modulation recorded."""
    text = """<ir_version: 8, opset_import: ["" : 17]>
m (float[2,5,16] x) => (float[2,5,16] y) {
 n = LayerNormalization <axis = -1, epsilon = 1e-5> (x, ones, zeros)
 f = Add(s, one)
 a = Mul(n, f)
 y = Add(a, t)
}"""
    m = model(
        text,
        ones=np.ones(16, np.float32),
        zeros=np.zeros(16, np.float32),
        s=(0.1 * rng().standard_normal(16)).astype(np.float32),
        one=np.array(1.0, np.float32),
        t=(0.1 * rng().standard_normal(16)).astype(np.float32),
    )
    res = optimize(m)
    assert "modulated.record" not in res.fired and res.fired.get("layer_norm.affine") == 2, res.fired
    check_numbers(res, m, rng().standard_normal((2, 5, 16)).astype(np.float32))
