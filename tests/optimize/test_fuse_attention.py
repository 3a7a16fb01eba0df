"""Attention written out in primitives → the ONNX ``Attention`` op (normonnx/optimize/fuse_attention.py).

Positive cases are real torch modules (timm's packed ``qkv``, Hugging Face's separate projections,
a one-head spatial attention, every scale spelling) through ``normonnx.exporter.export``:
structure (which rules fired, the op types left) and numbers against torch in float64, with
onnxruntime and with ``onnx.reference`` running the fused file. Negative cases are ONNX graphs
built inline, one broken premise each, with the reason the rule gives."""

from __future__ import annotations

import copy
import math

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator
from optimize_helpers import assert_close, ops, optimize, refusal, rng, run

from normonnx.exporter import export

F = TensorProto.FLOAT
B, S, H, D = 2, 6, 2, 8
C = H * D


class PackedAttention(torch.nn.Module):
    """timm's ``Attention``: one ``qkv`` projection, ``softmax(q·scale @ kᵀ) @ v``, written out."""

    def __init__(self, spelling: str = "q", heads: int = H) -> None:
        super().__init__()
        self.heads, self.spelling = heads, spelling
        self.qkv = torch.nn.Linear(C, 3 * C)
        self.proj = torch.nn.Linear(C, C)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        d = c // self.heads
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, d).permute(2, 0, 3, 1, 4).unbind(0)
        if self.spelling == "q":  # timm
            s = (q * d**-0.5) @ k.transpose(-2, -1)
        elif self.spelling == "scores":  # scores / sqrt(d)
            s = (q @ k.transpose(-2, -1)) / math.sqrt(d)
        elif self.spelling == "both":  # d**-0.25 on q and on kᵀ
            s = (q * d**-0.25) @ (k.transpose(-2, -1) * d**-0.25)
        else:  # no scale at all
            s = q @ k.transpose(-2, -1)
        y = torch.softmax(s, dim=-1) @ v
        return self.proj(y.transpose(1, 2).reshape(b, n, c))


