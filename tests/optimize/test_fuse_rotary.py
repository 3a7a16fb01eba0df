"""Rotary embeddings written out in primitives → the ONNX ``RotaryEmbedding`` op (normonnx/optimize/fuse_rotary.py).

Positive cases are real torch modules (Llama's ``chunk`` spelling of ``rotate_half``, Hugging
Face's slicing one, with grouped-query causal attention after them, static and dynamic shapes)
through ``normonnx.exporter.export``: which rules fired, the op types left, and numbers against
torch in float64 with onnxruntime and ``onnx.reference``. Negative cases break one premise each
and check the reason and that the numbers did not move."""

from __future__ import annotations

import copy

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator
from optimize_helpers import assert_close, ops, optimize, refusal, rng, run

import models
from normonnx.exporter import export

B, L, H, KV, D = 2, 6, 4, 2, 8
C = H * D
ROWS = 16  # the tables' positions (the longest sequence)


def tables(d: int = D, rows: int = ROWS, halves_equal: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Llama's ``cos``/``sin`` ``[rows, d]`` (``cat(f, f)``), or with the second half's angles shifted."""
    inv = 1.0 / 10000 ** (torch.arange(0, d, 2, dtype=torch.float32) / d)
    f = torch.outer(torch.arange(rows, dtype=torch.float32), inv)
    emb = torch.cat([f, f + (0 if halves_equal else 0.25)], dim=-1)
    return emb.cos(), emb.sin()


def rotate_half_chunk(x: torch.Tensor) -> torch.Tensor:  # Llama's reference code
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def rotate_half_slice(x: torch.Tensor) -> torch.Tensor:  # Hugging Face's
    x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2 :]
    return torch.cat((-x2, x1), dim=-1)


class RopeAttention(torch.nn.Module):
    """Causal grouped-query attention with rotary embeddings on q and k, as in Llama / Hugging Face."""

    def __init__(self, spelling: str = "chunk", halves_equal: bool = True, per_head: bool = False) -> None:
        super().__init__()
        self.rot = rotate_half_chunk if spelling == "chunk" else rotate_half_slice
        self.q, self.k, self.v = (torch.nn.Linear(C, n * D, bias=False) for n in (H, KV, KV))
        self.o = torch.nn.Linear(C, C, bias=False)
        cos, sin = tables(halves_equal=halves_equal)
        if per_head:  # a table that differs per head is not RotaryEmbedding's
            cos = cos * torch.linspace(0.5, 1.0, H)[:, None, None]
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)
        self.register_buffer("causal", torch.ones(ROWS, ROWS, dtype=torch.bool).tril(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        q = self.q(x).view(b, t, H, D).transpose(1, 2)
        k = self.k(x).view(b, t, KV, D).transpose(1, 2)
        v = self.v(x).view(b, t, KV, D).transpose(1, 2)
        cos, sin = self.cos[..., :t, :], self.sin[:t]
        q = q * cos + self.rot(q) * sin
        k = k * (cos[:1] if cos.ndim == 3 else cos) + self.rot(k) * sin  # k's table: shared by its heads
        rep = H // KV
        k = k[:, :, None].expand(b, KV, rep, t, D).reshape(b, H, t, D)
        v = v[:, :, None].expand(b, KV, rep, t, D).reshape(b, H, t, D)
        s = (q @ k.transpose(-2, -1)) * D**-0.5
        s = s.masked_fill(~self.causal[:t, :t], float("-inf"))
        return self.o((torch.softmax(s, dim=-1) @ v).transpose(1, 2).reshape(b, t, C))


def _torch64(module: torch.nn.Module, x: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return copy.deepcopy(module).double()(x.double()).numpy()


def _export(module: torch.nn.Module, tmp_path, x: torch.Tensor, **kw) -> tuple[onnx.ModelProto, object]:
    res = export(module.eval(), (x,), tmp_path / "m.onnx", **kw)
    return onnx.load(tmp_path / "m.onnx"), res


def _fused(tmp_path, seed: int, **kw) -> tuple[torch.nn.Module, torch.Tensor, onnx.ModelProto, object]:
    torch.manual_seed(seed)
    module = RopeAttention(**kw).eval()
    x = torch.randn(B, L, C)
    return (module, x, *_export(module, tmp_path, x))


def _check_numbers(m: onnx.ModelProto, module: torch.nn.Module, x: torch.Tensor) -> None:
    y64 = _torch64(module, x)
    assert_close(run(m, x.numpy())[0], y64, "model", "onnxruntime vs torch float64")
    ref = ReferenceEvaluator(m).run(None, {m.graph.input[0].name: x.numpy()})[0]
    assert_close(ref, y64, "model", "onnx.reference vs torch float64")


@pytest.mark.parametrize("spelling", ["chunk", "slice"])
def test_rotate_half_becomes_rotary_embedding_and_attention_reads_the_projections(tmp_path, spelling: str) -> None:
    module, x, m, res = _fused(tmp_path, 1, spelling=spelling)
    assert res.opset == 23
    assert res.fired.get("rotary.half") == 2 and res.fired.get("rotary.heads") == 2, res.fired
    assert res.fired.get("attention.heads") == 1, res.fired
    # the q, k, v projections, two rotations, one attention, the output projection: nothing else
    assert ops(m) == ["MatMul", "MatMul", "MatMul", "RotaryEmbedding", "RotaryEmbedding", "Attention", "MatMul"], ops(m)
    rot = [n for n in m.graph.node if n.op_type == "RotaryEmbedding"]
    assert sorted(helper.get_attribute_value(a) for n in rot for a in n.attribute if a.name == "num_heads") == [KV, H]
    cos = numpy_helper.to_array(next(t for t in m.graph.initializer if t.name == rot[0].input[1]))
    np.testing.assert_array_equal(cos, np.broadcast_to(module.cos[:L, : D // 2].numpy(), (B, L, D // 2)))
    _check_numbers(m, module, x)


def test_a_dynamic_batch_and_length_read_the_table_through_position_ids(tmp_path) -> None:
    torch.manual_seed(2)
    module = RopeAttention().eval()
    m, res = _export(module, tmp_path, torch.randn(B, L, C), dynamic={"x": {0: "batch", 1: "tokens"}})
    assert res.fired.get("rotary.half") == 2 and res.fired.get("rotary.heads") == 2, res.refused
    rot = [n for n in m.graph.node if n.op_type == "RotaryEmbedding"]
    assert all(len(n.input) == 4 for n in rot) and len({n.input[3] for n in rot}) == 1  # one set of position ids
    cos = numpy_helper.to_array(next(t for t in m.graph.initializer if t.name == rot[0].input[1]))
    assert cos.shape == (ROWS, D // 2)
    for shape in ((3, 9, C), (1, 1, C), (2, ROWS, C)):
        x = torch.randn(*shape)
        assert_close(run(m, x.numpy())[0], _torch64(module, x), "model", f"{shape}")
    x = torch.randn(2, 5, C)
    ref = ReferenceEvaluator(m).run(None, {m.graph.input[0].name: x.numpy()})[0]
    assert_close(ref, _torch64(module, x), "model", "onnx.reference")


def test_llama_models_lose_every_rotation_and_head_view(tmp_path) -> None:
    """models/llama (two decoder blocks): 4 rotations, and the attention reads the projections."""
    entry = models.get("llama")
    module, x = entry.factory().eval(), entry.example_inputs()[0]
    m, res = _export(module, tmp_path, x)
    assert res.fired.get("rotary.half") == 4 and res.fired.get("rotary.heads") == 4, res.fired
    assert res.fired.get("attention.heads") == 2, res.fired
    assert not {"Neg", "Concat", "Split", "Transpose", "Reshape"} & set(ops(m)), ops(m)
    assert_close(run(m, x.numpy())[0], _torch64(module, x), "model", "onnxruntime vs torch float64")


def test_halves_with_different_angles_are_not_rotary_embedding(tmp_path) -> None:
    module, x, m, res = _fused(tmp_path, 3, halves_equal=False)
    assert "RotaryEmbedding" not in ops(m) and "Neg" in ops(m)
    assert "two halves differ" in " | ".join(r.reason for r in res.refused if r.rule == "rotary.half")
    # the scan counted the rotations; the opset reason says what came of them
    assert "(2 rotations)" in res.opset_reason and "1 Attention and 0 RotaryEmbedding nodes" in res.opset_reason
    _check_numbers(m, module, x)


def test_a_table_that_differs_per_head_is_refused(tmp_path) -> None:
    module, x, m, res = _fused(tmp_path, 4, per_head=True)
    assert sum(n.op_type == "RotaryEmbedding" for n in m.graph.node) == 1  # k's table is shared by its heads
    assert "shared by the heads" in " | ".join(r.reason for r in res.refused if r.rule == "rotary.half")
    _check_numbers(m, module, x)


def test_an_explicit_lower_opset_keeps_the_primitives_and_says_why(tmp_path) -> None:
    torch.manual_seed(5)
    module = RopeAttention().eval()
    x = torch.randn(B, L, C)
    m, res = _export(module, tmp_path, x, opset=20)
    assert "RotaryEmbedding" not in ops(m)
    assert "needs opset 23" in " | ".join(r.reason for r in res.refused if r.rule == "rotary.half")
    assert_close(run(m, x.numpy())[0], _torch64(module, x), "model")


# -- graph-level cases: one premise broken each ------------------------------------------------------
def _graph(
    *, sign_on_first: bool = False, split_at: int = D // 2, dtype: int = TensorProto.FLOAT, opset: int = 23
) -> onnx.ModelProto:
    """``x·C + cat(−x₂, x₁)·S`` on a graph input ``x`` [B, H, L, D] (``sign_on_first``: ``cat(x₂, −x₁)``,
    the rotation the other way, which is not the spec's)."""
    np_dt = helper.tensor_dtype_to_np_dtype(dtype)
    cos, sin = (t[:L].numpy().astype(np_dt) for t in tables())
    nodes = [
        helper.make_node("Mul", ["x", "cos"], ["xc"]),
        helper.make_node("Split", ["x", "sizes"], ["x1", "x2"], axis=-1),
        helper.make_node("Neg", ["x1" if sign_on_first else "x2"], ["n"]),
        helper.make_node("Concat", ["x2", "n"] if sign_on_first else ["n", "x1"], ["r"], axis=-1),
        helper.make_node("Mul", ["r", "sin"], ["rs"]),
        helper.make_node("Add", ["xc", "rs"], ["y"]),
    ]
    g = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", dtype, [B, H, L, D])],
        [helper.make_tensor_value_info("y", dtype, None)],
        [
            numpy_helper.from_array(cos, name="cos"),
            numpy_helper.from_array(sin, name="sin"),
            numpy_helper.from_array(np.array([split_at, D - split_at], np.int64), name="sizes"),
        ],
    )
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)], ir_version=10)


