"""A norm kind is one file: this file defines an L2-normalize kind (no edits anywhere else),
registers it, and gets export, every strategy it can have, conformance and stress coverage.

    y = x / max(‖x‖₂, ε) · γ        (over the last axis; ``F.normalize(x, dim=-1)·γ``)

The kind has no native ONNX op and the compiled kernel library has no kernel for it, so
``native`` and ``native_kernel`` must reject it with reasons; ``decomposed`` and ``function``
lower it through its own ``decompose``. torch recognition is a torch custom op
(``normonnx_toy::l2_normalize``) the kind declares in ``torch_ops``; the module calls it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto
from test_conformance import (
    _ANY,
    mismatches,
    run_dtype_case,
    run_fp32_case,
    run_reference_evaluator_case,
    supported,
)

from normonnx import kernels
from normonnx.errors import SpecError
from normonnx.lowering import capability_table, check, select
from normonnx.norms import KINDS, NormKind, register, unregister
from normonnx.spec import NormSpec
from normonnx.verify.stress import large_shape, large_spec, measure

# -- the kind: everything normonnx needs to know about it ----------------------------------------


@torch.library.custom_op("normonnx_toy::l2_normalize", mutates_args=())
def l2_normalize(x: torch.Tensor, weight: torch.Tensor | None, eps: float) -> torch.Tensor:
    y = torch.nn.functional.normalize(x, p=2.0, dim=-1, eps=eps)
    return y * weight if weight is not None else y


@l2_normalize.register_fake
def _(x: torch.Tensor, weight: torch.Tensor | None, eps: float) -> torch.Tensor:
    return torch.empty_like(x)


class L2Norm(torch.nn.Module):
    """``x / max(‖x‖₂, ε) · γ`` over the last axis (γ of shape ``(D,)``, optional)."""

    def __init__(self, dim: int, eps: float = 1e-12, affine: bool = True) -> None:
        super().__init__()
        self.dim, self.eps = dim, eps
        self.weight = torch.nn.Parameter(1.0 + 0.25 * torch.randn(dim)) if affine else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.normonnx_toy.l2_normalize(x, self.weight, self.eps)


class L2Normalize(NormKind):
    name = "l2"
    normonnx_op = "L2Normalize"
    min_rank, max_rank = 1, 8
    input_slots = ("weight",)
    affine_slots = ("weight",)

    def validate(self, spec: NormSpec) -> None:
        super().validate(spec)
        ns = spec.normalized_shape
        if ns is None or len(ns) != 1 or ns[0] < 1:
            raise SpecError(f"l2 normalize takes the last axis: normalized_shape=(D,), got {ns}")
        if spec.has_bias or spec.groups is not None or spec.running_stats or spec.channels_first:
            raise SpecError("l2 normalize takes no bias, groups, running statistics or channels_first")

    def reference(self, spec: NormSpec, x: np.ndarray, params: Mapping[str, np.ndarray]) -> np.ndarray:
        x = np.asarray(x, np.float64)
        y = x / np.maximum(np.sqrt((x * x).sum(axis=-1, keepdims=True)), spec.eps)
        return y * np.asarray(params["weight"], np.float64) if spec.has_weight else y

    def decompose(self, b: Any, spec: NormSpec, x: str, p: Mapping[str, str], compute: int) -> str:
        """‖x‖₂ from a float64 sum of squares, ``max(·, ε)``, one rounding of the divisor."""
        f64 = TensorProto.DOUBLE
        xd = x if compute == f64 else b.cast(x, f64)
        norm = b.op("Sqrt", [b.reduce("ReduceSumSquare", xd, [-1])])
        den = b.op("Max", [norm, b.const(spec.eps, np.float64)])
        y = b.op("Div", [x, den if compute == f64 else b.cast(den, compute)])
        return b.op("Mul", [y, p["weight"]]) if "weight" in p else y

    def examples(self) -> list[tuple[str, NormSpec, tuple[int, ...]]]:
        return [
            ("r3", NormSpec("l2", normalized_shape=(16,), has_bias=False, rank=3), (2, 5, 16)),
            ("r2-b8", NormSpec("l2", normalized_shape=(12,), has_bias=False, rank=2), (8, 12)),
            (
                "noweight",
                NormSpec("l2", eps=1e-6, normalized_shape=(10,), has_weight=False, has_bias=False, rank=4),
                (2, 1, 3, 10),
            ),
        ]

    def large_spec(self) -> NormSpec:
        return NormSpec("l2", normalized_shape=(1 << 20,), has_bias=False, rank=2)

    def large_shape(self, spec: NormSpec, elements: int = 1 << 20) -> tuple[int, ...]:
        return (2, elements)

    def torch_modules(self) -> tuple[type, ...]:
        return (L2Norm,)

    def from_module(self, module: Any, rank: int | None = None) -> tuple[NormSpec, dict[str, np.ndarray]]:
        spec = NormSpec(
            "l2", eps=module.eps, normalized_shape=(module.dim,), has_weight=module.weight is not None, has_bias=False
        )
        return spec.replace(rank=rank), self._affine_params(module) if module.weight is not None else {}

    def torch_forward(self, spec: NormSpec, x: Any, params: Mapping[str, Any]) -> Any:
        return l2_normalize(x, params.get("weight"), spec.eps)

    def torch_ops(self) -> dict[Any, Any]:
        def spec(args: Sequence[Any], shape: Sequence[Any], dtype: str) -> NormSpec:
            weight, eps = args
            return NormSpec(
                "l2",
                eps=float(eps),
                normalized_shape=(int(shape[-1]),),
                has_weight=weight is not None,
                has_bias=False,
                dtype=dtype,
                rank=len(shape),
            )

        return {torch.ops.normonnx_toy.l2_normalize.default: (spec, lambda args: {"weight": args[0]})}


TOY = L2Normalize()
#: what the toy kind may be lowered by: its decomposition, directly or as a function body
TOY_EXPECTED = {("decomposed", "l2"): _ANY, ("function", "l2"): _ANY}
CASES = [(f"l2-{i}", spec, shape) for i, spec, shape in TOY.examples()]


@pytest.fixture(autouse=True)
def toy_kind():
    """The kind is registered for each test of this file only: no other test sees it."""
    register(TOY)
    yield TOY
    unregister("l2")
    assert "l2" not in KINDS


# -- every strategy it can have, and the reasons of those it cannot --------------------------------


def test_strategies_claim_it_or_say_why_not():
    spec = CASES[0][1]
    for strategy in ("decomposed", "function"):
        assert check(spec, strategy, 13), strategy
    assert "native has no lowering for l2 norm" in check(spec, "native", 23).reason
    assert "via_instance has no lowering for l2 norm" in check(spec, "via_instance", 23).reason
    kernel = check(spec, "native_kernel", 23).reason
    if kernels.available():  # the library, not a list of ours, says it has no such kernel
        assert "registers no L2Normalize kernel" in kernel
    else:
        assert "not available" in kernel
    sel = select(spec, 23)
    assert sel.strategy == "decomposed"
    assert [name for name, _ in sel.rejected] == ["native_kernel", "native"]
    rows = {(r["strategy"], r["provider"]) for r in capability_table() if r["kind"] == "l2"}
    assert rows == {("decomposed", "cpu"), ("decomposed", "cuda"), ("function", "cpu"), ("function", "cuda")}


def test_capabilities_match_its_table():
    assert not mismatches(CASES, TOY_EXPECTED, {})
    # and the comparison notices a strategy that stops claiming it
    assert mismatches(CASES, {("decomposed", "l2"): _ANY}, {})


# -- conformance: the same checks as every built-in kind, on its declared examples ------------------

FP32 = [c[:5] for c in supported(CASES, (13, 18, 23), ("float32",), TOY_EXPECTED, {})]
OTHER = [(*c[:4], c[5]) for c in supported(CASES, (23,), ("float16", "float64", "bfloat16"), TOY_EXPECTED, {})]


@pytest.mark.parametrize(
    ("cid", "spec", "shape", "strategy", "opset"), FP32, ids=[f"{c[0]}-{c[3]}-op{c[4]}" for c in FP32]
)
def test_fp32_conformance(cid, spec, shape, strategy, opset, ort_run):
    run_fp32_case(spec, shape, strategy, opset, ort_run)


@pytest.mark.parametrize(
    ("cid", "spec", "shape", "strategy", "dtype"), OTHER, ids=[f"{c[0]}-{c[3]}-{c[4]}" for c in OTHER]
)
def test_other_dtypes_conformance(cid, spec, shape, strategy, dtype, ort_run):
    run_dtype_case(spec, shape, strategy, dtype, ort_run)


@pytest.mark.parametrize("strategy", ["decomposed", "function"])
def test_onnx_reference_evaluator_conformance(strategy):
    for _, spec, shape in CASES:
        run_reference_evaluator_case(spec, shape, strategy, 23)


def test_matrix_has_both_strategies():
    assert {c[3] for c in FP32} == {"decomposed", "function"} and len(FP32) == len(CASES) * 2 * 3


# -- stress: the default strategy stays within 2× torch-fp32's error against float64 ----------------


@pytest.mark.parametrize("stress", ["offset", "tiny_scale", "normal"])
def test_stress_small(stress):
    spec, shape = CASES[0][1], (4, 64, 768)
    spec = spec.replace(normalized_shape=(768,))
    err, terr, _, _ = measure(spec, shape, stress, select(spec, 23).strategy)
    assert err <= 2 * max(terr, 1e-7), f"{err:.3g} vs torch {terr:.3g}"


@pytest.mark.slow
@pytest.mark.parametrize("stress", ["offset", "normal"])
def test_stress_large(stress):
    spec = large_spec("l2")
    shape = large_shape(spec)
    assert shape == (2, 1 << 20)
    err, terr, _, _ = measure(spec, shape, stress, select(spec, 23).strategy)
    assert err <= 2 * max(terr, 1e-7), f"{shape}: {err:.3g} vs torch {terr:.3g}"


def test_zero_input_gives_zero():
    """‖x‖ = 0: max(0, ε) keeps the division finite; the output is exactly 0 (what torch gives)."""
    from normonnx.lowering import build_model
    from normonnx.runtime import session

    spec, shape = CASES[0][1], CASES[0][2]
    params = TOY.random_params(spec, np.random.default_rng(0))
    for strategy in ("decomposed", "function"):
        (y,) = session(build_model(spec, params, 23, strategy), optimize=False).run({"X": np.zeros(shape, np.float32)})
        assert np.array_equal(y, np.zeros(shape, np.float32)), strategy


# -- export: a torch module using it becomes one norm node, lowered and numerically right -----------


def test_export_recognises_the_module(tmp_path):
    from normonnx.exporter import export
    from normonnx.runtime import session

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 32), L2Norm(32, eps=1e-6), torch.nn.Linear(32, 4)).eval()
    x = torch.randn(3, 5, 8)
    path = str(tmp_path / "toy.onnx")
    res = export(model, (x,), path)
    assert [r.kind for r in res.lowerings] == ["l2"]
    assert res.lowerings[0].strategy in ("native_kernel", "decomposed", "function")
    assert res.lowerings[0].strategy == select(CASES[0][1].replace(normalized_shape=(32,)), res.opset).strategy
    onnx_model = onnx.load(path)
    ops = [n.op_type for n in onnx_model.graph.node]
    assert "ReduceSumSquare" in ops and "Max" in ops  # its own decomposition, not a stand-in
    with torch.no_grad():
        want = model(x).numpy()
    (y,) = session(path, optimize=False).run({onnx_model.graph.input[0].name: x.numpy()})
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-6)
