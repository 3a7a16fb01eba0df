"""Comparison that returns data: per-output error statistics; the caller decides."""

from .compare import OutputComparison, compare_arrays
from .tolerances import TABLE, Tolerance, tolerance

__all__ = ["TABLE", "OutputComparison", "Tolerance", "compare_arrays", "tolerance"]
