"""The ``normonnx`` command: a thin veneer over the Python API.

Every subcommand lives in ``normonnx/commands/<name>.py`` and maps its flags to API arguments.
Exit codes: 0 success/equivalent, 1 numerical mismatch, 2 usage error, 3 unsupported here
(e.g. provider unavailable). Each run ends with one grep-able line ``PASSED | …`` or
``FAILED | …``. User errors print a short message with the fix and no traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from .errors import NormOnnxError

#: subcommand modules, in --help order; one file each under normonnx/commands/
COMMANDS = ("export", "verify", "compare", "inspect", "optimize", "zoo", "bench", "doctor", "capabilities")

EXIT_OK, EXIT_MISMATCH, EXIT_USAGE, EXIT_UNSUPPORTED = 0, 1, 2, 3


class _Parser(argparse.ArgumentParser):
    """argparse that ends a usage error with the FAILED line and exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        print(f"FAILED | usage error: {message}")
        raise SystemExit(EXIT_USAGE)


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = _Parser(
        prog="normonnx",
        description="Export PyTorch models with normalization layers to ONNX, optimize them, run them in "
        "onnxruntime and prove they compute what the torch model computes.",
        epilog="Exit codes: 0 ok, 1 numerical mismatch, 2 usage error, 3 unsupported here.",
    )
    parser.add_argument("--version", action="version", version=f"normonnx {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name in COMMANDS:
        try:
            mod = importlib.import_module(f".commands.{name}", __package__)
        except ModuleNotFoundError as e:
            if e.name and e.name.endswith(f"commands.{name}"):
                continue  # command not built yet
            raise
        p = sub.add_parser(name, help=mod.HELP, description=mod.__doc__)
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return EXIT_USAGE
    try:
        return int(args._run(args))
    except NormOnnxError as e:
        print(f"normonnx {args.command}: error: {e.message}", file=sys.stderr)
        if e.note:
            print(f"Note: {e.note}", file=sys.stderr)
        kind = "unsupported here" if e.exit_code == EXIT_UNSUPPORTED else f"{e.stage} error"
        print(f"FAILED | {kind}: {e.message.splitlines()[0]}")
        return e.exit_code
    except KeyboardInterrupt:
        print("FAILED | interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