class SeparateAttention(torch.nn.Module):
    """Hugging Face's layout: ``q_proj(x).view(b, n, h, d).transpose(1, 2)`` for each of q, k, v."""

    def __init__(self) -> None:
        super().__init__()
        self.q, self.k, self.v = (torch.nn.Linear(C, C) for _ in range(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        q, k, v = (p(x).view(b, n, H, D).transpose(1, 2) for p in (self.q, self.k, self.v))
        w = torch.softmax(torch.matmul(q, k.transpose(2, 3)) / math.sqrt(D), dim=-1)
        return torch.matmul(w, v).transpose(1, 2).reshape(b, n, C)


class OneHead(torch.nn.Module):
    """One head on ``[B, S, D]`` with ``bmm``: the 3-D form of a single head."""

    def __init__(self) -> None:
        super().__init__()
        self.qkv = torch.nn.Linear(C, 3 * C)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        return torch.bmm(torch.softmax(torch.bmm(q, k.transpose(1, 2)) * C**-0.5, dim=-1), v)


def _export(module: torch.nn.Module, tmp_path, x: torch.Tensor, **kw) -> tuple[onnx.ModelProto, object]:
    res = export(module.eval(), (x,), tmp_path / "m.onnx", **kw)
    return onnx.load(tmp_path / "m.onnx"), res


def _fused(make, tmp_path, seed: int, **kw) -> tuple[torch.nn.Module, torch.Tensor, onnx.ModelProto, object]:
    """``make()``'s module (weights from ``seed``), an input [B, S, C], its normonnx export and result."""
    torch.manual_seed(seed)
    module = make().eval()
    x = torch.randn(B, S, C)
    return (module, x, *_export(module, tmp_path, x, **kw))


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _torch64(module: torch.nn.Module, x: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return copy.deepcopy(module).double()(x.double()).numpy()


def _check_numbers(m: onnx.ModelProto, module: torch.nn.Module, x: torch.Tensor) -> None:
    """The fused file in onnxruntime and in onnx.reference, both against torch in float64."""
    y64 = _torch64(module, x)
    got = run(m, x.numpy())[0]
    assert_close(got, y64, "model", "onnxruntime vs torch float64")
    ref = ReferenceEvaluator(m).run(None, {m.graph.input[0].name: x.numpy()})[0]
    assert_close(ref, y64, "model", "onnx.reference vs torch float64")


@pytest.mark.parametrize("spelling", ["q", "scores", "both", "none"])
def test_packed_qkv_attention_becomes_split_and_one_attention_node(tmp_path, spelling: str) -> None:
    module, x, m, res = _fused(lambda: PackedAttention(spelling), tmp_path, 1)
    assert res.opset == 23 and "Attention" in res.opset_reason
    assert res.fired.get("attention.sdpa") == 1 and res.fired.get("attention.heads") == 1
    assert [o for o in ops(m) if o not in ("MatMul", "Add")] == ["Split", "Attention"]
    att = next(n for n in m.graph.node if n.op_type == "Attention")
    a = _attrs(att)
    assert (a["q_num_heads"], a["kv_num_heads"]) == (H, H)
    assert a["scale"] == pytest.approx(1.0 if spelling == "none" else D**-0.5, rel=1e-6)
    _check_numbers(m, module, x)


def test_separate_projections_feed_attention_directly(tmp_path) -> None:
    module, x, m, res = _fused(SeparateAttention, tmp_path, 2)
    assert res.fired.get("attention.sdpa") == 1 and res.fired.get("attention.heads") == 1
    assert [o for o in ops(m) if o not in ("MatMul", "Add")] == ["Attention"]
    _check_numbers(m, module, x)


def test_one_head_bmm_attention_takes_the_three_dimensional_form(tmp_path) -> None:
    module, x, m, res = _fused(OneHead, tmp_path, 3)
    assert res.fired.get("attention.sdpa") == 1
    att = next(n for n in m.graph.node if n.op_type == "Attention")
    assert _attrs(att)["q_num_heads"] == 1
    assert "Softmax" not in ops(m)
    _check_numbers(m, module, x)


def test_dynamic_batch_and_tokens_still_fuse_and_run_at_other_sizes(tmp_path) -> None:
    torch.manual_seed(4)
    module = PackedAttention().eval()
    m, res = _export(module, tmp_path, torch.randn(B, S, C), dynamic={"x": {0: "batch", 1: "tokens"}})
    assert res.fired.get("attention.heads") == 1, res.refused
    for shape in ((3, 9, C), (1, 2, C)):
        x = torch.randn(*shape)
        assert_close(run(m, x.numpy())[0], _torch64(module, x), "model", f"{shape}")


def test_an_explicit_lower_opset_keeps_the_primitives_and_says_why(tmp_path) -> None:
    module, x, m, res = _fused(PackedAttention, tmp_path, 5, opset=20)
    assert "Attention" not in ops(m) and "Softmax" in ops(m)
    reasons = " | ".join(r.reason for r in res.refused if r.rule == "attention.sdpa")
    assert "needs opset 23" in reasons and "opset 20" in reasons
    assert_close(run(m, x.numpy())[0], _torch64(module, x), "model")


class Masked(PackedAttention):
    """Causal attention with ``masked_fill`` (Llama's spelling), the fill before or after the scale."""

    def __init__(self, fill: float = float("-inf"), scale_after: bool = True) -> None:
        super().__init__()
        self.fill, self.scale_after = fill, scale_after
        self.register_buffer("causal", torch.ones(S, S, dtype=torch.bool).tril(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, H, D).permute(2, 0, 3, 1, 4).unbind(0)
        s = q @ k.transpose(-2, -1)
        if self.scale_after:
            s = s.masked_fill(~self.causal[:n, :n], self.fill) * D**-0.5
        else:
            s = (s * D**-0.5).masked_fill(~self.causal[:n, :n], self.fill)
        y = torch.softmax(s, dim=-1) @ v
        return self.proj(y.transpose(1, 2).reshape(b, n, c))


@pytest.mark.parametrize(
    ("fill", "scale_after"),
    [(float("-inf"), False), (float("-inf"), True), (torch.finfo(torch.float32).min, False)],
)
def test_a_causal_masked_fill_becomes_the_additive_mask(tmp_path, fill: float, scale_after: bool) -> None:
    module, x, m, res = _fused(lambda: Masked(fill, scale_after), tmp_path, 7)
    assert res.opset == 23 and res.fired.get("attention.sdpa") == 1 and res.fired.get("attention.heads") == 1
    assert [o for o in ops(m) if o not in ("MatMul", "Add")] == ["Split", "Attention"]
    att = next(n for n in m.graph.node if n.op_type == "Attention")
    bias = numpy_helper.to_array(next(t for t in m.graph.initializer if t.name == att.input[3]))
    assert bias.shape == (S, S) and np.all(bias[np.tril_indices(S)] == 0)
    assert np.all(bias[np.triu_indices(S, 1)] == np.float32(fill))
    _check_numbers(m, module, x)


def test_a_small_fill_is_not_a_mask_and_keeps_the_opset(tmp_path) -> None:
    """``masked_fill(…, -1e9)``: a fully masked row would differ, so the rule would refuse; the opset stays."""
    _, res = _export(Masked(-1e9).eval(), tmp_path, torch.randn(B, S, C))
    assert res.opset == 20, res.opset_reason


def test_a_small_fill_refuses_with_its_reason_at_opset_23(tmp_path) -> None:
    module, x, m, res = _fused(lambda: Masked(-1e9), tmp_path, 8, opset=23)
    assert "Attention" not in ops(m)
    assert "-inf or <= -2^100" in " | ".join(r.reason for r in res.refused if r.rule == "attention.sdpa")
    assert_close(run(m, x.numpy())[0], _torch64(module, x), "model")


def test_a_run_time_mask_becomes_a_run_time_additive_mask() -> None:
    """A mask that is a graph input: one ``Where`` makes its additive form at run time."""
    m = _graph(run_time_mask=True)
    res = optimize(m, rules=["attention"])
    assert ops(res.model) == ["Where", "Attention"], ops(res.model)
    xs = _inputs(m)
    xs[3] = rng().random(xs[3].shape) < 0.3  # some keys masked; never a whole row (column 0 kept)
    xs[3][..., 0] = False
    want = ReferenceEvaluator(m).run(None, dict(zip(["q", "k", "v", "mask"], xs)))[0]
    assert_close(run(res.model, *xs)[0], want, "model")


class Sdpa(PackedAttention):
    """timm's ``Attention`` with ``scaled_dot_product_attention`` (``fused_attn``); ``merge=False``
    returns the heads unmerged."""

    def __init__(self, merge: bool = True) -> None:
        super().__init__()
        self.merge = merge

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, H, D).permute(2, 0, 3, 1, 4).unbind(0)
        y = torch.nn.functional.scaled_dot_product_attention(q, k, v)
        return self.proj(y.transpose(1, 2).reshape(b, n, c)) if self.merge else y


def test_sdpa_on_head_views_moves_the_opset_and_reads_the_projections(tmp_path) -> None:
    """At opset 20 onnxruntime runs torch's SDPA decomposition as MatMul / Softmax / MatMul; at 23
    torch emits ``Attention`` and ``attention.heads`` gives it the 3-D projections (models/dit_block:
    1.08-1.10x, BENCHMARKS.md)."""
    torch.manual_seed(11)
    module = Sdpa().eval()
    x = torch.randn(B, S, C)
    m, res = _export(module, tmp_path, x)
    assert res.opset == 23 and "(1 attention blocks)" in res.opset_reason, res.opset_reason
    assert res.fired.get("attention.heads") == 1, res.fired
    assert [o for o in ops(m) if o not in ("MatMul", "Add")] == ["Split", "Attention"], ops(m)
    _check_numbers(m, module, x)


def test_sdpa_whose_output_stays_in_heads_keeps_torchs_opset(tmp_path) -> None:
    """No head merge after it: the 3-D form has nothing to read, so nothing counts for opset 23."""
    _, res = _export(Sdpa(merge=False).eval(), tmp_path, torch.randn(B, S, C))
    assert res.opset == 20, res.opset_reason


# -- negative cases: ONNX graphs with one broken premise each ---------------------------------------
def _graph(
    *,
    opset: int = 23,
    axis: int = -1,
    perm: tuple[int, ...] = (0, 1, 3, 2),
    scale: float | np.ndarray = D**-0.5,
    k_batch: int = B,
    dtype: int = F,
    probs_out: bool = False,
    run_time_mask: bool = False,
) -> onnx.ModelProto:
    """``softmax(q·c @ Transpose(k)) @ v`` on 4-D graph inputs (``run_time_mask``: the scores
    filled with -inf where the bool input ``mask`` [S, S] is true)."""
    nodes = [
        helper.make_node("Mul", ["q", "c"], ["qs"]),
        helper.make_node("Transpose", ["k"], ["kt"], perm=list(perm)),
        helper.make_node("MatMul", ["qs", "kt"], ["s0"]),
        helper.make_node("Where", ["mask", "ninf", "s0"], ["s"])
        if run_time_mask
        else helper.make_node("Identity", ["s0"], ["s"]),
        helper.make_node("Softmax", ["s"], ["p"], axis=axis),
        helper.make_node("MatMul", ["p", "v"], ["y"]),
    ]
    np_dt = helper.tensor_dtype_to_np_dtype(dtype)
    outputs = [helper.make_tensor_value_info("y", dtype, None)]
    if probs_out:
        outputs.append(helper.make_tensor_value_info("p", dtype, None))
    g = helper.make_graph(
        nodes,
        "g",
        [
            helper.make_tensor_value_info("q", dtype, [B, H, S, D]),
            helper.make_tensor_value_info("k", dtype, [k_batch, H, S, D]),
            helper.make_tensor_value_info("v", dtype, [k_batch, H, S, D]),
            *([helper.make_tensor_value_info("mask", TensorProto.BOOL, [S, S])] if run_time_mask else []),
        ],
        outputs,
        [
            numpy_helper.from_array(np.asarray(scale, np_dt), name="c"),
            numpy_helper.from_array(np.asarray(-np.inf, np_dt), name="ninf"),
        ],
    )
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)], ir_version=10)


