"""normonnx export vs the default ``torch.onnx.export`` on every model in models/, in default
onnxruntime sessions, paired per round (issue 11's "never slower than the default export").

For each model: the default export (``torch.onnx.export(model, inputs, dynamo=True)``, every
argument at its default) and ``normonnx.exporter.export`` (defaults), both at the example inputs'
static shapes. Both files run in onnxruntime sessions with default options (workers spin, 2
intra-op threads), one session alive at a time, visited in a shuffled order every round
(:func:`normonnx.bench.timing.measure_isolated`); the speed-up is the median over rounds of the
default file's block median / normonnx's (:func:`~normonnx.bench.timing.paired_ratio`), so load
changes between rounds cancel. ``--runs K`` repeats the whole measurement K times and prints
every run's ratio: a target "in every run" is read from the minimum.

    python scripts/bench_export.py [NAME ...] [--rounds 12] [--runs 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
import tempfile
import warnings

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import numpy as np
import torch

import models
from normonnx.bench.timing import default_session, measure_isolated, paired_ratio
from normonnx.exporter import export


def _default_export(model: torch.nn.Module, inputs: tuple, path: str) -> None:
    with (
        warnings.catch_warnings(),
        contextlib.redirect_stdout(io.StringIO()),
        contextlib.redirect_stderr(io.StringIO()),
    ):
        warnings.simplefilter("ignore")
        torch.onnx.export(model, inputs, path, dynamo=True)


def bench_model(name: str, tmp: str, *, rounds: int, runs: int, threads: int) -> dict:
    entry = models.get(name)
    model, inputs = entry.factory(), tuple(entry.example_inputs())
    default_path, ours_path = os.path.join(tmp, f"{name}.default.onnx"), os.path.join(tmp, f"{name}.normonnx.onnx")
    try:
        _default_export(model, inputs, default_path)
    except Exception as e:  # e.g. a model built from normonnx.nn layers: torch's exporter lacks their ops
        why = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        return {"model": name, "hand_written": entry.hand_written, "error": f"default export failed: {why}"}
    res = export(model, inputs, ours_path)
    feeds = {}
    for label, path in (("default", default_path), ("normonnx", ours_path)):
        sess = default_session(path, threads)
        feeds[label] = {i.name: t.numpy() for i, t in zip(sess.get_inputs(), inputs)}
        del sess

    def factory(label: str, path: str):
        def build():
            sess = default_session(path, threads)
            feed = feeds[label]
            return lambda: sess.run(None, feed)

        return build

    ratios, medians = [], []
    for run in range(runs):
        t = measure_isolated(
            {"default": factory("default", default_path), "normonnx": factory("normonnx", ours_path)},
            rounds=rounds,
            seed=run,
        )
        ratios.append(paired_ratio(t["default"], t["normonnx"]))
        medians.append((t["default"].median_ms, t["normonnx"].median_ms))
    return {
        "model": name,
        "hand_written": entry.hand_written,
        "norm_nodes": res.strategies,
        "fired": res.fired,
        "speedup_runs": ratios,
        "speedup_min": float(np.min(ratios)),
        "speedup_median": float(np.median(ratios)),
        "default_ms": [m[0] for m in medians],
        "normonnx_ms": [m[1] for m in medians],
    }


def format_table(rows: list[dict]) -> str:
    lines = [
        "| model | hand-written | default ms | normonnx ms | speed-up per run (default / normonnx) | min |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['model']} | {'yes' if r['hand_written'] else ''} | — | — | {r['error'][:90]} | — |")
            continue
        lines.append(
            f"| {r['model']} | {'yes' if r['hand_written'] else ''} | {np.median(r['default_ms']):.3f} | "
            f"{np.median(r['normonnx_ms']):.3f} | {', '.join(f'{x:.3f}' for x in r['speedup_runs'])} | "
            f"{r['speedup_min']:.3f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("names", nargs="*", help="models (default: all in models/)")
    p.add_argument("--rounds", type=int, default=12, help="paired rounds per run (default 12)")
    p.add_argument("--runs", type=int, default=3, help="independent runs (default 3)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", help="write the rows as JSON")
    args = p.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.names or models.names():
            rows.append(bench_model(name, tmp, rounds=args.rounds, runs=args.runs, threads=args.threads))
            r = rows[-1]
            runs = r.get("speedup_runs")
            print(
                f"{name:16s} " + (f"speed-up {', '.join(f'{x:.3f}' for x in runs)}" if runs else r["error"]), flush=True
            )
    print(format_table(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
