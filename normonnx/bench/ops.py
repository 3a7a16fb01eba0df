"""Per-norm-op latency: every valid lowering strategy in onnxruntime vs torch eager vs a copy floor.

A normalization reads its input once or twice and writes its output once, so it is memory-bound:
the *copy floor*, the time to read and write the same bytes, is the physical limit a kernel can
approach. Every latency is reported as ``× floor`` measured in the same run, so the numbers
survive a noisy shared machine.

The floor is the faster of two copies of the input tensor, both timed round-robin with the norms:

- ``copy:numpy`` — ``np.copyto(out, x)`` into a preallocated buffer (one thread, no allocation);
- ``copy:onnxruntime`` — a one-node ``Identity`` model in an onnxruntime session with the same
  thread count; checked not to alias (its output is a fresh buffer), so it pays the same
  per-run overhead and output allocation as the norm models do. Should onnxruntime ever alias
  it, ``Mul(x, 1)`` is used instead.

Each row records which copy set the floor (``floor_source``).

Those sessions run with idle workers not spinning (they would steal the cores from torch), so a
kernel shorter than ~0.3 ms effectively runs on one thread. :func:`bench_shape_default` times
the strategy normonnx selects as users run it — a default onnxruntime session, idle workers
spinning — next to torch eager and three copies (``np.copyto``, and ``Identity`` and
``Mul(x, 1)`` in default sessions; onnxruntime splits the element-wise Mul over its threads, so
the floor also uses every thread), one candidate alive at a time
(:func:`~normonnx.bench.timing.measure_isolated`).

Candidates per (kind, shape): the copies, torch eager (``kind.torch_forward`` under
``torch.inference_mode``), and each strategy ``check`` accepts at the best opset (the highest
both normonnx and the installed onnxruntime support), unstable ones included and flagged; the
strategy normonnx's selector would choose is flagged ``selected``. onnxruntime sessions use
default graph optimizations (what a user runs) and ``threads`` intra-op threads; torch gets
the same count. Every candidate's output is also compared once with the float64 reference.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper

from ..norms import KINDS
from ..norms.group import BENCH_GROUPS
from ..spec import NormSpec
from .timing import (
    Timing,
    default_session,
    measure,
    measure_isolated,
    no_progress,
    ort_session,
    paired_ratio,
    set_threads,
)


def shape_table(quick: bool = False) -> dict[str, tuple[tuple[int, ...], ...]]:
    """Benchmark shapes per registered kind, each kind's own (``NormKind.bench_shapes``; ``--quick``:
    ``quick_bench_shapes``, tiny ones for tests and smoke runs, where per-call overhead dominates
    the ratios). A kind that declares none is not benchmarked."""
    return {
        k: kind.quick_bench_shapes if quick else kind.bench_shapes
        for k, kind in KINDS.items()
        if (kind.quick_bench_shapes if quick else kind.bench_shapes)
    }


#: the shapes of the built-in kinds (issue 6): diffusion UNet / SD GroupNorms (batch / instance
#: norms too), ViT / LLM LayerNorms (RMSNorm too)
SHAPES = shape_table()
QUICK_SHAPES = shape_table(quick=True)
GROUPS = BENCH_GROUPS
#: time budget per (kind, shape) group of candidates, seconds
BUDGET_S = 3.0
QUICK_BUDGET_S = 0.05

COPY_NUMPY = "copy:numpy"
COPY_ORT = "copy:onnxruntime"
COPY_ORT_MUL = "copy:onnxruntime[Mul]"
TORCH = "torch"
#: rounds x seconds per block of the default-session timing (one candidate alive at a time)
DEFAULT_ROUNDS, DEFAULT_BLOCK_S = 9, 0.2
QUICK_DEFAULT_ROUNDS, QUICK_DEFAULT_BLOCK_S = 1, 0.01


def spec_for(kind: str, shape: Sequence[int]) -> NormSpec:
    """The benchmarked spec of ``kind`` at ``shape`` (affine, default epsilon, float32)."""
    if kind not in KINDS or not KINDS[kind].bench_shapes:
        raise ValueError(f"no benchmark spec for kind {kind!r}")
    return KINDS[kind].bench_spec(shape)


def best_opset() -> int:
    """The highest default-domain opset both normonnx emits and the installed onnxruntime loads."""
    from ..lowering import MAX_OPSET
    from ..runtime.probe import ort_max_opset

    return min(MAX_OPSET, ort_max_opset())


def copy_model(op: str = "Identity") -> onnx.ModelProto:
    """``Y = Identity(X)`` (or ``Mul(X, 1)``): onnxruntime reading and writing X's bytes once."""
    inits = []
    if op == "Identity":
        node = helper.make_node("Identity", ["X"], ["Y"], name="copy")
    elif op == "Mul":
        node = helper.make_node("Mul", ["X", "one"], ["Y"], name="copy")
        inits = [helper.make_tensor("one", TensorProto.FLOAT, [], [1.0])]
    else:
        raise ValueError(f"copy model op must be Identity or Mul, got {op!r}")
    g = helper.make_graph(
        [node],
        f"copy_{op.lower()}",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)],
        inits,
    )
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)