def _inputs(m: onnx.ModelProto) -> list[np.ndarray]:
    out = []
    for i in m.graph.input:
        shape = [d.dim_value for d in i.type.tensor_type.shape.dim]
        out.append(rng().standard_normal(shape).astype(helper.tensor_dtype_to_np_dtype(i.type.tensor_type.elem_type)))
    return out


@pytest.mark.parametrize("per_head", [False, True])
def test_the_graph_form_fuses_and_matches_the_reference(per_head: bool) -> None:
    """The positive twin of the negative cases below: the same graph, every premise holding. A
    per-head scale [1, H, 1, 1] is not a scalar: it stays a Mul on Q, and Attention's scale is 1."""
    m = _graph(scale=np.linspace(0.2, 0.4, H).reshape(1, H, 1, 1) if per_head else D**-0.5)
    res = optimize(m, rules=["attention"])
    # (the Identity the test graph has is cleaned up)
    assert ops(res.model) == (["Mul", "Attention"] if per_head else ["Attention"]), ops(res.model)
    att = next(n for n in res.model.graph.node if n.op_type == "Attention")
    assert _attrs(att)["scale"] == pytest.approx(1.0 if per_head else D**-0.5, rel=1e-6)
    xs = _inputs(m)
    assert_close(run(res.model, *xs)[0], ReferenceEvaluator(m).run(None, dict(zip("qkv", xs)))[0], "model")


