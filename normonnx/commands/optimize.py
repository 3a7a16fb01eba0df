"""Optimize an ONNX file: fold BatchNorms and norms of weights, fuse decomposed norms back into
single nodes, lower them for the target, clean up — and prove it changed nothing.

Prints which rules fired how many times and which candidates were refused, with the reason. The
optimized model is run against the original in onnxruntime (its own graph optimizations disabled)
on random and stress inputs; only if they agree is OUT written (atomically). Exit 0 written,
1 mismatch (nothing written, input untouched), 2 usage error, 3 unsupported here."""

from __future__ import annotations

import argparse

from . import final_line, write_json
from ._common import add_inputs, add_json, add_target, check_strategies, count

HELP = "fuse, fold and lower the norms of an ONNX file, verified against the original"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="IN", help="ONNX file to optimize (left untouched)")
    p.add_argument("-o", "--output", metavar="OUT", required=True, help="where to write the optimized model")
    add_target(p)
    p.add_argument("--opset", type=int, default=None, help="convert to this default-domain opset first")
    p.add_argument(
        "--allow-unstable",
        action="store_true",
        help="also take lowerings marked numerically unstable (e.g. --target cuda's contrib GroupNorm)",
    )
    p.add_argument("--no-verify", action="store_true", help="write without running original vs optimized")
    p.add_argument(
        "--samples",
        type=count(0),
        default=3,
        help="random samples for verification besides 2 stress inputs (default 3)",
    )
    add_inputs(p, "shape for an input with symbolic dims, e.g. x:1x3x224x224", metavar="NAME:SHAPE", seed=False)
    p.add_argument(
        "--rules", action="append", metavar="NAME", help="only these rule families/rules (repeatable; default all)"
    )
    p.add_argument(
        "--strategy",
        dest="prefer",
        action="append",
        metavar="NAME",
        help="lowering strategy preference order for the fused norms (repeatable; default: the selector's order"
        " for --target, see `normonnx capabilities`), e.g. --strategy native --strategy decomposed for standard ops",
    )
    add_json(p)
    p.add_argument("--debug", action="store_true", help="also print why near-miss patterns did not match")


def _shapes(items: list[str] | None) -> dict[str, tuple[int, ...]]:
    from ..errors import InputError
    from ..modelspec import parse_input_specs

    out: dict[str, tuple[int, ...]] = {}
    for name, shape, _ in parse_input_specs(items):
        if not name:
            raise InputError("--input needs the input's name here", note="e.g. --input x:1x3x224x224")
        out[name] = shape
    return out


def run(args: argparse.Namespace) -> int:
    from .. import io as nio
    from ..errors import InputError
    from ..optimize import optimize_model

    check_strategies(args.prefer)
    model = nio.load(args.model, load_external=False)  # names only: its weights stay on disk
    shapes = _shapes(args.input)
    known = [vi.name for vi in model.graph.input if vi.name not in {t.name for t in model.graph.initializer}]
    unknown = [n for n in shapes if n not in known]
    if unknown:
        raise InputError(
            f"--input names {', '.join(unknown)}, not an input of {args.model}", note=f"its inputs: {', '.join(known)}"
        )
    res = optimize_model(
        args.model,
        target=args.target,
        opset=args.opset,
        verify=not args.no_verify,
        n_samples=args.samples,
        rules=args.rules,
        debug=args.debug,
        inputs=shapes,
        prefer=args.prefer,
        allow_unstable=args.allow_unstable,
    )
    print(f"optimize {args.model} (opset {res.opset}, target {args.target}): {res.seconds:.2f} s")
    if res.fired:
        print("rules fired:")
        for name, n in sorted(res.fired.items()):
            print(f"  {name:32s} {n:4d}")
    else:
        print("rules fired: none")
    if res.refused:
        print(f"refused candidates ({len(res.refused)}):")
        for r in res.refused:
            print(f"  {r}")
    if args.debug and res.misses:
        print(f"near misses ({len(res.misses)}):")
        for r in res.misses:
            print(f"  {r}")
    for note in res.notes:
        print(f"note: {note}")
    if res.lowerings:
        counts: dict[str, int] = {}
        for rec in res.lowerings:
            key = f"{rec['kind']}:{rec['strategy']}"
            counts[key] = counts.get(key, 0) + 1
        print("lowered: " + ", ".join(f"{k} ×{v}" for k, v in sorted(counts.items())))
    print(f"nodes: {res.nodes_before} → {res.nodes_after}")
    if res.verification is not None:
        v = res.verification
        print(f"verification (onnxruntime cpu, graph optimizations disabled): {v.summary()}")
        if v.note:
            print(f"  {v.note}")
    written = False
    if res.passed:
        from ..external import reading

        with reading(res.base_dir):  # external weights are copied from the input's data file
            nio.save(res.model, args.output)
        written = True
    if args.json:
        data = res.as_dict()
        data.update(input=args.model, output=args.output if written else None, written=written)
        write_json(args.json, data)
    if written:
        final_line(True, f"{res.summary()}; wrote {args.output}")
        return 0
    final_line(False, f"{res.summary()}; nothing written, {args.model} untouched")
    return 1
