"""Verify that an ONNX file computes what the torch MODEL computes.

Runs torch (eval, no grad) and onnxruntime on the example inputs, random samples of the same
shapes, and a second size along the ONNX file's dynamic axes; compares every output. An element
fails only if it exceeds both atol and rtol·|reference|. Exit 0 equivalent, 1 mismatch."""

from __future__ import annotations

import argparse

from . import final_line, write_json
from ._common import add_model_inputs, model_and_inputs, parse_tolerances

HELP = "verify an ONNX file against its torch model"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="MODEL")
    p.add_argument("onnx", metavar="ONNX")
    add_model_inputs(p)
    p.add_argument("--provider", choices=["cpu", "cuda"], default="cpu")
    p.add_argument(
        "--atol", action="append", metavar="[OUT:]X", help="absolute tolerance, global or per output (repeatable)"
    )
    p.add_argument(
        "--rtol", action="append", metavar="[OUT:]X", help="relative tolerance, global or per output (repeatable)"
    )
    p.add_argument("--check", default="elementwise", help="elementwise (default), max, mean or quantile:Q")
    p.add_argument("--samples", type=int, default=2, help="random samples besides the example inputs (default 2)")
    p.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads")
    p.add_argument("--json", metavar="FILE", help="write the report as JSON ('-' for stdout)")


def run(args: argparse.Namespace) -> int:
    from ..compare import Tolerance, tolerance
    from ..verifier import verify

    model, inputs, _ = model_and_inputs(args)
    atol, atol_per = parse_tolerances(args.atol, "--atol")
    rtol, rtol_per = parse_tolerances(args.rtol, "--rtol")
    per = {}
    for name in set(atol_per) | set(rtol_per):
        base = tolerance("float32", "model", args.provider)
        per[name] = Tolerance(
            atol_per.get(name, atol if atol is not None else base.atol),
            rtol_per.get(name, rtol if rtol is not None else base.rtol),
        )
    rep = verify(
        model,
        args.onnx,
        inputs,
        provider=args.provider,
        atol=atol,
        rtol=rtol,
        per_output=per,
        n_samples=args.samples,
        seed=args.seed,
        check=args.check,
        threads=args.threads,
    )
    print(rep.format_table())
    if rep.float64_max_abs:
        print("max |onnx − torch float64|: " + ", ".join(f"{k}={v:.3g}" for k, v in rep.float64_max_abs.items()))
    print(f"latency per sample: torch {rep.torch_ms:.2f} ms, onnxruntime {rep.ort_ms:.2f} ms")
    if args.json:
        write_json(args.json, rep.as_dict())
    final_line(rep.passed, rep.summary())
    return 0 if rep.passed else 1
