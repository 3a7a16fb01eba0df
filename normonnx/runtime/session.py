"""onnxruntime sessions that never fall back silently.

``session(path_or_model, provider="cpu"|"cuda")`` returns a :class:`Session`, a subclass of
``onnxruntime.InferenceSession``: code written for ``InferenceSession`` (``get_inputs()``,
``run(None, feed)``, ``io_binding()`` + ``run_with_iobinding``, ``get_modelmeta()``…) runs on it
unchanged. What normonnx adds:

- the provider check: a provider that is not available (no onnxruntime-gpu, no GPU) is refused
  with :class:`~normonnx.errors.UnsupportedHere` instead of onnxruntime's warning-and-CPU
  fallback, and after creation (and after ``set_providers``) the session is checked to really run
  on the requested provider; onnxruntime's run-time fallback is off unless ``enable_fallback()``
  is called;
- readable errors: a wrong shape / dtype, a missing or unknown input or output name is an
  :class:`~normonnx.errors.InputError` naming the input with the given and expected shape; a file
  that cannot be loaded is a :class:`~normonnx.errors.ModelLoadError` saying why (a directory, a
  missing external-data file, an op onnxruntime does not know and where to get it);
- ``run(feed)``, the short form normonnx's own code uses: a mapping or a list of arrays in input
  order, all outputs returned.

Where it differs from ``InferenceSession`` on purpose: the refusals above (an unavailable
provider, ``set_providers()`` without providers keeps the session's own instead of taking every
available one) and the exception types (normonnx's errors, explained in :mod:`.explain`, instead
of onnxruntime's ``InvalidArgument`` / ``Fail``).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from ..errors import InputError, ModelLoadError, UnsupportedHere
from ..providers import PROVIDERS, short_name
from .explain import expected_inputs, first_line, input_error, load_error, shape_text

PROVIDER_NAMES = PROVIDERS  # short name → onnxruntime name (normonnx.providers: the one table)
_NO_FEED: Any = object()  # run(feed) vs run(output_names, input_feed): was input_feed given?


class Session(ort.InferenceSession):
    """An ``onnxruntime.InferenceSession`` that runs on exactly the provider it was asked for.

    Usually created by :func:`session`. Constructed directly it takes ``InferenceSession``'s
    arguments (plus an ``onnx.ModelProto`` as the model and ``label``, the model's name in error
    messages); ``providers=None`` means CPU only, never "whatever is available".
    """

    # defaults for sessions onnxruntime builds without __init__ (``_from_initialized_c_session``)
    label = "<model>"
    _requested: tuple[list[Any], Any] = ([PROVIDERS["cpu"]], None)

    def __init__(
        self,
        path_or_bytes: str | os.PathLike[str] | bytes | onnx.ModelProto,
        sess_options: Any = None,
        providers: Sequence[str | tuple[str, dict[Any, Any]]] | None = None,
        provider_options: Sequence[dict[Any, Any]] | None = None,
        *,
        label: str | None = None,
        **kwargs: Any,
    ) -> None:
        src, default_label = _source(path_or_bytes)
        self.label = label or default_label
        providers = list(providers) if providers is not None else [PROVIDERS["cpu"]]
        names = _provider_names(providers)
        _check_available(names)
        kwargs.setdefault("enable_fallback", 0)  # no silent switch to CPU, at creation or at run time
        try:
            super().__init__(src, sess_options, providers, provider_options, **kwargs)
        except Exception as e:
            err = load_error(e, self.label, src)
            if err is None:
                raise
            raise err from None
        self._requested = (providers, provider_options)
        self._verify_provider(names[0])

    # -- what the former normonnx wrapper offered, kept for its callers --------------------------

    @property
    def inner(self) -> Session:
        """The session itself (the former wrapper's ``inner`` InferenceSession)."""
        return self

    @property
    def provider(self) -> str:
        """The provider the session runs on: "cpu", "cuda" (or onnxruntime's name for others)."""
        first = self.get_providers()[0]
        return short_name(first)

    @property
    def providers(self) -> list[str]:
        return list(self.get_providers())

    @property
    def input_names(self) -> list[str]:
        return [i.name for i in self.get_inputs()]

    @property
    def output_names(self) -> list[str]:
        return [o.name for o in self.get_outputs()]

    def __repr__(self) -> str:
        ins = ", ".join(f"{i.name}{shape_text(i.shape)}:{i.type}" for i in self.get_inputs())
        return f"<normonnx Session {self.label} on {self.get_providers()[0]}: {ins} -> {', '.join(self.output_names)}>"

    # -- running ---------------------------------------------------------------------------------

    def run(self, output_names: Any = None, input_feed: Any = _NO_FEED, run_options: Any = None) -> list[Any]:
        """Run the model; returns the outputs as a list (numpy arrays for tensors).

        Two forms, told apart by the first argument:

        - ``run(output_names, input_feed, run_options=None)`` — ``InferenceSession.run``:
          ``output_names`` is None (all outputs) or a list of output names, ``input_feed`` a
          ``{name: array}`` mapping (a list of arrays in input order is accepted too);
        - ``run(input_feed)`` — a single mapping, or a list/tuple of arrays in input order:
          all outputs. A list of strings alone is output names without a feed: ``TypeError``.

        A wrong shape or dtype, a missing or unknown input or output name, and any other feed
        onnxruntime rejects raise :class:`InputError` naming the input, what was given and what
        the model declares; an execution-provider failure stays onnxruntime's exception.
        """
        if input_feed is _NO_FEED:
            if not _looks_like_feed(output_names):
                raise TypeError(
                    "run() got output names but no input feed: call run(output_names, input_feed) "
                    "or run(input_feed) with a {name: array} mapping or a list of arrays"
                )
            output_names, input_feed = None, output_names
        feed = self._as_feed(input_feed)
        try:
            return list(super().run(output_names, feed, run_options))
        except Exception as e:
            err = input_error(self, e, feed, output_names)
            if err is None:
                raise
            raise err from None

    def run_with_ort_values(self, output_names: Any, input_dict_ort_values: Any, run_options: Any = None) -> Any:
        """``InferenceSession.run_with_ort_values`` with the same :class:`InputError` s as :meth:`run`."""
        try:
            return super().run_with_ort_values(output_names, input_dict_ort_values, run_options)
        except Exception as e:
            err = input_error(self, e, dict(input_dict_ort_values), output_names)
            if err is None:
                raise
            raise err from None

    def set_providers(self, providers: Any = None, provider_options: Any = None) -> None:
        """Re-create the session on ``providers`` (``InferenceSession.set_providers``), refusing
        unavailable ones and checking the new session runs on the first one (if not, the
        previous providers are restored and :class:`UnsupportedHere` raised).

        ``providers=None`` re-creates it on the providers it was created with (onnxruntime
        would take every available provider: normonnx never picks a provider silently).
        """
        previous = self._requested
        if providers is None:
            providers, provider_options = previous
        providers = list(providers)
        names = _provider_names(providers)
        _check_available(names)
        super().set_providers(providers, provider_options)
        self._requested = (providers, provider_options)
        try:
            self._verify_provider(names[0])
        except UnsupportedHere:
            super().set_providers(*previous)
            self._requested = previous
            raise

    # -- helpers ---------------------------------------------------------------------------------

    def _verify_provider(self, wanted: str) -> None:
        got = self.get_providers()
        if got[0] != wanted:
            raise UnsupportedHere(
                f"asked for {wanted} but onnxruntime created the session on {got[0]}",
                note="check the CUDA/cuDNN installation (onnxruntime falls back when their libraries fail to load)",
            )

    def _as_feed(self, input_feed: Any) -> dict[str, Any]:
        if isinstance(input_feed, Mapping):
            return input_feed if isinstance(input_feed, dict) else dict(input_feed)
        if isinstance(input_feed, (list, tuple)):
            names = self.input_names
            if len(input_feed) != len(names):
                raise InputError(
                    f"{len(input_feed)} inputs given but the model takes {len(names)}",
                    note=f"the model expects {expected_inputs(self.get_inputs())}",
                )
            return dict(zip(names, input_feed))
        raise TypeError(
            f"input_feed must be a {{name: array}} mapping or a list of arrays, not {type(input_feed).__name__}"
        )


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
    """Create a :class:`Session` (an ``onnxruntime.InferenceSession``) on exactly ``provider``
    ("cpu" or "cuda").

    threads:          intra-op threads, an integer ≥ 0 (None or 0: onnxruntime's default).
    optimize:         False disables onnxruntime's graph optimizations (used when testing ours).
    provider_options: passed to the provider (CUDA: ``device_id``, ``cudnn_conv_algo_search``,
                      ``gpu_mem_limit``...).
    profile:          a file prefix to enable onnxruntime's profiler (``end_profiling()``).
    custom_ops:       register normonnx's native kernel library when the model has normonnx ops
                      and the library is built.
    """
    if provider not in PROVIDER_NAMES:
        raise InputError(f"unknown provider {provider!r}", note=f"valid providers: {', '.join(PROVIDER_NAMES)}")
    n_threads = _threads(threads)
    wanted = PROVIDER_NAMES[provider]
    _check_available([wanted])
    src, label = _source(path_or_model)
    so = ort.SessionOptions()
    # CPU: errors become exceptions with our message, onnxruntime's log line would only repeat
    # them. CUDA: its log is where a failed cuDNN load is explained, so errors stay visible.
    so.log_severity_level = 3 if provider == "cuda" else 4
    if n_threads is not None:
        so.intra_op_num_threads = n_threads
        so.inter_op_num_threads = 1
    if not optimize:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    if profile:
        so.enable_profiling = True
        so.profile_file_prefix = profile
    if custom_ops:
        register_kernels(so, src)
    _external_folder(so, path_or_model)
    providers: list[Any] = [(wanted, dict(provider_options or {}))]
    if provider == "cuda":
        providers.append(PROVIDERS["cpu"])  # CPU-only nodes (shape ops); the first is checked
    return Session(src, so, providers, label=label)


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
            f"normonnx's kernel library {path} did not register ({first_line(e)}); "
            "the model's ONNX function bodies run instead",
            RuntimeWarning,
            stacklevel=3,
        )
        return False
    return True


