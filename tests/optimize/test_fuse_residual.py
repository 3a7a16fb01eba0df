"""Residual Add + norm and modulated LayerNorm fusions (normonnx/optimize/fuse_residual.py,
fuse_modulated.py): what fires, where the fused node goes, the sum output, refusals with reasons
(broadcasting Add, unknown shapes, an order no position can keep, constant or per-token
modulation), numbers against the unfused graph and float64, and the real transformer models."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from optimize_helpers import assert_close, constants_rng, ops, optimize, refusal, rng, run

from normonnx.norms import KINDS
from normonnx.spec import NormSpec

_CONST = constants_rng("test_fuse_residual")  # import-time constants only; tests draw from rng()

F = TensorProto.FLOAT
C = 16
W = (1.0 + 0.25 * _CONST.standard_normal(C)).astype(np.float32)
B = (0.25 * _CONST.standard_normal(C)).astype(np.float32)


def norm(op: str, x: str, y: str, *params: str) -> list[onnx.NodeProto]:
    """The norm in standard ops: LayerNormalization / RMSNormalization-23 with γ (β), or, without
    affine, the decomposed LayerNorm an exporter writes for ``elementwise_affine=False``."""
    if op == "RMSNorm":
        return [helper.make_node("RMSNormalization", [x, *params], [y], axis=-1, epsilon=1e-5)]
    if any(params):
        return [helper.make_node("LayerNormalization", [x, *params], [y], axis=-1, epsilon=1e-5)]
    t = f"{y}_"
    return [
        helper.make_node("Constant", [], [t + "ax"], value=numpy_helper.from_array(np.array([-1], np.int64))),
        helper.make_node("Constant", [], [t + "eps"], value=numpy_helper.from_array(np.float32(1e-5))),
        helper.make_node("ReduceMean", [x, t + "ax"], [t + "mu"], keepdims=1),
        helper.make_node("Sub", [x, t + "mu"], [t + "d"]),
        helper.make_node("Mul", [t + "d", t + "d"], [t + "d2"]),
        helper.make_node("ReduceMean", [t + "d2", t + "ax"], [t + "var"], keepdims=1),
        helper.make_node("Add", [t + "var", t + "eps"], [t + "ve"]),
        helper.make_node("Sqrt", [t + "ve"], [t + "sd"]),
        helper.make_node("Div", [t + "d", t + "sd"], [y]),
    ]


def build(nodes, inputs, outputs, **inits) -> onnx.ModelProto:
    """A model from builder code: ``inputs``/``outputs`` are (name, shape) pairs, float32."""
    flat = [n for item in nodes for n in (item if isinstance(item, list) else [item])]
    g = helper.make_graph(
        flat,
        "g",
        [helper.make_tensor_value_info(n, F, s) for n, s in inputs],
        [helper.make_tensor_value_info(n, F, s) for n, s in outputs],
        [numpy_helper.from_array(np.asarray(v, np.float32), name=k) for k, v in inits.items()],
    )
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 23)], ir_version=10)


X3 = [2, 5, C]


def feeds(m: onnx.ModelProto) -> list[np.ndarray]:
    shapes = {i.name: [d.dim_value or 2 for d in i.type.tensor_type.shape.dim] for i in m.graph.input}
    return [(rng().standard_normal(s) * 2 + 3).astype(np.float32) for s in shapes.values()]


def fused(res) -> dict[str, int]:
    """Fired counts of the residual / modulation rules (the lifts of the standard ops fire too)."""
    return {k: v for k, v in res.fired.items() if k.startswith(("residual.", "modulated."))}


def same_numbers(res, original, xs) -> list[np.ndarray]:
    assert res.passed, res.summary()
    got, ref = run(res.model, *xs), run(original, *xs)
    for g, r in zip(got, ref):
        assert_close(g, r, "model", "fused vs unfused")
    return got


def kernel_node(m: onnx.ModelProto) -> onnx.NodeProto:
    (n,) = [n for n in m.graph.node if n.domain == "normonnx.kernels"]
    return n


# -- residual ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("op", ["LayerNorm", "RMSNorm"])
def test_residual_stream_reads_the_sum_from_the_second_output(op):
    """Pre-norm block: s = a + b, y = N(s), z = s + y (the next residual add reads s)."""
    params = ["w", "b"] if op == "LayerNorm" else ["w"]
    m = build(
        [
            helper.make_node("Add", ["a", "r"], ["s"]),
            norm(op, "s", "y", *params),
            helper.make_node("Add", ["s", "y"], ["z"]),
        ],
        [("a", X3), ("r", X3)],
        [("z", X3)],
        w=W,
        b=B,
    )
    res = optimize(m, prefer=None)  # the CPU default: the kernels
    assert fused(res) == {f"residual.{'layer' if op == 'LayerNorm' else 'rms'}": 1}
    assert ops(res.model) == [f"normonnx.kernels.{op}", "Add"]
    n = kernel_node(res.model)
    assert list(n.input[:1]) == ["a"] and "r" in n.input and list(n.output)[1] == "s"
    same_numbers(res, m, feeds(m))


def test_sum_as_graph_output_and_unread_sum():
    m = build(
        [helper.make_node("Add", ["a", "r"], ["s"]), norm("LayerNorm", "s", "y", "w", "b")],
        [("a", X3), ("r", X3)],
        [("y", X3), ("s", X3)],
        w=W,
        b=B,
    )
    res = optimize(m, prefer=None)
    assert ops(res.model) == ["normonnx.kernels.LayerNorm"] and list(kernel_node(res.model).output)[1] == "s"
    a, r = feeds(m)
    y, s = same_numbers(res, m, [a, r])
    np.testing.assert_array_equal(s, a + r)
    spec = NormSpec("layer", normalized_shape=(C,))
    assert_close(y, KINDS["layer"].reference(spec, (a + r).astype(np.float64), {"weight": W, "bias": B}), "layer")

    only_y = build(
        [helper.make_node("Add", ["a", "r"], ["s"]), norm("LayerNorm", "s", "y", "w", "b")],
        [("a", X3), ("r", X3)],
        [("y", X3)],
        w=W,
        b=B,
    )
    res = optimize(only_y, prefer=None)
    assert len(kernel_node(res.model).output) == 1  # nobody reads the sum: the kernel does not write it
    same_numbers(res, only_y, [a, r])


def test_read_and_unread_sums_load_without_the_library():
    """Two residual norms of one spec, the first's sum read (two outputs), the last's not (one):
    each calls a function of its own arity, so onnxruntime loads the bodies without the library
    (one shared two-output function failed: "output index 1 is out of range")."""
    m = build(
        [
            helper.make_node("Add", ["a", "r"], ["s"]),
            norm("LayerNorm", "s", "y", "w", "b"),
            helper.make_node("Add", ["s", "y"], ["h"]),
            helper.make_node("Add", ["h", "r"], ["s2"]),
            norm("LayerNorm", "s2", "z", "w", "b"),
        ],
        [("a", X3), ("r", X3)],
        [("z", X3)],
        w=W,
        b=B,
    )
    res = optimize(m, prefer=None)
    assert fused(res) == {"residual.layer": 2}
    n1, n2 = [n for n in res.model.graph.node if n.domain == "normonnx.kernels"]
    assert len(n1.output) == 2 and len(n2.output) == 1 and n2.overload == n1.overload + "_y"
    arity = {f.overload: len(f.output) for f in res.model.functions}
    assert arity == {n1.overload: 2, n2.overload: 1}
    from normonnx.runtime import session

    xs = feeds(m)
    (body,) = session(res.model, optimize=False, custom_ops=False).run(xs)
    (kernel,) = session(res.model, optimize=False).run(xs)
    (ref,) = run(m, *xs)
    assert_close(body, ref, "layer", "function bodies vs unfused")
    assert_close(kernel, ref, "layer", "kernels vs unfused")


def test_standard_op_lowering_spells_the_add_out_again():
    m = build(
        [helper.make_node("Add", ["a", "r"], ["s"]), norm("LayerNorm", "s", "y", "w", "b")],
        [("a", X3), ("r", X3)],
        [("y", X3)],
        w=W,
        b=B,
    )
    res = optimize(m)  # native, decomposed, function
    assert fused(res) == {"residual.layer": 1}
    assert ops(res.model) == ["Add", "LayerNormalization"]
    same_numbers(res, m, feeds(m))


def test_broadcasting_add_is_a_bias_not_a_residual():
    m = build(
        [helper.make_node("Add", ["a", "beta"], ["s"]), norm("LayerNorm", "s", "y", "w", "b")],
        [("a", X3)],
        [("y", X3)],
        w=W,
        b=B,
        beta=B,
    )
    res = optimize(m, prefer=None)
    assert "residual.layer" not in res.fired
    assert "broadcasts [16] to [2, 5, 16]" in refusal(res, "residual.layer")
    same_numbers(res, m, feeds(m))


def test_operands_of_different_shapes_refuse():
    m = build(
        [helper.make_node("Add", ["a", "r"], ["s"]), norm("LayerNorm", "s", "y", "w", "b")],
        [("a", X3), ("r", [1, 5, C])],
        [("y", X3)],
        w=W,
        b=B,
    )
    res = optimize(m, prefer=None)
    assert "broadcasts [1, 5, 16] to [2, 5, 16]" in refusal(res, "residual.layer")


def test_unknown_shapes_refuse():
    m = build(
        [helper.make_node("Add", ["a", "r"], ["s"]), norm("LayerNorm", "s", "y", "w", "b")],
        [("a", ["n", 5, C]), ("r", [None, 5, C])],
        [("y", ["n", 5, C])],
        w=W,
        b=B,
    )
    res = optimize(m, prefer=None, verify=False)
    assert "not provably the same shape" in refusal(res, "residual.layer")


def test_sum_read_before_the_norm_moves_the_node_to_the_add():
    """A reader of s sits between the Add and the norm: the fused node takes the Add's place."""
    m = build(
        [
            helper.make_node("Add", ["a", "r"], ["s"]),
            helper.make_node("Relu", ["s"], ["t"]),
            norm("LayerNorm", "s", "y", "w", "b"),
            helper.make_node("Add", ["t", "y"], ["z"]),
        ],
        [("a", X3), ("r", X3)],
        [("z", X3)],
        w=W,
        b=B,
    )
    res = optimize(m, prefer=None)
    assert fused(res) == {"residual.layer": 1}
    assert ops(res.model) == ["normonnx.kernels.LayerNorm", "Relu", "Add"]
    same_numbers(res, m, feeds(m))


