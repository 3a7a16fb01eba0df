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


@dataclasses.dataclass(frozen=True)
class Tolerance:
    atol: float
    rtol: float

    def __str__(self) -> str:
        return f"atol={self.atol:g} rtol={self.rtol:g}"


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
