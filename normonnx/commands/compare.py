"""Compare two ONNX runs value by value and name the first value that diverges (no torch needed).

A is the reference. B is another ONNX file (e.g. the optimized model) or a provider spec for A
itself: "cuda" or "cpu:opt" (onnxruntime's graph optimizations on). Every intermediate value the
two share by name is compared in A's topological order; the first one that fails while the values
its node reads agree is reported with its node, op type, module scope and norm lowering.
An element fails only if |b − a| > atol + rtol·|a| (or by --check max|mean|quantile:Q).
Exit 0 equivalent, 1 mismatch, 2 usage error, 3 unsupported here."""

from __future__ import annotations

import argparse

from . import final_line, write_json
from ._common import count

HELP = "bisect two ONNX models (or one model on two providers) to the first diverging value"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("a", metavar="A.onnx", help="the reference model")
    p.add_argument("b", metavar="B", help="another .onnx file, or cuda / cpu:opt for A on that provider")
    p.add_argument("--input", action="append", metavar="NAME:SHAPE[:DTYPE]", help="input shapes (default: A's static)")
    p.add_argument("--seed", type=int, default=0, help="seed for generated inputs (default 0)")
    p.add_argument("--provider", choices=["cpu", "cuda"], default="cpu", help="provider for A (and for a file B)")
    p.add_argument("--optimize-a", action="store_true", help="run A with onnxruntime's graph optimizations on")
    p.add_argument("--atol", type=float, default=None)
    p.add_argument("--rtol", type=float, default=None)
    p.add_argument("--check", default="elementwise", help="elementwise (default), max, mean or quantile:Q")
    p.add_argument("--threads", type=count(1), default=None, help="onnxruntime intra-op threads")
    p.add_argument(
        "--max-memory",
        metavar="SIZE",
        help="memory budget for the exposed values (e.g. 8G): exposed in groups that fit, refused up front when "
        "they cannot (default: all at once)",
    )
    p.add_argument("--json", metavar="FILE", help="write the report as JSON ('-' for stdout)")
    p.add_argument("--junit", metavar="FILE", help="write JUnit XML, one testcase per shared value")
    p.add_argument("--html", metavar="FILE", help="write an HTML report (normonnx[report])")


def run(args: argparse.Namespace) -> int:
    from ..bisect import bisect
    from ..compare import check_statistic, check_tolerance
    from ..modelspec import parse_input_specs, random_inputs
    from ..reports import write_html, write_junit

    check_statistic(args.check, "--check")
    check_tolerance(args.atol, "--atol")
    check_tolerance(args.rtol, "--rtol")
    if args.html:
        from ..reports import require_html

        require_html()
    max_memory = None
    if args.max_memory is not None:
        from ..budget import parse_size

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
    if args.json:
        write_json(args.json, rep.as_dict())
    if args.junit:
        write_junit(args.junit, {"bisect": rep})
    text = rep.summary()
    if args.html:
        write_html(args.html, {"bisect": rep}, final=f"{'PASSED' if rep.passed else 'FAILED'} | {text}")
    final_line(rep.passed, text)
    return 0 if rep.passed else 1