def test_no_position_keeps_the_order_refuses():
    """s read before the norm, and the norm's γ computed after the Add: neither place is valid."""
    m = build(
        [
            helper.make_node("Add", ["a", "r"], ["s"]),
            helper.make_node("Relu", ["s"], ["t"]),
            helper.make_node("Sigmoid", ["g"], ["gamma"]),
            norm("LayerNorm", "s", "y", "gamma", "b"),
            helper.make_node("Add", ["t", "y"], ["z"]),
        ],
        [("a", X3), ("r", X3), ("g", [C])],
        [("z", X3)],
        b=B,
    )
    res = optimize(m, prefer=None)
    reason = refusal(res, "residual.layer")
    assert "read by Relu" in reason and "'gamma' is computed after the Add" in reason
    assert "normonnx.kernels.LayerNorm" in ops(res.model) and ops(res.model).count("Add") == 2
    same_numbers(res, m, feeds(m))


# -- modulation ----------------------------------------------------------------------------------------
def modulated(scale_shape, *, residual=False, const_scale=False) -> onnx.ModelProto:
    one = helper.make_node("Constant", [], ["one"], value=numpy_helper.from_array(np.float32(1.0)))
    nodes = [one]
    x = "x"
    if residual:
        nodes.append(helper.make_node("Add", ["x", "r"], ["s"]))
        x = "s"
    nodes += [
        norm("LayerNorm", x, "n"),
        helper.make_node("Add", ["one", "scale"], ["f"]),
        helper.make_node("Mul", ["n", "f"], ["m"]),
        helper.make_node("Add", ["m", "shift"], ["y"]),
    ]
    inputs = [("x", X3)] + ([("r", X3)] if residual else [])
    inits = {}
    if const_scale:
        inits["scale"] = 0.1 * rng().standard_normal(scale_shape)
    else:
        inputs.append(("scale", scale_shape))
    inputs.append(("shift", scale_shape))
    outputs = [("y", X3)] + ([("s", X3)] if residual else [])
    return build(nodes, inputs, outputs, **inits)


