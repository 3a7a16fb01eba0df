"""Native-kernel lowering: a ``normonnx.kernels``-domain op that normonnx's compiled CPU library runs.

The node is the function strategy's node (same op type, inputs, attributes, ``overload =
spec.key()``) in the domain :data:`normonnx.kernels.DOMAIN`, and the model carries a model-local
``FunctionProto`` of that (domain, op, overload) whose body is the stable decomposition. So the
model stays portable:

- onnxruntime without the library (or any other runtime) inlines the body: the same numbers as
  the ``function`` strategy;
- onnxruntime with the library registered (``normonnx.session`` does it) runs the float32 kernel,
  which wins over the model-local function (checked via the profiler in ``tests/test_kernels.py``).

Statistics in the kernel are one read of the input, accumulated in float64 from a shift, and the
output is ``((x − μ_hi) − μ_lo)·(γ/σ) + β`` (see ``normonnx/kernels/src/norm_math.h``).

Valid for float32 on CPU, and only when :func:`normonnx.kernels.available` says the library is
built and usable here; other dtypes are lowered by the other strategies (the library's domain
is separate from ``normonnx`` precisely so that their nodes keep running their bodies). The
kinds it claims are exactly those whose op the loaded library reports it registers
(:func:`normonnx.kernels.registered_ops`), never a list of our own: a kind without a C kernel
gets no kernel strategy, and without the library no kind has one.
"""

from __future__ import annotations

from collections.abc import Mapping

import onnx

from .. import kernels
from ..norms import KINDS
from ..rejection import CheckResult, Rejection
from ..spec import NormSpec
from .base import MIN_OPSET, Capability, Strategy
from .builder import Builder
from .decomposed import STRATEGY as DECOMPOSED
from .function import build_node, make_function

DOMAIN = kernels.DOMAIN
_CAP = Capability(
    MIN_OPSET,
    {"cpu": frozenset({"float32"}), "cuda": frozenset()},
    True,
    "compiled float32 CPU kernel, float64 statistics (needs the built library); carries the function body",
)


class NativeKernel(Strategy):
    name = "native_kernel"
    description = "normonnx.kernels-domain op run by normonnx's compiled CPU kernels (function body as fallback)"
    builds_fused_forms = True  # the kernels take the residual input / modulation (ABI 2)

    @property
    def capabilities(self) -> dict[str, Capability]:  # type: ignore[override]
        """Exactly the kinds the loaded library registers an op for (none without the library),
        that also have the decomposition the node carries as its body."""
        ops = kernels.registered_ops()
        return {k: _CAP for k, kind in KINDS.items() if kind.normonnx_op in ops and kind.decompose is not None}

    def check(self, spec: NormSpec, opset: int, provider: str = "cpu", *, allow_unstable: bool = False) -> CheckResult:
        # a kind the loaded library has no kernel for, then what the strategy never does (float32
        # CPU only), then a missing library: the first of these is the reason
        if kernels.available() and spec.kind in KINDS and spec.kind not in self.capabilities:
            op, ops = KINDS[spec.kind].normonnx_op, ", ".join(sorted(kernels.registered_ops()))
            return Rejection(f"the native kernel library registers no {op} kernel (it has: {ops})")
        allowed = _CAP.dtypes.get(provider, frozenset())
        if spec.dtype not in allowed:
            return Rejection(
                f"{spec.dtype} not supported on {provider} (supported: {', '.join(sorted(allowed)) or 'none'})"
            )
        if not kernels.available():
            return Rejection(f"the native kernel library is not available: {kernels.unavailable_reason()}")
        return super().check(spec, opset, provider, allow_unstable=allow_unstable)

    def check_spec(self, spec: NormSpec, opset: int, provider: str) -> CheckResult:
        return DECOMPOSED.check_spec(spec, opset, provider)  # the carried body is the decomposition

    def build(self, b: Builder, spec: NormSpec, x: str, params: Mapping[str, str]) -> str:
        return build_node(b, spec, x, params, DOMAIN)

    def functions(self, spec: NormSpec, opset: int) -> list[onnx.FunctionProto]:
        fn = make_function(spec, opset)
        fn.domain = DOMAIN
        return [fn]

    def extra_opsets(self) -> dict[str, int]:
        return {DOMAIN: kernels.DOMAIN_VERSION}


STRATEGY = NativeKernel()
