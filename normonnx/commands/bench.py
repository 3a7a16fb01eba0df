"""Benchmark normalization lowerings and exported models, side by side in one run.

`ops`: every norm kind at representative shapes, each lowering strategy valid at the best opset in
onnxruntime (CPU), next to torch eager and a copy floor (the time to read and write the same bytes),
reported as × floor. `models`: every model in models/ — torch eager, torch's default ONNX export,
normonnx's export, and normonnx's export after optimize — latency, max error vs float64 torch, and
onnxruntime's profile per op type with normalization nodes highlighted. Same thread count for
everyone, warm-up, round-robin interleaving, medians and interquartile ranges. Both then re-time
in default onnxruntime sessions (idle workers spin, as deployed), one session alive at a time,
ratios paired per round: ops the selected strategy vs torch vs copies using every thread, models
the three files plus two headroom files (norm nodes replaced by Neg, and removed). Writes
BENCHMARKS.md (--markdown; an existing file keeps its <!-- NAME: begin/end --> sections that the
report lacks) and a JSON record (--json); --compare shows what changed since an older record."""

from __future__ import annotations

import argparse
import os

from ..bench import WHAT
from . import final_line, progress, write_json, write_text
from ._common import add_json

HELP = "benchmark norm lowerings (× copy floor) and exported models vs torch"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("what", nargs="?", default="all", choices=WHAT, help="what to run (default all)")
    p.add_argument("--quick", action="store_true", help="tiny shapes and short budgets (smoke test, not a result)")
    p.add_argument("--threads", type=int, default=2, help="threads for torch and onnxruntime alike (default 2)")
    p.add_argument("--kinds", help="comma-separated norm kinds for `ops` (default all)")
    p.add_argument("--models", help="comma-separated model names for `models` (default all in models/)")
    p.add_argument("--budget", type=float, default=None, metavar="SECONDS", help="time budget per op shape / model")
    add_json(p, "the record")
    p.add_argument(
        "--markdown",
        metavar="FILE",
        help="write the report (e.g. BENCHMARKS.md), keeping the file's marked sections the report lacks",
    )
    p.add_argument("--compare", metavar="OLD_JSON", help="show what changed since this earlier --json record")


def command_line(args: argparse.Namespace) -> str:
    """The canonical command that reproduces this run."""
    parts = ["normonnx", "bench", args.what]
    if args.quick:
        parts.append("--quick")
    parts += ["--threads", str(args.threads)]
    for flag in ("kinds", "models", "budget", "json", "markdown", "compare"):
        v = getattr(args, flag)
        if v is not None:
            parts += [f"--{flag}", str(v)]
    return " ".join(parts)


def _names(value: str | None) -> list[str] | None:
    return [n.strip() for n in value.split(",") if n.strip()] if value else None


def run(args: argparse.Namespace) -> int:
    from ..bench import run_bench
    from ..bench.markdown import keep_sections
    from ..bench.report import diff_documents, diff_markdown, load_document, markdown, print_summary
    from ..errors import InputError
    from ..norms import KINDS

    old = load_document(args.compare) if args.compare else None  # fail before a long run, not after
    kinds = _names(args.kinds)
    if kinds:
        unknown = [k for k in kinds if k not in KINDS]
        if unknown:
            raise InputError(f"unknown norm kind(s): {', '.join(unknown)}", note=f"valid kinds: {', '.join(KINDS)}")
    doc = run_bench(
        args.what,
        quick=args.quick,
        threads=args.threads,
        kinds=kinds,
        models=_names(args.models),
        budget_s=args.budget,
        command=command_line(args),
        progress=progress,
    )
    diff = diff_documents(old, doc) if old is not None else None
    if diff is not None:
        doc["compare"] = diff
    if args.json:
        write_json(args.json, doc)
    if args.markdown:
        text = markdown(doc, diff)
        if os.path.exists(args.markdown):  # other scripts' marked sections of that file are kept
            with open(args.markdown, encoding="utf-8") as f:
                text = keep_sections(f.read(), text)
        write_text(args.markdown, text)
    if args.json != "-":
        print_summary(doc)
        if diff is not None:
            print("\n".join(diff_markdown(diff)))
    rows = (doc.get("ops") or []) + (doc.get("models") or [])
    failed = [r for r in rows if r.get("error")]
    text = f"bench {args.what}: {len(doc.get('ops') or [])} op rows, {len(doc.get('models') or [])} model rows"
    if failed:
        text += f"; {len(failed)} candidate(s) failed to run (listed in the report)"
    if args.markdown:
        text += f"; wrote {args.markdown}"
    final_line(True, text)
    return 0