@pytest.mark.parametrize("shape", [[2, 1, C], [1, 1, C], [C]], ids=["per_sample", "shared", "rank1"])
def test_modulation_fuses_into_the_layer_norm(shape):
    m = modulated(shape)
    res = optimize(m, prefer=None)
    assert fused(res) == {"modulated.layer": 1}
    assert ops(res.model) == ["normonnx.kernels.LayerNorm"]
    n = kernel_node(res.model)
    assert list(n.input)[-2:] == ["scale", "shift"]
    x, sc, sh = feeds(m)
    (y,) = same_numbers(res, m, [x, sc, sh])
    spec = NormSpec("layer", normalized_shape=(C,), has_weight=False, has_bias=False, modulation=True)
    assert_close(y, KINDS["layer"].reference(spec, x, {"scale": sc, "shift": sh}), "layer", "vs float64")


def test_residual_and_modulation_fuse_into_one_node():
    m = modulated([2, 1, C], residual=True)
    res = optimize(m, prefer=None)
    assert fused(res) == {"modulated.layer": 1, "residual.layer": 1}
    assert ops(res.model) == ["normonnx.kernels.LayerNorm"]
    assert list(kernel_node(res.model).output)[1] == "s"
    same_numbers(res, m, feeds(m))


def test_per_token_scale_refuses():
    res = optimize(modulated([2, 5, C]), prefer=None)
    assert "varies along the token axes" in refusal(res, "modulated.layer")
    assert res.fired.get("modulated.record") == 1  # still recorded as a modulated norm


