"""A torch model's outputs as a flat list: the one flattener of verify, localize, stress and bench.

Nested tuples, lists and mappings (a Hugging Face ``ModelOutput`` is a mapping) are walked depth
first in order, as torch's exporter flattens them into ONNX graph outputs. torch is imported only
when called.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def flatten(obj: Any, *, strict: bool = False) -> list[Any]:
    """The tensors of ``obj`` in output order. Other leaves (None, ints) are skipped, as the
    exporter drops them — or, with ``strict``, a ``TypeError`` naming the type."""
    import torch

    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, Mapping):
        return [t for v in obj.values() for t in flatten(v, strict=strict)]
    if isinstance(obj, (list, tuple)):
        return [t for v in obj for t in flatten(v, strict=strict)]
    if strict:
        raise TypeError(f"unsupported model output type {type(obj).__name__}")
    return []


__all__ = ["flatten"]
