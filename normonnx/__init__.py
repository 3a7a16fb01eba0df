"""normonnx: PyTorch normalization layers to ONNX, optimized, run in onnxruntime, proven equal.

Data flows one way::

    nn.Module ──export──▶ ONNX ──optimize──▶ ONNX ──session──▶ outputs ──verify──▶ report

``import normonnx`` is light: torch and onnxruntime are imported only by the functions that
need them.
"""

from __future__ import annotations

from typing import Any

from .errors import (
    ExportError,
    InputError,
    LoweringError,
    ModelLoadError,
    NormOnnxError,
    OptimizeError,
    OutputError,
    SpecError,
    UnsupportedHere,
)
from .spec import NormSpec

__version__ = "0.1.0"

_LAZY = {
    "export": ("normonnx.exporter", "export"),
    "session": ("normonnx.runtime.session", "session"),
    "verify": ("normonnx.verify", None),  # the package, callable: normonnx.verify.api.verify
    "optimize_model": ("normonnx.optimize", "optimize_model"),
    "select": ("normonnx.lowering", "select"),
    "capability_table": ("normonnx.lowering", "capability_table"),
    "format_capability_table": ("normonnx.lowering", "format_capability_table"),
    "build_model": ("normonnx.lowering", "build_model"),
    "KINDS": ("normonnx.norms", "KINDS"),
    "get_kind": ("normonnx.norms", "get_kind"),
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        mod = importlib.import_module(module)
        return mod if attr is None else getattr(mod, attr)
    raise AttributeError(f"module 'normonnx' has no attribute {name!r}")


__all__ = [
    "ExportError",
    "InputError",
    "LoweringError",
    "ModelLoadError",
    "NormOnnxError",
    "NormSpec",
    "OptimizeError",
    "OutputError",
    "SpecError",
    "UnsupportedHere",
    "__version__",
    *_LAZY,
]
