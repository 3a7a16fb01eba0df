"""Errors, one class per pipeline stage.

A :class:`NormOnnxError` is a *user* error: the message says what is wrong and how to fix it,
and the CLI prints it without a traceback. Anything else escaping normonnx is an internal bug.
``exit_code`` is what the CLI returns: 2 for usage errors, 3 for "unsupported here".
:func:`from_onnxruntime_load` and :func:`from_os_error` turn the two foreign failures a user
can cause (a file onnxruntime refuses, a disk that is full or read-only) into these classes.
"""

from __future__ import annotations

import errno
import os
import re


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


class OutputPathError(NormOnnxError):
    """An output or report path that cannot be written (a directory, missing or read-only
    parent, the same file as an input); checked before any work."""

    stage = "output"


class OptimizeError(NormOnnxError):
    """An optimization request that cannot be honoured."""

    stage = "optimize"


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
    return OutputPathError(f"{where}{reason}{doing}", note=note)


_UNREGISTERED = re.compile(r"(?:Fatal error: )?([\w.]*):(\w+)\((-?\d+)\) is not a registered function/op")
_NO_DOMAIN = re.compile(r"No opset import for domain '?([\w.]+)'?")
_NO_KERNEL = re.compile(r"Could not find an implementation for (\w+)\((\d+)\) node with name '([^']*)'")
_NO_EXTERNAL = re.compile(r'External data path does not exist: "?([^"\n]+)"?')


def from_onnxruntime_load(e: BaseException, label: str) -> NormOnnxError:
    """Explain why onnxruntime refused to create a session for ``label`` (a path or a name).

    - an op onnxruntime does not know (custom domain, no library registered) → the file is
      valid ONNX but this runtime lacks the op: :class:`ModelLoadError` naming the op;
    - an op with no kernel for its dtype on this provider (float64 ``Conv`` on CPU) →
      :class:`UnsupportedHere` (exit 3): the model is fine, this runtime cannot run it;
    - a missing external-data file → :class:`ModelLoadError` naming the file;
    - protobuf parse failures → "truncated or corrupt"; anything else keeps onnxruntime's text.
    """
    text = str(e)
    first = text.splitlines()[0] if text else type(e).__name__
    m = _UNREGISTERED.search(text)
    if m:
        domain, op = m.group(1) or "ai.onnx", m.group(2)
        return ModelLoadError(
            f"{label} is valid ONNX but uses op {domain}:{op}, which this onnxruntime does not implement",
            note=f"register the custom-op library that provides domain {domain!r} "
            "(SessionOptions.register_custom_ops_library) or export the model without that op",
        )
    m = _NO_KERNEL.search(text)
    if m:
        op, since, node = m.groups()
        return UnsupportedHere(
            f"onnxruntime here has no kernel for {op} (since opset {since}, node {node!r}) with this model's types",
            note="onnxruntime's CPU provider runs most ops in float32 only (float64 Conv, for instance, has no "
            "kernel): export the model in float32 (model.float()) or run it where that kernel exists",
        )
    m = _NO_EXTERNAL.search(text)
    if m:
        missing = m.group(1)
        return ModelLoadError(
            f"{label} refers to external data {missing}, which does not exist",
            note=f"copy {os.path.basename(missing)} next to the model (it travels with the .onnx file) or re-export",
        )
    if "INVALID_PROTOBUF" in text or "Protobuf parsing failed" in text:
        return ModelLoadError(
            f"{label} is not a readable ONNX model (truncated or corrupt?): {first}",
            note="re-export the model; normonnx writes files atomically, so a partial file comes from elsewhere",
        )
    return ModelLoadError(f"onnxruntime could not load {label}: {first}")