# -- arguments -----------------------------------------------------------------------------------


def _threads(threads: Any) -> int | None:
    if threads is None:
        return None
    if isinstance(threads, str) and threads.strip().isdigit():
        threads = int(threads)
    if isinstance(threads, bool) or not isinstance(threads, (int, np.integer)) or threads < 0:
        raise InputError(
            f"threads={threads!r} is not a thread count",
            note="give an integer ≥ 1, or None (or 0) for onnxruntime's default",
        )
    return int(threads)


def _source(path_or_model: Any) -> tuple[bytes | str, str]:
    """(what onnxruntime loads, the model's name in messages); a path is checked to be a file."""
    if isinstance(path_or_model, onnx.ModelProto):
        return path_or_model.SerializeToString(), "<in-memory model>"
    if isinstance(path_or_model, bytes):
        return path_or_model, "<bytes>"
    if not isinstance(path_or_model, (str, os.PathLike)):
        raise TypeError(f"a session takes a path, bytes or an onnx.ModelProto, not {type(path_or_model).__name__}")
    path = os.fspath(path_or_model)
    if os.path.isdir(path):
        inside = sorted(f for f in os.listdir(path) if f.endswith(".onnx"))
        raise ModelLoadError(
            f"{path} is a directory, not an ONNX file",
            note=f"pass one of the files in it: {', '.join(inside[:5])}" if inside else "pass the path of a .onnx file",
        )
    if not os.path.exists(path):
        raise ModelLoadError(f"no such ONNX file: {path}", note="check the path")
    return path, path


