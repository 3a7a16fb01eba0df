"""The pass/fail rule, stated as numbers.

An element fails only if it exceeds BOTH bounds: |a − r| > atol + rtol·|r| (numpy / Polygraphy).
``check`` replaces the elementwise rule by a statistic: max, mean, quantile:Q.
"""

from __future__ import annotations

import numpy as np
import pytest

from normonnx.errors import InputError
from normonnx.verify import Tolerance, compare_arrays

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


@pytest.mark.parametrize("check", ["median", "quantile:1.5", "quantile:nan", "quantile:x", ""])
def test_unknown_check_is_a_usage_error(check):
    with pytest.raises(InputError, match="elementwise, max, mean or quantile"):
        compare_arrays("y", np.zeros(2), np.zeros(2), TOL, check)


@pytest.mark.parametrize("check", ["elementwise", "max", "mean", "quantile:0.99", "quantile:0.5", "quantile:0"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("side", ["onnx", "torch"])
def test_nonfinite_on_one_side_fails_every_statistic(check, bad, side):
    """One NaN/Inf among 1000 good elements: every statistic fails (quantile:0.99 used to pass)."""
    r = np.linspace(-1, 1, 1000)
    a = r.copy()
    (a if side == "onnx" else r)[7] = bad
    c = compare_arrays("y", a, r, TOL, check)
    assert not c.passed
    assert c.nonfinite_mismatch == 1
    assert c.required_atol == np.inf  # no tolerance passes it


def test_nan_against_inf_is_a_mismatch():
    c = compare_arrays("y", np.array([np.nan, 1.0]), np.array([np.inf, 1.0]), TOL, "quantile:0.5")
    assert not c.passed and c.nonfinite_mismatch == 1


def test_all_nan_on_both_sides_passes_with_a_warning():
    a = np.full((3, 4), np.nan)
    c = compare_arrays("y", a, a.copy(), TOL)
    assert c.passed and c.nonfinite_mismatch == 0
    assert c.warnings == ["all 12 values are NaN on both sides: nothing was compared"]
    # NaN at the same places, not everywhere: no warning (the other values were compared)
    b = np.array([np.nan, 1.0])
    assert compare_arrays("y", b, b.copy(), TOL).warnings == []


@pytest.mark.parametrize("value", [np.nan, np.inf, -1.0, -1e-9])
@pytest.mark.parametrize("field", ["atol", "rtol"])
def test_tolerance_must_be_finite_and_non_negative(value, field):
    kw = {"atol": 1e-4, "rtol": 1e-4, field: value}
    with pytest.raises(InputError, match=f"{field} .* is not a finite number >= 0"):
        Tolerance(**kw)


def test_required_tolerance_is_the_smallest_that_passes():
    r = np.array([0.0, 1.0, 10.0])
    a = r + np.array([2e-3, 5e-3, 3e-2])
    c = compare_arrays("y", a, r, TOL)  # atol 1e-3, rtol 1e-2
    # atol needed at rtol 1e-2: max(2e-3 − 0, 5e-3 − 1e-2, 3e-2 − 0.1) = 2e-3
    assert c.required_atol == pytest.approx(2e-3)
    # rtol needed at atol 1e-3: element 0 has |r| = 0 and error > atol: no rtol helps
    assert c.required_rtol == np.inf
    assert not c.passed
    assert compare_arrays("y", a, r, Tolerance(c.required_atol, TOL.rtol)).passed
    c2 = compare_arrays("y", a[1:], r[1:], TOL)  # rtol needed: max((5e-3 − 1e-3)/1, (3e-2 − 1e-3)/10)
    assert c2.required_rtol == pytest.approx(4e-3)
    assert compare_arrays("y", a[1:], r[1:], Tolerance(TOL.atol, c2.required_rtol * (1 + 1e-9))).passed
    for check in ("max", "mean", "quantile:0.5"):
        c3 = compare_arrays("y", a, r, TOL, check)
        assert compare_arrays("y", a, r, Tolerance(c3.required_atol * (1 + 1e-9), TOL.rtol), check).passed
        if c3.required_atol > 1e-9:
            assert not compare_arrays("y", a, r, Tolerance(c3.required_atol * 0.99, TOL.rtol), check).passed
