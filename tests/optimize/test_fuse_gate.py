"""Gated residual + norm (normonnx/optimize/fuse_residual.py, ``residual.gate_*``): AdaLN-Zero's
``x + gate·r`` folded into the residual norm node. What fires, the operand orders, the sum output
bitwise ``fl(a + fl(g·r))``, numbers against the unfused graph, and refusals with their reasons
(per-token "gate", a gate not over the normalised axes, a product read elsewhere, the CUDA target)."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper
from optimize_helpers import ops, optimize, refusal
from test_fuse_residual import X3, B, C, W, build, feeds, fused, kernel_node, norm, same_numbers

G3 = [X3[0], 1, C]  # per sample and feature


def gated(op: str, *, mul=("g", "r"), add=("a", "t"), g_shape=G3, extra=()):
    """t = Mul(*mul); s = Add(*add); y = N(s); z = s + y (the residual stream reads s); s is an output."""
    params = ["w", "b"] if op == "LayerNorm" else ["w"]
    return build(
        [
            helper.make_node("Mul", list(mul), ["t"]),
            helper.make_node("Add", list(add), ["s"]),
            norm(op, "s", "y", *params),
            helper.make_node("Add", ["s", "y"], ["z"]),
            *extra,
        ],
        [("a", X3), ("r", X3), ("g", g_shape)],
        [("z", X3), ("s", X3)] + ([("t2", X3)] if extra else []),
        w=W,
        b=B,
    )


@pytest.mark.parametrize("order", ["g*r, a+t", "r*g, t+a"])
@pytest.mark.parametrize("op", ["LayerNorm", "RMSNorm"])
def test_gate_folds_into_the_residual_norm(op, order):
    mul, add = (("g", "r"), ("a", "t")) if order.startswith("g") else (("r", "g"), ("t", "a"))
    m = gated(op, mul=mul, add=add)
    res = optimize(m, prefer=None)  # the CPU default: the kernels
    kind = "layer" if op == "LayerNorm" else "rms"
    assert fused(res) == {f"residual.{kind}": 1, f"residual.gate_{kind}": 1}
    assert ops(res.model) == [f"normonnx.kernels.{op}", "Add"]  # the Mul and the residual Add are gone
    n = kernel_node(res.model)
    assert n.input[0] == "a" and {"r", "g"} <= set(n.input) and list(n.output)[1] == "s"
    assert {a.name: a.i for a in n.attribute}["has_gate"] == 1
    a, r, g = feeds(m)
    _, s = same_numbers(res, m, [a, r, g])
    np.testing.assert_array_equal(s, a + g * r)  # the product rounded, then the sum: no fma


def test_dit_block_gates_fold_at_export(tmp_path):
    """Every gated residual of the DiT block (4 of its 5 modulated norms) becomes one kernel node."""
    import contextlib
    import io

    import onnx
    import torch

    import models
    from normonnx.exporter import export
    from normonnx.runtime import session

    entry = models.MODELS["dit_block"]
    model = entry.factory().eval()
    inputs = tuple(entry.example_inputs())
    with contextlib.redirect_stdout(io.StringIO()):
        res = export(model, inputs, tmp_path / "m.onnx", input_names=list(entry.input_names))
    assert res.fired["residual.gate_layer"] == 4
    m = onnx.load(tmp_path / "m.onnx")
    gates = [n for n in m.graph.node if any(a.name == "has_gate" and a.i for a in n.attribute)]
    assert len(gates) == 4 and all(n.domain == "normonnx.kernels" for n in gates)
    with torch.inference_mode():
        ref = model(*inputs).numpy()
        ref64 = model.double()(*[t.double() for t in inputs]).numpy()
    for custom_ops in (True, False):  # the kernels, and the function bodies without the library
        s = session(tmp_path / "m.onnx", custom_ops=custom_ops)
        (y,) = s.run([t.numpy() for t in inputs])
        assert float(np.abs(y - ref64).max()) <= 2 * max(float(np.abs(ref - ref64).max()), 1e-6)


@pytest.mark.parametrize(
    "g_shape, reason",
    [
        (X3, "varies along the token axes"),  # an element-wise product, not a gate
        ([X3[0], 1, 1], "trailing dims are not the normalised shape"),  # per-sample scalar
    ],
)
def test_a_product_that_is_not_a_gate_stays(g_shape, reason):
    m = gated("LayerNorm", g_shape=g_shape)
    res = optimize(m, prefer=None)
    assert fused(res) == {"residual.layer": 1}
    assert "Mul" in ops(res.model)
    assert reason in refusal(res, "residual.gate_layer")
    same_numbers(res, m, feeds(m))


def test_a_product_read_elsewhere_stays():
    m = gated("RMSNorm", extra=[helper.make_node("Identity", ["t"], ["t2"])])
    res = optimize(m, prefer=None)
    assert fused(res) == {"residual.rms": 1}
    assert "also read elsewhere" in refusal(res, "residual.gate_rms")
    same_numbers(res, m, feeds(m))


def test_cuda_target_keeps_the_gated_node_with_its_body():
    m = gated("LayerNorm")
    res = optimize(m, target="cuda", prefer=None, allow_unstable=True)
    assert "a gated residual (x + gate·r) has no contrib op" in dict(res.lowerings[0]["rejected"])["contrib"]
    assert not any(o.startswith("com.microsoft") for o in ops(res.model))
    same_numbers(res, m, feeds(m))
