"""Verification: does an ONNX file compute what its torch model (or another ONNX file) computes?

One package, one module per job; every entry point returns a report (a dataclass), never a bare
bool, and never prints: ``normonnx/commands/`` formats the reports.

=================  ==============================================================================
``api``            :func:`verify`: torch vs onnxruntime on example, random and second-size inputs
``inputs``         the one input generator (samples, second sizes, stress cases) and stress table
``trace``          torch side: hooks recording every module call's inputs and output
``expose``         ONNX side: every intermediate value exposed as an output and run
``mapping``        ONNX values → torch module calls (scope metadata, norm records, alignment)
``compare``        :func:`compare_arrays`: error statistics of one output under a tolerance
``tolerances``     the dtype × kind × provider tolerance table and usage checks
``derive``         error models that derive a module's tolerance from its math
``localize``       :func:`localize`: the first torch module whose own ONNX computation diverges
``isolate``        each module's ONNX nodes run on torch's own inputs (its error without drift)
``bisect``         ONNX vs ONNX: value by value (:func:`bisect`), and optimize's original vs
                   optimized check (:func:`verify_models`)
``float64``        a float64 twin of an ONNX graph, the referee of a disagreement
``half``           fp16 / bf16 conversion of an fp32 ONNX model (norm statistics kept in fp32)
``precision``      fp16 / bf16 deployments checked per layer (overflow, saturation, underflow)
``stress``         stress inputs through one norm kernel and through a whole model
=================  ==============================================================================

``normonnx.verify(model, "model.onnx", inputs)`` calls :func:`normonnx.verify.api.verify`: the
package is callable (a module subclass with ``__call__``, the data model's supported way to
customize a module), so ``normonnx.verify`` is the same object however it was first reached.
Importing the package is light: each name below loads its module on first use.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any

#: public names → the module that defines them (loaded on first access)
_EXPORTS = {
    "verify": "api",
    "VerifyReport": "api",
    "SampleResult": "api",
    "OutputComparison": "compare",
    "compare_arrays": "compare",
    "TABLE": "tolerances",
    "UNIT_ROUNDOFF": "tolerances",
    "Tolerance": "tolerances",
    "check_statistic": "tolerances",
    "check_tolerance": "tolerances",
    "tolerance": "tolerances",
    "LayerResult": "localize",
    "LocalizeReport": "localize",
    "BisectReport": "bisect",
    "ValueResult": "bisect",
    "Verification": "bisect",
    "verify_models": "bisect",
    "PrecisionReport": "precision",
    "check_precision": "precision",
    "StressReport": "stress",
    "stress_model": "stress",
}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class _CallableModule(types.ModuleType):
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        from .api import verify

        return verify(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule

__all__ = sorted(_EXPORTS)
