"""Weights that stay on disk: the ``ModelProto`` s of a large export or optimize hold references.

A ``ModelProto`` cannot serialize past protobuf's 2 GiB, and every pass that copies one (shape
inference, onnx_ir round trips, version conversion) would copy the weights too. So when a model's
weights are large the pipeline never holds them in a proto: right after torch's exporter,
:meth:`Stage.unload` writes every initializer above :data:`INLINE_MAX` bytes to a data file beside
the output (a temp name of that write's protocol, see :mod:`normonnx.io`) and leaves in the model
an external reference (``data_location=EXTERNAL``, location, offset, length). The proto the
passes see is then a few megabytes, whatever the model's size.

References are relative to one directory, the *base*: :func:`reading` sets it for the code that
works on such a model (the output's directory during export, the input's during optimize), and
everything that needs a value asks here -- :func:`array` (a rule's constant: eps, axes, norm
weights, memory-mapped), :func:`set_ir_base` (onnx_ir's lazy tensors in cleanup),
:func:`normonnx.runtime.session` (onnxruntime's folder for external initializers). Small
constants stay inline, so a rule reading eps or axes never touches the disk.

A model that will be written *inline* (under 2 GiB) need not go through the disk twice: there
:func:`unload` keeps the tensors in memory (``memory=``, the exporter's own tensors, not copies)
and the references name the stage's file at offsets that nothing is written to; :func:`reading`
is then given that store, and every read here (:func:`array`, :func:`buffer`) takes the tensor
from it. The final write streams them into the file once, as torch's own exporter does.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
from collections.abc import Iterator
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

#: initializers up to this size stay inline in the proto (scalars, axes, shapes, norm weights up to
#: 16K floats); larger ones go to the data file
INLINE_MAX = 64 * 1024
#: tensors above ``ALIGN_MIN`` start at a multiple of ``ALIGN`` in the data file, so onnxruntime and
#: numpy can memory-map them (64 KiB: also Windows' mapping granularity)
ALIGN, ALIGN_MIN = 65536, 1 << 20

_BASE: contextvars.ContextVar[str | None] = contextvars.ContextVar("normonnx_external_base", default=None)
#: tensors held in memory behind references: {location: {offset: ir tensor}} (see the module docstring)
_MEMORY: contextvars.ContextVar[dict[str, dict[int, Any]] | None] = contextvars.ContextVar(
    "normonnx_external_memory", default=None
)


@contextlib.contextmanager
def reading(base_dir: str | os.PathLike[str] | None, memory: dict[str, dict[int, Any]] | None = None) -> Iterator[None]:
    """Resolve external references against ``base_dir`` (and the in-memory ``memory``) inside the block."""
    token = _BASE.set(os.fspath(base_dir) if base_dir is not None else None)
    mtoken = _MEMORY.set(memory)
    try:
        yield
    finally:
        _MEMORY.reset(mtoken)
        _BASE.reset(token)


def _in_memory(t: onnx.TensorProto) -> Any:
    """The in-memory tensor behind reference ``t`` (None: it is on disk)."""
    memory = _MEMORY.get()
    if not memory:
        return None
    location, offset, _ = info(t)
    held = memory.get(location)
    return held.get(offset) if held is not None else None


def base_dir() -> str | None:
    """The directory external references resolve against now (None outside :func:`reading`)."""
    return _BASE.get()


def is_external(t: onnx.TensorProto) -> bool:
    return t.data_location == onnx.TensorProto.EXTERNAL


def info(t: onnx.TensorProto) -> tuple[str, int, int | None]:
    """(location, offset, length) of an external tensor (length None: to the end of the file)."""
    kv = {e.key: e.value for e in t.external_data}
    length = kv.get("length")
    return kv["location"], int(kv.get("offset", 0) or 0), int(length) if length else None


def has_external(model: onnx.ModelProto) -> bool:
    from onnx.external_data_helper import _get_all_tensors

    return any(is_external(t) for t in _get_all_tensors(model))


def resolve(location: str) -> str:
    base = base_dir()
    if base is None:
        raise RuntimeError(f"external tensor data {location!r} read outside normonnx.external.reading(...)")
    path = os.path.normpath(os.path.join(base, location))
    if os.path.isabs(location) or os.path.dirname(os.path.relpath(path, base)).startswith(".."):
        raise ValueError(f"external data location {location!r} leaves the model's directory")
    return path


def array(t: onnx.TensorProto) -> np.ndarray:
    """The value of ``t``; external data is memory-mapped copy-on-write (writes stay private)."""
    if not is_external(t):
        return numpy_helper.to_array(t)
    held = _in_memory(t)
    if held is not None:  # the exporter's own tensor: a copy, so that a rule's write stays private
        return np.array(held.numpy())
    location, offset, _ = info(t)
    dtype = onnx.helper.tensor_dtype_to_np_dtype(t.data_type)
    shape = tuple(int(d) for d in t.dims)
    if 0 in shape or t.data_type not in _MAPPABLE:
        return numpy_helper.to_array(t, base_dir=base_dir() or "")  # empty, packed or exotic: onnx reads it
    return np.memmap(resolve(location), dtype=dtype.newbyteorder("<"), mode="c", offset=offset, shape=shape)


#: element types stored in external data exactly as numpy lays them out (no 4-bit packing)
_MAPPABLE = {
    getattr(onnx.TensorProto, n)
    for n in (
        "FLOAT",
        "DOUBLE",
        "FLOAT16",
        "INT8",
        "INT16",
        "INT32",
        "INT64",
        "UINT8",
        "UINT16",
        "UINT32",
        "UINT64",
        "BOOL",
    )
}


def buffer(t: onnx.TensorProto) -> bytes | memoryview:
    """The raw little-endian bytes of an external tensor (a view of an in-memory one, no copy)."""
    held = _in_memory(t)
    if held is not None:
        return memoryview(np.ascontiguousarray(held.numpy()).reshape(-1).view(np.uint8))
    location, offset, length = info(t)
    with open(resolve(location), "rb") as f:
        f.seek(offset)
        return f.read() if length is None else f.read(length)


def weight_bytes(model: onnx.ModelProto) -> int:
    """Bytes of initializer data, inline or external (without reading any)."""
    total = 0
    for t in model.graph.initializer:
        if is_external(t):
            length = info(t)[2]
            total += length if length is not None else 0
        else:
            total += len(t.raw_data) if t.HasField("raw_data") else t.ByteSize()
    return total


def ir_weight_bytes(model: Any) -> int:
    """Bytes of initializer data of an onnx_ir model (from dtype and shape: nothing is read)."""
    return sum(v.const_value.nbytes for v in model.graph.initializers.values() if v.const_value is not None)


def set_ir_base(model: Any) -> None:
    """Point an onnx_ir model's external tensors at :func:`base_dir` (lazy: nothing is read)."""
    import onnx_ir as ir

    base = base_dir()
    if base is not None:
        for g in model.graphs():
            ir.external_data.set_base_dir(g, base)


