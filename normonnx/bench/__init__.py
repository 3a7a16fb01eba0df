"""Benchmarks that tell the truth: side-by-side ratios measured in one run.

- :mod:`.ops` — every norm kind × valid lowering strategy in onnxruntime vs torch eager vs a copy
  floor, at representative shapes;
- :mod:`.models` — every model in ``models/``: torch eager, torch's default ONNX export, normonnx's
  export (and after ``optimize``), with accuracy and an onnxruntime profile per op type;
- :mod:`.report` — the JSON record, ``BENCHMARKS.md``, and ``compare`` between two records;
- :mod:`.timing` — warm-up, adaptive repetitions, round-robin interleaving, median and IQR.

:func:`run_bench` is the API behind ``normonnx bench`` and ``scripts/bench.py``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable
from typing import Any

WHAT = ("ops", "models", "all")


def prepare_environment() -> str:
    """Make torch's OpenMP workers sleep instead of spin when idle, if it is still possible.

    libgomp reads ``OMP_WAIT_POLICY`` when torch is first imported. Its default (spin, then
    sleep) lets a 2-thread parallel region whose second thread was preempted by another process
    wait a whole scheduler tick: measured on the shared 2-core machine, torch GroupNorm at
    [2,256,64,64] took 8.0 ms with the default policy and 1.1 ms with PASSIVE. onnxruntime's
    sessions get the matching setting (``session.intra_op.allow_spinning=0``). A value the
    user already set is kept. Returns a description for the report.
    """
    user = os.environ.get("OMP_WAIT_POLICY")
    if "torch" in sys.modules:
        return f"{user or 'default'} (torch was imported before the benchmark could set it)"
    if user:
        return f"{user} (set by the user)"
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    return "PASSIVE (set by normonnx bench: idle workers sleep, as onnxruntime's do with spinning off)"


def run_bench(
    what: str = "all",
    *,
    quick: bool = False,
    threads: int = 2,
    kinds: Iterable[str] | None = None,
    models: Iterable[str] | None = None,
    budget_s: float | None = None,
    command: str = "normonnx bench",
    progress: Callable[..., Any] | None = None,
) -> dict[str, Any]:
    """Run the op and/or model benchmarks and return the JSON document (see :mod:`.report`).

    ``progress(iterable, total=, desc=)`` wraps each list of jobs (the CLI: a progress bar on a
    terminal); default: plain iteration."""
    from ..errors import InputError

    if what not in WHAT:
        raise InputError(f"unknown benchmark {what!r}", note=f"valid: {', '.join(WHAT)}")
    if threads < 1:
        raise InputError(f"--threads must be at least 1, got {threads}")
    wait_policy = prepare_environment()
    from . import models as bmodels
    from . import ops as bops
    from . import report
    from .timing import no_progress

    progress = progress or no_progress
    machine = report.machine()
    ops_rows = ops_default_rows = models_rows = None
    method: dict[str, Any] = {
        "timing": (
            "warm-up, then rounds timing one sample of every candidate in a freshly shuffled order until the "
            "time budget is spent (at least 7 rounds); a sample is k back-to-back calls sized to a few ms, after "
            "one untimed call; median and interquartile range over the samples"
        ),
        "budget per group": f"{budget_s if budget_s is not None else (bops.QUICK_BUDGET_S if quick else bops.BUDGET_S)} s "
        f"per op shape, {budget_s if budget_s is not None else (bmodels.QUICK_BUDGET_S if quick else bmodels.BUDGET_S)} s per model",
        "copy floor": (
            "min(np.copyto into a preallocated buffer, onnxruntime Identity model) medians, both timed with the "
            "norms; the row names which one set it"
        ),
        "OpenMP wait policy": wait_policy,
        "onnxruntime sessions": (
            "CPUExecutionProvider, default graph optimizations, intra-op spinning off when timed round-robin with "
            "torch; the 'default sessions' tables use onnxruntime's default options (idle workers spin), one "
            "candidate alive at a time in shuffled rounds of blocks"
        ),
    }
    notes: list[str] = []
    if what in ("ops", "all"):
        method["ops opset"] = bops.best_opset()
        ops_rows = bops.run_ops(kinds, quick=quick, threads=threads, budget_s=budget_s, progress=progress)
        ops_default_rows = bops.run_ops_default(kinds, quick=quick, threads=threads, progress=progress)
    if what in ("models", "all"):
        opt, why = bmodels.optimizer()
        if opt is None:
            notes.append(f"the `+optimize` column was skipped: {why}")
        models_rows = bmodels.run_models(models, quick=quick, threads=threads, budget_s=budget_s, progress=progress)
    return report.make_document(
        command=command,
        threads=threads,
        quick=quick,
        ops=ops_rows,
        ops_default=ops_default_rows,
        models=models_rows,
        machine_info=machine,
        method=method,
        notes=notes,
    )


__all__ = ["WHAT", "prepare_environment", "run_bench"]
