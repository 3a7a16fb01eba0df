"""The ``contrib`` strategy: onnxruntime's own fused ops, first choice for ``--target cuda``
(normonnx/lowering/contrib.py).

No CUDA here: the structure is asserted directly, and the numbers through the CPU-runnable
equivalent (the contrib GroupNorm replaced by its reference semantics, same NHWC wiring);
SimplifiedLayerNormalization has a CPU kernel and runs as is."""

from __future__ import annotations

import numpy as np
from onnx import helper, numpy_helper
from optimize_helpers import assert_close, constants_rng, model, ops, refusal, rng, run
from optimize_helpers import optimize as _optimize
from test_fuse_group import BETA, GAMMA, SPEC, inits, via_instance_text
from test_fuse_rms import W, rms_text

from normonnx.lowering import select
from normonnx.lowering.contrib import cpu_equivalent
from normonnx.norms import KINDS
from normonnx.spec import NormSpec

_CONST = constants_rng("test_contrib")  # import-time constants only; tests draw from rng()


def attrs(node):
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def optimize(m, **kw):
    """The optimizer with the target's own preference order (the helper's default keeps standard ops)."""
    kw.setdefault("prefer", None)
    return _optimize(m, **kw)


def rejection(res, strategy="contrib", index=0):
    """Why the selector passed over ``strategy`` for the ``index``-th lowered norm."""
    return dict(res.lowerings[index]["rejected"])[strategy]


def test_contrib_groupnorm_is_unstable_and_not_taken_by_default():
    """onnxruntime's contrib GroupNorm forms σ² = E[x²] − E[x]² in float32: like GroupNormalization-21
    it is only taken when unstable lowerings are allowed; the selector's stable strategy runs instead."""
    m = model(via_instance_text(), **inits())
    res = optimize(m, target="cuda")
    assert "numerically unstable" in rejection(res)
    assert "com.microsoft.GroupNorm" not in ops(res.model)
    assert [r["kind"] for r in res.lowerings] == ["group"] and not res.lowerings[0]["strategy"].startswith("contrib")
    assert res.passed, res.summary()


def test_groupnorm_silu_becomes_contrib_groupnorm_nhwc():
    m = model(via_instance_text(), **inits())
    res = optimize(m, target="cuda", allow_unstable=True)
    assert ops(res.model) == ["Transpose", "com.microsoft.GroupNorm", "Transpose"]
    t1, gn, t2 = res.model.graph.node
    assert attrs(t1)["perm"] == [0, 2, 3, 1] and attrs(t2)["perm"] == [0, 3, 1, 2]
    a = attrs(gn)
    assert a["activation"] == 1 and a["channels_last"] == 1 and a["groups"] == 4 and np.isclose(a["epsilon"], 1e-5)
    inits_ = {t.name: numpy_helper.to_array(t) for t in res.model.graph.initializer}
    np.testing.assert_array_equal(inits_[gn.input[1]], GAMMA)
    np.testing.assert_array_equal(inits_[gn.input[2]], BETA)
    assert inits_[gn.input[1]].dtype == np.float32
    assert any(o.domain == "com.microsoft" for o in res.model.opset_import)
    assert [(r["kind"], r["strategy"]) for r in res.lowerings] == [("group", "contrib")]
    assert res.passed and "verified on CPU" in res.verification.note
    x = rng().standard_normal((2, 8, 5, 6)).astype(np.float32)
    y = run(cpu_equivalent(res.model), x)[0]
    y64 = KINDS["group"].reference(SPEC.replace(activation="silu"), x, {"weight": GAMMA, "bias": BETA})
    assert_close(y, y64, "group", "cpu equivalent vs float64")


def test_fp16_groupnorm_gets_float32_gamma():
    g16, b16 = GAMMA.astype(np.float16), BETA.astype(np.float16)
    m = model(
        """<ir_version: 10, opset_import: ["" : 21]>
        g (float16[2,8,5,6] x) => (float16[2,8,5,6] y) { y = GroupNormalization <num_groups = 4, epsilon = 1e-5> (x, gamma, beta) }""",
        gamma=g16,
        beta=b16,
    )
    res = optimize(m, target="cuda", verify=False, allow_unstable=True)
    gn = next(n for n in res.model.graph.node if n.op_type == "GroupNorm")
    inits_ = {t.name: numpy_helper.to_array(t) for t in res.model.graph.initializer}
    assert inits_[gn.input[1]].dtype == np.float32
    np.testing.assert_array_equal(inits_[gn.input[1]], g16.astype(np.float32))  # converted exactly
    x = rng().standard_normal((2, 8, 5, 6)).astype(np.float16)
    y = run(cpu_equivalent(res.model), x)[0]
    assert y.dtype == np.float16
    y64 = KINDS["group"].reference(SPEC.replace(dtype="float16"), x, {"weight": g16, "bias": b16})
    assert_close(y, y64, "group", "fp16 cpu equivalent vs float64")


