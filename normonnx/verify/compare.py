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

from .tolerances import Tolerance, check_statistic


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
    #: elements non-finite on one side only (or different non-finite values): fail every check
    nonfinite_mismatch: int = 0
    #: the smallest atol that passes ``check`` at this rtol (Polygraphy's "minimum required tolerance")
    required_atol: float = 0.0
    #: the smallest rtol that passes the elementwise rule at this atol (inf: an error where |r| = 0)
    required_rtol: float = 0.0
    #: where ``tolerance`` came from: "table", "derived" (an error model, see derive.py), "user"
    tolerance_source: str = "table"
    #: the error model's tolerance, reported even when not applied (user tolerances are never widened)
    derived: Tolerance | None = None
    warnings: list[str] = dataclasses.field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["tolerance"] = {"atol": self.tolerance.atol, "rtol": self.tolerance.rtol}
        d["derived"] = {"atol": self.derived.atol, "rtol": self.derived.rtol} if self.derived else None
        for k, v in list(d.items()):
            if isinstance(v, float) and not math.isfinite(v):
                d[k] = str(v)
        return d


def compare_arrays(
    name: str, actual: np.ndarray, reference: np.ndarray, tol: Tolerance, check: str = "elementwise"
) -> OutputComparison:
    """Statistics of ``actual`` vs ``reference`` (computed in float64).

    Verdict rules beyond the tolerance: an element non-finite on one side only (or NaN vs Inf,
    +Inf vs −Inf) fails under *every* check statistic; identical non-finite values are not
    errors, but an output that is NaN everywhere on both sides carries a warning (nothing was
    compared)."""
    check_statistic(check)
    a = np.asarray(actual)
    r = np.asarray(reference)
    if a.shape != r.shape:
        n = int(max(a.size, r.size))
        return OutputComparison(
            name=name,
            shape=list(a.shape),
            dtype=str(a.dtype),
            max_abs=math.inf,
            max_rel=math.inf,
            mean_abs=math.inf,
            scale=0.0,
            rel_to_scale=math.inf,
            mismatched=n,
            total=n,
            nonfinite_actual=0,
            nonfinite_reference=0,
            tolerance=tol,
            check=f"shape {list(a.shape)} != reference {list(r.shape)}",
            passed=False,
            worst_index=[],
            required_atol=math.inf,
            required_rtol=math.inf,
        )
    a64 = a.astype(np.float64)
    r64 = r.astype(np.float64)
    fin_a = np.isfinite(a64)
    fin_r = np.isfinite(r64)
    # identical non-finite values (inf == inf, nan at the same place) are not errors
    same_nonfinite = (~fin_a & ~fin_r) & ((a64 == r64) | (np.isnan(a64) & np.isnan(r64)))
    one_sided = (~fin_a | ~fin_r) & ~same_nonfinite
    with np.errstate(invalid="ignore", over="ignore"):  # inf - inf -> nan: counted as an infinite error below
        diff = np.where(same_nonfinite, 0.0, np.abs(a64 - r64))
    diff = np.where(np.isnan(diff), np.inf, diff)
    absr = np.where(fin_r, np.abs(r64), 0.0)
    bound = tol.atol + tol.rtol * absr
    fails = diff > bound
    total = int(a.size)
    n_bad = int(one_sided.sum())
    max_abs = float(diff.max()) if total else 0.0
    # relative error only where the reference is non-zero: at exact zeros it is undefined (max_abs covers them)
    nonzero = absr > 0
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        rel = np.where(nonzero, diff / np.where(nonzero, absr, 1.0), 0.0)
        excess_a = diff - tol.rtol * absr  # the atol each element needs at this rtol
        need_r = np.where(
            diff <= tol.atol, 0.0, np.where(nonzero, (diff - tol.atol) / np.where(nonzero, absr, 1.0), np.inf)
        )
    rel = np.where(np.isinf(diff), np.inf, rel)
    max_rel = float(rel.max()) if total else 0.0
    scale = float(absr.max()) if total else 0.0
    mean_abs = float(diff.mean()) if total else 0.0
    worst = [int(i) for i in np.unravel_index(int(np.argmax(diff)), diff.shape)] if total else []
    if check == "elementwise":
        passed = not bool(fails.any())
        req_a = float(excess_a.max()) if total else 0.0
    elif check == "max":
        passed = max_abs <= tol.atol + tol.rtol * scale
        req_a = max_abs - tol.rtol * scale
    elif check == "mean":
        passed = mean_abs <= tol.atol
        req_a = mean_abs
    else:  # quantile:Q (check_statistic refused anything else)
        q = float(check.split(":", 1)[1])
        with np.errstate(invalid="ignore"):  # quantile interpolates inf − inf around an infinite error
            passed = bool(np.quantile(diff - bound, q) <= 0) if total else True
            req_a = float(np.quantile(excess_a, q)) if total else 0.0
    warnings = []
    if n_bad:
        passed = False  # NaN/Inf on one side only fails whatever the statistic
        req_a = math.inf
    if total and bool(np.isnan(a64).all() and np.isnan(r64).all()):
        warnings.append(f"all {total} values are NaN on both sides: nothing was compared")
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
        nonfinite_mismatch=n_bad,
        required_atol=max(0.0, req_a) if math.isfinite(req_a) else math.inf,
        required_rtol=(float(need_r.max()) if total else 0.0) if not n_bad else math.inf,
        warnings=warnings,
    )
