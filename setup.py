"""Build hook for normonnx's optional native kernel library; all metadata lives in pyproject.toml.

``pip install normonnx`` (or ``pip install -e .``) compiles ``normonnx/kernels/src/*.c`` with the
system C compiler into ``normonnx/kernels/_normonnx_kernels.<so|dylib|dll>``: a plain shared
library that onnxruntime loads with ``SessionOptions.register_custom_ops_library`` (it exports
``RegisterCustomOps``; it does not link against Python or onnxruntime, so no headers of either
are needed). Nothing is downloaded.

The build is optional but loud: if compilation fails, installation still succeeds, a banner is
printed, and the compiler's message is written to ``normonnx/kernels/_build_error.txt`` where
``normonnx.kernels.unavailable_reason()`` reports it. Environment switches:

- ``NORMONNX_NO_KERNELS=1``: do not build the library.
- ``NORMONNX_REQUIRE_KERNELS=1``: a failed build fails the installation (for CI).
"""

from __future__ import annotations

import os
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

KERNELS = "normonnx.kernels._normonnx_kernels"
SRC = "normonnx/kernels/src"
ERROR_FILE = "_build_error.txt"


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no")


class OptionalBuildExt(build_ext):
    """build_ext that names the kernel library as a plain shared library and never fails the install."""

    def get_ext_filename(self, fullname: str) -> str:
        # called with the dotted name and (by distutils' get_ext_fullpath) with its last part alone
        if fullname not in (KERNELS, KERNELS.rsplit(".", 1)[-1]):
            return super().get_ext_filename(fullname)
        suffix = ".dll" if sys.platform == "win32" else (".dylib" if sys.platform == "darwin" else ".so")
        return os.path.join(*fullname.split(".")) + suffix

    def get_export_symbols(self, ext: Extension) -> list[str]:
        # no PyInit_*: this is not a Python module (matters for MSVC, which exports only these)
        return (
            ["RegisterCustomOps", "normonnx_kernels_info"] if ext.name == KERNELS else super().get_export_symbols(ext)
        )

    def build_extension(self, ext: Extension) -> None:
        if ext.name != KERNELS:
            super().build_extension(ext)
            return
        target = self.get_ext_fullpath(ext.name)
        error_file = os.path.join(os.path.dirname(target), ERROR_FILE)
        for stale in (error_file, target):  # a library from older sources must not outlive a failed build
            if os.path.exists(stale):
                os.remove(stale)
        if _flag("NORMONNX_NO_KERNELS"):
            self._record(error_file, "not built: NORMONNX_NO_KERNELS was set when normonnx was installed")
            return
        if self.compiler.compiler_type == "msvc":
            ext.extra_compile_args = ["/O2", "/std:c11", "/experimental:c11atomics"]
        else:
            # no -ffast-math: the hi/lo mean split needs IEEE rounding; these two only drop FP traps and errno
            ext.extra_compile_args = [
                "-O3",
                "-std=gnu11",
                "-fvisibility=hidden",
                "-fno-trapping-math",
                "-fno-math-errno",
            ]
            ext.libraries = ["m"]
        try:
            super().build_extension(ext)
        except Exception as e:  # CompileError, LinkError, missing compiler (DistutilsPlatformError), OSError
            if _flag("NORMONNX_REQUIRE_KERNELS"):
                raise
            reason = f"{type(e).__name__}: {e}".strip()
            self._record(error_file, f"the C compiler failed building the kernel library: {reason}")
            bar = "!" * 78
            print(
                f"\n{bar}\nnormonnx: the native kernel library was NOT built; normonnx works without it\n"
                f"(ONNX function bodies run instead of the native kernels).\nReason: {reason}\n"
                f"Details: {error_file}\n{bar}\n",
                file=sys.stderr,
            )

    @staticmethod
    def _record(path: str, text: str) -> None:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            f.write(text + "\n")


setup(
    ext_modules=[
        Extension(
            KERNELS,
            sources=[
                f"{SRC}/normonnx_kernels.c",
                f"{SRC}/norm_math_generic.c",
                f"{SRC}/norm_math_avx2.c",
            ],
            depends=[f"{SRC}/ort_abi.h", f"{SRC}/norm_math.h", f"{SRC}/norm_math_impl.h"],
            optional=False,  # failure is handled (and reported) by OptionalBuildExt itself
        )
    ],
    cmdclass={"build_ext": OptionalBuildExt},
)
