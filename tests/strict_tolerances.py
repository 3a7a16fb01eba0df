"""Bounds some tests hold stricter than normonnx's tolerance table, each with the reason.

The table (``normonnx.verify.tolerance``) is the default for any norm output from any strategy:
float32 gets ``1e-4 + 1e-4·|y|``, headroom for onnxruntime's float32-accumulating kernels over long
reductions. A test that knows more about the computation — statistics kept in float64, a graph
rewrite that must not change what the unfused graph computes, an exact identity — holds the
tighter bound its math gives, so a regression far inside the table's headroom still fails.
Where a test's bound equals the table's, it asks the table instead. ``test_strict_tolerances.py``
checks that every bound here stays stricter than the entry it replaces.
"""

from __future__ import annotations

#: max |y − float64 reference| of normonnx's compiled kernels on unit-scale float32 outputs: their
#: statistics are float64, so only the float32 rounding of x and y remains (≈ 16 ulps at 1.0)
KERNEL_MAX_ABS = 2e-6
#: a compiled kernel or a normonnx function body (both float64 statistics) against the float64
#: reference, element-wise on unit-scale outputs: a few ulps, with 10× room for the affine terms
FLOAT64_STATS_ATOL = 1e-5
#: the fused (residual / modulated) kernels and bodies: one more float32 rounding (the sum or the
#: modulation) than :data:`KERNEL_MAX_ABS`
FUSED_ATOL = 3e-6
#: the generic (scalar) build of a kernel against the default (vector) one: the same float64
#: algorithm, summed in a different order
ISA_ATOL, ISA_RTOL = 2e-6, 1e-6
#: zero variance: y = β (or x/√(x²+ε)·γ for rms) up to one or two float32 roundings
ZERO_VARIANCE_RTOL = 2e-7
#: ... and one more through SiLU (rtol, atol)
ZERO_VARIANCE_SILU = (3e-7, 1e-7)
#: SiLU at |v| up to 1e4: y → v or → −0; the float32 rounding of v itself (relative), or of 0
SILU_LIMITS_TOL = 1e-6

#: an optimizer rewrite on a small unit-scale test graph against float64 torch: the fused op keeps
#: float64 statistics (decomposed/function) or runs onnxruntime's kernel on ≤ 4096 elements, so the
#: result is as close to float64 as the unfused graph was; the table's bound would let a rewrite
#: ten times worse than that pass
REWRITE_ATOL = 1e-5
#: the same with one more float32 rounding (a folded parameter norm's weight, or a rank-3 group
#: norm's reshape round trip)
REWRITE_FOLDED_ATOL = 2e-5
REWRITE_RANK3_ATOL = 5e-5

#: everything here with the table entry it is stricter than: (name, value, dtype, atol or rtol)
STRICTER_THAN = [
    ("KERNEL_MAX_ABS", KERNEL_MAX_ABS, "float32", "atol"),
    ("FLOAT64_STATS_ATOL", FLOAT64_STATS_ATOL, "float32", "atol"),
    ("FUSED_ATOL", FUSED_ATOL, "float32", "atol"),
    ("ISA_ATOL", ISA_ATOL, "float32", "atol"),
    ("ISA_RTOL", ISA_RTOL, "float32", "rtol"),
    ("ZERO_VARIANCE_RTOL", ZERO_VARIANCE_RTOL, "float32", "rtol"),
    ("ZERO_VARIANCE_SILU rtol", ZERO_VARIANCE_SILU[0], "float32", "rtol"),
    ("ZERO_VARIANCE_SILU atol", ZERO_VARIANCE_SILU[1], "float32", "atol"),
    ("SILU_LIMITS_TOL", SILU_LIMITS_TOL, "float32", "atol"),
    ("REWRITE_ATOL", REWRITE_ATOL, "float32", "atol"),
    ("REWRITE_FOLDED_ATOL", REWRITE_FOLDED_ATOL, "float32", "atol"),
    ("REWRITE_RANK3_ATOL", REWRITE_RANK3_ATOL, "float32", "atol"),
]
