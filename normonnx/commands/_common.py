"""Argument groups shared by the subcommands, each flag mapped to one API argument.

- :func:`add_target` / :func:`add_provider`: ``--target`` (the provider a graph is lowered for)
  and ``--provider`` (where onnxruntime runs it), choices from :mod:`normonnx.providers`;
- :func:`add_json` and :func:`add_report_flags` / :func:`write_reports`: report files, one flag per
  format of :mod:`normonnx.reports`' registry (``--json``, ``--junit``, ``--html``, ``--text``);
- :func:`add_tolerances` / :func:`tolerance_args`: ``--atol``, ``--rtol``, ``--check``;
- :func:`add_inputs` / :func:`add_model_inputs` / :func:`model_and_inputs`: ``--input``, ``--seed``,
  ``--eval``; :func:`add_threads`;
- checks before any work: counts that must not be negative, strategy names, output paths."""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterable, Mapping
from typing import Any

from .. import providers
from ..errors import InputError, OutputError
from ..reports import formats

#: argparse destinations that name files a command writes (``-`` = stdout is not a file)
OUTPUT_FLAGS = ("output", *formats(), "markdown")
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


def add_target(p: argparse.ArgumentParser, help: str = "execution provider to lower for (default cpu)") -> None:
    """``--target``: the provider the graph is built for (``export(target=)``, ``optimize_model(target=)``)."""
    p.add_argument("--target", choices=providers.NAMES, default=providers.DEFAULT, help=help)


def add_provider(p: Any, help: str | None = None, *, repeat: bool = False) -> None:
    """``--provider``: where onnxruntime runs (``verify(provider=)``, ...); ``repeat``: a list, default None."""
    if repeat:
        p.add_argument("--provider", action="append", choices=providers.NAMES, help=help)
    else:
        p.add_argument("--provider", choices=providers.NAMES, default=providers.DEFAULT, help=help)


def add_threads(p: Any) -> None:
    p.add_argument("--threads", type=count(1), default=None, help="onnxruntime intra-op threads")


def add_json(p: Any, what: str = "the report") -> None:
    """``--json FILE``: a command's own JSON document ('-' = stdout, the human text then on stderr)."""
    p.add_argument("--json", metavar="FILE", help=f"write {what} as JSON ('-' for stdout)")


def add_report_flags(p: Any, help: Mapping[str, str] | None = None) -> None:
    """One ``--<format> FILE`` flag per registered report format (:func:`normonnx.reports.formats`);
    ``help`` overrides a format's help text for this command."""
    for name, fmt in formats().items():
        p.add_argument(f"--{name}", metavar="FILE", help=(help or {}).get(name, fmt.help))


def require_reports(args: argparse.Namespace) -> None:
    """Before any work: every requested report format can be written here (HTML: matplotlib)."""
    for name, fmt in formats().items():
        if getattr(args, name, None):
            fmt.require()


def write_reports(args: argparse.Namespace, sections: Mapping[str, Any], ok: bool, text: str) -> None:
    """Write ``sections`` in every format whose flag was given; ``ok`` / ``text``: the closing line."""
    from . import write_text

    final = f"{'PASSED' if ok else 'FAILED'} | {text}"
    for name, fmt in formats().items():
        path = getattr(args, name, None)
        if path:
            write_text(path, fmt.render(sections, passed=ok, final=final))


def add_tolerances(p: Any, per_output: bool = True) -> None:
    """``--atol`` / ``--rtol`` (with ``per_output``: repeatable, ``[OUT:]X``) and ``--check``."""
    if per_output:
        for flag, what in (("--atol", "absolute"), ("--rtol", "relative")):
            p.add_argument(
                flag, action="append", metavar="[OUT:]X", help=f"{what} tolerance, global or per output (repeatable)"
            )
    else:
        p.add_argument("--atol", type=float, default=None)
        p.add_argument("--rtol", type=float, default=None)
    p.add_argument("--check", default="elementwise", help="elementwise (default), max, mean or quantile:Q")


def tolerance_args(args: argparse.Namespace) -> tuple[float | None, dict[str, float], float | None, dict[str, float]]:
    """``--atol`` / ``--rtol`` / ``--check`` checked before any work: (atol, per-output atol, rtol, per-output rtol)."""
    from ..verify import check_statistic, check_tolerance

    check_statistic(args.check, "--check")
    out: list[Any] = []
    for flag in ("--atol", "--rtol"):
        value = getattr(args, flag[2:])
        glob, per = parse_tolerances(value, flag) if isinstance(value, list) or value is None else (value, {})
        check_tolerance(glob, flag)
        for name, x in per.items():
            check_tolerance(x, f"{flag} {name}:")
        out += [glob, per]
    return out[0], out[1], out[2], out[3]


def add_inputs(
    p: Any, help: str, *, metavar: str = "NAME:SHAPE[:DTYPE]", seed: bool = True, eval_flag: bool = False
) -> None:
    """``--input`` (repeatable), and ``--seed`` for generated inputs, ``--eval`` for a torch MODEL."""
    p.add_argument("--input", action="append", metavar=metavar, help=help)
    if seed:
        p.add_argument("--seed", type=int, default=0, help="seed for generated inputs (default 0)")
    if eval_flag:
        p.add_argument(
            "--eval", action="store_true", help="put a model found in training mode into eval mode (with a warning)"
        )


def add_model_inputs(p: argparse.ArgumentParser) -> None:
    """The inputs of a torch MODEL: ``--input``, ``--seed``, ``--eval`` (read by :func:`model_and_inputs`)."""
    add_inputs(
        p,
        "example input, e.g. x:1x3x224x224 (repeat per input; default: the model's own example inputs)",
        eval_flag=True,
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