@pytest.mark.parametrize(
    ("kw", "reason"),
    [
        ({"opset": 21}, "needs opset 23"),
        ({"axis": 2}, "not the last"),
        ({"scale": -0.5}, "positive finite scale"),
        ({"k_batch": 1}, "not provably equal"),
        ({"dtype": TensorProto.FLOAT16}, "float32 only"),
        ({"probs_out": True}, "graph output"),
    ],
)
def test_a_broken_premise_refuses_with_its_reason(kw: dict, reason: str) -> None:
    m = _graph(**kw)
    res = optimize(m, rules=["attention"])
    assert "Attention" not in ops(res.model) and "Softmax" in ops(res.model)
    assert reason in refusal(res, "attention.sdpa")
    xs = _inputs(m)
    assert_close(run(res.model, *xs)[0], run(m, *xs)[0], "model", "unchanged graph")


def test_a_head_view_read_elsewhere_keeps_the_four_dimensional_form(tmp_path) -> None:
    """If a split head is also a graph output, the 3-D rewrite would drop it: it refuses, and the
    4-D ``Attention`` stays."""

    class Leaky(PackedAttention):
        def forward(self, x: torch.Tensor):
            b, n, c = x.shape
            q, k, v = self.qkv(x).reshape(b, n, 3, H, D).permute(2, 0, 3, 1, 4).unbind(0)
            y = torch.softmax((q * D**-0.5) @ k.transpose(-2, -1), dim=-1) @ v
            return y.transpose(1, 2).reshape(b, n, c), q

    module, x, m, res = _fused(Leaky, tmp_path, 6)
    assert res.fired.get("attention.sdpa") == 1 and "attention.heads" not in res.fired
    assert "graph output" in " | ".join(r.reason for r in res.refused if r.rule == "attention.heads")
    got = run(m, x.numpy())
    with torch.no_grad():
        want = copy.deepcopy(module).double()(x.double())
    for g_, w in zip(got, want):
        assert_close(g_, w.numpy(), "model")


