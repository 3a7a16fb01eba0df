"""Reading and writing ONNX files: clear errors for bad files, atomic writes.

A write goes to a temporary file in the target directory and is renamed over the target only
when complete, so a failure never leaves a half-written or stale model behind. Models over the
2 GB protobuf limit are written with external data (``<name>.data`` beside the model).
"""

from __future__ import annotations

import contextlib
import os
import tempfile

import onnx

from .errors import ModelLoadError

_PROTO_LIMIT = 2**31 - 2**20  # leave headroom below protobuf's 2 GiB


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
        raise ModelLoadError(
            f"{p} is not a readable ONNX model (truncated or corrupt?): {str(e).splitlines()[0] if str(e) else type(e).__name__}",
            note="re-export the model; normonnx writes files atomically, so a partial file comes from elsewhere",
        ) from None
    if not model.graph.node and not model.graph.output:
        raise ModelLoadError(
            f"{p} parsed but holds no graph (truncated or not an ONNX model?)", note="re-export the model"
        )
    return model


def save(model: onnx.ModelProto, path: str | os.PathLike[str], *, external_data: bool | None = None) -> str:
    """Write ``model`` to ``path`` atomically; external data when over 2 GB (or when asked)."""
    p = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(p)) or "."
    os.makedirs(directory, exist_ok=True)
    if external_data is None:
        external_data = model.ByteSize() > _PROTO_LIMIT
    base = os.path.basename(p)
    fd, tmp = tempfile.mkstemp(prefix=f".{base}.", suffix=".tmp", dir=directory)
    os.close(fd)
    tmp_data = None
    try:
        if external_data:
            data_name = base + ".data"
            tmp_data_name = os.path.basename(tmp) + ".data"
            tmp_data = os.path.join(directory, tmp_data_name)
            m = onnx.ModelProto()
            m.CopyFrom(model)
            onnx.save_model(
                m,
                tmp,
                save_as_external_data=True,
                all_tensors_to_one_file=True,
                location=tmp_data_name,
                size_threshold=0,
            )
            # point the model at the final data file name, then move data first, model last
            m2 = onnx.load(tmp, load_external_data=False)
            for t in _external_tensors(m2):
                for e in t.external_data:
                    if e.key == "location":
                        e.value = data_name
            onnx.save_model(m2, tmp)
            if os.path.exists(tmp_data):
                os.replace(tmp_data, os.path.join(directory, data_name))
            tmp_data = None
        else:
            onnx.save_model(model, tmp)
        os.replace(tmp, p)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if tmp_data:
            with contextlib.suppress(OSError):
                os.unlink(tmp_data)
        raise
    return p


def _external_tensors(model: onnx.ModelProto) -> list[onnx.TensorProto]:
    from onnx.external_data_helper import _get_all_tensors

    return [t for t in _get_all_tensors(model) if t.data_location == onnx.TensorProto.EXTERNAL]
