"""onnxruntime's CUDA execution provider: validated options, device-resident IO, fp16 models.

Written against onnxruntime's documented Python API (``onnxruntime-gpu``; the development
machines have no GPU, so the GPU paths are exercised by tests that skip with the reason when
``CUDAExecutionProvider`` is not in ``onnxruntime.get_available_providers()``):

- :func:`provider_options` validates CUDA provider options (``device_id``,
  ``cudnn_conv_algo_search``, ``gpu_mem_limit``, ``arena_extend_strategy``, …) *before* a session
  is created, with a message naming the option and its valid values; onnxruntime itself reports
  a bad option only as a generic session-creation failure;
- :func:`cuda_session` creates a session on exactly CUDA (never a silent CPU fallback: see
  :func:`normonnx.runtime.session`), exit code 3 when CUDA is not available here;
- :class:`DeviceRunner` runs with IO binding so inputs and outputs stay on the device across runs
  (``OrtValue.ortvalue_from_numpy(a, "cuda", id)``, ``io_binding().bind_ortvalue_input``,
  ``bind_output(name, "cuda", id)``, ``run_with_iobinding``); with ``device="cpu"`` the same code
  path runs on any machine;
- fp16: :func:`cast_inputs` feeds a model in the element types it declares, :func:`to_fp16`
  converts a float32 model with onnxruntime's converter while keeping normalization statistics
  in float32 (native norm ops) or float64 (normonnx's decompositions). The better fp16 path is exporting the torch model in half precision: normonnx's
  lowerings then compute statistics in float32 (``NormSpec.stash_fp32``) by construction.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import onnx

from ..dtypes import ORT_TYPES
from ..errors import InputError, UnsupportedHere
from ..providers import ort_name

CUDA_PROVIDER = ort_name("cuda")


# -- provider options ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class OptionSpec:
    """One documented CUDA provider option: its kind, valid values and meaning."""

    name: str
    kind: str  # "int" (>= minimum), "bool", "enum", "bytes"
    doc: str
    choices: tuple[str, ...] = ()
    minimum: int = 0


#: The CUDA execution provider options normonnx validates (onnxruntime's
#: ``OrtCUDAProviderOptionsV2``). Pointer-valued ones (``user_compute_stream``) are not accepted
#: from Python.
OPTIONS: dict[str, OptionSpec] = {
    o.name: o
    for o in (
        OptionSpec("device_id", "int", "CUDA device ordinal (default 0)"),
        OptionSpec(
            "cudnn_conv_algo_search",
            "enum",
            "how cuDNN picks convolution algorithms (default EXHAUSTIVE: benchmark all, slow first run)",
            ("EXHAUSTIVE", "HEURISTIC", "DEFAULT"),
        ),
        OptionSpec(
            "gpu_mem_limit",
            "bytes",
            "size limit of the device memory arena in bytes (e.g. 2147483648 or '2GB')",
            minimum=1,
        ),
        OptionSpec(
            "arena_extend_strategy",
            "enum",
            "how the memory arena grows (default kNextPowerOfTwo)",
            ("kNextPowerOfTwo", "kSameAsRequested"),
        ),
        OptionSpec("do_copy_in_default_stream", "bool", "copy on the compute stream (default 1; 0 may race)"),
        OptionSpec("cudnn_conv_use_max_workspace", "bool", "let cuDNN use its maximum workspace (default 1)"),
        OptionSpec("cudnn_conv1d_pad_to_nc1d", "bool", "pad 1-D convolutions to [N,C,1,D] instead of [N,C,D,1]"),
        OptionSpec("enable_cuda_graph", "bool", "capture and replay a CUDA graph (static shapes, IO binding required)"),
        OptionSpec(
            "enable_skip_layer_norm_strict_mode", "bool", "SkipLayerNormalization accumulates in fp32 (slower, exact)"
        ),
        OptionSpec("prefer_nhwc", "bool", "prefer NHWC kernels (Conv, contrib GroupNorm) where available"),
        OptionSpec("use_tf32", "bool", "allow TF32 math for float32 MatMul/Conv on Ampere+ (default 1)"),
        OptionSpec("tunable_op_enable", "bool", "use TunableOp kernels"),
        OptionSpec("tunable_op_tuning_enable", "bool", "let TunableOp tune online"),
        OptionSpec("tunable_op_max_tuning_duration_ms", "int", "TunableOp tuning time limit per op (ms)"),
        OptionSpec("use_ep_level_unified_stream", "bool", "one stream for the whole execution provider"),
    )
}

_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "kib": 2**10, "mib": 2**20, "gib": 2**30}


def _parse_bytes(name: str, value: Any) -> int:
    if isinstance(value, bool):
        raise InputError(
            f"CUDA option {name}={value!r} must be a size in bytes", note="e.g. 2147483648, '2GB', '512MiB'"
        )
    if isinstance(value, (int, np.integer)):
        return int(value)
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmg]i?b|b)?\s*", str(value), re.IGNORECASE)
    if not m:
        raise InputError(f"CUDA option {name}={value!r} is not a size", note="e.g. 2147483648, '2GB', '512MiB'")
    return int(float(m.group(1)) * _UNITS[(m.group(2) or "").lower()])


def _parse_bool(name: str, value: Any) -> str:
    text = str(value).strip().lower()
    if isinstance(value, bool) or text in ("0", "1", "true", "false"):
        return "1" if text in ("1", "true") else "0"
    raise InputError(f"CUDA option {name}={value!r} must be a boolean", note="use 0/1 or true/false")


def provider_options(options: Mapping[str, Any] | None = None, **kwargs: Any) -> dict[str, str]:
    """Validated CUDA provider options as the strings onnxruntime expects.

    ``provider_options({"device_id": 1}, gpu_mem_limit="2GB")`` →
    ``{"device_id": "1", "gpu_mem_limit": "2000000000"}``. Raises :class:`InputError` naming the
    option and its valid values for an unknown option or a bad value.
    """
    merged = {**(options or {}), **kwargs}
    out: dict[str, str] = {}
    for name, value in merged.items():
        spec = OPTIONS.get(name)
        if spec is None:
            close = difflib.get_close_matches(str(name), OPTIONS, n=2, cutoff=0.75)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise InputError(
                f"unknown CUDA provider option {name!r}{hint}",
                note=f"valid options: {', '.join(OPTIONS)}",
            )
        if spec.kind == "bool":
            out[name] = _parse_bool(name, value)
        elif spec.kind == "enum":
            text = str(value)
            match = next((c for c in spec.choices if c.lower() == text.lower()), None)
            if match is None:
                raise InputError(
                    f"CUDA option {name}={value!r} is not valid", note=f"valid values: {', '.join(spec.choices)}"
                )
            out[name] = match
        else:
            n = _parse_bytes(name, value) if spec.kind == "bytes" else _parse_int(name, value)
            if n < spec.minimum:
                raise InputError(f"CUDA option {name}={value!r} must be at least {spec.minimum}", note=spec.doc)
            out[name] = str(n)
    return out


def _parse_int(name: str, value: Any) -> int:
    if isinstance(value, bool):
        raise InputError(f"CUDA option {name}={value!r} must be an integer")
    try:
        f = float(value)
    except (TypeError, ValueError):
        raise InputError(f"CUDA option {name}={value!r} must be an integer", note=OPTIONS[name].doc) from None
    if not f.is_integer():
        raise InputError(f"CUDA option {name}={value!r} must be an integer", note=OPTIONS[name].doc)
    return int(f)


def parse_option_strings(items: Sequence[str]) -> dict[str, str]:
    """CLI form ``["device_id=1", "gpu_mem_limit=2GB"]`` → validated options."""
    raw: dict[str, str] = {}
    for item in items:
        if "=" not in item:
            raise InputError(f"provider option {item!r} is not NAME=VALUE", note="e.g. --provider-option device_id=1")
        k, v = item.split("=", 1)
        raw[k.strip()] = v.strip()
    return provider_options(raw)


# -- availability --------------------------------------------------------------------------------


def cuda_status() -> tuple[bool, str]:
    """(available, reason): whether this onnxruntime build offers the CUDA execution provider."""
    import onnxruntime as ort

    providers = ort.get_available_providers()
    if CUDA_PROVIDER in providers:
        return True, f"{CUDA_PROVIDER} available (onnxruntime {ort.__version__})"
    return False, (
        f"{CUDA_PROVIDER} is not in onnxruntime.get_available_providers() "
        f"(onnxruntime {ort.__version__}: {', '.join(providers)}); install normonnx[cuda] on a machine with an "
        "NVIDIA GPU and CUDA/cuDNN"
    )


def require_cuda() -> None:
    """Raise :class:`UnsupportedHere` (exit 3) unless the CUDA provider is available."""
    ok, why = cuda_status()
    if not ok:
        raise UnsupportedHere(
            why.split(";")[0],
            note="pip uninstall onnxruntime && pip install 'normonnx[cuda]' on a GPU machine, or use --provider cpu",
        )


def cuda_session(
    path_or_model: str | os.PathLike[str] | onnx.ModelProto | bytes,
    *,
    device_id: int = 0,
    options: Mapping[str, Any] | None = None,
    threads: int | None = None,
    optimize: bool = True,
    profile: str | None = None,
) -> Any:
    """A :class:`normonnx.runtime.session.Session` on CUDA device ``device_id`` with validated options."""
    from .session import session

    opts = provider_options({"device_id": device_id, **(options or {})})
    require_cuda()
    return session(path_or_model, "cuda", threads=threads, optimize=optimize, provider_options=opts, profile=profile)


# -- dtypes / fp16 -------------------------------------------------------------------------------

_ORT_TYPES = {t: np.dtype(name) for t, name in ORT_TYPES.items()}  # normonnx.dtypes


def input_dtypes(inner: Any) -> dict[str, np.dtype]:
    """Declared numpy dtype of each input of an onnxruntime session (bfloat16 inputs are omitted)."""
    return {i.name: np.dtype(_ORT_TYPES[i.type]) for i in inner.get_inputs() if i.type in _ORT_TYPES}


def cast_inputs(inner: Any, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Cast floating inputs to the float type each input declares (float32 data into an fp16 model).

    Only float→float casts are made; any other mismatch is an :class:`InputError`.
    """
    want = input_dtypes(inner)
    out: dict[str, np.ndarray] = {}
    for name, a in inputs.items():
        a = np.asarray(a)
        dt = want.get(name)
        if dt is None or a.dtype == dt:
            out[name] = a
        elif np.issubdtype(a.dtype, np.floating) and np.issubdtype(dt, np.floating):
            out[name] = a.astype(dt)
        else:
            raise InputError(f"input {name!r} is {a.dtype}, the model declares {dt}", note="convert the input first")
    return out


