"""Compare one actual array with its reference and return the numbers, not a verdict only.

Pass/fail rule (Polygraphy's and numpy's): an element fails only if it exceeds *both* the
absolute and the relative bound, i.e. ``|a − r| > atol + rtol·|r|``. ``check`` selects a
statistic instead: "elementwise" (default, the rule above on every element), "max" (max abs
error <= atol + rtol·max|r|), "mean" (mean abs error <= atol), or "quantile:q" (the q-quantile of
the per-element excess must be <= 0).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from .tolerances import Tolerance


@dataclasses.dataclass
class OutputComparison:
    """Error statistics of one output."""

    name: str
    shape: list[int]
    dtype: str
    max_abs: float
    max_rel: float  # over elements whose reference is non-zero
    mean_abs: float
    scale: float  # max |reference|
    rel_to_scale: float  # max_abs / scale
    mismatched: int  # elements failing the elementwise rule
    total: int
    nonfinite_actual: int
    nonfinite_reference: int
    tolerance: Tolerance
    check: str
    passed: bool
    worst_index: list[int]

    def as_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["tolerance"] = {"atol": self.tolerance.atol, "rtol": self.tolerance.rtol}
        for k, v in list(d.items()):
            if isinstance(v, float) and not math.isfinite(v):
                d[k] = str(v)
        return d


def compare_arrays(
    name: str, actual: np.ndarray, reference: np.ndarray, tol: Tolerance, check: str = "elementwise"
) -> OutputComparison:
    """Statistics of ``actual`` vs ``reference`` (computed in float64)."""
    a = np.asarray(actual)
    r = np.asarray(reference)
    if a.shape != r.shape:
        return OutputComparison(
            name,
            list(a.shape),
            str(a.dtype),
            math.inf,
            math.inf,
            math.inf,
            0.0,
            math.inf,
            int(max(a.size, r.size)),
            int(max(a.size, r.size)),
            0,
            0,
            tol,
            f"shape {list(a.shape)} != reference {list(r.shape)}",
            False,
            [],
        )
    a64 = a.astype(np.float64)
    r64 = r.astype(np.float64)
    fin_a = np.isfinite(a64)
    fin_r = np.isfinite(r64)
    # identical non-finite values (inf == inf, nan at the same place) are not errors
    same_nonfinite = (~fin_a & ~fin_r) & ((a64 == r64) | (np.isnan(a64) & np.isnan(r64)))
    with np.errstate(invalid="ignore", over="ignore"):  # inf - inf -> nan: counted as an infinite error below
        diff = np.where(same_nonfinite, 0.0, np.abs(a64 - r64))
    diff = np.where(np.isnan(diff), np.inf, diff)
    absr = np.where(fin_r, np.abs(r64), 0.0)
    bound = tol.atol + tol.rtol * absr
    fails = diff > bound
    total = int(a.size)
    max_abs = float(diff.max()) if total else 0.0
    # relative error only where the reference is non-zero: at exact zeros it is undefined (max_abs covers them)
    nonzero = absr > 0
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        rel = np.where(nonzero, diff / np.where(nonzero, absr, 1.0), 0.0)
    rel = np.where(np.isinf(diff), np.inf, rel)
    max_rel = float(rel.max()) if total else 0.0
    scale = float(absr.max()) if total else 0.0
    mean_abs = float(diff.mean()) if total else 0.0
    worst = [int(i) for i in np.unravel_index(int(np.argmax(diff)), diff.shape)] if total else []
    if check == "elementwise":
        passed = not bool(fails.any())
    elif check == "max":
        passed = max_abs <= tol.atol + tol.rtol * scale
    elif check == "mean":
        passed = mean_abs <= tol.atol
    elif check.startswith("quantile:"):
        q = float(check.split(":", 1)[1])
        passed = bool(np.quantile(diff - bound, q) <= 0) if total else True
    else:
        raise ValueError(f"unknown check {check!r}: use elementwise, max, mean or quantile:Q")
    return OutputComparison(
        name=name,
        shape=list(a.shape),
        dtype=str(a.dtype),
        max_abs=max_abs,
        max_rel=max_rel,
        mean_abs=mean_abs,
        scale=scale,
        rel_to_scale=max_abs / scale if scale > 0 else max_abs,
        mismatched=int(fails.sum()),
        total=total,
        nonfinite_actual=int((~fin_a).sum()),
        nonfinite_reference=int((~fin_r).sum()),
        tolerance=tol,
        check=check,
        passed=passed,
        worst_index=worst,
    )
