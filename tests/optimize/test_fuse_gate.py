"""Gated residual + norm (normonnx/optimize/fuse_residual.py, ``residual.gate_*``): AdaLN-Zero's
``x + gate·r`` folded into the residual norm node. What fires, the operand orders, the sum output
bitwise ``fl(a + fl(g·r))``, numbers against the unfused graph, and refusals with their reasons
(per-token "gate", a gate not over the normalised axes, a product read elsewhere, the CUDA target)."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper
from optimize_helpers import ops, optimize, refusal, run
from test_fuse_residual import X3, B, C, F, W, build, feeds, fused, kernel_node, norm, same_numbers

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


# -- per-sample operands: Unsqueeze([N, C]) absorbed (normonnx/optimize/fuse_sample.py) -------------------
E3 = [X3[0], 3 * C]  # AdaLN's projection: Split(axis=1) into scale, shift, gate [N, C]


def adaln(op: str, *, axes=None, shift_input=None, extra_reader=False):
    """``sc, sh, g = Split(e)``; each ``Unsqueeze(·, [1])`` (``axes``: per operand); ``s = a + g·r``;
    LayerNorm: ``y = N(s)·(1 + sc) + sh``, RMSNorm: ``y = N(s)·w``. ``shift_input``: the shift is that
    graph input instead; ``extra_reader``: the gate's Unsqueeze is also a graph output."""
    axes = {"sc": [1], "sh": [1], "g": [1], **(axes or {})}
    ax = lambda k: helper.make_node("Constant", [], [f"ax_{k}"], value=numpy_helper.from_array(np.array(axes[k])))
    names = ["sc", "sh", "g"]
    nodes = [
        helper.make_node("Split", ["e"], names, axis=1, num_outputs=3),
        *[ax(k) for k in names],
        *[helper.make_node("Unsqueeze", [k, f"ax_{k}"], [f"{k}u"]) for k in names],
        helper.make_node("Mul", ["gu", "r"], ["t"]),
        helper.make_node("Add", ["a", "t"], ["s"]),
    ]
    inputs = [("a", X3), ("r", X3), ("e", E3)]
    if op == "LayerNorm":
        shift = shift_input[0] if shift_input else "shu"
        inputs += [shift_input] if shift_input else []
        nodes += [
            norm("LayerNorm", "s", "n"),
            helper.make_node("Constant", [], ["one"], value=numpy_helper.from_array(np.float32(1.0))),
            helper.make_node("Add", ["one", "scu"], ["f"]),
            helper.make_node("Mul", ["n", "f"], ["m"]),
            helper.make_node("Add", ["m", shift], ["y"]),
        ]
    else:
        nodes += [norm("RMSNorm", "s", "y", "w")]
    outputs = [("y", X3), ("s", X3)] + ([("gu", None)] if extra_reader else [])
    return build(nodes, inputs, outputs, **({"w": W} if op == "RMSNorm" else {}))


def _without_sample_rule(m):
    from normonnx.optimize import rule_names

    return optimize(m, prefer=None, rules=[f for f in rule_names() if f != "sample_operands"])


@pytest.mark.parametrize("op", ["LayerNorm", "RMSNorm"])
def test_adaln_unsqueezes_are_absorbed_into_the_node(op):
    m = adaln(op)
    res = optimize(m, prefer=None)
    kind = "layer" if op == "LayerNorm" else "rms"
    assert res.fired[f"sample_operands.{kind}"] == 1
    assert "Unsqueeze" not in ops(res.model)
    n = kernel_node(res.model)
    assert {a.name: a.i for a in n.attribute}["sample_operands"] == 1
    rows = ["g"] if op == "RMSNorm" else ["sc", "sh", "g"]
    assert set(rows) <= set(n.input) and not any(i.endswith("u") and i[:-1] in rows for i in n.input)
    xs = feeds(m)
    got = same_numbers(res, m, xs)
    before = _without_sample_rule(m)  # the same pipeline without the rule: the Unsqueezes stay
    assert ops(before.model).count("Unsqueeze") == len(rows)
    for a, b in zip(got, run(before.model, *xs), strict=True):
        np.testing.assert_array_equal(a, b)  # the same arithmetic, other indexing: bitwise
    lowered = optimize(m, prefer=("function",))  # the function body unsqueezes the rows itself
    assert ops(lowered.model) == ["Split", f"normonnx.{op}"]
    same_numbers(lowered, m, xs)


