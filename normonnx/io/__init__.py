"""Reading and writing ONNX files: clear errors for bad files, writes that never lose the old file.

Every write (:func:`save` for models, :func:`write_bytes` for reports) follows one protocol, so a
crash, ``kill -9``, a full disk or Ctrl-C at any moment leaves either the previous file (with its
data file) or the new one -- never a half-written file, never the old model reading new data:

1. the new bytes go to temporary files beside the target, ``.NAME.<pid>-<token>.tmp`` (model) and
   ``.NAME.<pid>-<token>.data.tmp`` (external data), and are flushed to disk;
2. external data is renamed to ``NAME.<token>.data``, a name unique to this write that only the
   new model references (the old model keeps reading its own, untouched data file);
3. the model is renamed over ``NAME``: **the commit point**;
4. only then is the previous model's data file removed, if normonnx named it (``NAME.data`` or
   ``NAME.<token>.data``); data files named by other tools are left alone.

What a killed run leaves behind (its temp files, a renamed data file no model references) is
swept by the next write to the same target: only files matching the names above, older than that
write, whose writing process has gone. Copy a model together with the data file it names.

Paths (:func:`check_output_path`, called by :func:`save` and by ``exporter.export`` before any
work): the directory must exist and be writable, the path must not be a directory, a
write-protected file or one of the inputs. A symlink at the path is written *through* (the link
stays and its target gets the new model, as with ``cp`` or shell redirection); with external data
only when the target sits in the link's directory, because readers look for the data beside the
path they open. A new file's mode is 0666 minus the umask, as for any file the user creates; an
overwrite keeps the old file's mode (and owner and group where the OS allows).

Models over the 2 GB protobuf limit are written with external data (or when asked). A model whose
weights are already external references (:mod:`normonnx.external`: a large export or optimize)
is written without ever holding its weights in one proto: references into the write's own
:class:`Stage` file are adopted (that file becomes the data file), other references are copied in
chunks, and an inline file is streamed tensor by tensor.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable

import onnx

from ..errors import ModelLoadError, OutputError
from ._scan import _load_scanned
from ._write import _STEPS as _STEPS  # the write's steps, named by the fault suite
from ._write import _locations, _read_only_fs, _Write, _write_error

#: the largest model written as one inline file (headroom below protobuf's 2 GiB)
PROTO_LIMIT = 2**31 - 2**20


def load(path: str | os.PathLike[str], *, load_external: bool = True) -> onnx.ModelProto:
    """Load an ONNX model; a missing, empty, truncated or non-ONNX file raises ModelLoadError."""
    p = os.fspath(path)
    if not os.path.exists(p):
        raise ModelLoadError(f"no such ONNX file: {p}", note="check the path")
    if os.path.isdir(p):
        raise ModelLoadError(f"{p} is a directory, not an ONNX file")
    if os.path.getsize(p) == 0:
        raise ModelLoadError(f"{p} is empty", note="re-export the model")
    try:
        model = onnx.load(p, load_external_data=load_external)
    except Exception as e:
        missing = _missing_data_files(p) if load_external else []
        if missing:
            raise ModelLoadError(
                f"{p} names the external data file {missing[0]}, which is missing",
                note="copy the model together with the data file it names (same directory)",
            ) from None
        raise ModelLoadError(
            f"{p} is not a readable ONNX model (truncated or corrupt?): {str(e).splitlines()[0] if str(e) else type(e).__name__}",
            note="re-export the model; normonnx writes files atomically, so a partial file comes from elsewhere",
        ) from None
    if not model.graph.node and not model.graph.output:
        raise ModelLoadError(
            f"{p} parsed but holds no graph (truncated or not an ONNX model?)", note="re-export the model"
        )
    return model


#: an inline file at least this large is read by :func:`load_lazy` as references into itself
LAZY_MIN = 256 << 20


def load_lazy(path: str | os.PathLike[str]) -> onnx.ModelProto:
    """The model at ``path`` for the passes, at any size: weights above
    :data:`normonnx.external.INLINE_MAX` bytes as external references, smaller tensors inline.

    With external data, the references are the file's own (small tensors are read inline, so a
    rule reading eps never opens the data file, and onnx_ir never maps the whole file once per
    tensor). An inline file of :data:`LAZY_MIN` bytes or more is scanned, not parsed whole: each
    large initializer becomes a reference to its ``raw_data`` bytes *inside the .onnx file*
    (location = the file itself, offset and length of the field), which onnxruntime, onnx's
    checker and :func:`normonnx.external.array` read like any data file. Resolve the references
    with ``normonnx.external.reading(os.path.dirname(path))``."""
    from .. import external

    p = os.fspath(path)
    if os.path.isfile(p) and os.path.getsize(p) >= LAZY_MIN:
        try:
            model = _load_scanned(p)
        except ValueError:  # not the protobuf layout we scan (or corrupt): the parser says which
            model = None
        if model is not None:
            return model
    model = load(p, load_external=False)
    if external.has_external(model):
        missing = _missing_data_files(p)
        if missing:  # worded as onnxruntime's load of such a file is explained (runtime/explain.py)
            raise ModelLoadError(
                f"{p}: its external data file {missing[0]} is missing",
                note="a model saved with external data is a pair: copy or move the .onnx file and its data file "
                "together (the data file's name is recorded in the model)",
            )
        with external.reading(os.path.dirname(os.path.abspath(p))):
            for t in model.graph.initializer:
                if external.is_external(t):
                    length = external.info(t)[2]
                    if length is not None and length <= external.INLINE_MAX:
                        data = bytes(external.buffer(t))
                        del t.external_data[:]
                        t.data_location = onnx.TensorProto.DEFAULT
                        t.raw_data = data
    return model


def external_data_files(path: str | os.PathLike[str]) -> list[str]:
    """The external data files the model at ``path`` names, as paths beside it (sorted, unique)."""
    p = os.fspath(path)
    model = onnx.load(p, load_external_data=False)
    return sorted({os.path.join(os.path.dirname(p), loc) for loc in _locations(model)})


def check_output_path(
    path: str | os.PathLike[str], *, inputs: Iterable[str | os.PathLike[str] | None] = (), what: str = "output"
) -> str:
    """Refuse, before any work, a path that cannot take the result; return the file to write.

    Raises :class:`~normonnx.errors.OutputError` when ``path`` is a directory, its directory is
    missing, read-only or not writable, it is a write-protected file, or it is the same file
    (``os.path.samefile``: also through symlinks and hard links) as one of ``inputs``. Pass as
    ``inputs`` the files that must survive the run (model sources, ``.pt2`` archives, ``--input``
    arrays). Replacing the input model is a legitimate in-place overwrite for ``optimize IN -o
    IN`` (the model is read into memory first and the write is atomic), so that caller leaves it
    out. The returned path is the symlink-resolved target the write goes to.
    """
    shown = os.fspath(path)
    if not shown:
        raise OutputError(f"empty {what} path", note="give a file path")
    real = os.path.realpath(shown)
    directory = os.path.dirname(real)
    if os.path.isdir(real):
        raise OutputError(
            f"{what} path {shown} is a directory",
            note=f"give a file path inside it, e.g. {os.path.join(shown, 'NAME')}",
        )
    if not os.path.exists(directory):
        raise OutputError(
            f"cannot write {shown}: the directory {directory} does not exist",
            note=f"create it first (mkdir -p {directory}) or choose another path",
        )
    if not os.path.isdir(directory):
        raise OutputError(f"cannot write {shown}: {directory} is not a directory", note="choose another path")
    if not os.access(directory, os.W_OK | os.X_OK):
        if _read_only_fs(directory):
            raise OutputError(
                f"cannot write {shown}: {directory} is on a read-only file system",
                note="choose a path on a writable file system",
            )
        raise OutputError(
            f"cannot write {shown}: no write permission in {directory}",
            note="choose a directory you can write to",
        )
    if os.path.exists(real) and not os.access(real, os.W_OK):
        raise OutputError(
            f"{shown} is write-protected", note="make it writable (chmod u+w), remove it, or choose another path"
        )
    for inp in inputs:
        if inp is None:
            continue
        i = os.fspath(inp)
        with contextlib.suppress(OSError):
            if os.path.exists(real) and os.path.samefile(real, i):
                raise OutputError(
                    f"{what} path {shown} is the input file {i}; writing it would destroy the input",
                    note="choose a different output path",
                )
    return real


def check_report_path(
    path: str | os.PathLike[str] | None, *, inputs: Iterable[str | os.PathLike[str] | None] = ()
) -> None:
    """:func:`check_output_path` for a report file (--json, --junit, --html, --markdown).

    ``None`` (option not given) and ``"-"`` (stdout) pass.
    """
    if path is None or os.fspath(path) == "-":
        return
    check_output_path(path, inputs=inputs, what="report")


def save(
    model: onnx.ModelProto,
    path: str | os.PathLike[str],
    *,
    external_data: bool | None = None,
    stage: Stage | None = None,
) -> str:
    """Write ``model`` to ``path`` by the protocol above; external data when over 2 GB (or when asked).

    ``model`` may hold external references (resolved against :func:`normonnx.external.base_dir`);
    ``stage`` is the :class:`Stage` opened for this write, whose file those references may name.
    Returns ``path``. Raises :class:`~normonnx.errors.OutputError` for a path that cannot be
    written and for a full disk or read-only file system met while writing; the previous file
    (pair) is then untouched and no temp file is left.
    """
    from .. import external

    p = os.fspath(path)
    size = model.ByteSize() + (external.weight_bytes(model) if external.has_external(model) else 0)
    if external_data is None:
        external_data = size > PROTO_LIMIT
    elif not external_data and size > PROTO_LIMIT:
        raise OutputError(
            f"{p}: a {size / 2**30:.1f} GiB model does not fit in one ONNX file (protobuf's 2 GiB limit)",
            note="write it with external data (the default above 2 GiB)",
        )
    if stage is not None:
        if os.path.realpath(p) != stage.write.real:
            raise ValueError(f"the stage was opened for {stage.write.shown}, not {p}")
        w = stage.write
    else:
        real = check_output_path(p)
        if external_data:
            _check_link(p, real)
        w = _Write(p, real)
    try:
        w.run(model, external_data, stage)
    finally:
        if stage is not None:
            stage.committed = True  # the write either committed or cleaned up after itself
            if stage.memory is not None:
                stage.memory.clear()
    return p


def _check_link(shown: str, real: str) -> None:
    if os.path.dirname(real) != os.path.dirname(os.path.abspath(shown)):
        raise OutputError(
            f"{shown} is a symlink to {real} in another directory; its external data could not be found through the link",
            note=f"write to {real} directly, or link from its directory",
        )


class Stage:
    """The data file of one coming :func:`save` to ``path``, opened before the model is complete.

    A large export writes its weights here straight from torch's exporter
    (:meth:`unload`), and its passes read them back through the references; :func:`save` with
    ``stage=`` then renames this file to the data file (or streams it into an inline model and
    removes it). It is a temp file of the write protocol (``.NAME.<pid>-<token>.data.tmp``), so a
    killed run's stage is swept like any other temp; :meth:`discard` (also on leaving a ``with``
    block without saving) removes it.

    ``memory=True`` (a model that will be written inline): the file stays empty and the weights
    stay in :attr:`memory` behind the same references (:mod:`normonnx.external`), so that they
    reach the disk once, in the final write, instead of twice.
    """

    def __init__(self, path: str | os.PathLike[str], *, memory: bool = False) -> None:
        shown = os.fspath(path)
        real = check_output_path(shown)
        _check_link(shown, real)
        self.write = _Write(shown, real)
        self.file = os.fdopen(self.write._open_temp(".data.tmp"), "wb")
        self.path = self.write.created[0]
        self.location = os.path.basename(self.path)
        self.directory = self.write.dir
        self.committed = False
        #: the in-memory tensors by offset (None: they are in the file)
        self.memory: dict[int, object] | None = {} if memory else None

    def reading(self) -> contextlib.AbstractContextManager[None]:
        """:func:`normonnx.external.reading` of this stage's references (its directory and memory)."""
        from .. import external

        return external.reading(self.directory, None if self.memory is None else {self.location: self.memory})

    def unload(self, model: object) -> int:
        """Move an onnx_ir model's large initializers into this file (see :func:`normonnx.external.unload`)."""
        from .. import external

        try:
            return external.unload(model, self.file, self.location, self.directory, self.memory)
        except OSError as e:
            self.discard()
            err = _write_error(e, self.write.shown, self.write.old is not None)
            if err is e:
                raise
            raise err from e

    def check(self, model: onnx.ModelProto, check: Callable[[str], None]) -> None:
        """Run ``check(path)`` on ``model`` (references into this stage) written to a temp file
        beside the stage, so that onnx's checker finds the data file without reading it (a file
        of references is small; checking the final inline file would parse every weight)."""
        self.file.flush()
        name = os.path.join(self.directory, f".{self.write.base}.{self.write.pid}-{self.write.token}.tmp")
        try:
            with open(name, "xb") as f:
                f.write(model.SerializeToString())
            check(name)
        finally:
            with contextlib.suppress(OSError):
                os.unlink(name)

    def reset(self) -> None:
        """Empty the file (a second capture replaces the first one's weights)."""
        self.file.seek(0)
        self.file.truncate()
        if self.memory is not None:
            self.memory.clear()

    def discard(self) -> None:
        if self.committed:
            return
        self.committed = True
        with contextlib.suppress(OSError):
            self.file.close()
        with contextlib.suppress(OSError):
            os.unlink(self.path)

    def __enter__(self) -> Stage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.discard()


def write_bytes(path: str | os.PathLike[str], data: bytes | str) -> str:
    """Write ``data`` (str as UTF-8) to ``path`` with the same guarantees as :func:`save`."""
    p = os.fspath(path)
    real = check_output_path(p, what="report")
    _Write(p, real).run(data.encode("utf-8") if isinstance(data, str) else data, False)
    return p


def _missing_data_files(path: str) -> list[str]:
    try:
        model = onnx.load(path, load_external_data=False)
    except Exception:
        return []
    d = os.path.dirname(path)
    return sorted({loc for loc in _locations(model) if not os.path.exists(os.path.join(d, loc))})
