"""Errors, one class per pipeline stage.

A :class:`NormOnnxError` is a *user* error: the message says what is wrong and how to fix it,
and the CLI prints it without a traceback. Anything else escaping normonnx is an internal bug.
``exit_code`` is what the CLI returns: 2 for usage errors, 3 for "unsupported here".
"""

from __future__ import annotations


class NormOnnxError(Exception):
    """A problem with the user's input or environment, explained with its fix."""

    exit_code = 2
    stage = "normonnx"

    def __init__(self, message: str, *, note: str | None = None) -> None:
        self.message = message
        self.note = note
        super().__init__(message if note is None else f"{message}\nNote: {note}")


class SpecError(NormOnnxError):
    """A norm spec that is malformed (groups not dividing C, bad axis, unknown kind...)."""

    stage = "spec"


class LoweringError(NormOnnxError):
    """No strategy can lower this spec for the requested opset / dtype / provider."""

    stage = "lowering"


class ExportError(NormOnnxError):
    """The torch model cannot be exported as asked (training mode, wrong inputs, ...)."""

    stage = "export"


class ModelLoadError(NormOnnxError):
    """An ONNX file or model spec cannot be read (missing, truncated, not ONNX...)."""

    stage = "load"


class UnsupportedHere(NormOnnxError):
    """Valid request that this machine cannot serve (CUDA without a GPU, too-new opset...)."""

    exit_code = 3
    stage = "runtime"


class InputError(NormOnnxError):
    """Inputs that do not fit the model (shape, dtype, NaN/Inf where not allowed)."""

    stage = "inputs"


class OptimizeError(NormOnnxError):
    """An optimization request that cannot be honoured."""

    stage = "optimize"


class OutputError(NormOnnxError):
    """An output or report path that cannot be written (directory, missing, read-only, disk full, an input)."""

    stage = "output"
