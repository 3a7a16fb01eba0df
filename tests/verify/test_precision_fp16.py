"""fp16 / bf16 deployment checks.

The "hot" model feeds activations of ~±440 into a LayerNorm: every value fits fp16 (max 65504)
but the norm's Σ(x−μ)² over 64 features is ~2e6. With statistics converted to fp16 the report
must name the layer; keeping the norm in fp32 (the stash) — by graph conversion or by exporting
``model.half()`` — must fix it.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
import torch.nn as nn
from onnx import TensorProto

from normonnx.exporter import export
from normonnx.verify.half import convert, export_half
from normonnx.verify.precision import check_precision


class Hot(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(16, 64)
        self.ln = nn.LayerNorm(64)
        self.fc2 = nn.Linear(64, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.ln(self.fc1(x)))


@pytest.fixture(scope="module")
def hot(tmp_path_factory):
    torch.manual_seed(0)
    m = Hot().eval()
    with torch.no_grad():
        m.fc1.weight.mul_(300.0)
    x = torch.randn(4, 16, generator=torch.Generator().manual_seed(0))
    d = tmp_path_factory.mktemp("fp16")
    path = d / "hot.onnx"
    export(m, (x,), path, opset=18, prefer=["decomposed"])  # the decomposition: statistics are explicit values
    return m, x, path, d


def test_activations_fit_fp16_but_the_statistic_does_not(hot):
    m, x, _, _ = hot
    with torch.no_grad():
        a = m.fc1(x)
    assert 200 < float(a.abs().max()) < 65504
    assert float(((a - a.mean(-1, keepdim=True)) ** 2).sum(-1).max()) > 65504


def test_fp16_statistics_overflow_is_reported_per_layer(hot):
    m, x, path, _ = hot
    rep = check_precision(m, path, (x,), norms="fp16")
    assert not rep.passed
    assert [lp.layer for lp in rep.overflow_layers] == ["ln"]
    ln = rep.overflow_layers[0]
    assert ln.beyond_range >= 4  # one Σ(x−μ)² per row (4 rows) and what follows
    assert ln.max_abs_fp32 > 1e6
    assert "reducesumsquare" in ln.worst_value
    assert rep.conversion is not None and rep.conversion.kept_fp32 == {}
    assert "ln:" in rep.summary() and "beyond range" in rep.summary()


def test_keeping_norm_statistics_in_fp32_fixes_it(hot):
    m, x, path, _ = hot
    rep = check_precision(m, path, (x,))  # norms="fp32": the stash
    assert rep.passed, rep.summary()
    assert rep.overflow_layers == []
    kept = rep.conversion.kept_fp32
    norm_nodes = [
        n.name
        for n in onnx.load(path).graph.node
        if n.op_type != "Constant" and any(p.key == "normonnx.norm" for p in n.metadata_props)
    ]
    assert list(kept) == ["node_layer_norm"] and kept["node_layer_norm"] == norm_nodes  # the whole decomposition
    (out,) = rep.outputs
    assert out.dtype == "float16" and out.tolerance.atol == 2e-2
    assert out.max_abs < 2e-3  # measured 4.8e-4 vs torch fp32
    assert rep.localize is not None and rep.localize.culprit is None


def test_exporting_the_half_model_stashes_too(hot):
    m, x, _, d = hot
    path = d / "hot_half.onnx"
    res = export_half(m, (x,), path, opset=18, prefer=["decomposed"])
    assert res.specs[0].dtype == "float16" and res.specs[0].stash_fp32
    proto = onnx.load(path)
    assert proto.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT16
    rep = check_precision(m, path, (x,))
    assert rep.conversion is None and "already takes float16" in rep.notes[0]
    assert rep.passed and rep.overflow_layers == []
    assert rep.outputs[0].max_abs < 2e-3


def test_conversion_structure(hot):
    _, _, path, _ = hot
    model = onnx.load(path)
    conv, info = convert(model, "float16")
    g = conv.graph
    assert g.input[0].type.tensor_type.elem_type == TensorProto.FLOAT16
    assert g.output[0].type.tensor_type.elem_type == TensorProto.FLOAT16
    inits = {t.name: t.data_type for t in g.initializer}
    assert inits["fc1.weight"] == TensorProto.FLOAT16 and inits["ln.weight"] == TensorProto.FLOAT
    # exactly two boundary casts: fp16 → fp32 into the norm, fp32 → fp16 out of it
    boundary = [n for n in g.node if n.op_type == "Cast" and "::" in n.output[0]]
    assert [(n.attribute[0].i) for n in boundary] == [TensorProto.FLOAT, TensorProto.FLOAT16]
    assert info.casts == 2

    # the decomposition's float64 statistics are untouched inside the stash
    def to_double(m):
        return sum(1 for n in m.graph.node if n.op_type == "Cast" and n.attribute[0].i == TensorProto.DOUBLE)

    def double_inits(m):  # the element count and ε: float64 initializers of the decomposition
        return sum(1 for t in m.graph.initializer if t.data_type == TensorProto.DOUBLE)

    assert to_double(conv) == to_double(model) == 2  # x and x − μ
    assert double_inits(conv) == double_inits(model) == 2
    onnx.checker.check_model(conv)
    naive, _ = convert(model, "float16", norms="fp16")
    assert to_double(naive) == 0 and double_inits(naive) == 0


class ConvIN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.inorm = nn.InstanceNorm2d(8, affine=True)
        self.bn = nn.BatchNorm2d(8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.inorm(self.conv(x)))


def test_fp32_only_cpu_kernels_run_through_inserted_casts_and_are_reported(tmp_path):
    torch.manual_seed(0)
    m = ConvIN().eval()
    x = torch.randn(2, 3, 16, 16)
    path = tmp_path / "convin.onnx"
    res = export(m, (x,), path, prefer=["native"], allow_unstable=True)
    assert {r.strategy for r in res.lowerings} == {"native"}
    rep = check_precision(m, path, (x,), norms="fp16")  # the norm ops themselves typed fp16
    assert rep.passed, rep.summary()
    assert rep.ort_fp32.get("InstanceNormalization") == 1 and rep.ort_fp32.get("BatchNormalization") == 1
    assert "InstanceNormalization×1" in rep.summary()
    assert rep.outputs[0].max_abs < 1e-2


def test_bfloat16_runs_with_fp32_fallbacks_and_says_so(hot):
    m, x, path, _ = hot
    rep = check_precision(m, path, (x,), dtype="bfloat16")
    assert rep.conversion is not None and rep.conversion.keep_io_types  # numpy has no bfloat16
    assert "Gemm" in rep.conversion.block_ops
    assert any("no bfloat16 kernel for Gemm" in n for n in rep.notes)
    (out,) = rep.outputs
    assert out.tolerance.atol == 4e-2 and out.passed
    assert 1e-4 < out.max_abs < 4e-2  # weights stored in bf16: not exact
    assert np.isfinite(out.max_abs)