def test_the_graph_form_fuses_and_matches_the_reference() -> None:
    m = _graph()
    res = optimize(m, rules=["rotary"])
    assert ops(res.model) == ["RotaryEmbedding"], ops(res.model)
    x = rng().standard_normal((B, H, L, D)).astype(np.float32)
    want = ReferenceEvaluator(m).run(None, {"x": x})[0]
    assert_close(run(res.model, x)[0], want, "model")
    assert_close(ReferenceEvaluator(res.model).run(None, {"x": x})[0], want, "model")


@pytest.mark.parametrize(
    ("kw", "reason"),
    [
        ({"split_at": 3}, "not two halves"),
        ({"dtype": TensorProto.FLOAT16}, "float32 only"),
        ({"opset": 22}, "needs opset 23"),
    ],
)
def test_a_broken_premise_refuses_with_its_reason(kw: dict, reason: str) -> None:
    m = _graph(**kw)
    res = optimize(m, rules=["rotary"])
    assert "RotaryEmbedding" not in ops(res.model)
    assert reason in refusal(res, "rotary.half")
    x = (
        rng()
        .standard_normal((B, H, L, D))
        .astype(helper.tensor_dtype_to_np_dtype(m.graph.input[0].type.tensor_type.elem_type))
    )
    assert_close(run(res.model, x)[0], run(m, x)[0], "model", "unchanged graph")


