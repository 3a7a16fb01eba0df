"""``--target cuda`` lowering to onnxruntime contrib ops (normonnx/optimize/lower_cuda.py).

No CUDA here: the structure is asserted directly, and the numbers through the CPU-runnable
equivalent (the contrib GroupNorm replaced by its reference semantics, same NHWC wiring);
SimplifiedLayerNormalization has a CPU kernel and runs as is."""

from __future__ import annotations

import numpy as np
from onnx import helper, numpy_helper
from optimize_helpers import RNG, assert_close, model, ops, optimize, refusal, run
from test_fuse_group import BETA, GAMMA, SPEC, inits, via_instance_text
from test_fuse_rms import W, rms_text

from normonnx.norms import KINDS
from normonnx.optimize.lower_cuda import cpu_equivalent
from normonnx.spec import NormSpec


def attrs(node):
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def test_groupnorm_silu_becomes_contrib_groupnorm_nhwc():
    m = model(via_instance_text(), **inits())
    res = optimize(m, target="cuda")
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
    assert [(r["kind"], r["strategy"]) for r in res.lowerings] == [("group", "contrib:com.microsoft.GroupNorm")]
    assert res.passed and "verified on CPU" in res.verification.note
    x = RNG.standard_normal((2, 8, 5, 6)).astype(np.float32)
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
    res = optimize(m, target="cuda", verify=False)
    gn = next(n for n in res.model.graph.node if n.op_type == "GroupNorm")
    inits_ = {t.name: numpy_helper.to_array(t) for t in res.model.graph.initializer}
    assert inits_[gn.input[1]].dtype == np.float32
    np.testing.assert_array_equal(inits_[gn.input[1]], g16.astype(np.float32))  # converted exactly
    x = RNG.standard_normal((2, 8, 5, 6)).astype(np.float16)
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
    res = optimize(m, target="cuda")
    assert "3 channels per group is odd" in refusal(res, "cuda.group_norm")
    assert [(r["kind"], r["strategy"]) for r in res.lowerings] == [("group", "decomposed")]
    assert res.passed


def test_rank3_groupnorm_refused():
    m = model(
        """<ir_version: 10, opset_import: ["" : 21]>
        g (float[2,8,30] x) => (float[2,8,30] y) { y = GroupNormalization <num_groups = 4, epsilon = 1e-5> (x, gamma, beta) }""",
        gamma=GAMMA,
        beta=BETA,
    )
    res = optimize(m, target="cuda")
    assert "rank-4 inputs, this one is rank 3" in refusal(res, "cuda.group_norm")


def test_rms_becomes_simplified_layernormalization():
    m = model(rms_text(), w=W)
    res = optimize(m, target="cuda")
    assert ops(res.model) == ["SimplifiedLayerNormalization"]
    a = attrs(res.model.graph.node[0])
    assert a["axis"] == -1 and np.isclose(a["epsilon"], 1e-6) and a["stash_type"] == 1
    x = RNG.standard_normal((2, 5, 16)).astype(np.float32)
    y64 = KINDS["rms"].reference(NormSpec("rms", eps=1e-6, normalized_shape=(16,), has_bias=False), x, {"weight": W})
    assert_close(run(res.model, x)[0], y64, "rms", "SimplifiedLayerNormalization (CPU kernel) vs float64")


def test_rms_over_4096_elements_refused():
    w = np.ones(8192, np.float32)
    m = model(rms_text(shape="1,2,8192"), w=w)
    res = optimize(m, target="cuda", verify=False)
    assert "accurate up to 4096" in refusal(res, "cuda.rms_norm")
    assert "SimplifiedLayerNormalization" not in ops(res.model)
