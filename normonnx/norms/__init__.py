"""The registry of norm kinds: ``KINDS[name]`` is the kind object of ``normonnx/norms/<name>.py``.

A new kind is one file defining a :class:`NormKind` singleton, registered with :func:`register`
(the built-in ones below; a kind outside the package calls ``register(KIND)`` itself).
Everything else (strategies, export, stress, bench, doctor, the test tables) reads ``KINDS``
and asks the kind, so it sees the new kind from then on.
"""

from __future__ import annotations

from ..errors import SpecError
from ..spec import NormSpec
from . import batch, grn, group, instance, layer, rms
from .base import NativeOp, NormKind, Params

KINDS: dict[str, NormKind] = {}
#: normonnx-domain op type → kind
BY_OP: dict[str, NormKind] = {}


def register(kind: NormKind) -> NormKind:
    """Add ``kind`` to the registry (its name and op type must be new); returns it."""
    if kind.name in KINDS or kind.normonnx_op in BY_OP:
        raise ValueError(f"norm kind {kind.name!r} (op {kind.normonnx_op}) is already registered")
    KINDS[kind.name] = kind
    BY_OP[kind.normonnx_op] = kind
    return kind


def unregister(name: str) -> None:
    """Remove the kind registered under ``name`` (tests registering a kind of their own)."""
    kind = KINDS.pop(name)
    del BY_OP[kind.normonnx_op]


for _m in (batch, layer, instance, group, rms, grn):
    register(_m.KIND)


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


__all__ = ["BY_OP", "KINDS", "NativeOp", "NormKind", "Params", "get_kind", "register", "unregister", "validate"]
