"""Side-by-side latency measurement: warm-up, adaptive repetitions, round-robin interleaving.

Performance claims in normonnx are *ratios measured in one run*, so every candidate of a
comparison (copy floor, torch eager, each onnxruntime lowering) is timed by one call of
:func:`measure`:

1. warm-up: each candidate runs ``warmup`` times (first-call allocations, thread-pool start,
   onnxruntime's arena growth), the last call estimates its cost;
2. a *sample* is ``inner`` back-to-back calls, ``inner`` chosen per candidate so a sample lasts
   about ``sample_s`` (timer resolution and Python overhead become negligible), preceded by one
   untimed call so the previous candidate's spinning worker threads have yielded the cores;
3. rounds: every round times one sample of every candidate, in a freshly shuffled order, so a
   burst of machine noise (another process on the 2 shared cores) hits all candidates alike;
4. repetitions adapt to a time budget: rounds continue until ``budget_s`` is spent (at least
   ``min_rounds``, at most ``max_rounds``).

Results are medians with the interquartile range (q1, q3), never means: latency noise is
one-sided (interrupts only ever add time).

Candidates that cannot share the machine — onnxruntime sessions with default options, whose idle
intra-op workers spin on the cores after every run — are timed by :func:`measure_isolated`
instead: rounds of blocks, one candidate alive at a time (built, warmed up, timed, released).
"""

from __future__ import annotations

import dataclasses
import gc
import math
import random
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np


@dataclasses.dataclass
class Timing:
    """Per-call latencies of one candidate: each entry is the mean over one sample's ``inner`` calls."""

    name: str
    samples_ms: list[float]
    inner: int
    #: :func:`measure_isolated` only: the median of each round's block, in round order
    block_medians_ms: list[float] = dataclasses.field(default_factory=list)

    @property
    def n(self) -> int:
        return len(self.samples_ms)

    @property
    def median_ms(self) -> float:
        return float(np.median(self.samples_ms)) if self.samples_ms else math.nan

    @property
    def q1_ms(self) -> float:
        return float(np.percentile(self.samples_ms, 25)) if self.samples_ms else math.nan

    @property
    def q3_ms(self) -> float:
        return float(np.percentile(self.samples_ms, 75)) if self.samples_ms else math.nan

    @property
    def iqr_ms(self) -> float:
        return self.q3_ms - self.q1_ms

    @property
    def rel_iqr(self) -> float:
        """IQR / median: the spread as a fraction (0.05 = ±5 % band around the median)."""
        m = self.median_ms
        return self.iqr_ms / m if m > 0 else math.nan

    def as_dict(self) -> dict[str, Any]:
        return {
            "median_ms": self.median_ms,
            "q1_ms": self.q1_ms,
            "q3_ms": self.q3_ms,
            "iqr_ms": self.iqr_ms,
            "samples": self.n,
            "calls_per_sample": self.inner,
        }


def _time_calls(fn: Callable[[], Any], k: int) -> float:
    t0 = time.perf_counter()
    for _ in range(k):
        fn()
    return time.perf_counter() - t0


def _warm_up(fn: Callable[[], Any], warmup: int, sample_s: float, max_inner: int) -> int:
    """Call ``fn`` ``warmup`` times (the last one timed); the calls per sample to last ~``sample_s``."""
    for _ in range(max(0, warmup - 1)):
        fn()
    est = _time_calls(fn, 1)
    return max(1, min(max_inner, math.ceil(sample_s / max(est, 1e-7))))


def measure(
    candidates: Mapping[str, Callable[[], Any]],
    *,
    budget_s: float = 2.0,
    warmup: int = 3,
    min_rounds: int = 7,
    max_rounds: int = 400,
    sample_s: float = 0.004,
    max_inner: int = 200,
    seed: int = 0,
) -> dict[str, Timing]:
    """Time every candidate round-robin; return ``{name: Timing}`` in the candidates' order.

    A candidate that raises stops the measurement of the whole group: timings that did not all
    run under the same conditions are not comparable, so the caller must drop it and retry.
    """
    names = list(candidates)
    inner = {name: _warm_up(candidates[name], warmup, sample_s, max_inner) for name in names}
    out = {n: Timing(n, [], inner[n]) for n in names}
    rng = random.Random(seed)
    t_start = time.perf_counter()
    rounds = 0
    while rounds < max_rounds and (rounds < min_rounds or time.perf_counter() - t_start < budget_s):
        order = names[:]
        rng.shuffle(order)
        for name in order:
            fn = candidates[name]
            fn()  # untimed: lets the previous candidate's worker threads go idle
            dt = _time_calls(fn, inner[name])
            out[name].samples_ms.append(1e3 * dt / inner[name])
        rounds += 1
    return out


