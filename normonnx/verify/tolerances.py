"""The one reviewed table of default tolerances, keyed by dtype × kind × provider.

An element passes when ``|a − b| <= atol + rtol·|b|`` (numpy's ``allclose`` convention, the
reference being ``b``). Entries are looked up most-specific first: (dtype, kind, provider),
(dtype, kind, *), (dtype, *, provider), (dtype, *, *). Why these numbers:

- float32: torch and onnxruntime differ by reduction order; a norm output has unit scale, so
  1e-4 absolute on unit-scale values is ~1000 ulps of headroom yet catches a wrong epsilon
  (eps 1e-5 vs 1e-3 changes unit-variance outputs by ~5e-4) or a wrong axis (O(1) errors).
- float16: 10 bits of mantissa: 1e-3 relative per op, a few ops deep; 1e-2 on unit scale.
- bfloat16: 7 bits of mantissa: 4e-2.
- float64: both sides compute in double; 1e-9.
- whole models (kind "model"): errors compound through depth; scale-relative check.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from ..errors import InputError


@dataclasses.dataclass(frozen=True)
class Tolerance:
    """``|a − r| <= atol + rtol·|r|``; both finite and >= 0 (else :class:`InputError`)."""

    atol: float
    rtol: float

    def __post_init__(self) -> None:
        check_tolerance(self.atol, "atol")
        check_tolerance(self.rtol, "rtol")

    def __str__(self) -> str:
        return f"atol={self.atol:g} rtol={self.rtol:g}"


def check_tolerance(value: Any, label: str = "atol") -> None:
    """Refuse a tolerance that is not a finite number >= 0 before any work (:class:`InputError`,
    CLI exit 2): NaN makes every comparison pass (``x > nan`` is false), Inf accepts any error and
    a negative bound fails identical arrays."""
    if value is None:
        return
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{label} {value!r} is not a number", note=f"use e.g. {label}=1e-4") from None
    if not math.isfinite(x) or x < 0:
        raise InputError(
            f"{label} {value!r} is not a finite number >= 0",
            note="NaN would pass every mismatch, Inf any error, a negative bound even identical values",
        )


def check_statistic(check: Any, label: str = "check") -> None:
    """Refuse a ``check`` value before any work (:class:`InputError`, CLI exit 2); ``label``
    names it in the message (the CLI says ``--check``)."""
    ok = check in ("elementwise", "max", "mean")
    if isinstance(check, str) and check.startswith("quantile:"):
        try:
            q = float(check.split(":", 1)[1])
            ok = 0.0 <= q <= 1.0  # False for NaN too
        except ValueError:
            ok = False
    if not ok:
        raise InputError(
            f"bad {label} {check!r}", note="use elementwise, max, mean or quantile:Q with 0 <= Q <= 1 (CLI: --check)"
        )


def check_usage(check: Any, atol: Any = None, rtol: Any = None) -> None:
    """:func:`check_statistic` and :func:`check_tolerance` for an API entry point's arguments."""
    check_statistic(check)
    check_tolerance(atol, "atol")
    check_tolerance(rtol, "rtol")


#: unit roundoff (half an ulp of 1.0) per float dtype: the error model's ``u``
UNIT_ROUNDOFF = {"float64": 2.0**-53, "float32": 2.0**-24, "float16": 2.0**-11, "bfloat16": 2.0**-8}


TABLE: dict[tuple[str, str, str], Tolerance] = {
    ("float32", "*", "*"): Tolerance(1e-4, 1e-4),
    ("float32", "model", "*"): Tolerance(1e-4, 1e-3),
    ("float32", "*", "cuda"): Tolerance(1e-3, 1e-3),  # TF32 / different reduction trees
    ("float16", "*", "*"): Tolerance(1e-2, 1e-2),
    ("float16", "model", "*"): Tolerance(2e-2, 2e-2),
    ("bfloat16", "*", "*"): Tolerance(4e-2, 4e-2),
    ("float64", "*", "*"): Tolerance(1e-9, 1e-9),
    # integer / bool outputs must match exactly
    ("int64", "*", "*"): Tolerance(0.0, 0.0),
    ("int32", "*", "*"): Tolerance(0.0, 0.0),
    ("bool", "*", "*"): Tolerance(0.0, 0.0),
}


def tolerance(dtype: str, kind: str = "*", provider: str = "*") -> Tolerance:
    """Default tolerance for outputs of ``dtype`` (e.g. "float32") from a ``kind`` on ``provider``."""
    for key in ((dtype, kind, provider), (dtype, kind, "*"), (dtype, "*", provider), (dtype, "*", "*")):
        if key in TABLE:
            return TABLE[key]
    return TABLE[("float32", "*", "*")]


def tolerance_for(dtype: str, kind: str, provider: str, atol: float | None, rtol: float | None) -> Tolerance:
    """The table's tolerance with a caller's ``atol`` / ``rtol`` (each optional) put in its place."""
    t = tolerance(dtype, kind, provider)
    if atol is not None or rtol is not None:
        t = Tolerance(atol if atol is not None else t.atol, rtol if rtol is not None else t.rtol)
    return t
