"""Errors, one class per pipeline stage.

A :class:`NormOnnxError` is a *user* error: the message says what is wrong and how to fix it,
and the CLI prints it without a traceback. Anything else escaping normonnx is an internal bug.
``exit_code`` is what the CLI returns: 2 for usage errors, 3 for "unsupported here".
:func:`from_os_error` turns a disk that is full or read-only into one of these classes;
:func:`normonnx.runtime.explain.load_error` does the same for a file onnxruntime refuses.
"""

from __future__ import annotations

import errno


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


#: the documented CLI exit codes (README "CLI", ``normonnx --help``)
EXIT_OK, EXIT_MISMATCH, EXIT_USAGE, EXIT_UNSUPPORTED, EXIT_INTERNAL = 0, 1, 2, 3, 4


def from_os_error(e: OSError, what: str = "") -> NormOnnxError:
    """An ``OSError`` a user can fix (disk full, read-only, no permission, missing directory)
    as a :class:`NormOnnxError` naming the file; ``what`` says what was being done."""
    where = f"{e.filename}: " if e.filename else ""
    doing = f" while {what}" if what else ""
    notes = {
        errno.ENOSPC: (
            "no space left on the device",
            "free space on that disk or write somewhere else (-o / --json ...)",
        ),
        errno.EDQUOT: ("disk quota exceeded", "free space or write somewhere else"),
        errno.EROFS: ("read-only file system", "write to a writable directory"),
        errno.EACCES: ("permission denied", "write to a directory you can write to"),
        errno.EPERM: ("operation not permitted", "write to a directory you can write to"),
        errno.ENOENT: ("no such file or directory", "create the directory first or fix the path"),
        errno.EISDIR: ("is a directory", "give a file path, e.g. DIR/model.onnx"),
        errno.ENOTDIR: ("a part of the path is not a directory", "fix the path"),
    }
    reason, note = notes.get(e.errno or 0, (e.strerror or type(e).__name__, "check the path and the disk"))
    return OutputError(f"{where}{reason}{doing}", note=note)