def measure_isolated(
    factories: Mapping[str, Callable[[], Callable[[], Any]]],
    *,
    rounds: int = 5,
    block_s: float = 0.3,
    warmup: int = 3,
    sample_s: float = 0.005,
    max_inner: int = 200,
    seed: int = 0,
) -> dict[str, Timing]:
    """Time candidates that must not run side by side; return ``{name: Timing}`` in the given order.

    ``factories[name]()`` builds a candidate (e.g. an onnxruntime session with default options)
    and returns the call to time. Every round visits the candidates in a freshly shuffled order;
    each visit builds the candidate, warms it up, times samples of ``inner`` back-to-back calls for
    about ``block_s``, and drops it (a session's destructor joins its worker threads) before the
    next is built, so spinning workers of one candidate never hold the cores during another's
    block. Samples of all rounds are pooled (medians and quartiles as in :func:`measure`), and
    each round's block median is kept for paired ratios (:func:`paired_ratio`).
    """
    names = list(factories)
    out = {n: Timing(n, [], 0) for n in names}
    rng = random.Random(seed)
    # Every visit ends in gc.collect(); with torch and onnx loaded a full collection scans ~10^6
    # objects (~0.1 s here, more than a short block). Frozen, the objects alive now are skipped
    # and each collection scans only what the visits allocated.
    gc.freeze()
    try:
        _visit_rounds(factories, names, out, rng, rounds, block_s, warmup, sample_s, max_inner)
    finally:
        gc.unfreeze()
    return out


def _visit_rounds(factories, names, out, rng, rounds, block_s, warmup, sample_s, max_inner) -> None:
    for _ in range(max(1, rounds)):
        order = names[:]
        rng.shuffle(order)
        for name in order:
            fn = factories[name]()
            inner = out[name].inner = _warm_up(fn, warmup, sample_s, max_inner)
            block: list[float] = []
            t_end = time.perf_counter() + block_s
            while True:
                block.append(1e3 * _time_calls(fn, inner) / inner)
                if time.perf_counter() >= t_end:
                    break
            out[name].samples_ms += block
            out[name].block_medians_ms.append(float(np.median(block)))
            del fn
            gc.collect()


def paired_ratio(num: Timing, den: Timing) -> float:
    """Median over rounds of ``num``'s block median / ``den``'s (same round): a load change on the
    machine between rounds moves both blocks of a round alike and cancels in their ratio."""
    pairs = [a / b for a, b in zip(num.block_medians_ms, den.block_medians_ms) if b > 0]
    return float(np.median(pairs)) if pairs else math.nan


def ort_session(
    model: Any, threads: int, *, profile: str | None = None, optimize: bool = True, spinning: bool = False
) -> Any:
    """An onnxruntime CPU session for benchmarking: ``threads`` intra-op threads, no spinning.

    onnxruntime's idle intra-op workers spin after each run by default. Interleaved with torch,
    those spinning threads hold the 2 cores while torch's OpenMP workers wait for a time slice
    (measured here: a tiny torch GroupNorm at 12 ms instead of 0.01 ms). Every onnxruntime
    candidate of :func:`measure` therefore runs with ``session.intra_op.allow_spinning = 0``;
    ``spinning=True`` keeps onnxruntime's default (see :func:`default_session`). Graph
    optimizations stay at onnxruntime's default. normonnx's kernel library is registered as
    :func:`normonnx.runtime.session` does.
    """
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.intra_op_num_threads = int(threads)
    so.inter_op_num_threads = 1
    if not spinning:
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if not optimize:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    if profile:
        so.enable_profiling = True
        so.profile_file_prefix = profile
    src = model.SerializeToString() if hasattr(model, "SerializeToString") else model
    from ..runtime.session import register_kernels

    register_kernels(so, src)  # normonnx's native kernels, when built and the model uses them
    from ..providers import ort_name

    return ort.InferenceSession(src, so, providers=[ort_name("cpu")])


def default_session(model: Any, threads: int) -> Any:
    """An onnxruntime CPU session as users get it: default options (idle workers spin), ``threads``
    intra-op threads (onnxruntime's own default is the number of physical cores; inter-op 1, which
    its default sequential execution does not use), normonnx's kernel library registered when the
    model uses it (:func:`normonnx.session` does the same)."""
    return ort_session(model, threads, spinning=True)


def default_visit(model: Any, feed: Any, threads: int) -> Callable[[], Callable[[], Any]]:
    """A :func:`measure_isolated` candidate: each visit opens a :func:`default_session` of ``model``
    and returns the call that runs it on ``feed`` (a dict of arrays by input name, or a list of
    arrays in the model's input order)."""

    def build() -> Callable[[], Any]:
        sess = default_session(model, threads)
        named = feed if isinstance(feed, dict) else {i.name: a for i, a in zip(sess.get_inputs(), feed)}
        return lambda: sess.run(None, named)

    return build


def set_threads(threads: int) -> None:
    """Give torch ``threads`` intra-op threads (onnxruntime sessions get the same count explicitly)."""
    import torch

    torch.set_num_threads(int(threads))


def no_progress(iterable: Any, total: int | None = None, desc: str = "") -> Any:
    """The default ``progress`` of the benchmark runners: plain iteration. The CLI passes its
    progress bar (``normonnx.commands.progress``, same signature); bench never imports the CLI."""
    return iterable
