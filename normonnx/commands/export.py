"""Export a torch model to ONNX with every norm lowered by normonnx's strategy selector.

MODEL is a name from models/, package.module:factory, path/to/file.py:factory, or a .pt2
archive. The file is written atomically; its metadata records which strategy lowered each norm
and why. --dynamic names the dynamic axes (batch is axis 0; further names are the spatial or
sequence axes from axis 2 (or 1 for rank-2 inputs)); the export is then checked at a second size."""

from __future__ import annotations

import argparse

from . import final_line, write_json
from ._common import add_json, add_model_inputs, add_target, check_strategies, model_and_inputs

HELP = "export MODEL to ONNX with normonnx lowerings"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="MODEL")
    p.add_argument("-o", "--output", required=True, help="output .onnx path")
    add_model_inputs(p)
    p.add_argument(
        "--opset",
        type=int,
        default=None,
        help="default-domain opset (default: best valid for the target; 23 for attention or rotary embeddings written by hand)",
    )
    add_target(p)
    p.add_argument("--dynamic", default=None, metavar="AXES", help="dynamic axes, e.g. batch,h,w")
    p.add_argument(
        "--strategy",
        action="append",
        metavar="NAME",
        help="strategy preference order (repeatable), e.g. --strategy function",
    )
    p.add_argument("--allow-unstable", action="store_true", help="accept strategies marked numerically unstable")
    p.add_argument(
        "--no-check", action="store_true", help="skip running the exported model in onnxruntime at a second size"
    )
    add_json(p, "what was done")


def run(args: argparse.Namespace) -> int:
    from ..exporter import export
    from ..verify.api import verify

    check_strategies(args.strategy)
    model, inputs, resolved = model_and_inputs(args)
    dynamic = args.dynamic
    if dynamic is None and resolved.dynamic_axes:
        dynamic = None  # bundled models export static unless asked
    res = export(
        model,
        inputs,
        args.output,
        opset=args.opset,
        target=args.target,
        dynamic=dynamic,
        input_names=resolved.input_names,
        prefer=args.strategy,
        allow_unstable=args.allow_unstable,
        force_eval=args.eval,
    )
    for w in res.warnings:
        print(f"warning: {w}")
    print(f"exported {resolved.name} -> {res.path} (opset {res.opset}: {res.opset_reason}) in {res.seconds:.1f}s")
    if res.fired:
        print("recognised: " + ", ".join(f"{name}×{n}" for name, n in sorted(res.fired.items())))
    for r in res.refused:
        print(f"  refused: {r}")
    for r in res.lowerings:
        rej = "; ".join(f"{n}: {why}" for n, why in r.rejected)
        print(f"  {r.node:40s} {r.kind:8s} -> {r.strategy}" + (f"   [rejected {rej}]" if rej else ""))
    ok = True
    summary = ""
    bf16 = any(str(getattr(t, "dtype", "")) == "torch.bfloat16" for t in inputs)
    if bf16 and not args.no_check:
        print("note: check skipped: onnxruntime's Python API cannot feed bfloat16 (NumPy has none)")
    if not args.no_check and args.target == "cpu" and not bf16:
        rep = verify(model, res.path, inputs, n_samples=0)
        ok = rep.passed
        summary = f"; check: max_abs={rep.max_abs:.3g} on {len(rep.samples)} input sizes"
    if args.json:
        write_json(
            args.json,
            {
                "path": res.path,
                "opset": res.opset,
                "opset_reason": res.opset_reason,
                "seconds": res.seconds,
                "peak_rss_bytes": res.peak_rss_bytes,
                "lowerings": [r.as_dict() for r in res.lowerings],
                "fired": res.fired,
                "refused": [r.as_dict() for r in res.refused],
                "dynamic": res.dynamic,
                "check_passed": ok,
            },
        )
    final_line(ok, f"export {resolved.name}: {len(res.lowerings)} norms {res.strategies} opset {res.opset}{summary}")
    return 0 if ok else 1