def to_fp16(model: onnx.ModelProto, *, keep_io_types: bool = False, keep_norms_fp32: bool = True) -> onnx.ModelProto:
    """A float16 copy of a float32 model, via onnxruntime's ``convert_float_to_float16``.

    ``keep_norms_fp32`` adds the native norm ops (LayerNormalization, GroupNormalization, …) to
    the converter's op block list: they run in float32 between casts, because the variance of
    fp16 activations overflows/underflows in fp16 (why torch and ONNX's ``stash_type`` compute
    statistics in float32). normonnx's decompositions need no blocking: they compute statistics
    in float64 through explicit casts, which the converter leaves alone. (Blocking their nodes
    by name with ``node_block_list`` is worse: onnxruntime 1.31's converter then casts every
    intermediate between two blocked nodes to fp16 and back, and emits duplicate node names.)
    """
    try:
        from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16
    except ImportError as e:  # pragma: no cover - part of every onnxruntime wheel since 1.9
        raise UnsupportedHere(f"onnxruntime's float16 converter is not importable: {e}") from None
    from ..norms import KINDS

    op_block = list(DEFAULT_OP_BLOCK_LIST)
    if keep_norms_fp32:
        op_block += [k.native_op for k in KINDS.values() if k.native_op]
    return convert_float_to_float16(model, keep_io_types=keep_io_types, op_block_list=op_block)


