"""The selected CPU lowering of each norm kind against the copy floor, in default onnxruntime
sessions, with many short paired rounds (issue 14's "norm ops >= 1 MiB: <= 1.2x the copy floor").

For every kind and each of its benchmark shapes (``NormKind.bench_shapes``; or the ``--shapes``
given), three candidates are timed by :func:`normonnx.bench.timing.measure_isolated` (one alive at
a time, a fresh random order every round, ``--rounds`` rounds of 0.04 s blocks): ``np.copyto``
(1 thread), ``Mul(X, 1)`` in a default session (onnxruntime splits it over its threads), and the
norm's model as ``normonnx.lowering.select`` picks it for the CPU, in a default session. The floor
is the faster copy by median; ``x_floor`` is the median over rounds of norm / floor in the same
round (:func:`~normonnx.bench.timing.paired_ratio`). ``normonnx bench ops`` measures the same with
torch eager too, in fewer, longer rounds.

    python scripts/bench_floor.py [KIND ...] [--shapes 8,197,384 1,320,64,64] [--rounds 60] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import numpy as np

from normonnx.bench import ops
from normonnx.bench.timing import default_session, measure_isolated, paired_ratio
from normonnx.lowering import build_model, select
from normonnx.norms import KINDS


def bench(kind: str, shape: list[int], *, rounds: int, threads: int) -> dict:
    opset, spec, _, params, x = ops._problem(kind, shape, threads, None, 0)
    strategy = select(spec, opset, "cpu").strategy
    model = build_model(spec, params, opset, strategy)
    out = np.empty_like(x)

    def session(m):
        def build():
            sess = default_session(m, threads)
            return lambda: sess.run(None, {"X": x})

        return build

    t = measure_isolated(
        {"numpy": lambda: lambda: np.copyto(out, x), "mul": session(ops.copy_model("Mul")), "norm": session(model)},
        rounds=rounds,
        block_s=0.04,
        seed=0,
    )
    floor = min(("numpy", "mul"), key=lambda n: t[n].median_ms)
    return {
        "kind": kind,
        "shape": shape,
        "mib": x.nbytes / 2**20,
        "strategy": strategy,
        "norm_us": 1e3 * t["norm"].median_ms,
        "floor": floor,
        "floor_us": 1e3 * t[floor].median_ms,
        "x_floor": paired_ratio(t["norm"], t[floor]),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("kinds", nargs="*", help="norm kinds (default: every kind with benchmark shapes)")
    p.add_argument("--shapes", nargs="*", help="shapes as comma-separated sizes (default: each kind's bench shapes)")
    p.add_argument("--rounds", type=int, default=60)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", help="write the rows as JSON")
    args = p.parse_args(argv)
    rows = []
    for kind in args.kinds or [k for k in KINDS if KINDS[k].bench_shapes]:
        shapes = [[int(v) for v in s.split(",")] for s in args.shapes] if args.shapes else KINDS[kind].bench_shapes
        for shape in shapes:
            r = bench(kind, list(shape), rounds=args.rounds, threads=args.threads)
            rows.append(r)
            print(
                f"| {kind} | {r['shape']} | {r['mib']:.2f} MiB | {r['strategy']} | {r['norm_us']:.1f} µs | "
                f"{r['floor']} {r['floor_us']:.1f} µs | **{r['x_floor']:.2f}×** |",
                flush=True,
            )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