def test_negative_axes_are_the_same_axes():
    m = adaln("LayerNorm", axes={"sc": [-2], "g": [-2]})
    res = optimize(m, prefer=None)
    assert res.fired["sample_operands.layer"] == 1 and "Unsqueeze" not in ops(res.model)
    same_numbers(res, m, feeds(m))


def test_an_unsqueeze_read_elsewhere_stays_for_its_other_reader():
    m = adaln("LayerNorm", extra_reader=True)
    res = optimize(m, prefer=None)
    assert res.fired["sample_operands.layer"] == 1
    assert ops(res.model).count("Unsqueeze") == 1  # the gate's, a graph output; the node reads g
    assert "g" in kernel_node(res.model).input
    same_numbers(res, m, feeds(m))


@pytest.mark.parametrize(
    "variant, reason",
    [
        # [1, C] unsqueezed at axis 0 is a [1, 1, C] operand the modulation takes, but not [N, C] at axis 0
        ({"axes": {"sc": [0]}}, "inserts axes [0], not [1]"),
        ({"shift_input": ("shift", [X3[0], 1, C])}, "the shift 'shift' is not an Unsqueeze but a graph input"),
    ],
    ids=["axis0", "mixed"],
)
def test_operands_not_all_per_sample_unsqueezes_refuse(variant, reason):
    m = adaln("LayerNorm", **variant)
    if "axes" in variant:  # scale rows [1, C]: a shared scale
        sl = helper.make_node("Slice", ["scr", "z", "o", "z"], ["sc1"])
        m.graph.node[0].output[0] = "scr"
        m.graph.node.insert(1, sl)
        m.graph.initializer.extend(
            [numpy_helper.from_array(np.array([v], np.int64), name=k) for k, v in (("z", 0), ("o", 1))]
        )
        for n in m.graph.node:
            if n.op_type == "Unsqueeze" and n.input[0] == "sc":
                n.input[0] = "sc1"
    res = optimize(m, prefer=None)
    assert fused(res) == {"modulated.layer": 1, "residual.layer": 1, "residual.gate_layer": 1}
    assert "sample_operands.layer" not in res.fired
    assert reason in refusal(res, "sample_operands.layer")
    assert "sample_operands" not in {a.name for a in kernel_node(res.model).attribute}
    same_numbers(res, m, feeds(m))


def portable(v_type: int, v_shape, *, c: int = C):
    """A hand-written portable ``normonnx.LayerNorm`` (modulation=1) whose scale and shift are
    ``Unsqueeze(v, [1])``: the form the rule sees, with ``v`` as declared."""
    nodes = [
        helper.make_node("Constant", [], ["ax"], value=numpy_helper.from_array(np.array([1]))),
        helper.make_node("Unsqueeze", ["v", "ax"], ["u"]),
        helper.make_node(
            "LayerNorm", ["x", "", "", "", "u", "u"], ["y"], domain="normonnx", modulation=1, normalized_shape=[c]
        ),
    ]
    g = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", F, X3), helper.make_tensor_value_info("v", v_type, v_shape)],
        [helper.make_tensor_value_info("y", F, X3)],
    )
    return helper.make_model(
        g, opset_imports=[helper.make_opsetid("", 23), helper.make_opsetid("normonnx", 1)], ir_version=10
    )


@pytest.mark.parametrize(
    "v_type, v_shape, reason",
    [
        (TensorProto.FLOAT16, [X3[0], C], "the scale 'v' is float16, the norm float32"),
        (F, None, "the static shape of the scale 'v' is unknown"),
        (F, [X3[0], 1], "the scale 'v' has shape [2, 1], not [N or 1, *[16]]"),
        (F, [3, C], "first dim 3 is neither 1 nor the input's 2"),
    ],
    ids=["dtype", "unknown_shape", "trailing_dim", "batch"],
)
def test_rows_that_are_not_the_nodes_refuse(v_type, v_shape, reason):
    """Cases the upstream fusions never produce (they prove the [N, 1, C] operand first), refused by
    this rule's own proof when a normonnx node comes in as written: the graph is left as it is."""
    from normonnx.optimize.cleanup import infer
    from normonnx.optimize.fuse_sample import RULES
    from normonnx.optimize.result import Report
    from normonnx.optimize.rule import RulePass

    m = infer(portable(v_type, v_shape))
    report = Report()
    out, modified = RulePass("sample_operands", RULES).run(m, report)
    assert not modified and out.SerializeToString() == m.SerializeToString()
    assert reason in " | ".join(r.reason for r in report.refused if r.rule == "sample_operands.layer")
