"""The proof step (normonnx.verify.bisect.verify_models): mismatches are caught, disagreements are decided by a
float64 run of the original, inputs are generated or asked for, broken outputs are reported."""

from __future__ import annotations

import numpy as np
import pytest

from normonnx.errors import InputError
from normonnx.norms import KINDS
from normonnx.spec import NormSpec
from normonnx.verify.bisect import verify_models
from normonnx.verify.float64 import float64_reference
from normonnx.verify.inputs import input_specs
from tests.optimize.optimize_helpers import _TEST_RNG, constants_rng, model, rng, seed_for


@pytest.fixture(autouse=True)
def _rng_per_test(request):
    """rng(): this test's own generator, seeded from its node id (as in tests/optimize/conftest.py)."""
    _TEST_RNG.append(np.random.default_rng(seed_for(request.node.nodeid)))
    yield
    _TEST_RNG.pop()


_CONST = constants_rng("test_optimize_verify")  # import-time constants only; tests draw from rng()

G = (1 + 0.2 * _CONST.standard_normal(16)).astype(np.float32)
B = (0.2 * _CONST.standard_normal(16)).astype(np.float32)


def ln(eps: float, shape: str = "2,5,16") -> str:
    return f"""<ir_version: 8, opset_import: ["" : 17]>
    g (float[{shape}] x) => (float[{shape}] y) {{ y = LayerNormalization <axis = -1, epsilon = {eps}> (x, g, b) }}"""


def test_wrong_epsilon_is_a_mismatch():
    original, broken = model(ln(1e-5), g=G, b=B), model(ln(1e-1), g=G, b=B)
    v = verify_models(original, broken, n_samples=2)
    assert not v.passed
    assert v.summary().startswith("MISMATCH on random0")
    assert [s.kind for s in v.samples] == ["random", "random", "stress", "stress"]


def test_identical_models_pass_with_zero_error():
    m = model(ln(1e-5), g=G, b=B)
    v = verify_models(m, m)
    assert v.passed and v.max_abs == 0.0
    assert "equivalent on 3 random + 2 stress inputs" in v.summary()


def test_float64_reference_computes_statistics_in_float64():
    """stash_type (float32 statistics by default) is promoted too, so offset 1e3 is exact."""
    m = model(ln(1e-5), g=G, b=B)
    x = (rng().standard_normal((2, 5, 16)) + 1e3).astype(np.float32)
    (y,) = float64_reference(m, {"x": x})
    spec = NormSpec("layer", eps=1e-5, normalized_shape=(16,))
    y64 = KINDS["layer"].reference(spec, x.astype(np.float64), {"weight": G, "bias": B})
    assert y.dtype == np.float64 and np.abs(y - y64).max() < 1e-9


def test_symbolic_dims_need_shapes():
    m = model(ln(1e-5, shape="N,T,16"), g=G, b=B)
    with pytest.raises(InputError) as e:
        input_specs(m)
    assert "axis 1" in e.value.message and "--input x:" in (e.value.note or "")
    assert input_specs(m, {"x": (3, 7, 16)})[0][1] == (3, 7, 16)
    batch_only = model(ln(1e-5, shape="N,5,16"), g=G, b=B)
    assert input_specs(batch_only)[0][1] == (2, 5, 16)


def test_unloadable_optimized_model_is_a_failure_not_a_crash():
    original = model(ln(1e-5), g=G, b=B)
    broken = model(ln(1e-5), g=G, b=B)
    broken.graph.node[0].input[1] = "missing"
    v = verify_models(original, broken)
    assert not v.passed and "does not load" in v.error


def test_renamed_outputs_are_a_failure():
    original = model(ln(1e-5), g=G, b=B)
    other = model(ln(1e-5).replace(" y)", " z)").replace("{ y =", "{ z ="), g=G, b=B)
    v = verify_models(original, other)
    assert not v.passed and "outputs differ" in v.error


def test_unknown_input_name_is_a_usage_error():
    from normonnx.errors import OptimizeError
    from normonnx.optimize import optimize_model

    m = model(
        """<ir_version: 8, opset_import: ["" : 17]>
g (float[N,4] x) => (float[N,4] y) { y = Relu(x) }"""
    )
    with pytest.raises(OptimizeError, match="'z', not an input of the model"):
        optimize_model(m, inputs={"z": [2, 4]})
