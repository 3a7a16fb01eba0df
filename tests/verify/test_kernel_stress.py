"""Stress inputs: offset 1e3, scale 1e-3, zero variance, ≥1M elements per group.

The strategy the selector picks by default for each kind must be within 2× torch-fp32's own
error against float64. The capability table's "unstable" marks are checked too: a strategy
marked unstable must really be worse than that bound on some stress input (so the table stays
honest in both directions)."""

from __future__ import annotations

import numpy as np
import pytest

from normonnx.lowering import STRATEGIES, check, select
from normonnx.norms import KINDS
from normonnx.spec import NormSpec
from normonnx.verify.stress import large_shape, large_spec, measure

OPSET = 23
SMALL = {
    "batch": (NormSpec("batch", channels=8, running_stats=False, rank=4), (4, 8, 32, 32)),
    "batch_running": (NormSpec("batch", channels=8, running_stats=True, rank=4), (4, 8, 32, 32)),
    "layer": (NormSpec("layer", normalized_shape=(768,), rank=3), (4, 64, 768)),
    "layer_cf": (NormSpec("layer", normalized_shape=(32,), channels_first=True, rank=4), (2, 32, 16, 16)),
    "instance": (NormSpec("instance", channels=8, rank=4), (2, 8, 64, 64)),
    "group": (NormSpec("group", channels=32, groups=8, rank=4), (2, 32, 32, 32)),
    "rms": (NormSpec("rms", normalized_shape=(1024,), has_bias=False, rank=3), (2, 32, 1024)),
    "grn": (NormSpec("grn", channels=32, eps=1e-6, rank=4), (2, 16, 16, 32)),
    "grn_cf": (NormSpec("grn", channels=32, eps=1e-6, channels_first=True, rank=4), (2, 32, 16, 16)),
}


def _errors(spec, shape, stress, strategy, seed=0):
    """(strategy error, torch fp32 error, output, params), errors as max |· − float64 reference|."""
    return measure(spec, shape, stress, strategy, opset=OPSET, seed=seed)


# an absolute floor (~1 ulp at unit scale) so "2× torch" is not a bound of 0 when torch is exact
FLOOR = 1e-7
#: stricter than the table's float32 atol (1e-4, for unit-scale outputs with reduction-order noise):
#: a constant input has x − μ = 0, so y = β up to μ's rounding times 1/√ε (≈ 316 at ε = 1e-5); an
#: error near 1e-4 is that amplification, the instability this test is for
CONSTANT_INPUT_ATOL = 1e-5


@pytest.mark.parametrize("stress", ["offset", "tiny_scale", "normal"])
@pytest.mark.parametrize("case", list(SMALL))
def test_default_strategy_within_2x_torch(case, stress):
    spec, shape = SMALL[case]
    strategy = select(spec, OPSET).strategy
    err, terr, _, _ = _errors(spec, shape, stress, strategy)
    assert err <= 2 * max(terr, FLOOR), f"{strategy}: {err:.3g} vs torch {terr:.3g}"


@pytest.mark.slow
@pytest.mark.parametrize("stress", ["offset", "normal"])
@pytest.mark.parametrize("kind", list(KINDS))
def test_default_strategy_large_reductions(kind, stress):
    spec = large_spec(kind)
    shape = large_shape(spec)
    strategy = select(spec, OPSET).strategy
    err, terr, _, _ = _errors(spec, shape, stress, strategy)
    assert err <= 2 * max(terr, FLOOR), f"{strategy} on {shape}: {err:.3g} vs torch {terr:.3g}"


@pytest.mark.parametrize("case", list(SMALL))
def test_zero_variance_gives_bias(case):
    spec, shape = SMALL[case]
    if spec.running_stats:
        pytest.skip("running statistics: a constant input is not a zero-variance case")
    for name in STRATEGIES:
        if not check(spec, name, OPSET, allow_unstable=False):
            continue
        _, _, y, params = _errors(spec, shape, "constant", name)
        assert np.isfinite(y).all(), name
        kind = KINDS[spec.kind]
        expected = kind.reference(spec, np.full(shape, 3.25), params)  # = β broadcast (or 0)
        np.testing.assert_allclose(y, expected, atol=CONSTANT_INPUT_ATOL, err_msg=name)


UNSTABLE = [
    (kind, name)
    for name, s in STRATEGIES.items()
    for kind, cap in s.capabilities.items()
    if not cap.stable or cap.stable_up_to is not None
]


@pytest.mark.slow
@pytest.mark.parametrize(("kind", "strategy"), UNSTABLE, ids=[f"{k}-{s}" for k, s in UNSTABLE])
def test_unstable_marks_are_real(kind, strategy):
    """An 'unstable' capability must really exceed 2× torch somewhere on the large stress inputs."""
    spec = large_spec(kind)
    if not check(spec, strategy, OPSET, allow_unstable=True):
        pytest.skip("not valid for the large spec")
    worst = 0.0
    for stress in ("offset", "normal"):
        err, terr, _, _ = _errors(spec, large_shape(spec), stress, strategy)
        worst = max(worst, err / max(terr, FLOOR))
    assert worst > 2.0, f"{strategy} on {kind} is marked unstable but is within {worst:.2f}x torch"
