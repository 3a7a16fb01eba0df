"""The pass/fail rule, stated as numbers.

An element fails only if it exceeds BOTH bounds: |a − r| > atol + rtol·|r| (numpy / Polygraphy).
``check`` replaces the elementwise rule by a statistic: max, mean, quantile:Q.
"""

from __future__ import annotations

import numpy as np
import pytest

from normonnx.compare import Tolerance, compare_arrays

TOL = Tolerance(atol=1e-3, rtol=1e-2)


@pytest.mark.parametrize(
    ("ref", "err", "fails"),
    [
        (0.0, 0.9e-3, False),  # within atol
        (0.0, 1.1e-3, True),  # beyond atol, rtol·|r| = 0 adds nothing
        (1.0, 1.05e-2, False),  # beyond atol and beyond rtol·|r| alone, but within their sum 1.1e-2
        (1.0, 1.15e-2, True),  # beyond the sum
        (100.0, 0.9, False),  # 0.9 ≫ atol, yet 0.9 < 1e-3 + 1e-2·100 — relative bound rescues it
        (100.0, 1.002, True),
    ],
)
def test_element_fails_only_beyond_atol_plus_rtol(ref, err, fails):
    r = np.array([ref], np.float64)
    c = compare_arrays("y", r + err, r, TOL)
    assert c.mismatched == int(fails)
    assert c.passed is (not fails)
    assert c.max_abs == pytest.approx(err)


def test_statistics_checks():
    r = np.zeros(1000)
    a = r.copy()
    a[0] = 0.5  # one outlier
    a[1:] = 6e-4
    assert compare_arrays("y", a, r, TOL).mismatched == 1
    assert not compare_arrays("y", a, r, TOL, "elementwise").passed
    assert not compare_arrays("y", a, r, TOL, "max").passed  # 0.5 > 1e-3 + 1e-2·0
    # mean |err| = (0.5 + 999·6e-4) / 1000 ≈ 1.0994e-3: just beyond atol
    assert not compare_arrays("y", a, r, TOL, "mean").passed
    assert compare_arrays("y", a, r, Tolerance(1.1e-3, 0.0), "mean").passed
    # 99% of elements are within bounds, so the 0.99 quantile of the excess is <= 0
    assert compare_arrays("y", a, r, TOL, "quantile:0.99").passed
    assert not compare_arrays("y", a, r, TOL, "quantile:0.9995").passed


def test_max_check_is_scale_relative():
    r = np.linspace(-100, 100, 201)
    a = r + 0.5  # 0.5 everywhere: fails near zero elementwise, within 1e-3 + 1e-2·100 overall
    assert compare_arrays("y", a, r, TOL).mismatched == 99  # the integers with |r| < 49.9
    assert compare_arrays("y", a, r, TOL, "max").passed


def test_nonfinite_values():
    r = np.array([1.0, np.inf, np.nan])
    assert compare_arrays("y", r.copy(), r, TOL).passed  # identical Inf/NaN are not errors
    c = compare_arrays("y", np.array([1.0, np.inf, 0.0]), r, TOL)
    assert not c.passed and c.mismatched == 1 and c.nonfinite_reference == 2


def test_unknown_check_is_refused():
    with pytest.raises(ValueError, match="elementwise, max, mean or quantile"):
        compare_arrays("y", np.zeros(2), np.zeros(2), TOL, "median")
