"""Print the capability table: which lowering strategy is valid for which kind, opset, dtype and
provider, whether it is numerically stable (``<=N elems``: only up to N elements per normalised
group, e.g. onnxruntime's fp32-accumulating LayerNormalization), and why; with --opset N, also
what the selector picks for an example norm of each kind at that opset."""

from __future__ import annotations

import argparse

from . import final_line, write_json
from ._common import add_json, add_provider

HELP = "print the lowering capability table (and the selector's choice per kind)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_provider(p, "provider(s) to show (default: cpu)", repeat=True)
    p.add_argument("--opset", type=int, default=None, help="also show the selector's choice per kind at this opset")
    add_json(p, "the table")


def run(args: argparse.Namespace) -> int:
    from ..lowering import capability_table, check_opset, format_capability_table, select
    from ..spec import NormSpec

    if args.opset is not None:
        check_opset(args.opset)  # before printing anything
    providers = args.provider or ["cpu"]
    rows = capability_table(providers)
    if args.json:
        write_json(args.json, rows)
    else:
        print(format_capability_table(providers))
    if args.opset is not None:
        examples = [
            NormSpec("batch", channels=64, running_stats=True),
            NormSpec("layer", normalized_shape=(768,)),
            NormSpec("layer", normalized_shape=(96,), channels_first=True),
            NormSpec("instance", channels=64),
            NormSpec("group", channels=320, groups=32),
            NormSpec("rms", normalized_shape=(4096,), has_bias=False),
        ]
        print(f"\nselector at opset {args.opset}:")
        for p in providers:
            for s in examples:
                sel = select(s, args.opset, p)
                print(f"  {p:4s} {s.kind:8s} {'(channels-first)' if s.channels_first else '':16s} -> {sel.explain()}")
    final_line(True, f"{len(rows)} capability rows")
    return 0
