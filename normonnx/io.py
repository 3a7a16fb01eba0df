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
import errno
import os
import re
import secrets
import signal
import stat
import time
from collections.abc import Callable, Iterable, Iterator

import onnx

from .errors import ModelLoadError, OutputError

#: the largest model written as one inline file (headroom below protobuf's 2 GiB)
PROTO_LIMIT = 2**31 - 2**20

# Test hook for the fault-injection suite (tests/test_io_faults.py): when this environment
# variable names a step of a write (see _STEPS), the process SIGKILLs itself right after it.
_KILL_ENV = "NORMONNX_TEST_KILL_AT"
_STEPS = ("data_partial", "data_written", "model_partial", "model_written", "data_renamed", "model_renamed", "done")

# temp names after the ".NAME." prefix: ours (<pid>-<token>) and those of earlier versions
# (tempfile.mkstemp's 8 characters, their data file "<tmp>.data")
_TEMP_TAIL = re.compile(r"(?:(?P<pid>\d+)-[0-9a-f]{8}|[a-z0-9_]{8})(?:\.data)?\.tmp(?:\.data)?")


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
    from . import external

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


def _fields(buf: memoryview, start: int, end: int) -> Iterator[tuple[int, int, int, int]]:
    """(field number, wire type, start of the field's tag, start of its payload) of the protobuf
    message ``buf[start:end]``, and the payload's end as the next field's tag start."""
    pos = start
    while pos < end:
        tag_at = pos
        tag, pos = _read_varint(buf, pos)
        field, wire = tag >> 3, tag & 7
        if wire == 2:
            n, pos = _read_varint(buf, pos)
            yield field, wire, tag_at, pos
            pos += n
        elif wire == 0:
            _, pos2 = _read_varint(buf, pos)
            yield field, wire, tag_at, pos
            pos = pos2
        elif wire in (1, 5):
            yield field, wire, tag_at, pos
            pos += 8 if wire == 1 else 4
        else:
            raise ValueError(f"protobuf wire type {wire} at byte {tag_at}")
        if pos > end:
            raise ValueError(f"field {field} at byte {tag_at} runs past its message")


def _read_varint(buf: memoryview, pos: int) -> tuple[int, int]:
    out = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise ValueError(f"truncated varint at byte {pos}")
        b = buf[pos]
        out |= (b & 0x7F) << shift
        pos += 1
        if not b & 0x80:
            return out, pos
        shift += 7


