"""The driver behind ``normonnx optimize``: :func:`optimize_model` loads a model (external weights
stay on disk), converts its opset if asked, runs the shared pipeline
(:func:`~normonnx.optimize.pipeline.recognise`, :func:`~normonnx.optimize.pipeline.lower`),
verifies the result against the original and returns an :class:`~normonnx.optimize.result.OptimizeResult`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Mapping, Sequence

import onnx

from ..errors import OptimizeError
from ..providers import NAMES as PROVIDERS
from .families import select
from .result import OptimizeResult, Report, op_counts

TARGETS = PROVIDERS  # a target is the provider the graph is lowered for (normonnx.providers)


def optimize_model(
    model_or_path: onnx.ModelProto | str | os.PathLike[str],
    *,
    target: str = "cpu",
    opset: int | None = None,
    verify: bool = True,
    n_samples: int = 3,
    rules: Iterable[str] | None = None,
    debug: bool = False,
    inputs: Mapping[str, Sequence[int]] | None = None,
    seed: int = 0,
    prefer: Iterable[str] | None = None,
    allow_unstable: bool = False,
) -> OptimizeResult:
    """Fold, fuse, lower and clean up a model for ``target``; verify it against the original.

    target:    "cpu" or "cuda" (cuda may use onnxruntime contrib ops; verified here on CPU through
               their reference semantics, see :mod:`normonnx.lowering.contrib`).
    opset:     convert the model to this default-domain opset first (None: keep its own).
    verify:    run original and optimized on ``n_samples`` random inputs plus two stress inputs
               (offset 1e3, scale 1e-3); ``result.passed`` is False on a mismatch.
    rules:     family or rule names to run (None: all; see :func:`rule_names`).
    debug:     also record why near-miss patterns did not match (``result.misses``).
    inputs:    shapes for inputs with symbolic dims, by input name.
    prefer:    lowering strategies to try, in order, for the fused norms (None: the selector's
               default order for ``target``; e.g. ``["native", "decomposed"]`` keeps standard ops
               only where the CPU default would use normonnx's compiled kernels).
    allow_unstable: also take lowerings marked numerically unstable (native GroupNormalization-21,
               ``--target cuda``'s contrib GroupNorm, ...).

    Raises :class:`~normonnx.errors.OptimizeError` (or ModelLoadError/LoweringError) for user errors.
    """
    from .. import io as nio

    t0 = time.perf_counter()
    if target not in TARGETS:
        raise OptimizeError(f"unknown target {target!r}", note=f"valid targets: {', '.join(TARGETS)}")
    from .. import external

    if isinstance(model_or_path, onnx.ModelProto):
        original = onnx.ModelProto()
        original.CopyFrom(model_or_path)
        base = external.base_dir() if external.has_external(original) else None
    else:
        # weights stay in their file (a data file, or a large inline .onnx itself): the passes see
        # references (read on use, memory-mapped), onnxruntime reads the file, io.save copies it in chunks
        original = nio.load_lazy(model_or_path)
        base = os.path.dirname(os.path.abspath(model_or_path)) if external.has_external(original) else None
    with external.reading(base):
        return _optimize(
            original, t0, target, opset, verify, n_samples, rules, debug, inputs, seed, prefer, allow_unstable, base
        )


def _optimize(
    original: onnx.ModelProto,
    t0: float,
    target: str,
    opset: int | None,
    verify: bool,
    n_samples: int,
    rules: Iterable[str] | None,
    debug: bool,
    inputs: Mapping[str, Sequence[int]] | None,
    seed: int,
    prefer: Iterable[str] | None,
    allow_unstable: bool,
    base: str | None,
) -> OptimizeResult:
    from ..lowering import MAX_OPSET, MIN_OPSET
    from .pipeline import lower, recognise

    selected = select(rules)
    if inputs:
        names = [i.name for i in original.graph.input if i.name not in {t.name for t in original.graph.initializer}]
        unknown = sorted(set(inputs) - set(names))
        if unknown:
            raise OptimizeError(
                f"inputs= names {', '.join(map(repr, unknown))}, not an input of the model",
                note=f"the model's inputs: {', '.join(names)}",
            )
    report = Report(debug=debug)
    model = original
    if opset is not None:
        model = _convert_opset(model, opset)
    model_opset = _opset(model)
    nodes_before, ops_before = len(original.graph.node), op_counts(original)

    can_lower = MIN_OPSET <= model_opset <= MAX_OPSET
    if not can_lower:
        report.notes.append(
            f"norm fusions skipped: the model's opset {model_opset} is outside {MIN_OPSET}..{MAX_OPSET}, "
            "where normonnx lowers norms (pass --opset to convert)"
        )
    model = recognise(model, report, selected, fuse=can_lower)
    model, records = lower(model, report, target=target, prefer=prefer, allow_unstable=allow_unstable)
    lowerings = [r if isinstance(r, dict) else r.as_dict() for r in records]
    verification = None
    if verify:
        from ..verify.bisect import verify_models

        verification = verify_models(original, model, n_samples=n_samples, seed=seed, shapes=inputs, target=target)
    return OptimizeResult(
        model=model,
        target=target,
        opset=model_opset,
        fired=dict(report.fired),
        refused=list(report.refused),
        lowerings=lowerings,
        verification=verification,
        nodes_before=nodes_before,
        nodes_after=len(model.graph.node),
        ops_before=ops_before,
        ops_after=op_counts(model),
        seconds=time.perf_counter() - t0,
        misses=list(report.misses),
        notes=list(report.notes),
        base_dir=base,
    )


def _opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def _convert_opset(model: onnx.ModelProto, opset: int) -> onnx.ModelProto:
    from onnx import version_converter

    from ..lowering import MAX_OPSET, MIN_OPSET

    if not (MIN_OPSET <= opset <= MAX_OPSET):
        raise OptimizeError(f"--opset {opset} is not supported", note=f"normonnx emits opsets {MIN_OPSET}..{MAX_OPSET}")
    if _opset(model) == opset:
        return model
    try:
        return version_converter.convert_version(model, opset)
    except Exception as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise OptimizeError(
            f"cannot convert the model from opset {_opset(model)} to {opset}: {first}",
            note="omit --opset to keep the model's own opset",
        ) from None
