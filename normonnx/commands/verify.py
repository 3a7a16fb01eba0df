"""Verify that an ONNX file computes what the torch MODEL computes — and if not, find the layer.

Runs torch (eval, no grad) and onnxruntime on the example inputs, random samples of the same
shapes, and a second size along the ONNX file's dynamic axes; compares every output.

Tolerances: an element fails only if it exceeds BOTH bounds, |onnx − torch| > atol + rtol·|torch|
(Polygraphy's and numpy's convention), defaults from the dtype × kind × provider table.
--check replaces the elementwise rule by a statistic: max (max error <= atol + rtol·max|torch|),
mean (mean error <= atol) or quantile:Q (the Q-quantile of the per-element excess <= 0).

When the outputs differ (or with --localize) every torch module's output is compared with its
ONNX value and the first module that diverges while its inputs agree is named, with its norm
kind and lowering strategy. --stress runs offset / tiny-scale / constant / large / extreme-eps
inputs against a float64 torch run; --fp16 / --bf16 deploy the file in half precision (norm
statistics kept in fp32) and report overflow per layer; --bisect compares with another ONNX file
or provider value by value. Exit 0 equivalent, 1 mismatch, 2 usage error, 3 unsupported here."""

from __future__ import annotations

import argparse
from typing import Any

from . import final_line
from ._common import (
    add_model_inputs,
    add_provider,
    add_report_flags,
    add_threads,
    add_tolerances,
    count,
    model_and_inputs,
    require_reports,
    tolerance_args,
    write_reports,
)

HELP = "verify an ONNX file against its torch model (and localize the first wrong layer)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="MODEL")
    p.add_argument("onnx", metavar="ONNX")
    add_model_inputs(p)
    add_provider(p, "where onnxruntime runs the file (default cpu)")
    add_tolerances(p)
    p.add_argument("--samples", type=count(0), default=2, help="random samples besides the example inputs (default 2)")
    add_threads(p)
    p.add_argument(
        "--latency",
        type=count(1),
        default=None,
        metavar="N",
        help="time torch and onnxruntime: 3 warm-up calls, then the median of N calls (default: not timed)",
    )
    g = p.add_argument_group("localization")
    g.add_argument("--localize", action="store_true", help="compare every module's output even if the outputs agree")
    g.add_argument("--no-localize", action="store_true", help="do not localize automatically on a mismatch")
    g.add_argument("--all-layers", action="store_true", help="print every module row, not only up to the failure")
    g.add_argument(
        "--max-memory",
        metavar="SIZE",
        help="memory budget for the onnxruntime side of localization and of --bisect (e.g. 8G): values exposed "
        "in groups that fit, refused up front when they cannot (default: all at once)",
    )
    g.add_argument(
        "--bisect",
        metavar="OTHER",
        help="compare ONNX value by value with OTHER: another .onnx file (e.g. the optimized one) or a provider "
        "spec for the same file (cuda, cpu:opt)",
    )
    g = p.add_argument_group("stress and precision")
    g.add_argument("--stress", action="store_true", help="run the stress inputs against a float64 torch run")
    from ..verify.stress import CASES

    g.add_argument(
        "--stress-case",
        action="append",
        metavar="CASE",
        help=f"run only these stress cases (repeatable): {', '.join(CASES)}",
    )
    g.add_argument("--fp16", action="store_true", help="check a float16 deployment of the file")
    g.add_argument("--bf16", action="store_true", help="check a bfloat16 deployment of the file")
    g.add_argument(
        "--fp16-norms",
        choices=["fp32", "fp16"],
        default="fp32",
        help="norm statistics in fp32 (default, the stash) or converted too (to see the overflow it prevents)",
    )
    add_report_flags(
        p.add_argument_group("reports"),
        {
            "junit": "write JUnit XML: one testcase per output and per checked layer",
            "html": "write a self-contained HTML report with error-vs-depth and histogram plots, passing runs too "
            "(localizes unless --no-localize; normonnx[report])",
        },
    )


