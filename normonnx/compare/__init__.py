"""Comparison that returns data: per-output error statistics; the caller decides."""

from .compare import OutputComparison, compare_arrays
from .tolerances import TABLE, UNIT_ROUNDOFF, Tolerance, check_statistic, check_tolerance, tolerance

__all__ = [
    "TABLE",
    "UNIT_ROUNDOFF",
    "OutputComparison",
    "Tolerance",
    "check_statistic",
    "check_tolerance",
    "compare_arrays",
    "tolerance",
]
