#!/usr/bin/env python
"""What `normonnx optimize` does to real exports: nodes, onnxruntime CPU latency, max error, before/after.

    python scripts/optimize_report.py                       # unet, resnet_gn, resnet
    python scripts/optimize_report.py --models unet --budget 10 --json optimize.json

For each model in ``models/`` and each source exporter — torch's default ``torch.onnx.export``
(dynamo, its default opset), torch's legacy TorchScript exporter at opset 17, and
``normonnx.exporter.export`` — the file is optimized for the CPU with
:func:`normonnx.optimize.optimize_model` (which verifies itself against the original), then
original and optimized are timed side by side in one process (:func:`normonnx.bench.timing.measure`:
interleaved rounds, medians, interquartile ranges; default onnxruntime sessions, 2 threads,
normonnx's kernel library registered) and compared with the model run in float64 by torch.
Ratios are the result; the machines are shared and absolute times are noisy.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import json
import os
import sys
import tempfile
import warnings

import numpy as np
import onnx
import torch

from normonnx.bench.timing import measure, ort_session, set_threads
from normonnx.exporter import export
from normonnx.modelspec import models_registry
from normonnx.optimize import optimize_model

SOURCES = ("torch-dynamo", "torch-legacy-17", "normonnx")


def _export(source: str, model: torch.nn.Module, inputs: tuple, names: list[str], path: str) -> None:
    with (
        contextlib.redirect_stdout(io.StringIO()),
        contextlib.redirect_stderr(io.StringIO()),
        warnings.catch_warnings(),
    ):
        warnings.simplefilter("ignore")
        if source == "torch-dynamo":
            torch.onnx.export(model, inputs, path, dynamo=True, input_names=names)
        elif source == "torch-legacy-17":
            torch.onnx.export(model, inputs, path, dynamo=False, opset_version=17, input_names=names)
        else:
            export(model, inputs, path, input_names=names)


def _max_err(outs: list[np.ndarray], refs: list[np.ndarray]) -> float:
    return max(float(np.max(np.abs(a.astype(np.float64) - r))) for a, r in zip(outs, refs))


def report(name: str, threads: int, budget: float) -> list[dict]:
    entry = models_registry().get(name)
    model = entry.factory().eval()
    inputs = tuple(entry.example_inputs())
    names = list(entry.input_names)
    with torch.inference_mode():
        m64 = copy.deepcopy(model).double()
        out64 = m64(*[t.double() if t.is_floating_point() else t for t in inputs])
    refs = [t.numpy() for t in (out64 if isinstance(out64, (tuple, list)) else (out64,))]
    feed_arrays = [t.numpy() for t in inputs]
    rows = []
    with tempfile.TemporaryDirectory() as d:
        for source in SOURCES:
            src = os.path.join(d, f"{name}.{source}.onnx")
            try:
                _export(source, model, inputs, names, src)
            except Exception as e:  # an exporter failing on a model is a result, not a crash
                rows.append({"model": name, "source": source, "error": f"export: {type(e).__name__}: {e}"[:200]})
                continue
            original = onnx.load(src)
            res = optimize_model(original, target="cpu")
            dst = os.path.join(d, f"{name}.{source}.opt.onnx")
            onnx.save(res.model, dst)
            sessions = {"before": ort_session(src, threads), "after": ort_session(dst, threads)}
            feeds = {k: {i.name: a for i, a in zip(s.get_inputs(), feed_arrays)} for k, s in sessions.items()}
            errs = {k: _max_err(s.run(None, feeds[k]), refs) for k, s in sessions.items()}
            timings = measure(
                {k: (lambda s=s, f=feeds[k]: s.run(None, f)) for k, s in sessions.items()},
                budget_s=budget,
                warmup=3,
                min_rounds=9,
                sample_s=0.02,
            )
            rows.append(
                {
                    "model": name,
                    "source": source,
                    "opset": res.opset,
                    "nodes_before": res.nodes_before,
                    "nodes_after": res.nodes_after,
                    "ms_before": timings["before"].median_ms,
                    "ms_after": timings["after"].median_ms,
                    "iqr_before": timings["before"].iqr_ms,
                    "iqr_after": timings["after"].iqr_ms,
                    "speedup": timings["before"].median_ms / timings["after"].median_ms,
                    "err_before": errs["before"],
                    "err_after": errs["after"],
                    "verified": res.passed,
                    "fired": dict(res.fired),
                    "lowerings": sorted({f"{r['kind']}:{r['strategy']}" for r in res.lowerings}),
                    "refused": len(res.refused),
                }
            )
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="unet,resnet_gn,resnet", help="comma-separated names from models/")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--budget", type=float, default=6.0, help="seconds of timing rounds per file pair")
    p.add_argument("--json", metavar="FILE", help="write the rows as JSON")
    args = p.parse_args(argv)
    set_threads(args.threads)
    rows = []
    for name in args.models.split(","):
        print(f"[{name}]", file=sys.stderr)
        rows += report(name.strip(), args.threads, args.budget)
    head = f"{'model':10s} {'source':16s} {'opset':>5s} {'nodes':>11s} {'ms before':>10s} {'ms after':>9s} "
    print(head + f"{'speedup':>8s} {'err before':>10s} {'err after':>9s}  verified  rules fired")
    for r in rows:
        if "error" in r:
            print(f"{r['model']:10s} {r['source']:16s} {r['error']}")
            continue
        fired = ", ".join(f"{k}×{v}" for k, v in sorted(r["fired"].items())) or "none"
        print(
            f"{r['model']:10s} {r['source']:16s} {r['opset']:5d} {r['nodes_before']:4d} → {r['nodes_after']:4d} "
            f"{r['ms_before']:10.3f} {r['ms_after']:9.3f} {r['speedup']:7.2f}× {r['err_before']:10.1e} "
            f"{r['err_after']:9.1e}  {'yes' if r['verified'] else 'NO':8s}  {fired}"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    bad = [r for r in rows if "error" not in r and not r["verified"]]
    print(f"{'FAILED' if bad else 'PASSED'} | optimize report: {len(rows)} files, {len(bad)} failed verification")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