def _external_folder(so: Any, model: Any) -> None:
    """An in-memory model whose weights are external references (a large model inside normonnx's
    pipeline, :mod:`normonnx.external`): tell onnxruntime where they are. A path needs nothing:
    onnxruntime reads (memory-maps, when aligned) the data file beside it."""
    from .. import external

    if isinstance(model, onnx.ModelProto) and external.base_dir() is not None and external.has_external(model):
        so.add_session_config_entry("session.model_external_initializers_file_folder_path", external.base_dir())


def _provider_names(providers: Sequence[Any]) -> list[str]:
    names = [p[0] if isinstance(p, tuple) else p for p in providers]
    if not names:
        raise InputError("no execution provider given", note=f"e.g. providers=[{PROVIDER_NAMES['cpu']!r}]")
    return names


def require_provider(provider: str) -> None:
    """Raise :class:`~normonnx.errors.UnsupportedHere` (exit 3) now if ``provider`` (short name or
    onnxruntime's) cannot run here: callers check before work that a missing provider would waste."""
    _check_available([PROVIDER_NAMES.get(provider, provider)])


def _check_available(names: Sequence[str]) -> None:
    available = ort.get_available_providers()
    for name in names:
        if name not in available:
            short = short_name(name)
            raise UnsupportedHere(
                f"the {short.upper() if short in PROVIDER_NAMES else short} execution provider is not available "
                f"in this onnxruntime ({ort.__version__}, providers: {', '.join(available)})",
                note=(
                    "install normonnx[cuda] (onnxruntime-gpu instead of onnxruntime) on a machine with an NVIDIA GPU "
                    "and CUDA/cuDNN, or use --provider cpu"
                    if short == "cuda"
                    else f"use one of: {', '.join(available)}"
                ),
            )


def _looks_like_feed(x: Any) -> bool:
    """True for ``run(feed)``'s argument: a mapping, or a list/tuple not made only of strings
    (an empty one is a feed for a model without inputs)."""
    if isinstance(x, Mapping):
        return True
    return isinstance(x, (list, tuple)) and not (x and all(isinstance(i, str) for i in x))