def test_the_rotation_the_other_way_is_not_matched() -> None:
    """``cat(x₂, −x₁)`` rotates by −θ: not the spec's op, so it is not even a match."""
    m = _graph(sign_on_first=True)
    res = optimize(m, rules=["rotary"])
    assert "RotaryEmbedding" not in ops(res.model) and "Neg" in ops(res.model)


class RopeSdpa(RopeAttention):
    """Hugging Face's layout: rotate, repeat the key/value heads, then ``scaled_dot_product_attention``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        q = self.q(x).view(b, t, H, D).transpose(1, 2)
        k = self.k(x).view(b, t, KV, D).transpose(1, 2)
        v = self.v(x).view(b, t, KV, D).transpose(1, 2)
        cos, sin = self.cos[:t], self.sin[:t]
        q, k = q * cos + self.rot(q) * sin, k * cos + self.rot(k) * sin
        k = k[:, :, None].expand(b, KV, H // KV, t, D).reshape(b, H, t, D)
        v = v[:, :, None].expand(b, KV, H // KV, t, D).reshape(b, H, t, D)
        y = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.o(y.transpose(1, 2).reshape(b, t, C))


def test_rotations_before_sdpa_choose_opset_23(tmp_path) -> None:
    """The SDPA reads rotated and repeated heads (not head views), so the rotations alone choose 23;
    torch's own 4-D ``Attention`` then reads the projections too."""
    torch.manual_seed(6)
    module = RopeSdpa().eval()
    x = torch.randn(B, L, C)
    m, res = _export(module, tmp_path, x)
    assert res.opset == 23 and "RotaryEmbedding op (2 rotations)" in res.opset_reason, res.opset_reason
    assert res.fired.get("rotary.half") == 2 and res.fired.get("attention.heads") == 1, res.fired
    assert ops(m) == ["MatMul", "MatMul", "MatMul", "RotaryEmbedding", "RotaryEmbedding", "Attention", "MatMul"], ops(m)
    _check_numbers(m, module, x)