def test_odd_channels_per_group_refused_and_lowered_by_selector():
    text = via_instance_text(view="0, 2, -1", silu_tail=False).replace("float[2,8,5,6]", "float[2,6,5,6]")
    m = model(
        text,
        s1=np.ones(2, np.float32),
        b0=np.zeros(2, np.float32),
        gamma=GAMMA[:6].reshape(6, 1, 1),
        beta=BETA[:6].reshape(6, 1, 1),
    )
    res = optimize(m, target="cuda", allow_unstable=True)
    assert "3 channels per group is odd" in rejection(res)
    assert [(r["kind"], r["strategy"]) for r in res.lowerings] == [("group", "decomposed")]
    assert res.passed


def test_rank3_groupnorm_refused():
    m = model(
        """<ir_version: 10, opset_import: ["" : 21]>
        g (float[2,8,30] x) => (float[2,8,30] y) { y = GroupNormalization <num_groups = 4, epsilon = 1e-5> (x, gamma, beta) }""",
        gamma=GAMMA,
        beta=BETA,
    )
    res = optimize(m, target="cuda", allow_unstable=True)
    assert "rank-4 inputs, this one is rank 3" in rejection(res)


def test_rms_becomes_simplified_layernormalization():
    m = model(rms_text(), w=W)
    res = optimize(m, target="cuda", allow_unstable=True)
    assert ops(res.model) == ["SimplifiedLayerNormalization"]
    a = attrs(res.model.graph.node[0])
    assert a["axis"] == -1 and np.isclose(a["epsilon"], 1e-6) and a["stash_type"] == 1
    x = rng().standard_normal((2, 5, 16)).astype(np.float32)
    y64 = KINDS["rms"].reference(NormSpec("rms", eps=1e-6, normalized_shape=(16,), has_bias=False), x, {"weight": W})
    assert_close(run(res.model, x)[0], y64, "rms", "SimplifiedLayerNormalization (CPU kernel) vs float64")


def test_rms_over_4096_elements_refused():
    w = np.ones(8192, np.float32)
    m = model(rms_text(shape="1,2,8192"), w=w)
    res = optimize(m, target="cuda", verify=False)
    assert "accurate only up to 4096 elements" in rejection(res)
    assert "SimplifiedLayerNormalization" not in ops(res.model)
    # allow_unstable accepts it, like every strategy past its stable_up_to
    res = optimize(m, target="cuda", verify=False, allow_unstable=True)
    assert ops(res.model) == ["SimplifiedLayerNormalization"]


# -- residual Add + LayerNorm → com.microsoft.SkipLayerNormalization (CPU has the kernel: run as is) ----------
SKIP_G = _CONST.standard_normal(16).astype(np.float32)
SKIP_B = _CONST.standard_normal(16).astype(np.float32)


def skip_text(skip_shape="2,5,16", axis=-1, residual=False) -> str:
    outs = "float[2,5,16] y, float[2,5,16] z" if residual else "float[2,5,16] y"
    tail = "z = Add(s, y)" if residual else ""
    return f"""<ir_version: 10, opset_import: ["" : 18]>
    g (float[2,5,16] x, float[{skip_shape}] r) => ({outs}) {{
      s = Add(x, r)
      y = LayerNormalization <axis = {axis}, epsilon = 1e-5> (s, gamma, beta)
      {tail}
    }}"""


def _ln64(s, gamma=SKIP_G, beta=SKIP_B, eps=1e-5):
    s = s.astype(np.float64)
    mu = s.mean(-1, keepdims=True)
    return (s - mu) / np.sqrt(((s - mu) ** 2).mean(-1, keepdims=True) + eps) * gamma + beta


