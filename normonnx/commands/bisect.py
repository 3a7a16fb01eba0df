"""Bisect two ONNX runs: compare them value by value, name the first value that diverges (no torch).

A is the reference. B is another ONNX file (e.g. the optimized model) or a provider spec for A
itself: "cuda" or "cpu:opt" (onnxruntime's graph optimizations on). Every intermediate value the
two share by name is compared in A's topological order; the first one that fails while the values
its node reads agree is reported with its node, op type, module scope and norm lowering.
An element fails only if |b − a| > atol + rtol·|a| (or by --check max|mean|quantile:Q).
`normonnx compare` (the former name) runs the same command.
Exit 0 equivalent, 1 mismatch, 2 usage error, 3 unsupported here."""

from __future__ import annotations

import argparse

from . import final_line
from ._common import (
    add_inputs,
    add_provider,
    add_report_flags,
    add_threads,
    add_tolerances,
    require_reports,
    tolerance_args,
    write_reports,
)

HELP = "bisect two ONNX models (or one model on two providers) to the first diverging value"
#: ``normonnx compare`` is this command's former name and still runs it
ALIASES = ("compare",)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("a", metavar="A.onnx", help="the reference model")
    p.add_argument("b", metavar="B", help="another .onnx file, or cuda / cpu:opt for A on that provider")
    add_inputs(p, "input shapes (default: A's static)")
    add_provider(p, "provider for A (and for a file B)")
    p.add_argument("--optimize-a", action="store_true", help="run A with onnxruntime's graph optimizations on")
    add_tolerances(p, per_output=False)
    add_threads(p)
    p.add_argument(
        "--max-memory",
        metavar="SIZE",
        help="memory budget for the exposed values (e.g. 8G): exposed in groups that fit, refused up front when "
        "they cannot (default: all at once)",
    )
    add_report_flags(
        p,
        {"junit": "write JUnit XML, one testcase per shared value", "html": "write an HTML report (normonnx[report])"},
    )


def run(args: argparse.Namespace) -> int:
    from ..modelspec import parse_input_specs
    from ..verify.bisect import bisect
    from ..verify.inputs import random_inputs

    tolerance_args(args)
    require_reports(args)
    max_memory = None
    if args.max_memory is not None:
        from ..verify.budget import parse_size

        max_memory = parse_size(args.max_memory)  # a bad size fails before any work
    specs = parse_input_specs(args.input)
    inputs = [t.numpy() for t in random_inputs(specs, args.seed)] if specs else None
    rep = bisect(
        args.a,
        args.b,
        inputs,
        provider=args.provider,
        optimize_a=args.optimize_a,
        atol=args.atol,
        rtol=args.rtol,
        check=args.check,
        threads=args.threads,
        seed=args.seed,
        max_memory=max_memory,
    )
    print(rep.format_table())
    for n in rep.notes:
        print(f"note: {n}")
    text = rep.summary()
    write_reports(args, {"bisect": rep}, rep.passed, text)
    final_line(rep.passed, text)
    return 0 if rep.passed else 1