class HFRotaryAttention(torch.nn.Module):
    """Hugging Face's Llama layout since transformers 4.38: the tables are computed in ``forward``
    from position ids (``inv_freq @ positions``, ``cat(freqs, freqs)``, ``cos`` / ``sin``, one row
    of positions for the whole batch), then rotate, repeat the key/value heads, SDPA."""

    def __init__(self) -> None:
        super().__init__()
        self.q, self.k, self.v = (torch.nn.Linear(C, n * D, bias=False) for n in (H, KV, KV))
        self.o = torch.nn.Linear(C, C, bias=False)
        inv = 1.0 / (10000.0 ** (torch.arange(0, D, 2, dtype=torch.int64).float() / D))
        self.register_buffer("inv_freq", inv, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        positions = torch.arange(t).unsqueeze(0)
        inv = self.inv_freq[None, :, None].float().expand(positions.shape[0], -1, 1)
        freqs = (inv @ positions[:, None, :].float()).transpose(1, 2)
        emb = torch.cat((freqs, freqs), dim=-1)
        cos, sin = emb.cos().unsqueeze(1), emb.sin().unsqueeze(1)
        q = self.q(x).view(b, t, H, D).transpose(1, 2)
        k = self.k(x).view(b, t, KV, D).transpose(1, 2)
        v = self.v(x).view(b, t, KV, D).transpose(1, 2)
        q, k = q * cos + rotate_half_slice(q) * sin, k * cos + rotate_half_slice(k) * sin
        k = k[:, :, None].expand(b, KV, H // KV, t, D).reshape(b, H, t, D)
        v = v[:, :, None].expand(b, KV, H // KV, t, D).reshape(b, H, t, D)
        y = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.o(y.transpose(1, 2).reshape(b, t, C))


def test_hugging_face_tables_computed_in_forward_fuse_at_static_shapes(tmp_path) -> None:
    torch.manual_seed(7)
    module = HFRotaryAttention().eval()
    x = torch.randn(B, L, C)
    m, res = _export(module, tmp_path, x)
    assert res.opset == 23 and res.fired.get("rotary.half") == 2, (res.opset_reason, res.fired)
    assert ops(m) == ["MatMul", "MatMul", "MatMul", "RotaryEmbedding", "RotaryEmbedding", "Attention", "MatMul"], ops(m)
    _check_numbers(m, module, x)


def test_a_one_row_cache_against_a_dynamic_batch_reads_it_through_position_ids(tmp_path) -> None:
    """With dynamic axes torch's exporter emits ``RotaryEmbedding`` itself, with caches of batch 1 (the
    position ids' one row), which onnxruntime does not broadcast: batch 2 failed ("expected to have
    the same shape as input 'x'"). ``rotary.batch`` reads them through position ids."""
    torch.manual_seed(8)
    module = HFRotaryAttention().eval()
    m, res = _export(module, tmp_path, torch.randn(B, L, C), dynamic={"x": {0: "batch", 1: "tokens"}})
    assert res.fired.get("rotary.batch") == 2 and res.fired.get("rotary.heads") == 2, (res.fired, res.refused)
    rot = [n for n in m.graph.node if n.op_type == "RotaryEmbedding"]
    assert len(rot) == 2 and all(len(n.input) == 4 for n in rot)
    for shape in ((2, L, C), (3, 9, C), (1, 1, C)):
        x = torch.randn(*shape)
        assert_close(run(m, x.numpy())[0], _torch64(module, x), "model", f"{shape}")
    x = torch.randn(2, 5, C)
    ref = ReferenceEvaluator(m).run(None, {m.graph.input[0].name: x.numpy()})[0]
    assert_close(ref, _torch64(module, x), "model", "onnx.reference")


def test_optimize_fuses_a_default_dynamic_export_of_the_hugging_face_layout() -> None:
    """``torch.onnx.export(dynamo=True)`` at its default opset with dynamic axes, then ``optimize
    --opset 23``: the tables are ``Cos`` / ``Sin`` of ``cat(freqs, freqs)`` at run time, the caches
    become ``Cos`` / ``Sin`` of ``freqs`` (batch 1, so read through position ids)."""
    import warnings

    torch.manual_seed(9)
    module = HFRotaryAttention().eval()
    dim = torch.export.Dim.DYNAMIC
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        prog = torch.onnx.export(
            module, (torch.randn(B, L, C),), dynamo=True, dynamic_shapes={"x": {0: dim, 1: dim}}, verbose=False
        )
    m = prog.model_proto
    res = optimize(m, opset=23, rules=["rotary"], inputs={m.graph.input[0].name: [B, L, C]})
    assert res.fired.get("rotary.half") == 2 and res.fired.get("rotary.batch") == 2, (res.fired, res.refused)
    assert "Neg" not in ops(res.model)
    for shape in ((2, L, C), (3, 9, C), (1, 1, C)):
        x = torch.randn(*shape)
        assert_close(run(res.model, x.numpy())[0], _torch64(module, x), "model", f"{shape}")


class PartialRope(torch.nn.Module):
    """GPT-NeoX / Phi: only the first ``r`` of the head's ``D`` elements rotate (``rotary_pct``)."""

    def __init__(self, r: int = D // 2) -> None:
        super().__init__()
        self.r = r
        self.q = torch.nn.Linear(C, C, bias=False)
        cos, sin = tables(d=r)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        q = self.q(x).view(b, t, H, D).transpose(1, 2)
        q_rot, q_pass = q[..., : self.r], q[..., self.r :]
        q_rot = q_rot * self.cos[:t] + rotate_half_slice(q_rot) * self.sin[:t]
        return torch.cat((q_rot, q_pass), dim=-1).transpose(1, 2).reshape(b, t, C)


def test_a_partial_rotation_keeps_the_rest_of_the_head_as_it_is(tmp_path) -> None:
    torch.manual_seed(10)
    module = PartialRope().eval()
    x = torch.randn(B, L, C)
    m, res = _export(module, tmp_path, x)
    assert res.fired.get("rotary.half") == 1 and res.fired.get("rotary.partial") == 1, (res.fired, res.refused)
    rot = [n for n in m.graph.node if n.op_type == "RotaryEmbedding"]
    assert (
        len(rot) == 1
        and {a.name: helper.get_attribute_value(a) for a in rot[0].attribute}.get("rotary_embedding_dim") == D // 2
    )
    assert not {"Concat", "Slice", "Neg"} & set(ops(m)), ops(m)
    _check_numbers(m, module, x)