class Grouped(torch.nn.Module):
    """Llama's grouped-query attention: ``KV`` key/value heads repeated for ``H`` query heads, causal.

    ``repeat``: "interleave" is Llama's ``repeat_kv`` (head j reads kv head j // r); "tile" is
    ``k.repeat(1, r, 1, 1)`` (head j reads kv head j % r), "outer" the same tiling spelt with an
    Unsqueeze at axis 1: neither is the grouping ``Attention`` does, so they stay repeats."""

    def __init__(self, repeat: str = "interleave") -> None:
        super().__init__()
        self.repeat = repeat
        self.q = torch.nn.Linear(C, C)
        self.kv = torch.nn.Linear(C, 2 * C // H)  # one key/value head (D wide) each
        self.register_buffer("causal", torch.ones(S, S, dtype=torch.bool).tril(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        q = self.q(x).view(b, n, H, D).transpose(1, 2) * 1.0  # (a 4-D Q that is not a head view: RoPE's place)
        k, v = (t.view(b, n, 1, D).transpose(1, 2) for t in self.kv(x).chunk(2, dim=-1))
        if self.repeat == "interleave":
            k, v = (t[:, :, None].expand(b, 1, H, n, D).reshape(b, H, n, D) for t in (k, v))
        elif self.repeat == "outer":
            k, v = (t[:, None].expand(b, H, 1, n, D).reshape(b, H, n, D) for t in (k, v))
        else:
            k, v = (t.repeat(1, H, 1, 1) for t in (k, v))
        s = (q @ k.transpose(-2, -1) * D**-0.5).masked_fill(~self.causal[:n, :n], float("-inf"))
        return (torch.softmax(s, dim=-1) @ v).transpose(1, 2).reshape(b, n, C)


def test_repeated_key_value_heads_become_grouped_query_attention(tmp_path) -> None:
    module, x, m, res = _fused(Grouped, tmp_path, 9)
    assert res.fired.get("attention.sdpa") == 1 and res.fired.get("attention.gqa") == 1, res.fired
    assert "Expand" not in ops(m) and "Unsqueeze" not in ops(m)
    att = next(n for n in m.graph.node if n.op_type == "Attention")
    a = _attrs(att)
    # the repeat gone, K and V are head views again, so attention.heads reads their projections
    assert res.fired.get("attention.heads") == 1 and (a["q_num_heads"], a["kv_num_heads"]) == (H, 1)
    _check_numbers(m, module, x)


@pytest.mark.parametrize("repeat", ["tile", "outer"])
def test_tiled_heads_are_not_grouped_attention(tmp_path, repeat: str) -> None:
    """Tiled copies pair query head j with kv head j % Hkv: fusing them as groups would be wrong,
    so the repeat stays (and the numbers say the file still computes the model)."""
    module, x, m, res = _fused(lambda: Grouped(repeat), tmp_path, 10)
    assert res.fired.get("attention.sdpa") == 1 and "attention.gqa" not in res.fired
    _check_numbers(m, module, x)


def test_optimize_converts_a_default_export_to_opset_23_and_fuses_it() -> None:
    """``torch.onnx.export``'s own file (opset 20) through ``normonnx optimize --opset 23``: the
    version converter, then the rules, then optimize's own verification against the original."""
    from optimize_helpers import export as torch_export

    from normonnx.optimize import optimize_model

    torch.manual_seed(11)
    module = PackedAttention().eval()
    x = torch.randn(B, S, C)
    proto = torch_export(module, x, "dynamo", 20)
    kept = optimize_model(proto)
    assert "needs opset 23" in refusal(kept, "attention.sdpa")
    res = optimize_model(proto, opset=23)
    assert res.passed, res.summary()
    assert res.fired.get("attention.sdpa") == 1 and res.fired.get("attention.heads") == 1
    assert "Softmax" not in ops(res.model)
    assert_close(run(res.model, x.numpy())[0], _torch64(module, x), "model")