@contextlib.contextmanager
def opaque_weights(model: Any) -> Iterator[None]:
    """Inside the block, the onnx_ir ``model``'s initializers above :data:`INLINE_MAX` bytes have
    no constant value: they are inputs whose values no pass reads.

    onnxscript's cleanup passes never need a weight's value (they fold at most 8192 elements,
    deduplicate at most 1024), but pattern matching and hashing call ``numpy()`` on what is
    there, and each onnx_ir external tensor read maps its *whole* data file: 160 weights of a
    2.5 GiB file are 400 GiB of address space, past any ``RLIMIT_AS``. The values are put back
    on leaving the block, so serialization writes the same references (or bytes) as before."""
    import logging

    # its deduplication warns of each initializer without a value: here that is the point
    quiet = logging.getLogger("onnx_ir.passes.common.initializer_deduplication")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    hidden = []
    for g in model.graphs():
        for value in g.initializers.values():
            t = value.const_value
            if t is not None and t.nbytes > INLINE_MAX:
                hidden.append((value, t))
                value.const_value = None
    try:
        yield
    finally:
        for value, t in hidden:
            value.const_value = t
        quiet.setLevel(level)


def unload(model: Any, f: Any, location: str, directory: str, memory: dict[int, Any] | None = None) -> int:
    """Write the onnx_ir ``model``'s initializers above :data:`INLINE_MAX` bytes to the open file
    ``f`` (named ``location`` in ``directory``) and make them external tensors of that file, in
    declaration order (one layer's weights stay adjacent). Returns the bytes written.

    With ``memory`` (a dict), nothing is written: each tensor is kept there under the offset its
    reference names, as if written (see the module docstring)."""
    import onnx_ir as ir

    start = pos = f.tell()
    for value in model.graph.initializers.values():
        t = value.const_value
        if t is None or t.nbytes <= INLINE_MAX or isinstance(t, ir.ExternalTensor):
            continue
        if t.nbytes > ALIGN_MIN and pos % ALIGN:
            if memory is None:
                f.write(b"\0" * (ALIGN - pos % ALIGN))
            pos += ALIGN - pos % ALIGN
        if memory is None:
            t.tofile(f)  # no bytes copy of the tensor (onnx_ir writes from its buffer)
        else:
            memory[pos] = t
        value.const_value = ir.ExternalTensor(
            location, pos, t.nbytes, t.dtype, shape=t.shape, name=t.name or value.name, base_dir=directory
        )
        pos += t.nbytes
        if memory is None and f.tell() != pos:
            raise RuntimeError(f"tensor {value.name!r} wrote {f.tell() - pos + t.nbytes} bytes, not {t.nbytes}")
    f.flush()
    return pos - start
