#!/usr/bin/env python
"""Native kernels vs every other lowering, torch eager and the copy floor, at issue 7's shapes.

    python scripts/bench_kernels.py                 # issue 7 shapes, 2 threads
    python scripts/bench_kernels.py --threads 1 --budget 2 --json kernels.json
    python scripts/bench_kernels.py --kinds group --extra none

All candidates of one shape are timed side by side in one process by
:func:`normonnx.bench.timing.measure` (round-robin rounds in shuffled order, medians):

- the copy floor: the faster of ``np.copyto`` into a preallocated buffer (1 thread) and an
  onnxruntime ``Identity`` model (checked not to alias; it pays the same per-run overhead and
  output allocation as the norm models) — the column ``floor`` says which one set it;
- torch eager (same thread count);
- every lowering strategy that accepts the spec, including ``native_kernel`` (normonnx's compiled
  library, registered as :func:`normonnx.session` does; skipped with the reason if not built).

Standard kinds come from :func:`normonnx.bench.ops.bench_shape`; the fused GroupNorm+SiLU and
the channels-first LayerNorm, which it does not cover, are measured here the same way.

``bench_shape`` runs onnxruntime with idle workers *not* spinning (so they do not steal the 2
cores from the torch candidate). A sleeping worker wakes too late to help a kernel shorter than
~0.3 ms, so those rows are effectively single-threaded. ``--default-sessions`` (on by default)
re-times every target shape as users run it — native_kernel in a default onnxruntime session
(workers spin), with torch eager and three copies: ``np.copyto``, and ``Identity`` and
``Mul(X, 1)`` in default sessions (the Mul uses both threads) — one candidate alive at a time
(:func:`normonnx.bench.ops.bench_shape_default`), since spinning workers would steal the cores
from whoever runs next. The closing lines check the issue's targets in both settings
(benchmarks, not tests: a busy machine moves them); the default-session ones are the targets'
setting ("2 threads").
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

import numpy as np

from normonnx import kernels
from normonnx.bench.ops import COPY_NUMPY, COPY_ORT, TORCH, bench_shape, bench_shape_default, best_opset, ort_copy
from normonnx.bench.timing import measure, ort_session, set_threads
from normonnx.spec import NormSpec

GROUP_SHAPES = [(1, 320, 64, 64), (2, 256, 64, 64), (8, 64, 32, 32), (1, 1280, 8, 8)]
LAYER_SHAPES = [(1, 4096, 1024), (32, 128, 768), (8, 197, 384)]
SHAPES = {"group": GROUP_SHAPES, "layer": LAYER_SHAPES, "rms": LAYER_SHAPES, "instance": GROUP_SHAPES[:2]}
#: (kind, shape, limit, against): native_kernel median ≤ limit × floor, or ≤ torch eager
TARGETS = [
    *(("group", s, 1.5, "floor") for s in GROUP_SHAPES[:3]),
    ("group", GROUP_SHAPES[3], 1.0, "torch"),
    *(("layer", s, 1.3, "floor") for s in LAYER_SHAPES[:2]),
    ("layer", LAYER_SHAPES[2], 1.0, "torch"),
]
EXTRA = {
    "group_silu": [(1, 320, 64, 64), (2, 256, 64, 64)],
    "layer_cf": [(1, 96, 56, 56), (1, 384, 14, 14)],
}


def extra_spec(name: str, shape: tuple[int, ...]) -> NormSpec:
    if name == "group_silu":
        return NormSpec("group", channels=shape[1], groups=32, activation="silu", rank=len(shape))
    if name == "layer_cf":
        return NormSpec("layer", normalized_shape=(shape[1],), channels_first=True, rank=len(shape))
    raise ValueError(name)


def bench_spec(
    label: str, spec: NormSpec, shape: tuple[int, ...], threads: int, budget_s: float
) -> list[dict[str, Any]]:
    """Like ``bench_shape`` for any spec: copy floor, torch eager, each valid strategy (no-spin sessions)."""
    import torch

    from normonnx.lowering import STRATEGIES, build_model, check
    from normonnx.norms import KINDS

    set_threads(threads)
    opset = best_opset()
    k = KINDS[spec.kind]
    rng = np.random.default_rng(0)
    params = k.random_params(spec, rng)
    x = rng.standard_normal(shape).astype(np.float32)
    ref = k.reference(spec, x.astype(np.float64), params)
    out = np.empty_like(x)
    cands: dict[str, Any] = {COPY_NUMPY: lambda: np.copyto(out, x)}
    cands[COPY_ORT], _ = ort_copy(x, threads)
    xt = torch.from_numpy(x)
    tp = {n: torch.from_numpy(np.asarray(v, np.float32)) for n, v in params.items()}

    def torch_call() -> Any:
        with torch.inference_mode():
            return k.torch_forward(spec, xt, tp)

    cands[TORCH] = torch_call
    errs: dict[str, float] = {TORCH: float(np.max(np.abs(torch_call().numpy() - ref)))}
    for s in STRATEGIES:
        if not check(spec, s, opset, "cpu", allow_unstable=True):
            continue
        sess = ort_session(build_model(spec, params, opset, s, allow_unstable=True), threads)
        name = f"onnxruntime:{s}"
        errs[name] = float(np.max(np.abs(sess.run(None, {"X": x})[0] - ref)))
        cands[name] = lambda sess=sess: sess.run(None, {"X": x})
    return _rows(label, shape, measure(cands, budget_s=budget_s), errs)


def _rows(label: str, shape: tuple[int, ...], timings: dict[str, Any], errs: dict[str, float]) -> list[dict[str, Any]]:
    floor_name = min((n for n in timings if n.startswith("copy:")), key=lambda n: timings[n].median_ms)
    floor = timings[floor_name].median_ms
    return [
        {
            "kind": label,
            "shape": list(shape),
            "candidate": c,
            "median_ms": t.median_ms,
            "q1_ms": t.q1_ms,
            "q3_ms": t.q3_ms,
            "x_floor": t.median_ms / floor,
            "floor_ms": floor,
            "floor_source": floor_name,
            "max_abs_err": errs.get(c),
            "error": "",
        }
        for c, t in timings.items()
    ]


def print_group(rows: list[dict[str, Any]]) -> None:
    head = rows[0]
    torch_ms = next((r["median_ms"] for r in rows if r["candidate"] == TORCH), float("nan"))  # nan: not timed
    print(f"\n{head['kind']} {head['shape']}  floor {head['floor_ms']:.3f} ms ({head['floor_source']})")
    print(f"  {'candidate':<28} {'median ms':>10} {'q1..q3 ms':>17} {'x floor':>8} {'x torch':>8} {'max|err|':>9}")
    for r in sorted(rows, key=lambda r: r.get("median_ms", float("inf"))):
        if r.get("error") or "median_ms" not in r:
            print(f"  {r['candidate']:<28} {'—':>10}  {r.get('error', '')[:70]}")
            continue
        err = r.get("max_abs_err")
        mark = " *" if r["candidate"].startswith("onnxruntime:native_kernel") else ""
        print(
            f"  {r['candidate']:<28} {r['median_ms']:>10.3f} {r['q1_ms']:>8.3f}..{r['q3_ms']:<8.3f}"
            f" {r['x_floor']:>8.2f} {r['median_ms'] / torch_ms:>8.2f} {'' if err is None else f'{err:9.1e}'}{mark}"
        )


def check_targets(groups: dict[tuple[str, tuple[int, ...]], list[dict[str, Any]]], suffix: str = "") -> list[str]:
    lines = []
    for kind, shape, limit, against in TARGETS:
        rows = {r["candidate"]: r for r in groups.get((kind + suffix, tuple(shape)), [])}
        nk = rows.get("onnxruntime:native_kernel")
        if nk is None or "median_ms" not in nk or (against == "torch" and TORCH not in rows):
            continue
        if against == "floor":
            ratio = nk["x_floor"]
            what = f"{ratio:.2f}x floor (target <= {limit}x)"
        else:
            ratio = nk["median_ms"] / rows[TORCH]["median_ms"]
            what = f"{ratio:.2f}x torch eager (target <= {limit}x)"
        lines.append(f"{'MET ' if ratio <= limit else 'MISS'} {kind + suffix} {list(shape)}: native_kernel {what}")
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--budget", type=float, default=3.0, help="seconds of timing rounds per shape")
    p.add_argument("--kinds", nargs="*", default=list(SHAPES), choices=list(SHAPES))
    p.add_argument("--extra", nargs="*", default=list(EXTRA), choices=[*EXTRA, "none"])
    p.add_argument(
        "--default-sessions",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also time the target shapes in default onnxruntime sessions, one alive at a time (the targets' numbers)",
    )
    p.add_argument("--json", help="write all rows here")
    a = p.parse_args(argv)
    if not kernels.available():
        print(f"note: native kernels unavailable ({kernels.unavailable_reason()}); measuring the rest", file=sys.stderr)
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    print(
        f"threads {a.threads}, opset {best_opset()}, kernels {kernels.info() or 'unavailable'}, "
        f"load average {load and ' '.join(f'{v:.2f}' for v in load)}"
    )
    groups: dict[tuple[str, tuple[int, ...]], list[dict[str, Any]]] = {}
    for kind in a.kinds:
        for shape in SHAPES[kind]:
            rows = bench_shape(kind, shape, threads=a.threads, budget_s=a.budget)
            groups[(kind, tuple(shape))] = rows
            print_group(rows)
    for name in [e for e in a.extra if e != "none"]:
        for shape in EXTRA[name]:
            rows = bench_spec(name, extra_spec(name, shape), shape, a.threads, a.budget)
            groups[(name, tuple(shape))] = rows
            print_group(rows)
    if a.default_sessions:
        print("\n--- default onnxruntime sessions (idle workers spin), one alive at a time; 2-thread copies ---")
        for kind, shape, _, _ in TARGETS:
            if kind in a.kinds:
                rows = bench_shape_default(kind, shape, threads=a.threads)
                for r in rows:
                    r["kind"] = f"{kind}[default]"
                groups[(f"{kind}[default]", tuple(shape))] = rows
                print_group(rows)
    print("\nno-spin sessions, interleaved with torch:")
    for line in check_targets(groups):
        print(line)
    if a.default_sessions:
        print("default sessions (the issue's setting: 2 threads as users run them):")
        for line in check_targets(groups, "[default]"):
            print(line)
    if a.json:
        with open(a.json, "w") as f:
            json.dump([r for rows in groups.values() for r in rows], f, indent=1, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
