"""One write, by the protocol of :mod:`normonnx.io`: temporary files beside the target, the data
file renamed to a name unique to the write, the model renamed over the target (the commit point),
the previous data file removed; the sweep of what killed runs left; the error a failed write
becomes. ``NORMONNX_TEST_KILL_AT=<step>`` kills the process at that step (the fault suite)."""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import signal
import stat
import time
from collections.abc import Iterable, Iterator

import onnx

from ..errors import OutputError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from . import Stage


# Test hook for the fault-injection suite (tests/test_io_faults.py): when this environment
# variable names a step of a write (see _STEPS), the process SIGKILLs itself right after it.
_KILL_ENV = "NORMONNX_TEST_KILL_AT"


_STEPS = ("data_partial", "data_written", "model_partial", "model_written", "data_renamed", "model_renamed", "done")


# temp names after the ".NAME." prefix: ours (<pid>-<token>) and those of earlier versions
# (tempfile.mkstemp's 8 characters, their data file "<tmp>.data")
_TEMP_TAIL = re.compile(r"(?:(?P<pid>\d+)-[0-9a-f]{8}|[a-z0-9_]{8})(?:\.data)?\.tmp(?:\.data)?")


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
        from .. import external

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

        from .. import external

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
    from ..external import ALIGN

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
    from .. import external

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
