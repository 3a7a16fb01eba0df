"""Shared helpers of the optimizer tests: models from ONNX text + numpy initializers, running in
onnxruntime with its graph optimizations disabled, exports from both torch exporters."""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
import zlib
from collections.abc import Mapping

import numpy as np
import onnx
from onnx import helper, numpy_helper

from normonnx.norms import KINDS
from normonnx.optimize import OptimizeResult, optimize_model
from normonnx.runtime import session
from normonnx.spec import NormSpec
from normonnx.verify import compare_arrays, tolerance


def seed_for(key: str) -> int:
    """A stable seed from a name (CRC-32: the same on every run and platform, unlike ``hash``)."""
    return zlib.crc32(key.encode())


_TEST_RNG: list[np.random.Generator] = []


def rng() -> np.random.Generator:
    """This test's own generator, seeded from its node id by the autouse fixture in conftest.py, so a
    test's data do not depend on which tests were collected or ran before it (one shared
    module-level generator made them do). Module constants use :func:`constants_rng` instead."""
    if not _TEST_RNG:
        raise RuntimeError("rng() is per test; a module-level constant takes constants_rng('<module>')")
    return _TEST_RNG[-1]


def constants_rng(module: str) -> np.random.Generator:
    """A generator for one module's import-time constants only: seeded from the module's name, so the
    constants are the same whichever other test files are collected."""
    return np.random.default_rng(seed_for(module))


def model(text: str, check: bool = True, **initializers: np.ndarray) -> onnx.ModelProto:
    """An ONNX model from the text syntax; names used but not defined become these initializers."""
    m = onnx.parser.parse_model(text)
    m.graph.initializer.extend(numpy_helper.from_array(np.asarray(v), name=k) for k, v in initializers.items())
    if check:  # (the checker rejects deprecated ops such as GroupNormalization-18, which exporters emit)
        onnx.checker.check_model(m)
    return m


def ops(m: onnx.ModelProto) -> list[str]:
    """Op types in graph order, domain-qualified outside the default domain."""
    return [(f"{n.domain}." if n.domain not in ("", "ai.onnx") else "") + n.op_type for n in m.graph.node]


def run(m: onnx.ModelProto, *inputs: np.ndarray) -> list[np.ndarray]:
    return session(m, optimize=False).run(list(inputs))


#: lowering order for the rule tests: they check fused graphs in standard ops. The CPU default puts
#: normonnx's compiled kernels first; that path is tested in test_cli_optimize and tests/test_kernels.py.
STANDARD_OPS = ("native", "decomposed", "function")


def optimize(m: onnx.ModelProto, **kw: object) -> OptimizeResult:
    kw.setdefault("prefer", STANDARD_OPS)
    res = optimize_model(m, **kw)  # type: ignore[arg-type]
    if kw.get("target", "cpu") == "cpu":  # cuda graphs may hold onnxruntime's SimplifiedLayerNormalization,
        onnx.checker.check_model(res.model)  # a default-domain contrib op the onnx checker does not know
    return res


def assert_close(actual: np.ndarray, expected: np.ndarray, kind: str = "*", what: str = "") -> float:
    """Element-wise within the tolerance table's entry for the actual dtype; returns max abs error."""
    tol = tolerance(str(np.asarray(actual).dtype), kind)
    c = compare_arrays(what or "y", actual, expected, tol)
    assert c.passed, f"{what}: max abs {c.max_abs:.3g} (tolerance {tol}), {c.mismatched} mismatched"
    return c.max_abs


def check_numbers(
    res: OptimizeResult,
    original: onnx.ModelProto,
    x: np.ndarray,
    spec: NormSpec | None = None,
    params: Mapping[str, np.ndarray] | None = None,
    post=None,
) -> None:
    """Optimized vs original (onnxruntime) and, when ``spec`` is given, vs the kind's float64 reference."""
    assert res.passed, res.summary()
    got = run(res.model, x)[0]
    ref = run(original, x)[0]
    assert_close(got, ref, "model", "optimized vs original")
    if spec is not None:
        y64 = KINDS[spec.kind].reference(spec, x.astype(np.float64), params or {})
        if post is not None:
            y64 = post(y64)
        assert_close(
            got, y64.astype(got.dtype) if got.dtype != np.float32 else y64, spec.kind, "optimized vs float64 reference"
        )


def refusal(res: OptimizeResult, rule: str) -> str:
    """The reasons the named rule was refused, joined (asserts there is one)."""
    reasons = [r.reason for r in res.refused if r.rule == rule]
    assert reasons, f"no refusal by {rule}; refused: {res.refused}, fired: {res.fired}"
    return " | ".join(reasons)


# -- torch exports ------------------------------------------------------------------------------------
@contextlib.contextmanager
def _quiet():
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        logging.disable(logging.WARNING)
        try:
            yield
        finally:
            logging.disable(logging.NOTSET)


def export(module, x, exporter: str, opset: int, fold: bool = True) -> onnx.ModelProto:
    """``exporter`` "legacy" (TorchScript, dynamo=False) or "dynamo"; ``fold=False`` keeps BatchNorms
    (legacy: do_constant_folding=False; dynamo: optimize=False)."""
    import torch

    module = module.eval()
    with _quiet(), torch.no_grad():
        if exporter == "dynamo":
            prog = torch.onnx.export(module, (x,), dynamo=True, opset_version=opset, optimize=fold, verbose=False)
            return prog.model_proto
        f = io.BytesIO()
        torch.onnx.export(module, (x,), f, dynamo=False, opset_version=opset, do_constant_folding=fold)
        return onnx.load_from_string(f.getvalue())


def torch_out(module, x) -> np.ndarray:
    import torch

    with torch.no_grad():
        return module.eval()(x).numpy()


def torch64_out(module, x) -> np.ndarray:
    import copy

    import torch

    with torch.no_grad():
        return copy.deepcopy(module).eval().double()(x.double()).numpy()


def ones_like_params(spec: NormSpec) -> dict[str, np.ndarray]:
    return KINDS[spec.kind].random_params(spec, rng())


def vi(name: str, elem: int, shape: list[int | str]) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem, shape)