def test_residual_add_and_layernorm_become_skiplayernormalization():
    res = optimize(model(skip_text(), gamma=SKIP_G, beta=SKIP_B), target="cuda", allow_unstable=True)
    assert ops(res.model) == ["com.microsoft.SkipLayerNormalization"]
    (node,) = res.model.graph.node
    assert list(node.input) == ["x", "r", "gamma", "beta"] and list(node.output) == ["y"]
    assert np.isclose(attrs(node)["epsilon"], 1e-5) and res.fired["residual.layer"] == 1
    assert [(r["kind"], r["strategy"]) for r in res.lowerings] == [("layer", "contrib")]
    assert res.passed  # verified against the original on onnxruntime CPU, which has the kernel
    x, r = (rng().standard_normal((2, 5, 16)).astype(np.float32) for _ in range(2))
    (y,) = run(res.model, x, r)
    assert_close(y, _ln64(x + r.astype(np.float64)), "layer", "SkipLayerNormalization vs float64")


def test_residual_stream_reads_the_fourth_output():
    """h = x + r feeds the LayerNorm and the next residual Add: output 3 (input_skip_bias_sum) replaces it."""
    res = optimize(model(skip_text(residual=True), gamma=SKIP_G, beta=SKIP_B), target="cuda", allow_unstable=True)
    assert ops(res.model) == ["com.microsoft.SkipLayerNormalization", "Add"]
    skip, add = res.model.graph.node
    assert list(skip.output) == ["y", "", "", "s"] and list(add.input) == ["s", "y"]
    assert res.passed
    x, r = (rng().standard_normal((2, 5, 16)).astype(np.float32) for _ in range(2))
    y, z = run(res.model, x, r)
    s64 = x.astype(np.float64) + r
    assert_close(y, _ln64(s64), "layer", "y")
    assert_close(z, s64 + _ln64(s64), "layer", "z = s + y")


def test_broadcasting_residual_is_refused():
    res = optimize(model(skip_text(skip_shape="16"), gamma=SKIP_G, beta=SKIP_B), target="cuda", allow_unstable=True)
    assert "com.microsoft.SkipLayerNormalization" not in ops(res.model)
    assert "the Add broadcasts [16] to [2, 5, 16]" in refusal(res, "residual.layer")
    assert "needs a residual input" in rejection(res)
    assert res.passed


def test_two_trailing_axes_are_refused():
    g2, b2 = rng().standard_normal((5, 16)).astype(np.float32), rng().standard_normal((5, 16)).astype(np.float32)
    res = optimize(model(skip_text(axis=-2), gamma=g2, beta=b2), target="cuda", allow_unstable=True)
    assert "com.microsoft.SkipLayerNormalization" not in ops(res.model)
    assert "normalises 2 trailing axes" in rejection(res)
    assert res.passed


def test_torch_block_export_gets_skiplayernormalization():
    """torch's own export of a residual block (Linear, residual Add, LayerNorm, second residual)."""
    import torch
    from optimize_helpers import export, torch_out

    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(32, 32)
            self.ln = torch.nn.LayerNorm(32)
            self.fc2 = torch.nn.Linear(32, 32)

        def forward(self, x):
            h = x + self.fc(x)
            return h + self.fc2(self.ln(h))

    torch.manual_seed(0)
    block = Block().eval()
    x = torch.randn(2, 7, 32)
    res = optimize(export(block, x, "dynamo", 18), target="cuda", allow_unstable=True)
    assert res.passed and res.fired.get("residual.layer") == 1, (res.fired, res.refused)
    skip = next(n for n in res.model.graph.node if n.op_type == "SkipLayerNormalization")
    assert skip.output[3]  # the residual h is read again after the norm
    (y,) = run(res.model, x.numpy())
    assert_close(y, torch_out(block, x), "model", "optimized block vs torch")