def ort_copy(x: np.ndarray, threads: int) -> tuple[Callable[[], Any], str]:
    """A callable running the onnxruntime copy model on ``x``, and the op it uses.

    Identity is tried first; if onnxruntime hands back a view of the input (no bytes moved) it
    is not a copy, and ``Mul(x, 1)`` replaces it.
    """
    for op in ("Identity", "Mul"):
        s = ort_session(copy_model(op), threads)
        y = s.run(None, {"X": x})[0]
        if not np.shares_memory(x, y) and np.array_equal(x, y):
            return (lambda s=s: s.run(None, {"X": x})), op
    raise RuntimeError("onnxruntime aliased both copy models; no copy floor available")


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _problem(kind: str, shape: Sequence[int], threads: int, opset: int | None, seed: int) -> tuple[Any, ...]:
    """Threads set for torch; (opset, spec, norm kind, float64 params, float32 input) of one benchmark."""
    from ..norms import KINDS

    set_threads(threads)
    spec = spec_for(kind, shape)
    k = KINDS[kind]
    rng = np.random.default_rng(seed)
    params = k.random_params(spec, rng)
    x = rng.standard_normal(tuple(shape)).astype(np.float32)
    return (best_opset() if opset is None else opset), spec, k, params, x


def bench_shape(
    kind: str,
    shape: Sequence[int],
    *,
    threads: int = 2,
    opset: int | None = None,
    budget_s: float = BUDGET_S,
    quick: bool = False,
    strategies: Iterable[str] | None = None,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Measure every candidate for one (kind, shape); one row (dict) per candidate."""
    import torch

    from ..lowering import STRATEGIES, build_model, check, select

    opset, spec, k, params, x = _problem(kind, shape, threads, opset, seed)
    ref = k.reference(spec, x.astype(np.float64), params)
    ref_scale = float(np.max(np.abs(ref)))  # errors below are judged against this scale
    try:
        chosen = select(spec, opset, "cpu").strategy
    except Exception:
        chosen = None

    cands: dict[str, Callable[[], Any]] = {}
    info: dict[str, dict[str, Any]] = {}
    out = np.empty_like(x)
    cands[COPY_NUMPY] = lambda: np.copyto(out, x)
    info[COPY_NUMPY] = {"strategy": None, "note": "np.copyto into a preallocated buffer (1 thread)"}
    fn, op = ort_copy(x, threads)
    cands[COPY_ORT] = fn
    info[COPY_ORT] = {"strategy": None, "note": f"onnxruntime {op} model, {threads} threads"}

    xt = torch.from_numpy(x)
    tparams = {n: torch.from_numpy(np.asarray(v, dtype=np.float32)) for n, v in params.items()}

    def torch_call() -> Any:
        with torch.inference_mode():
            return k.torch_forward(spec, xt, tparams)

    cands[TORCH] = torch_call
    info[TORCH] = {"strategy": None, "note": f"torch {torch.__version__} eager, {threads} threads"}
    with torch.inference_mode():
        y_torch = k.torch_forward(spec, xt, tparams).numpy()
    info[TORCH]["max_abs_err"] = float(np.max(np.abs(y_torch.astype(np.float64) - ref)))

    names = list(strategies) if strategies is not None else list(STRATEGIES)
    for name in names:
        if not check(spec, name, opset, "cpu", allow_unstable=True):
            continue
        label = f"onnxruntime:{name}"
        model = build_model(spec, params, opset, name, allow_unstable=True)
        try:
            s = ort_session(model, threads)
            y = s.run(None, {"X": x})[0]
        except Exception as e:  # a strategy onnxruntime cannot run is a result, not a crash
            info[label] = {"strategy": name, "error": f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"}
            continue
        cands[label] = lambda s=s: s.run(None, {"X": x})
        err = float(np.max(np.abs(y.astype(np.float64) - ref))) if y.shape == ref.shape else math.inf
        info[label] = {
            "strategy": name,
            "stable": bool(check(spec, name, opset, "cpu", allow_unstable=False)),
            "selected": name == chosen,
            "max_abs_err": err if np.isfinite(err) else None,
            "note": f"opset {opset}",
        }

    if quick:
        timings = measure(cands, budget_s=budget_s, warmup=1, min_rounds=3, max_rounds=20, sample_s=0.001, seed=seed)
    else:
        timings = measure(cands, budget_s=budget_s, seed=seed)
    floor_name = min((COPY_NUMPY, COPY_ORT), key=lambda n: timings[n].median_ms)
    floor = timings[floor_name].median_ms
    nbytes = int(x.nbytes)
    rows: list[dict[str, Any]] = []
    for name, meta in info.items():
        t: Timing | None = timings.get(name)
        row: dict[str, Any] = {
            "kind": kind,
            "shape": list(shape),
            "spec": spec.key(),
            "opset": opset,
            "threads": threads,
            "candidate": name,
            "strategy": meta.get("strategy"),
            "stable": meta.get("stable"),
            "selected": bool(meta.get("selected", False)),
            "max_abs_err": meta.get("max_abs_err"),
            "floor_ms": floor,
            "floor_source": floor_name,
            "bytes": nbytes,
            "ref_scale": ref_scale,
            "note": meta.get("note", ""),
            "error": meta.get("error", ""),
        }
        if t is not None:
            row.update(t.as_dict())
            row["x_floor"] = t.median_ms / floor
            # read + write of x: the effective bandwidth if the op touched each byte twice
            row["gb_per_s"] = 2 * nbytes / (t.median_ms * 1e-3) / 1e9
        rows.append(row)
    return rows


def bench_shape_default(
    kind: str,
    shape: Sequence[int],
    *,
    threads: int = 2,
    opset: int | None = None,
    quick: bool = False,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """The selected strategy in a default onnxruntime session vs torch eager vs three copies.

    One row per candidate (``session: "default"``), all from one :func:`measure_isolated` run:
    ``x_floor`` against the fastest copy (by median) and ``x_torch`` against torch eager, each the
    median over rounds of the two block medians' ratio (:func:`paired_ratio`), so a load change on
    the shared machine between rounds cancels.
    """
    import torch

    from ..lowering import build_model, select

    opset, spec, k, params, x = _problem(kind, shape, threads, opset, seed)
    strategy = select(spec, opset, "cpu").strategy
    model = build_model(spec, params, opset, strategy)
    out = np.empty_like(x)
    xt = torch.from_numpy(x)
    tparams = {n: torch.from_numpy(np.asarray(v, dtype=np.float32)) for n, v in params.items()}

    def session(m: onnx.ModelProto) -> Callable[[], Callable[[], Any]]:
        def build() -> Callable[[], Any]:
            sess = default_session(m, threads)
            return lambda: sess.run(None, {"X": x})

        return build

    def torch_call() -> Any:
        with torch.inference_mode():
            return k.torch_forward(spec, xt, tparams)

    label = f"onnxruntime:{strategy}"
    factories: dict[str, Callable[[], Callable[[], Any]]] = {
        COPY_NUMPY: lambda: lambda: np.copyto(out, x),
        COPY_ORT: session(copy_model("Identity")),
        COPY_ORT_MUL: session(copy_model("Mul")),
        TORCH: lambda: torch_call,
        label: session(model),
    }
    timings = measure_isolated(
        factories,
        rounds=QUICK_DEFAULT_ROUNDS if quick else DEFAULT_ROUNDS,
        block_s=QUICK_DEFAULT_BLOCK_S if quick else DEFAULT_BLOCK_S,
        warmup=1 if quick else 3,
        seed=seed,
    )
    floor_name = min((COPY_NUMPY, COPY_ORT, COPY_ORT_MUL), key=lambda n: timings[n].median_ms)
    floor = timings[floor_name].median_ms
    return [
        {
            "kind": kind,
            "shape": list(shape),
            "session": "default",
            "threads": threads,
            "candidate": name,
            "strategy": strategy if name == label else None,
            "floor_ms": floor,
            "floor_source": floor_name,
            **t.as_dict(),
            "x_floor": paired_ratio(t, timings[floor_name]),
            "x_torch": paired_ratio(t, timings[TORCH]),
        }
        for name, t in timings.items()
    ]


def _over_shapes(
    what: str,
    bench: Callable[[str, tuple[int, ...]], list[dict[str, Any]]],
    kinds: Iterable[str] | None,
    quick: bool,
    shapes: dict[str, Sequence[Sequence[int]]] | None,
    log: Callable[[str], None] | None,
    progress: Callable[..., Any] = no_progress,
) -> list[dict[str, Any]]:
    """``bench(kind, shape)`` for every (kind, shape) of the table, with progress; rows in order."""
    table = shapes or shape_table(quick)
    kinds = list(kinds) if kinds is not None else list(table)
    jobs = [(k, tuple(s)) for k in kinds for s in table[k]]
    rows: list[dict[str, Any]] = []
    for i, (kind, shape) in enumerate(progress(jobs, total=len(jobs), desc=f"bench {what}")):
        if log:
            log(f"[{what} {i + 1}/{len(jobs)}] {kind} {list(shape)}")
        rows += bench(kind, shape)
    return rows


def run_ops(
    kinds: Iterable[str] | None = None,
    *,
    quick: bool = False,
    threads: int = 2,
    budget_s: float | None = None,
    shapes: dict[str, Sequence[Sequence[int]]] | None = None,
    opset: int | None = None,
    log: Callable[[str], None] | None = _log,
    progress: Callable[..., Any] = no_progress,
) -> list[dict[str, Any]]:
    """Benchmark every (kind, shape); rows as :func:`bench_shape` returns them, in order."""
    budget = budget_s if budget_s is not None else (QUICK_BUDGET_S if quick else BUDGET_S)

    def bench(kind: str, shape: tuple[int, ...]) -> list[dict[str, Any]]:
        return bench_shape(kind, shape, threads=threads, opset=opset, budget_s=budget, quick=quick)

    return _over_shapes("ops", bench, kinds, quick, shapes, log, progress)


def run_ops_default(
    kinds: Iterable[str] | None = None,
    *,
    quick: bool = False,
    threads: int = 2,
    shapes: dict[str, Sequence[Sequence[int]]] | None = None,
    opset: int | None = None,
    log: Callable[[str], None] | None = _log,
    progress: Callable[..., Any] = no_progress,
) -> list[dict[str, Any]]:
    """:func:`bench_shape_default` for every (kind, shape), rows in order."""

    def bench(kind: str, shape: tuple[int, ...]) -> list[dict[str, Any]]:
        return bench_shape_default(kind, shape, threads=threads, opset=opset, quick=quick)

    return _over_shapes("ops, default sessions", bench, kinds, quick, shapes, log, progress)
