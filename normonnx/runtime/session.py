"""onnxruntime sessions that never fall back silently.

``session(path_or_model, provider="cpu"|"cuda")`` refuses a provider that is not available
(no onnxruntime-gpu, no GPU) with :class:`~normonnx.errors.UnsupportedHere`, and after creation
checks that the session really runs on the requested provider.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np
import onnx

from ..errors import InputError, ModelLoadError, UnsupportedHere

PROVIDER_NAMES = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}


@dataclasses.dataclass
class Session:
    """A created session plus what normonnx knows about it."""

    inner: Any  # onnxruntime.InferenceSession
    provider: str
    providers: list[str]
    input_names: list[str]
    output_names: list[str]

    def run(self, inputs: Mapping[str, np.ndarray] | list[np.ndarray] | tuple[np.ndarray, ...]) -> list[np.ndarray]:
        """Run on named (or positional) inputs; shape/dtype problems become :class:`InputError`."""
        if not isinstance(inputs, Mapping):
            inputs = dict(zip(self.input_names, inputs))
        feed = {k: np.ascontiguousarray(v) for k, v in inputs.items()}
        missing = [n for n in self.input_names if n not in feed]
        if missing:
            raise InputError(
                f"missing model inputs: {', '.join(missing)}", note=f"the model takes {', '.join(self.input_names)}"
            )
        try:
            return list(self.inner.run(None, feed))
        except Exception as e:  # onnxruntime raises its own exception types for bad feeds
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            shapes = ", ".join(f"{k}:{list(v.shape)}:{v.dtype}" for k, v in feed.items())
            expected = ", ".join(f"{i.name}:{i.shape}:{i.type}" for i in self.inner.get_inputs())
            raise InputError(
                f"onnxruntime rejected the inputs ({shapes}): {msg}", note=f"the model expects {expected}"
            ) from None


def _load_bytes(path_or_model: str | os.PathLike[str] | onnx.ModelProto | bytes) -> tuple[bytes | str, str]:
    if isinstance(path_or_model, onnx.ModelProto):
        return path_or_model.SerializeToString(), "<in-memory model>"
    if isinstance(path_or_model, bytes):
        return path_or_model, "<bytes>"
    path = os.fspath(path_or_model)
    if not os.path.exists(path):
        raise ModelLoadError(f"no such ONNX file: {path}", note="check the path")
    return path, path


def session(
    path_or_model: str | os.PathLike[str] | onnx.ModelProto | bytes,
    provider: str = "cpu",
    *,
    threads: int | None = None,
    optimize: bool = True,
    provider_options: Mapping[str, Any] | None = None,
    profile: str | None = None,
    custom_ops: bool = True,
) -> Session:
    """Create an onnxruntime session on exactly ``provider`` ("cpu" or "cuda").

    threads:          intra-op threads (None: onnxruntime's default).
    optimize:         False disables onnxruntime's graph optimizations (used when testing ours).
    provider_options: passed to the provider (CUDA: ``device_id``, ``cudnn_conv_algo_search``,
                      ``gpu_mem_limit``...).
    profile:          a file prefix to enable onnxruntime's profiler.
    custom_ops:       register normonnx's native kernel library when the model has normonnx ops
                      and the library is built.
    """
    import onnxruntime as ort

    if provider not in PROVIDER_NAMES:
        raise InputError(f"unknown provider {provider!r}", note=f"valid providers: {', '.join(PROVIDER_NAMES)}")
    wanted = PROVIDER_NAMES[provider]
    available = ort.get_available_providers()
    if wanted not in available:
        raise UnsupportedHere(
            f"the {provider.upper()} execution provider is not available in this onnxruntime "
            f"({ort.__version__}, providers: {', '.join(available)})",
            note=(
                "install normonnx[cuda] (onnxruntime-gpu instead of onnxruntime) on a machine with an NVIDIA GPU "
                "and CUDA/cuDNN, or use --provider cpu"
                if provider == "cuda"
                else "reinstall onnxruntime"
            ),
        )
    src, label = _load_bytes(path_or_model)
    so = ort.SessionOptions()
    so.log_severity_level = 3
    if threads is not None:
        so.intra_op_num_threads = int(threads)
        so.inter_op_num_threads = 1
    if not optimize:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    if profile:
        so.enable_profiling = True
        so.profile_file_prefix = profile
    if custom_ops:
        register_kernels(so, src)
    providers: list[Any] = [(wanted, dict(provider_options or {}))]
    if provider == "cuda":
        providers.append("CPUExecutionProvider")  # CPU-only nodes (shape ops); checked below
    try:
        inner = ort.InferenceSession(src, so, providers=providers)
    except Exception as e:
        text = str(e)
        first = text.splitlines()[0] if text else type(e).__name__
        if (
            "INVALID_PROTOBUF" in text
            or "Protobuf parsing failed" in text
            or ("Load model" in text and "failed" in text)
        ):
            raise ModelLoadError(
                f"{label} is not a readable ONNX model (truncated or corrupt?): {first}",
                note="re-export the model; normonnx writes files atomically, so a partial file comes from elsewhere",
            ) from None
        raise ModelLoadError(f"onnxruntime could not load {label}: {first}") from None
    got = inner.get_providers()
    if got[0] != wanted:
        raise UnsupportedHere(
            f"asked for {wanted} but onnxruntime created the session on {got[0]}",
            note="check the CUDA/cuDNN installation (onnxruntime falls back when their libraries fail to load)",
        )
    return Session(
        inner,
        provider,
        list(got),
        [i.name for i in inner.get_inputs()],
        [o.name for o in inner.get_outputs()],
    )


def register_kernels(so: Any, src: bytes | str) -> bool:
    """Register normonnx's native kernel library on SessionOptions ``so`` if it is built and the
    model (bytes or path) uses normonnx ops; True if registered.

    A library that fails to register is reported with a warning, not an error: the model's
    function bodies compute the same ops without it.
    """
    from .. import kernels

    path = kernels.library_path()
    if not path:
        return False
    data = src
    if not isinstance(data, bytes):
        with open(src, "rb") as f:
            data = f.read()
    if kernels.DOMAIN.encode() not in data:
        return False
    try:
        so.register_custom_ops_library(path)
    except Exception as e:
        warnings.warn(
            f"normonnx's kernel library {path} did not register ({str(e).splitlines()[0] if str(e) else e}); "
            "the model's ONNX function bodies run instead",
            RuntimeWarning,
            stacklevel=3,
        )
        return False
    return True
