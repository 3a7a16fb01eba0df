"""Argument helpers shared by the subcommands that take a torch MODEL."""

from __future__ import annotations

import argparse
from typing import Any

from ..errors import InputError


def add_model_inputs(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--input",
        action="append",
        metavar="NAME:SHAPE[:DTYPE]",
        help="example input, e.g. x:1x3x224x224 (repeat per input; default: the model's own example inputs)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed for generated inputs (default 0)")
    p.add_argument(
        "--eval", action="store_true", help="put a model found in training mode into eval mode (with a warning)"
    )


def model_and_inputs(args: argparse.Namespace) -> tuple[Any, tuple[Any, ...], Any]:
    """(resolved model, example inputs, resolved info) from MODEL and --input."""
    from ..modelspec import parse_input_specs, random_inputs, resolve

    resolved = resolve(args.model)
    specs = parse_input_specs(args.input)
    if specs:
        inputs = random_inputs(specs, args.seed)
        if resolved.input_names is None and all(n for n, _, _ in specs):
            resolved.input_names = [n for n, _, _ in specs]  # type: ignore[misc]
    elif resolved.example_inputs is not None:
        inputs = resolved.example_inputs
    else:
        raise InputError(f"MODEL {args.model!r} has no example inputs", note="give them with --input x:1x3x224x224")
    model = resolved.model
    if getattr(args, "eval", False) and hasattr(model, "eval"):
        changed = [n or "<root>" for n, m in model.named_modules() if m.training]
        if changed:
            import sys

            print(f"warning: model was in training mode; switched to eval: {', '.join(changed[:8])}", file=sys.stderr)
            model.eval()
    return model, tuple(inputs), resolved


def parse_tolerances(values: list[str] | None, flag: str) -> tuple[float | None, dict[str, float]]:
    """``["1e-5", "logits:1e-4"]`` → (global, {"logits": 1e-4})."""
    glob: float | None = None
    per: dict[str, float] = {}
    for v in values or []:
        name, sep, num = v.rpartition(":")
        try:
            x = float(num)
        except ValueError:
            raise InputError(f"bad {flag} value {v!r}", note=f"use {flag} 1e-4 or {flag} output_name:1e-4") from None
        if sep:
            per[name] = x
        else:
            glob = x
    return glob, per
