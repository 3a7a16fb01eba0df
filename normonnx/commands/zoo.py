"""The main job: export every model in models/ with normonnx, run it in onnxruntime CPU, verify
it against torch (example inputs, random samples, a second size on dynamic axes), and print a
table: model, norms found, strategies used, export time, max error (vs torch fp32 and fp64),
torch vs onnxruntime latency (medians, same thread count)."""

from __future__ import annotations

import argparse

from . import final_line, progress, write_json
from ._common import add_json, count

HELP = "export, run and verify every bundled model (the main job)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("models", nargs="*", metavar="NAME", help="models to run (default: all)")
    p.add_argument("--list", action="store_true", help="list the bundled models and exit")
    p.add_argument("-o", "--out-dir", default="out", help="where the .onnx files go (default: out/)")
    p.add_argument("--opset", type=int, default=None, help="opset for every model (default: best per model)")
    p.add_argument("--threads", type=count(1), default=2, help="threads for torch and onnxruntime (default 2)")
    p.add_argument("--reps", type=count(1), default=10, help="timed repetitions per model (default 10)")
    add_json(p, "the rows")


def run(args: argparse.Namespace) -> int:
    from ..errors import ModelLoadError
    from ..modelspec import models_registry
    from ..zoo import format_rows, run_zoo

    reg = models_registry()
    if reg is None:
        raise ModelLoadError("models/ not found", note="run from a normonnx checkout")
    if args.list:
        for n in reg.names():
            e = reg.get(n)
            print(f"{n:16s} {','.join(e.norm_kinds):20s} {e.description}")
        final_line(True, f"{len(reg.names())} models")
        return 0
    unknown = [n for n in args.models if n not in reg.names()]
    if unknown:
        raise ModelLoadError(f"unknown model(s): {', '.join(unknown)}", note=f"bundled: {', '.join(reg.names())}")
    rows = run_zoo(
        args.models or None,
        args.out_dir,
        opset=args.opset,
        threads=args.threads,
        reps=args.reps,
        progress=lambda xs: progress(xs, desc="models"),
    )
    print(format_rows(rows))
    if args.json:
        write_json(args.json, [r.as_dict() for r in rows])
    ok = all(r.passed for r in rows)
    failed = [r.model for r in rows if not r.passed]
    final_line(
        ok,
        f"zoo: {sum(r.passed for r in rows)}/{len(rows)} models equivalent"
        + (f"; failed: {', '.join(failed)}" if failed else ""),
    )
    return 0 if ok else 1
