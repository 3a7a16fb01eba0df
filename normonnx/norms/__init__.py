"""The registry of norm kinds: ``KINDS[name]`` is the kind object of ``normonnx/norms/<name>.py``."""

from __future__ import annotations

from ..errors import SpecError
from ..spec import NormSpec
from . import batch, grn, group, instance, layer, rms
from .base import NormKind, Params

KINDS: dict[str, NormKind] = {m.KIND.name: m.KIND for m in (batch, layer, instance, group, rms, grn)}
BY_OP: dict[str, NormKind] = {k.normonnx_op: k for k in KINDS.values()}


def get_kind(name: str) -> NormKind:
    """The kind registered under ``name``; a :class:`SpecError` lists the valid names otherwise."""
    try:
        return KINDS[name]
    except KeyError:
        raise SpecError(f"unknown norm kind {name!r}", note=f"valid kinds: {', '.join(KINDS)}") from None


def validate(spec: NormSpec) -> NormSpec:
    """Validate ``spec`` against its kind and return it."""
    get_kind(spec.kind).validate(spec)
    return spec


__all__ = ["BY_OP", "KINDS", "NormKind", "Params", "get_kind", "validate"]
