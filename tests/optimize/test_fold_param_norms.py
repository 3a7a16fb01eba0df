"""Norms of parameters folded into constants in float64 (normonnx/optimize/fold_param_norms.py):
weight standardization, weight_norm and parametrizations — and the refusals."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import numpy_helper
from optimize_helpers import check_numbers, constants_rng, export, model, ops, optimize, refusal, rng, run, torch64_out
from strict_tolerances import REWRITE_FOLDED_ATOL

_CONST = constants_rng("test_fold_param_norms")  # import-time constants only; tests draw from rng()


V = (0.3 * _CONST.standard_normal((4, 3, 3, 3))).astype(np.float32)
GN = (0.5 + _CONST.uniform(size=(4, 1, 1, 1))).astype(np.float32)

WEIGHT_NORM = """<ir_version: 8, opset_import: ["" : 17]>
g (float[2,3,6,6] x{inputs}) => (float[2,4,4,4] y) {{
  n = ReduceL2 <axes = [1, 2, 3], keepdims = 1> (v)
  f = Div(gn, n)
  w = Mul(v, f)
  y = Conv(x, w)
}}"""


def test_weight_norm_folded_in_float64():
    m = model(WEIGHT_NORM.format(inputs=""), v=V, gn=GN)
    res = optimize(m)
    assert res.fired == {"param_norm.fold": 1}
    assert ops(res.model) == ["Conv"]
    w = next(
        numpy_helper.to_array(t) for t in res.model.graph.initializer if t.name == res.model.graph.node[0].input[1]
    )
    v64 = V.astype(np.float64)
    expected = (v64 * GN / np.sqrt((v64**2).sum(axis=(1, 2, 3), keepdims=True))).astype(np.float32)
    np.testing.assert_array_equal(w, expected)
    check_numbers(res, m, rng().standard_normal((2, 3, 6, 6)).astype(np.float32))


def test_graph_input_weight_refused():
    """An initializer that is also a graph input can be overridden by the caller: not a constant."""
    m = model(WEIGHT_NORM.format(inputs=", float[4,3,3,3] v"), v=V, gn=GN)
    res = optimize(m)
    assert "weight 'v' is a graph input" in refusal(res, "param_norm.fold")
    assert "ReduceL2" in ops(res.model)
    check_numbers(res, m, rng().standard_normal((2, 3, 6, 6)).astype(np.float32))


def test_constant_subgraph_without_norm_is_left_to_constant_folding():
    m = model(
        """<ir_version: 8, opset_import: ["" : 17]>
        g (float[2,3,6,6] x) => (float[2,4,4,4] y) { w = Transpose <perm = [1, 0, 2, 3]> (v)  y = Conv(x, w) }""",
        v=V.transpose(1, 0, 2, 3).copy(),
    )
    res = optimize(m, debug=True)
    assert not res.fired
    assert any(r.rule == "param_norm.fold" and "without a normalisation" in r.reason for r in res.misses)
    assert ops(res.model) == ["Conv"]  # onnxscript's constant folding did it


# -- real exports -------------------------------------------------------------------------------------------
def _modules():
    import torch
    import torch.nn.functional as F

    class StdConv2d(torch.nn.Conv2d):  # timm
        def forward(self, x):
            w = F.batch_norm(
                self.weight.reshape(1, self.out_channels, -1), None, None, training=True, momentum=0.0, eps=1e-6
            ).reshape_as(self.weight)
            return F.conv2d(x, w, self.bias, self.stride, self.padding)

    class WSConv2d(torch.nn.Conv2d):  # BiT-style, written out
        def forward(self, x):
            w = self.weight
            m = w.mean(dim=(1, 2, 3), keepdim=True)
            v = w.var(dim=(1, 2, 3), keepdim=True, unbiased=False)
            return F.conv2d(x, (w - m) / torch.sqrt(v + 1e-10), self.bias)

    torch.manual_seed(0)
    return {
        "std": StdConv2d(3, 4, 3),
        "ws": WSConv2d(3, 4, 3),
        "weight_norm": torch.nn.utils.parametrizations.weight_norm(torch.nn.Conv2d(3, 4, 3)),
    }


@pytest.mark.parametrize(("exporter", "opset"), [("legacy", 13), pytest.param("dynamo", 18, marks=pytest.mark.slow)])
def test_weight_normalisation_exports(exporter, opset):
    import torch

    x = torch.randn(1, 3, 8, 8)
    for name, mod in _modules().items():
        m = export(mod, x, exporter, opset, fold=False)
        res = optimize(m)
        assert res.fired == {"param_norm.fold": 1}, (name, res.fired, res.refused)
        assert ops(res.model) == ["Conv"], name
        assert res.passed, (name, res.summary())
        np.testing.assert_allclose(
            run(res.model, x.numpy())[0], torch64_out(mod, x), atol=REWRITE_FOLDED_ATOL, err_msg=name
        )
