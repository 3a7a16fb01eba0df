"""Argument helpers shared by the subcommands: the torch MODEL and its inputs, counts that must
not be negative, strategy names, and the output paths checked before any work."""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterable
from typing import Any

from ..errors import InputError, OutputError

#: argparse destinations that name files a command writes (``-`` = stdout is not a file)
OUTPUT_FLAGS = ("output", "json", "junit", "html", "markdown")
#: argparse destinations that name files a command reads (MODEL may be ``file.py:factory``)
INPUT_FLAGS = ("model", "onnx", "a", "b", "compare")


def count(minimum: int) -> Any:
    """An argparse ``type``: an integer >= ``minimum`` (``--samples -3`` is a usage error)."""

    def parse(text: str) -> int:
        try:
            n = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if n < minimum:
            raise argparse.ArgumentTypeError(f"{n} is below {minimum}")
        return n

    parse.__name__ = f"integer >= {minimum}"
    return parse


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
    from ..modelspec import check_example_inputs, parse_input_specs, resolve
    from ..verify.inputs import random_inputs

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
    check_example_inputs(inputs)
    model = resolved.model
    if getattr(args, "eval", False) and hasattr(model, "eval"):
        changed = [n or "<root>" for n, m in model.named_modules() if m.training]
        if changed:
            import sys

            print(f"warning: model was in training mode; switched to eval: {', '.join(changed[:8])}", file=sys.stderr)
            model.eval()
    return model, tuple(inputs), resolved


def check_strategies(names: Iterable[str] | None, flag: str = "--strategy") -> None:
    """Refuse an unknown lowering strategy name before any work, listing the valid ones."""
    if not names:
        return
    from ..lowering import STRATEGIES

    bad = [n for n in names if n not in STRATEGIES]
    if bad:
        raise InputError(
            f"unknown {flag} {', '.join(map(repr, bad))}", note=f"valid strategies: {', '.join(STRATEGIES)}"
        )


def _file_of(flag: str, value: str) -> str | None:
    """The file behind an input flag's value (``file.py:factory`` → ``file.py``), if it is one."""
    if flag == "model" and ":" in value and not os.path.exists(value):
        value = value.rpartition(":")[0]
    return value if os.path.isfile(value) else None


def check_output_paths(args: argparse.Namespace) -> None:
    """Before any work: every output flag of ``args`` names a file that can be written.

    The rules are :func:`normonnx.io.check_output_path`'s (a directory, a missing or read-only
    parent directory, a write-protected file, the same file as one of the command's inputs are
    refused, exit 2); the message names the flag.
    """
    from .. import io as nio

    inputs = [f for flag in INPUT_FLAGS if isinstance(v := getattr(args, flag, None), str) and (f := _file_of(flag, v))]
    for flag in OUTPUT_FLAGS:
        path = getattr(args, flag, None)
        if not isinstance(path, str) or path == "-":
            continue
        option = "-o" if flag == "output" else f"--{flag}"
        try:
            nio.check_output_path(path, inputs=inputs, what="output" if flag == "output" else "report")
        except OutputError as e:
            raise OutputError(f"{option}: {e.message}", note=e.note) from None


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