def test_constant_scale_is_an_affine_not_a_modulation():
    """1 + scale folds to a constant: layer_norm.affine absorbs it as γ before modulation looks."""
    m = modulated([1, 1, C], const_scale=True)
    res = optimize(m, prefer=None)
    assert fused(res) == {} and res.fired["layer_norm.affine"] == 1
    assert "β is not a constant" in refusal(res, "layer_norm.affine")
    same_numbers(res, m, feeds(m))


def test_exporter_spelling_with_unit_gamma_and_zero_beta_is_modulated():
    """torch.onnx writes an elementwise_affine=False LayerNorm as LayerNormalization(x, ones, zeros)."""
    m = build(
        [
            helper.make_node("Constant", [], ["one"], value=numpy_helper.from_array(np.float32(1.0))),
            norm("LayerNorm", "x", "n", "ones", "zeros"),
            helper.make_node("Add", ["one", "scale"], ["f"]),
            helper.make_node("Mul", ["n", "f"], ["m"]),
            helper.make_node("Add", ["m", "shift"], ["y"]),
        ],
        [("x", X3), ("scale", [2, 1, C]), ("shift", [2, 1, C])],
        [("y", X3)],
        ones=np.ones(C),
        zeros=np.zeros(C),
    )
    res = optimize(m, prefer=None)
    assert fused(res) == {"modulated.layer": 1}
    n = kernel_node(res.model)
    assert list(n.input) == ["x", "", "", "", "scale", "shift"]
    same_numbers(res, m, feeds(m))


