"""normonnx's native CPU kernels: an optional onnxruntime custom-op library, and how to find it.

``pip install`` compiles ``src/*.c`` (see ``setup.py``) into ``_normonnx_kernels.so`` (``.dylib``,
``.dll``) next to this file. The library registers float32 CPU kernels for the ops of the
``normonnx.kernels`` domain (GroupNorm with optional fused SiLU, LayerNorm trailing or
channels-first, RMSNorm, InstanceNorm, BatchNorm; trailing LayerNorm / RMSNorm also with a fused
residual input ``N(x + r)`` and the sum as optional second output, LayerNorm with a fused AdaLN
modulation ``N(x)·(1 + scale) + shift``), which the ``native_kernel`` lowering emits,
each node carrying a model-local ONNX function of the same (domain, op, overload). So one
``.onnx`` file runs everywhere: without the library onnxruntime inlines the function bodies,
with it (``SessionOptions.register_custom_ops_library``, done by :func:`normonnx.session`) the
kernels run.

Why a separate domain rather than ``normonnx``: once a library registers an op, onnxruntime binds
every node of that (domain, op) to the library's schema instead of the model-local function
(measured with onnxruntime 1.31), so a float16/float64 ``normonnx`` node would fail to load
instead of falling back to its body.

The library needs the onnxruntime C API version :data:`api_version_required` (onnxruntime 1.17,
for ``KernelContext_ParallelFor``); it checks the version itself and :func:`library_path` returns
None for older onnxruntime, with the reason in :func:`unavailable_reason`.

Environment: ``NORMONNX_DISABLE_KERNELS=1`` hides the library (everything falls back to the
function bodies); ``NORMONNX_KERNELS_LIBRARY=<path>`` uses another build of it;
``NORMONNX_KERNELS_ISA=generic`` makes sessions created afterwards use the portable C loops
instead of the AVX2+FMA ones the library picks when the CPU has them.
"""

from __future__ import annotations

import ctypes
import functools
import os
import sys

#: the custom-op domain the library registers, and its opset version
DOMAIN = "normonnx.kernels"
DOMAIN_VERSION = 1
#: onnxruntime C API version the library requests (``OrtGetApiBase()->GetApi(17)``)
api_version_required = 17
#: interface version shared with the C code (``NX_ABI``): a mismatch means a stale build
ABI = 5

_HERE = os.path.dirname(os.path.abspath(__file__))
_NAME = "_normonnx_kernels" + (".dll" if sys.platform == "win32" else ".dylib" if sys.platform == "darwin" else ".so")
_BUILD_ERROR = os.path.join(_HERE, "_build_error.txt")
_REBUILD = "reinstall normonnx with a C compiler available (pip install -e . from the source tree)"


def library_path() -> str | None:
    """Path of the built kernel library if it is present, loadable and usable here; else None."""
    return _probe(*_env())[0]


def available() -> bool:
    """True when :func:`library_path` finds a usable library."""
    return library_path() is not None


def unavailable_reason() -> str:
    """Why the library cannot be used ("" when it can): build failure, missing file, old onnxruntime..."""
    return _probe(*_env())[1]


def info() -> dict[str, str]:
    """What the loaded library reports about itself (abi, ort_api, domain, isa, ops); {} if unavailable."""
    return dict(_probe(*_env())[2])


def registered_ops() -> frozenset[str]:
    """The op types the library registers in :data:`DOMAIN` (its ``ops=`` self-report); empty when
    it is unavailable. The ``native_kernel`` strategy claims exactly the kinds whose op is here."""
    ops = info().get("ops", "")
    return frozenset(o for o in ops.split(",") if o) if available() else frozenset()


def require() -> str:
    """The library path, or :class:`~normonnx.errors.UnsupportedHere` saying why there is none."""
    path = library_path()
    if path is None:
        from ..errors import UnsupportedHere

        raise UnsupportedHere(
            f"normonnx's native kernel library is not available: {unavailable_reason()}",
            note="use another lowering strategy (the default selection does), or " + _REBUILD,
        )
    return path


def _env() -> tuple[str, str]:
    return os.environ.get("NORMONNX_DISABLE_KERNELS", ""), os.environ.get("NORMONNX_KERNELS_LIBRARY", "")


@functools.cache
def _probe(disabled: str, override: str) -> tuple[str | None, str, tuple[tuple[str, str], ...]]:
    """(path or None, reason if None, info items); cached per environment setting."""
    if disabled.strip().lower() not in ("", "0", "false", "no"):
        return None, "disabled by NORMONNX_DISABLE_KERNELS", ()
    path = override or os.path.join(_HERE, _NAME)
    if not os.path.isfile(path):
        if override:
            return None, f"NORMONNX_KERNELS_LIBRARY={override} is not a file", ()
        if os.path.isfile(_BUILD_ERROR):
            with open(_BUILD_ERROR, encoding="utf-8") as f:
                return None, f.read().strip() + f"; {_REBUILD}", ()
        return (
            None,
            f"no compiled library {_NAME} in {_HERE} (normonnx was installed without building it); {_REBUILD}",
            (),
        )
    try:
        lib = ctypes.CDLL(path)
        lib.normonnx_kernels_info.restype = ctypes.c_char_p
        raw = lib.normonnx_kernels_info().decode()
        getattr(lib, "RegisterCustomOps")  # noqa: B009 - the symbol onnxruntime looks up
    except (OSError, AttributeError) as e:
        return None, f"{path} is not a loadable normonnx kernel library ({e}); {_REBUILD}", ()
    items = tuple(tuple(kv.split("=", 1)) for kv in raw.split(";") if "=" in kv)
    meta = dict(items)
    if meta.get("abi") != str(ABI) or meta.get("domain") != DOMAIN:
        return None, f"{path} is a stale build (abi={meta.get('abi')}, this normonnx expects {ABI}); {_REBUILD}", items
    too_old = _ort_too_old()
    if too_old:
        return None, too_old, items
    return path, "", items  # type: ignore[return-value]


def _ort_too_old() -> str:
    try:
        import onnxruntime as ort
    except ImportError:
        return "onnxruntime is not installed"
    parts = []
    for p in ort.__version__.split("+")[0].split(".")[:2]:
        digits = "".join(ch for ch in p if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    major, minor = [*parts, 0, 0][:2]
    if (major, minor) < (1, api_version_required):
        return (
            f"onnxruntime {ort.__version__} provides C API version < {api_version_required}; "
            f"the kernels need onnxruntime >= 1.{api_version_required}"
        )
    return ""


__all__ = [
    "ABI",
    "DOMAIN",
    "DOMAIN_VERSION",
    "api_version_required",
    "available",
    "info",
    "library_path",
    "registered_ops",
    "require",
    "unavailable_reason",
]