def run(args: argparse.Namespace) -> int:
    from ..errors import InputError
    from ..verify import Tolerance, tolerance
    from ..verify.api import verify

    atol, atol_per, rtol, rtol_per = tolerance_args(args)
    require_reports(args)  # fail before any work if a report cannot be written (HTML: matplotlib)
    if args.stress_case:
        from ..verify.stress import CASES

        bad = [c for c in args.stress_case if c not in CASES]
        if bad:
            raise InputError(f"unknown --stress-case {', '.join(bad)}", note=f"valid: {', '.join(CASES)}")
    max_memory = None
    if args.max_memory is not None:
        from ..verify.budget import parse_size

        max_memory = parse_size(args.max_memory)  # a bad size fails before any work
    model, inputs, _ = model_and_inputs(args)
    per = {}
    for name in set(atol_per) | set(rtol_per):
        base = tolerance("float32", "model", args.provider)
        per[name] = Tolerance(
            atol_per.get(name, atol if atol is not None else base.atol),
            rtol_per.get(name, rtol if rtol is not None else base.rtol),
        )
    # a large model no later step needs is given up to verify: its weights are freed before
    # onnxruntime loads the file's (peak: the larger side, not both); a mismatch rebuilds it
    release = _weights(model) >= RELEASE_MIN and not (
        args.localize or args.html or args.stress or args.stress_case or args.fp16 or args.bf16
    )
    fingerprint = _fingerprint(model) if release and not args.no_localize else None
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
        latency_reps=args.latency or 0,
        release_model=release,
    )
    sections: dict[str, Any] = {"verify": rep}
    print(rep.format_table())
    if rep.float64_max_abs:
        print("max |onnx − torch float64|: " + ", ".join(f"{k}={v:.3g}" for k, v in rep.float64_max_abs.items()))
    if rep.torch_ms is not None:
        print(
            f"latency (median of {rep.latency_reps} warm calls): torch {rep.torch_ms:.3f} ms, "
            f"onnxruntime {rep.ort_ms:.3f} ms"
        )
    for w in rep.warnings:
        print(f"warning: {w}")

    loc = None
    # --html plots error vs depth and histograms on every run, passing too: they need the layers
    wanted = args.localize or (args.html and not args.no_localize) or (not rep.passed and not args.no_localize)
    if wanted and release:  # the model was given up to verify: build it again, the same one
        model, inputs, _ = model_and_inputs(args)
        if _fingerprint(model) != fingerprint:
            wanted = False
            print(
                f"note: the mismatch is not localized: building {args.model} again gave other weights "
                "(no fixed seed?); rerun with --localize, which keeps the model"
            )
    if wanted:
        from ..verify.localize import localize

        loc = localize(
            model,
            args.onnx,
            inputs,
            provider=args.provider,
            atol=atol,
            rtol=rtol,
            check=args.check,
            threads=args.threads,
            max_memory=max_memory,
        )
        sections["localize"] = loc
        print("\nper-layer comparison (onnxruntime optimizations off):")
        print(loc.format_table(all_layers=args.all_layers))
        print(loc.verdict())
        if loc.culprit is not None and loc.culprit.norm and loc.culprit.norm.get("warning"):
            print(f"hint: {loc.culprit.norm['warning']}")
        for n in loc.notes:
            print(f"note: {n}")
    if args.stress or args.stress_case:
        from ..verify.stress import CASES, stress_model

        st = stress_model(
            model, args.onnx, inputs, provider=args.provider, cases=args.stress_case or CASES, seed=args.seed
        )
        sections["stress"] = st
        print("\nstress inputs (error vs a float64 torch run of the same model):")
        print(st.format_table())
    for flag, dtype in (("fp16", "float16"), ("bf16", "bfloat16")):
        if getattr(args, flag):
            from ..verify.precision import check_precision

            pr = check_precision(
                model, args.onnx, inputs, dtype=dtype, norms=args.fp16_norms, provider=args.provider, seed=args.seed
            )
            sections["precision" if "precision" not in sections else f"precision_{flag}"] = pr
            print(f"\n{dtype} deployment:")
            print(pr.format_table())
            print(pr.summary())
            for n in pr.notes:
                print(f"note: {n}")
    if args.bisect:
        from ..verify.bisect import bisect

        bi = bisect(
            args.onnx,
            args.bisect,
            inputs,
            provider=args.provider,
            atol=atol,
            rtol=rtol,
            check=args.check,
            threads=args.threads,
            max_memory=max_memory,
        )
        sections["bisect"] = bi
        print(f"\nbisect {bi.a} vs {bi.b}:")
        print(bi.format_table())
        print(bi.verdict())

    # a localization that names a divergence fails the run: a PASSED line never names one
    ok = all(s.passed for s in sections.values())
    checks = {k: s for k, s in sections.items() if k != "localize"}
    text = rep.summary()
    if rep.passed and not ok:  # the outputs agree, another check (a module, stress, precision) does not
        text = text.replace("equivalent:", "outputs within tolerance:", 1)
    failed = [k for k, s in checks.items() if not s.passed and k != "verify"]
    if failed:
        text += "; failed: " + ", ".join(failed)
    if loc is not None and not loc.passed:
        text += f"; {loc.verdict()}"
    write_reports(args, sections, ok, text)  # the JSON document is the verify one, other checks as keys
    final_line(ok, text)
    return 0 if ok else 1


#: torch weights from which ``normonnx verify`` frees the model before onnxruntime loads the file
RELEASE_MIN = 256 << 20


def _weights(model: Any) -> int:
    import torch

    if not isinstance(model, torch.nn.Module):
        return 0
    return sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))


def _fingerprint(model: Any) -> list[tuple[str, tuple[int, ...], float]]:
    """Names, shapes and float64 sums of the weights: a rebuilt model is the same one."""
    import torch

    with torch.no_grad():
        return [
            (n, tuple(t.shape), float(t.double().sum()) if t.is_floating_point() else float(t.sum()))
            for n, t in (*model.named_parameters(), *model.named_buffers())
        ]