def test_norm_with_its_own_affine_is_not_modulated():
    m = build(
        [
            helper.make_node("Constant", [], ["one"], value=numpy_helper.from_array(np.float32(1.0))),
            norm("LayerNorm", "x", "n", "w", "b"),
            helper.make_node("Add", ["one", "scale"], ["f"]),
            helper.make_node("Mul", ["n", "f"], ["m"]),
            helper.make_node("Add", ["m", "shift"], ["y"]),
        ],
        [("x", X3), ("scale", [2, 1, C]), ("shift", [2, 1, C])],
        [("y", X3)],
        w=W,
        b=B,
    )
    res = optimize(m, prefer=None, debug=True)
    assert "modulated.layer" not in res.fired
    assert any("own affine" in r.reason for r in res.misses if r.rule == "modulated.layer")
    same_numbers(res, m, feeds(m))


# -- --target cuda ---------------------------------------------------------------------------------------
def test_cuda_target_takes_fused_nodes_as_skiplayernormalization():
    m = modulated([2, 1, C], residual=True)
    # SkipLayerNormalization forms σ² = E[x²] − E[x]² in one float32 pass: unstable, so not by default
    res = optimize(m, target="cuda", prefer=None)  # the target's own order: contrib first
    assert [(r["kind"], r["strategy"]) for r in res.lowerings] == [("layer", "native")]
    assert "numerically unstable" in dict(res.lowerings[0]["rejected"])["contrib"]
    res = optimize(m, target="cuda", prefer=None, allow_unstable=True)
    assert fused(res) == {"modulated.layer": 1, "residual.layer": 1}
    assert [(r["kind"], r["strategy"]) for r in res.lowerings] == [("layer", "contrib")]
    assert ops(res.model) == ["com.microsoft.SkipLayerNormalization", "Add", "Mul", "Add"]
    skip = res.model.graph.node[0]
    assert list(skip.output) == [skip.output[0], "", "", "s"]
    same_numbers(res, m, feeds(m))  # onnxruntime CPU has the SkipLayerNormalization kernel


def test_cuda_target_spells_a_fused_rms_residual_out():
    m = build(
        [helper.make_node("Add", ["a", "r"], ["s"]), norm("RMSNorm", "s", "y", "w")],
        [("a", X3), ("r", X3)],
        [("y", X3), ("s", X3)],
        w=W,
    )
    res = optimize(m, target="cuda")
    assert fused(res) == {"residual.rms": 1}
    assert ops(res.model) == ["Add", "RMSNormalization"]
    same_numbers(res, m, feeds(m))


# -- the reference transformers ------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name, fired",
    [
        ("vit", {"residual.layer": 8}),
        ("llama", {"residual.rms": 4}),
        ("dit_block", {"modulated.layer": 5, "residual.layer": 4, "residual.gate_layer": 4}),
    ],
)
def test_reference_transformers_fuse_at_export(name, fired, tmp_path):
    import contextlib
    import io

    import torch

    import models
    from normonnx.exporter import export
    from normonnx.runtime import session

    entry = models.MODELS[name]
    model = entry.factory().eval()
    inputs = tuple(entry.example_inputs())
    with contextlib.redirect_stdout(io.StringIO()):
        res = export(model, inputs, tmp_path / "m.onnx", input_names=list(entry.input_names))
    assert {k: v for k, v in res.fired.items() if k.startswith(("residual", "modulated"))} == fired
    m = onnx.load(tmp_path / "m.onnx")
    assert all(n.domain == "normonnx.kernels" for n in m.graph.node if "Norm" in n.op_type)
    with torch.inference_mode():
        ref = model(*inputs).numpy()
        ref64 = model.double()(*[t.double() for t in inputs]).numpy()
    s = session(tmp_path / "m.onnx")
    (y,) = s.run(None, {i.name: t.numpy() for i, t in zip(s.get_inputs(), inputs)})
    assert float(np.abs(y - ref64).max()) <= 2 * max(float(np.abs(ref - ref64).max()), 1e-6)