# -- the strategy itself: built one norm at a time, run by onnxruntime's CPU kernels ------------------------
def _skip_case(spec: NormSpec, stress: str, seed: int = 0):
    """(model, feeds, float64 reference, torch fp32 output) for a residual [modulated] LayerNorm."""
    import torch

    from normonnx.lowering import build_model

    rng = np.random.default_rng(seed)
    shape = (2, 5, spec.normalized_shape[0])
    base = 1e3 if stress == "offset" else 0.0
    feeds = {
        "X": (base + rng.standard_normal(shape)).astype(np.float32),
        "R": (0.5 * rng.standard_normal(shape)).astype(np.float32),
    }
    if spec.modulation:
        feeds["scale"] = (0.3 * rng.standard_normal((2, 1, shape[-1]))).astype(np.float32)
        feeds["shift"] = (0.3 * rng.standard_normal((2, 1, shape[-1]))).astype(np.float32)
    params = {k: v.astype(np.float32) for k, v in KINDS["layer"].random_params(spec, rng).items()}
    s32 = feeds["X"] + feeds["R"]  # the float32 Add the fused node stands for
    p = {**params, **{k: feeds[k] for k in ("scale", "shift") if k in feeds}}
    ref = KINDS["layer"].reference(spec.replace(residual=False), s32.astype(np.float64), p)
    t = {k: torch.from_numpy(v) for k, v in {**params, **feeds}.items()}
    with torch.no_grad():
        ty = torch.nn.functional.layer_norm(
            t["X"] + t["R"], spec.normalized_shape, t.get("weight"), t.get("bias"), spec.eps
        )
        if spec.modulation:
            ty = ty * (1 + t["scale"]) + t["shift"]
    # a --target cuda lowering; SkipLayerNormalization has a CPU kernel, so it runs here
    return build_model(spec, params, 18, "contrib", provider="cuda"), feeds, ref, ty.numpy()


SKIP = NormSpec("layer", normalized_shape=(768,), residual=True, rank=3)
SKIP_MOD = NormSpec(
    "layer", normalized_shape=(64,), residual=True, modulation=True, has_weight=False, has_bias=False, rank=3
)


def test_skiplayernormalization_is_unstable_and_passed_over_by_default():
    """Its kernels form σ² = E[x²] − E[x]² in one float32 pass: on --target cuda the selector takes the
    native LayerNormalization (with the Add spelled out) unless unstable lowerings are allowed."""
    sel = select(SKIP, 18, "cuda")
    assert sel.strategy == "native"
    assert "numerically unstable" in dict(sel.rejected)["contrib"]
    assert select(SKIP, 18, "cuda", allow_unstable=True).strategy == "contrib"
    assert select(SKIP.replace(residual=False), 18, "cuda", allow_unstable=True).strategy == "native"
    assert "needs a residual input" in dict(select(SKIP.replace(residual=False), 18, "cuda").rejected)["contrib"]
    # a CUDA strategy: on CPU normonnx's own kernel (or the native op) lowers it
    assert "not supported on cpu" in dict(select(SKIP, 18, "cpu", prefer=["contrib", "native"]).rejected)["contrib"]


def test_skiplayernormalization_unstable_mark_is_real():
    """At offset 1e3 the one-pass variance of onnxruntime's CPU kernel is worse than the table's bound for
    a stable strategy (2× torch fp32's own error vs float64; measured ≈ 3.7× at 768 elements)."""
    from normonnx.runtime import session

    m, feeds, ref, ty = _skip_case(SKIP, "offset")
    y, s = session(m, optimize=False).run(feeds)
    np.testing.assert_array_equal(s, feeds["X"] + feeds["R"])  # output 3: the sum, bitwise the Add
    err, terr = np.abs(y - ref).max(), np.abs(ty - ref).max()
    assert err > 2 * terr, (err, terr)
    # and on ordinary inputs it computes the same function
    m, feeds, ref, _ = _skip_case(SKIP, "normal")
    assert_close(session(m, optimize=False).run(feeds)[0], ref, "layer", "SkipLayerNormalization vs float64")


def test_skiplayernormalization_with_a_fused_modulation():
    """AdaLN after a residual norm: SkipLayerNormalization (γ = 1, no β) then ·(1 + scale) + shift."""
    from normonnx.runtime import session

    m, feeds, ref, _ = _skip_case(SKIP_MOD, "normal")
    built = [o for o in ops(m) if o != "Constant"]
    assert built[0] == "com.microsoft.SkipLayerNormalization" and built.count("Mul") == 1
    y, s = session(m, optimize=False).run(feeds)
    assert_close(y, ref, "layer", "SkipLayerNormalization + modulation vs float64")
    np.testing.assert_array_equal(s, feeds["X"] + feeds["R"])


def test_contrib_rows_in_the_capability_table():
    from normonnx.lowering import capability_table

    rows = {(r["kind"], r["provider"]): r for r in capability_table(("cpu", "cuda")) if r["strategy"] == "contrib"}
    assert set(rows) == {("group", "cuda"), ("layer", "cuda"), ("rms", "cuda")}
    assert not rows[("group", "cuda")]["stable"] and not rows[("layer", "cuda")]["stable"]
    assert rows[("rms", "cuda")]["stable"] and rows[("rms", "cuda")]["stable_up_to"] == 4096