def _load_scanned(p: str) -> onnx.ModelProto | None:
    """:func:`load_lazy` of a large inline file (None: its graph has no large raw_data tensor)."""
    import mmap

    from . import external

    location = os.path.basename(p)
    with open(p, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        buf = memoryview(mm)
        try:
            rest, graph_rest, inits = bytearray(), bytearray(), []
            ends = _ends(buf, 0, len(buf))
            for (field, _, tag_at, body), end in ends:
                if field != 7:  # ModelProto.graph
                    rest += buf[tag_at:end]
                    continue
                for (gf, _, gtag, gbody), gend in _ends(buf, body, end):
                    if gf != 5:  # GraphProto.initializer
                        graph_rest += buf[gtag:gend]
                        continue
                    t_rest, raw = bytearray(), None
                    for (tf, _, ttag, tbody), tend in _ends(buf, gbody, gend):
                        if tf == 9 and tend - tbody > external.INLINE_MAX:  # TensorProto.raw_data
                            raw = (tbody, tend - tbody)
                        else:
                            t_rest += buf[ttag:tend]
                    inits.append((bytes(t_rest), raw))
            if not any(raw for _, raw in inits):
                return None
            model = onnx.ModelProto.FromString(bytes(rest))
            model.graph.ParseFromString(bytes(graph_rest))
            for data, raw in inits:
                t = model.graph.initializer.add()
                t.ParseFromString(data)
                if raw is not None:
                    _set_external(t, location, raw[0], raw[1])
        finally:
            buf.release()
    if not model.graph.node and not model.graph.output:
        raise ValueError("no graph")
    return model


def _ends(buf: memoryview, start: int, end: int) -> list[tuple[tuple[int, int, int, int], int]]:
    """The fields of ``buf[start:end]``, each with the end of its payload."""
    fields = list(_fields(buf, start, end))
    return [(f, (fields[i + 1][2] if i + 1 < len(fields) else end)) for i, f in enumerate(fields)]


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
    from . import external

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
        from . import external

        return external.reading(self.directory, None if self.memory is None else {self.location: self.memory})

    def unload(self, model: object) -> int:
        """Move an onnx_ir model's large initializers into this file (see :func:`normonnx.external.unload`)."""
        from . import external

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


class _Write:
    """One write to one target: temp files, renames, commit, sweep, cleanup on failure."""

    def __init__(self, shown: str, real: str) -> None:
        self.shown, self.real = shown, real
        self.dir, self.base = os.path.split(real)
        self.start = time.time()
        self.old = _stat(real)
        self.pid = os.getpid()
        self.token = secrets.token_hex(4)
        while os.path.lexists(self._data_path()):
            self.token = secrets.token_hex(4)
        self.created: list[str] = []  # removed again if the write fails before the commit
        self.model_ino: tuple[int, int] | None = None

    def _data_path(self) -> str:
        return os.path.join(self.dir, f"{self.base}.{self.token}.data")

    def run(self, model: onnx.ModelProto | bytes, external_data: bool, stage: Stage | None = None) -> None:
        from . import external

        old_data = self._our_data_files(self.real)  # what the model being replaced reads
        self._sweep(old_data)
        try:
            data_final = None
            payload: bytes | Iterable[bytes]
            if isinstance(model, bytes):
                payload = model
            elif external_data:
                data_final, payload = self._write_data(model, stage)
            elif external.has_external(model):
                payload = _inline_chunks(model)
            else:
                payload = model.SerializeToString()
            self._write_model(payload)
            if stage is not None and data_final is None:  # streamed inline: the stage is no longer needed
                stage.file.close()
                os.unlink(self.created.pop(0))
            if data_final is not None:
                os.replace(self.created[0], data_final)
                self.created[0] = data_final
                _fsync_dir(self.dir)
                _step("data_renamed")
            os.replace(self.created[-1], self.real)  # the commit point
            _fsync_dir(self.dir)
        except OSError as e:
            self._abort()
            err = _write_error(e, self.shown, self.old is not None)
            if err is e:
                raise
            raise err from e
        except BaseException:
            self._abort()
            raise
        _step("model_renamed")
        new = {data_final} if data_final else set()
        for f in (old_data or set()) - new:
            with contextlib.suppress(OSError):
                os.unlink(f)
        _step("done")

    def _open_temp(self, suffix: str) -> int:
        name = os.path.join(self.dir, f".{self.base}.{self.pid}-{self.token}{suffix}")
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
        self.created.append(name)
        if self.old is not None:  # an overwrite keeps the old file's mode, owner and group
            os.fchmod(fd, stat.S_IMODE(self.old.st_mode))
            st = os.fstat(fd)
            if (st.st_uid, st.st_gid) != (self.old.st_uid, self.old.st_gid):
                with contextlib.suppress(OSError):
                    os.fchown(fd, self.old.st_uid, self.old.st_gid)
        return fd

    def _write_data(self, model: onnx.ModelProto, stage: Stage | None = None) -> tuple[str, bytes]:
        """The data file (the stage's, extended, or a new one) and the model naming it."""
        from onnx.external_data_helper import _get_initializer_tensors

        from . import external

        final = self._data_path()
        location = os.path.basename(final)  # the model names the final file from the start
        m = onnx.ModelProto()
        m.CopyFrom(model)
        f = stage.file if stage is not None else os.fdopen(self._open_temp(".data.tmp"), "wb")
        with f:
            f.seek(0, os.SEEK_END)
            written = 0
            for t in _get_initializer_tensors(m):
                if external.is_external(t):
                    loc, src_offset, length = external.info(t)
                    if stage is not None and stage.memory is None and loc == stage.location:  # in this file: adopt
                        _set_external(t, location, src_offset, length)
                        continue
                    offset = _align(f)
                    if stage is not None and stage.memory is not None and loc == stage.location:
                        f.write(external.buffer(t))  # in memory: written once, here
                        length = f.tell() - offset
                    else:
                        length = _copy_range(external.resolve(loc), src_offset, length, f)
                elif t.HasField("raw_data"):
                    offset = _align(f) if len(t.raw_data) > external.ALIGN_MIN else f.tell()
                    f.write(t.raw_data)
                    length = len(t.raw_data)
                    t.ClearField("raw_data")
                else:
                    continue
                _set_external(t, location, offset, length)
                written += 1
                if written == 1:
                    f.flush()
                    _step("data_partial")
            f.flush()
            os.fsync(f.fileno())
        _step("data_written")
        return final, m.SerializeToString()

    def _write_model(self, payload: bytes | Iterable[bytes]) -> None:
        fd = self._open_temp(".tmp")
        with os.fdopen(fd, "wb") as f:
            if isinstance(payload, bytes):
                view, half = memoryview(payload), len(payload) // 2
                payload = (view[:half], view[half:])
            for k, chunk in enumerate(payload):
                f.write(chunk)
                if k == 0:
                    f.flush()
                    _step("model_partial")
            f.flush()
            os.fsync(f.fileno())
            st = os.fstat(f.fileno())
            self.model_ino = (st.st_dev, st.st_ino)
        _step("model_written")

    def _abort(self) -> None:
        st = _stat(self.real)
        if st is not None and self.model_ino == (st.st_dev, st.st_ino):
            return  # interrupted right after the commit: the new pair is in place, keep it
        for f in self.created:
            with contextlib.suppress(OSError):
                os.unlink(f)

    def _our_data_files(self, model_path: str) -> set[str] | None:
        """Data files named by normonnx that the model at ``model_path`` reads (None: unreadable)."""
        ours = re.compile(re.escape(self.base) + r"(?:\.[0-9a-f]{8})?\.data")
        try:
            if not any(ours.fullmatch(n) for n in os.listdir(self.dir)):
                return set()  # nothing to find: don't parse a large inline model
            model = onnx.load(model_path, load_external_data=False)
        except Exception:
            return None if os.path.exists(model_path) else set()
        return {os.path.join(self.dir, loc) for loc in _locations(model) if ours.fullmatch(loc)}

    def _sweep(self, referenced: set[str] | None) -> None:
        """Remove what earlier killed writes to this target left: temps, unreferenced data files.

        ``referenced``: the data files the current model reads (None: it is unreadable, so no
        data file is known to be unreferenced and none is removed).
        """
        prefix = f".{self.base}."
        data_name = re.compile(re.escape(self.base) + r"\.[0-9a-f]{8}\.data")
        with contextlib.suppress(OSError):
            for name in os.listdir(self.dir):
                m = _TEMP_TAIL.fullmatch(name[len(prefix) :]) if name.startswith(prefix) else None
                if m is not None:
                    if m["pid"] is not None and _alive(int(m["pid"])):
                        continue
                elif not (data_name.fullmatch(name) and referenced is not None):
                    continue
                full = os.path.join(self.dir, name)
                if full in (referenced or set()):
                    continue
                st = _stat(full)
                if st is not None and stat.S_ISREG(st.st_mode) and st.st_mtime < self.start:
                    with contextlib.suppress(OSError):
                        os.unlink(full)


def _set_external(t: onnx.TensorProto, location: str, offset: int, length: int | None) -> None:
    del t.external_data[:]
    t.ClearField("raw_data")
    for k, v in (("location", location), ("offset", offset), ("length", length)):
        if v is not None:
            t.external_data.add(key=k, value=str(v))
    t.data_location = onnx.TensorProto.EXTERNAL


def _align(f: object) -> int:
    """Pad the data file ``f`` to the next memory-mappable offset; return it."""
    from .external import ALIGN

    pos = f.tell()  # type: ignore[attr-defined]
    if pos % ALIGN:
        f.write(b"\0" * (ALIGN - pos % ALIGN))  # type: ignore[attr-defined]
    return f.tell()  # type: ignore[attr-defined]


def _copy_range(src: str, offset: int, length: int | None, f: object, chunk: int = 64 << 20) -> int:
    """Append ``length`` bytes of ``src`` from ``offset`` to the open file ``f``, 64 MiB at a time."""
    done = 0
    with open(src, "rb") as s:
        s.seek(offset)
        while length is None or done < length:
            block = s.read(chunk if length is None else min(chunk, length - done))
            if not block:
                break
            f.write(block)  # type: ignore[attr-defined]
            done += len(block)
    if length is not None and done != length:
        raise ValueError(f"{src} ends {length - done} bytes before the tensor data it should hold")
    return done


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _inline_chunks(model: onnx.ModelProto) -> Iterator[bytes]:
    """The serialized bytes of ``model`` with its external tensors inlined, one tensor at a time.

    Protobuf parses concatenated encodings of a message as one message, repeated fields appended:
    so the model is its fields without the graph, then the graph field (tag 7) whose body is the
    graph without initializers followed by each initializer (GraphProto field 5), materialized
    only while it is written. Sizes are computed from the references, before any data is read.
    """
    from . import external

    m = onnx.ModelProto()
    m.CopyFrom(model)
    inits = list(m.graph.initializer)
    del m.graph.initializer[:]
    graph_head = m.graph.SerializeToString()
    m.ClearField("graph")
    sizes = []
    for t in inits:
        if external.is_external(t):
            length = external.info(t)[2]
            if length is None:
                raise ValueError(f"external tensor {t.name!r} has no length")
            bare = _bare(t)
            sizes.append(bare.ByteSize() + 1 + len(_varint(length)) + length)  # + raw_data (field 9)
        else:
            sizes.append(t.ByteSize())
    graph_len = len(graph_head) + sum(1 + len(_varint(n)) + n for n in sizes)
    yield m.SerializeToString() + b"\x3a" + _varint(graph_len)  # field 7, length-delimited
    yield graph_head
    for t, n in zip(inits, sizes):
        yield b"\x2a" + _varint(n)  # field 5, length-delimited
        if not external.is_external(t):
            yield t.SerializeToString()
            continue
        # the bare tensor, then its data as field 9 (raw_data): protobuf accepts fields in any
        # order, and the data is written from its buffer without a copy into a message
        data = external.buffer(t)
        head = _bare(t).SerializeToString() + b"\x4a" + _varint(len(data))
        if len(head) + len(data) != n:
            raise RuntimeError(f"tensor {t.name!r} encodes to {len(head) + len(data)} bytes, {n} were announced")
        yield head
        yield data
        del data


def _bare(t: onnx.TensorProto) -> onnx.TensorProto:
    """``t`` without its external reference (no data)."""
    b = onnx.TensorProto()
    b.CopyFrom(t)
    del b.external_data[:]
    b.ClearField("data_location")
    return b


def _locations(model: onnx.ModelProto) -> list[str]:
    from onnx.external_data_helper import _get_all_tensors

    return [
        e.value
        for t in _get_all_tensors(model)
        if t.data_location == onnx.TensorProto.EXTERNAL
        for e in t.external_data
        if e.key == "location"
    ]


def _missing_data_files(path: str) -> list[str]:
    try:
        model = onnx.load(path, load_external_data=False)
    except Exception:
        return []
    d = os.path.dirname(path)
    return sorted({loc for loc in _locations(model) if not os.path.exists(os.path.join(d, loc))})


def _write_error(e: OSError, shown: str, existed: bool) -> OSError | OutputError:
    kept = "; the previous file is untouched" if existed else "; nothing was written"
    d = os.path.dirname(os.path.abspath(shown))
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return OutputError(
            f"no space left on device writing {shown}{kept}",
            note=f"free space on the file system of {d}, or write elsewhere",
        )
    if e.errno == errno.EROFS:
        return OutputError(
            f"read-only file system: cannot write {shown}{kept}", note="choose a path on a writable file system"
        )
    if e.errno in (errno.EACCES, errno.EPERM):
        return OutputError(f"permission denied writing {shown}{kept}", note=f"check the permissions of {d}")
    if e.errno in (errno.EFBIG, errno.EIO, errno.ENOENT, errno.ENOTDIR, errno.ENAMETOOLONG, errno.ELOOP):
        return OutputError(f"cannot write {shown}: {e.strerror}{kept}", note="choose another path")
    return e  # anything else is not the user's environment: keep it an ordinary exception


def _step(name: str) -> None:
    if os.environ.get(_KILL_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)


def _stat(path: str) -> os.stat_result | None:
    try:
        return os.stat(path)
    except OSError:
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # exists, owned by someone else
    return True


def _read_only_fs(directory: str) -> bool:
    try:
        return bool(os.statvfs(directory).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def _fsync_dir(directory: str) -> None:
    """Make the renames durable (best effort: not every file system can fsync a directory)."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
