"""What a lowering strategy is: capabilities as data, a check that explains, a graph builder.

A strategy turns one :class:`~normonnx.spec.NormSpec` into ONNX nodes. Which (kind, opset, dtype,
provider) it can serve is declared in ``capabilities`` next to the code, so the selector and the
printed capability table read the same facts the builder relies on.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import onnx

from ..dtypes import FLOATS
from ..providers import NAMES as PROVIDERS
from ..rejection import OK, CheckResult, Rejection
from ..spec import NormSpec
from .builder import Builder

ALL_DTYPES = frozenset(FLOATS)
#: lowest opset normonnx emits: ReduceMean/Slice/Reshape forms used by the decompositions.
MIN_OPSET = 13


@dataclasses.dataclass(frozen=True)
class Capability:
    """What a strategy supports for one kind.

    min_opset: lowest default-domain opset at which the emitted ops have the needed semantics.
    dtypes:    per provider, the element types onnxruntime runs (kernels or inserted casts).
    stable:    accurate on stress inputs (offset 1e3, zero variance, 1M-element groups) to within
               2× torch-fp32's own error vs float64; measured by ``tests/test_stress.py``.
    stable_up_to: when set, the strategy is stable only while the elements per normalised group
               are known and at most this many (onnxruntime kernels that accumulate in fp32).
    note:      the fact behind the entry, printed in the capability table.
    """

    min_opset: int
    dtypes: Mapping[str, frozenset[str]]
    stable: bool = True
    note: str = ""
    stable_up_to: int | None = None


def same_dtypes(dtypes: frozenset[str] | set[str]) -> dict[str, frozenset[str]]:
    return {p: frozenset(dtypes) for p in PROVIDERS}


class Strategy:
    """Base class; subclasses set ``name``, ``capabilities`` and implement ``build``."""

    name: str = ""
    description: str = ""
    capabilities: Mapping[str, Capability] = {}
    #: ``build`` computes a spec's fused forms (residual input, modulation) itself; otherwise
    #: :meth:`lower` builds the plain norm between the ops those forms stand for
    builds_fused_forms: bool = False

    def check(self, spec: NormSpec, opset: int, provider: str = "cpu", *, allow_unstable: bool = False) -> CheckResult:
        """Can this strategy lower ``spec`` at ``opset`` for ``provider``? Never raises."""
        cap = self.capability(spec)
        if cap is None:
            return Rejection(f"{self.name} has no lowering for {spec.kind} norm")
        if opset < cap.min_opset:
            return Rejection(f"needs opset >= {cap.min_opset} ({cap.note or self.name}), got {opset}")
        allowed = cap.dtypes.get(provider, frozenset())
        if spec.dtype not in allowed:
            return Rejection(
                f"{spec.dtype} not supported on {provider} (supported: {', '.join(sorted(allowed)) or 'none'})"
            )
        why = self.check_spec(spec, opset, provider)
        if not why:
            return why
        if not allow_unstable:
            if not cap.stable:
                return Rejection(f"numerically unstable: {cap.note}")
            if cap.stable_up_to is not None:
                n = spec.reduction_size
                if n is None or n > cap.stable_up_to:
                    size = "unknown" if n is None else str(n)
                    return Rejection(
                        f"accurate only up to {cap.stable_up_to} elements per normalised group, this one has {size} ({cap.note})",
                    )
        return OK

    def check_spec(self, spec: NormSpec, opset: int, provider: str) -> CheckResult:
        """Spec-specific restrictions beyond the capability table (override)."""
        return OK

    def capability(self, spec: NormSpec) -> Capability | None:
        """The capability entry governing ``spec`` (by kind; a strategy may refine it)."""
        return self.capabilities.get(spec.kind)

    def build(self, b: Builder, spec: NormSpec, x: str, params: Mapping[str, str]) -> str:
        """Append the nodes computing the norm of ``x`` to ``b``; return the output value name.

        ``params`` maps "weight"/"bias"/"mean"/"var" to value names (absent when the spec has none).
        Parameters have the spec's dtype.
        """
        raise NotImplementedError

    def lower(self, b: Builder, spec: NormSpec, x: str, params: Mapping[str, str]) -> str:
        """:meth:`build` for any spec: a strategy that has no fused residual / modulation form gets
        the plain norm wrapped in ``Add(x, residual)`` before and ``·(1 + scale) + shift`` after,
        exactly the graph the fusion replaced (the sum in ``b.named["sum"]``)."""
        if self.builds_fused_forms or not (spec.residual or spec.modulation):
            return self.build(b, spec, x, params)
        from .fused import modulate, residual_sum

        plain = {k: v for k, v in params.items() if k not in ("residual", "scale", "shift", "gate")}
        y = self.build(b, spec.replace(residual=False, modulation=False), residual_sum(b, spec, x, params), plain)
        return modulate(b, spec, y, params)

    def functions(self, spec: NormSpec, opset: int) -> list[onnx.FunctionProto]:
        """Model-local functions the built nodes need (only the function strategy has any)."""
        return []

    def extra_opsets(self) -> dict[str, int]:
        """Non-default domains the built nodes use, with their versions."""
        return {}