# -- IO binding ----------------------------------------------------------------------------------


class DeviceRunner:
    """Run a session with IO binding so inputs and outputs stay on ``device``.

    ``runner.to_device(arrays)`` copies inputs once; ``runner.run(device_inputs)`` returns
    ``OrtValue`` s that live on the device (no host copy); ``runner.run_numpy(arrays)`` is the
    convenience round trip. ``device`` is "cuda" (needs a CUDA session) or "cpu" (any session:
    the same binding code path, runnable without a GPU).
    """

    def __init__(self, sess: Any, device: str = "cuda", device_id: int = 0) -> None:
        if device not in ("cuda", "cpu"):
            raise InputError(f"unknown device {device!r}", note="valid devices: cuda, cpu")
        inner = getattr(sess, "inner", sess)
        if device == "cuda" and CUDA_PROVIDER not in inner.get_providers():
            raise UnsupportedHere(
                f"IO binding on cuda needs a session on {CUDA_PROVIDER}; this one runs on {', '.join(inner.get_providers())}",
                note="create it with normonnx.runtime.cuda.cuda_session(...)",
            )
        self.inner = inner
        self.device = device
        self.device_id = int(device_id)
        self.input_names = [i.name for i in inner.get_inputs()]
        self.output_names = [o.name for o in inner.get_outputs()]

    def to_device(self, inputs: Mapping[str, np.ndarray] | Sequence[np.ndarray]) -> dict[str, Any]:
        """Copy inputs to the device once (cast to the declared float types); returns OrtValues by name."""
        import onnxruntime as ort

        if not isinstance(inputs, Mapping):
            inputs = dict(zip(self.input_names, inputs))
        missing = [n for n in self.input_names if n not in inputs]
        if missing:
            raise InputError(
                f"missing model inputs: {', '.join(missing)}", note=f"the model takes {', '.join(self.input_names)}"
            )
        feed = cast_inputs(self.inner, {k: np.ascontiguousarray(v) for k, v in inputs.items()})
        return {k: ort.OrtValue.ortvalue_from_numpy(v, self.device, self.device_id) for k, v in feed.items()}

    def bind(self, device_inputs: Mapping[str, Any]) -> Any:
        """An IO binding with ``device_inputs`` bound and every output allocated on the device."""
        binding = self.inner.io_binding()
        for name in self.input_names:
            binding.bind_ortvalue_input(name, device_inputs[name])
        for name in self.output_names:
            binding.bind_output(name, self.device, self.device_id)
        return binding

    def run(self, device_inputs: Mapping[str, Any]) -> list[Any]:
        """Run on device-resident inputs; the outputs (OrtValues) stay on the device."""
        binding = self.bind(device_inputs)
        self.inner.run_with_iobinding(binding)
        return list(binding.get_outputs())

    def run_numpy(self, inputs: Mapping[str, np.ndarray] | Sequence[np.ndarray]) -> list[np.ndarray]:
        """Copy in, run with binding, copy out."""
        binding = self.bind(self.to_device(inputs))
        self.inner.run_with_iobinding(binding)
        return list(binding.copy_outputs_to_cpu())

    def timer(self, inputs: Mapping[str, np.ndarray] | Sequence[np.ndarray]) -> Callable[[], Any]:
        """A zero-argument callable running once on pre-copied inputs (for benchmarks: no host traffic)."""
        binding = self.bind(self.to_device(inputs))

        def call() -> None:
            self.inner.run_with_iobinding(binding)
            binding.synchronize_outputs()

        return call


__all__ = [
    "CUDA_PROVIDER",
    "OPTIONS",
    "DeviceRunner",
    "cast_inputs",
    "cuda_session",
    "cuda_status",
    "input_dtypes",
    "parse_option_strings",
    "provider_options",
    "require_cuda",
    "to_fp16",
]
