"""The ``normonnx`` command: a thin veneer over the Python API.

Every subcommand lives in ``normonnx/commands/<name>.py`` and maps its flags to API arguments.
Exit codes (:data:`EXIT_CODES`): 0 success/equivalent, 1 numerical mismatch, 2 usage error,
3 unsupported here (e.g. provider unavailable), 4 internal error (a normonnx bug: the traceback
is printed), 130 interrupted. Each run ends with one grep-able line ``PASSED | …`` or
``FAILED | …``. User errors print one message and a ``Note:`` with the fix, no traceback.

With ``--json -`` stdout carries the JSON document only; every human line (tables, warnings,
the closing line) goes to stderr. A reader that closes the pipe early (``| head``) ends the run
quietly with 141, as a process killed by SIGPIPE would.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import os
import sys
import traceback
from collections.abc import Sequence

from .errors import EXIT_INTERNAL, EXIT_MISMATCH, EXIT_OK, EXIT_UNSUPPORTED, EXIT_USAGE, NormOnnxError, from_os_error

#: subcommand modules, in --help order; one file each under normonnx/commands/
COMMANDS = ("export", "verify", "bisect", "inspect", "optimize", "zoo", "bench", "doctor", "capabilities")

EXIT_CODES = {
    EXIT_OK: "ok / equivalent",
    EXIT_MISMATCH: "numerical mismatch",
    EXIT_USAGE: "usage error (bad file, MODEL, input, path...)",
    EXIT_UNSUPPORTED: "unsupported here",
    EXIT_INTERNAL: "internal error (a bug: traceback printed, please report it)",
}
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE
#: OSErrors that are the environment's, not normonnx's, wherever they happen in a command
_USER_OS_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS}
__all__ = ["EXIT_CODES", "EXIT_INTERNAL", "EXIT_MISMATCH", "EXIT_OK", "EXIT_UNSUPPORTED", "EXIT_USAGE", "main"]


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
        epilog="Exit codes: " + ", ".join(f"{k} {v}" for k, v in EXIT_CODES.items()) + ".",
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
        aliases = getattr(mod, "ALIASES", ())  # a command's former names, listed in its help line
        p = sub.add_parser(name, aliases=aliases, help=mod.HELP, description=mod.__doc__)
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def _user_error(command: str, e: NormOnnxError) -> int:
    print(f"normonnx {command}: error: {e.message}", file=sys.stderr)
    if e.note:
        print(f"Note: {e.note}", file=sys.stderr)
    kind = "unsupported here" if e.exit_code == EXIT_UNSUPPORTED else f"{e.stage} error"
    print(f"FAILED | {kind}: {e.message.splitlines()[0]}")
    return e.exit_code


def _run(args: argparse.Namespace) -> int:
    from .commands._common import OUTPUT_FLAGS, check_output_paths

    try:
        check_output_paths(args)  # before any work: a bad -o / --json path fails in a second, not after
        rc = int(args._run(args))
        sys.stdout.flush()
        return rc
    except NormOnnxError as e:
        return _user_error(args.command, e)
    except OSError as e:
        if e.errno not in _USER_OS_ERRORS or isinstance(e, BrokenPipeError):
            raise
        outputs = [v for f in OUTPUT_FLAGS if isinstance(v := getattr(args, f, None), str) and v != "-"]
        what = f"writing {' or '.join(outputs)}" if outputs and not e.filename else ""
        return _user_error(args.command, from_os_error(e, what))
    except KeyboardInterrupt:
        print("FAILED | interrupted")
        return 130


def main(argv: Sequence[str] | None = None) -> int:
    from .commands import human_text_to_stderr

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if not getattr(args, "_run", None):
            parser.print_help()
            print("FAILED | usage error: no command")
            return EXIT_USAGE
        with human_text_to_stderr(getattr(args, "json", None) == "-"):
            try:
                return _run(args)
            except (BrokenPipeError, SystemExit):
                raise
            except Exception:
                # a normonnx bug: keep the traceback, never exit 1 (which means "mismatch")
                traceback.print_exc()
                print(f"FAILED | internal error in normonnx {args.command} (a bug; the traceback is above)")
                return EXIT_INTERNAL
    except BrokenPipeError:
        # the reader went away (`normonnx capabilities | head`): stop writing, no second error at exit
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError):  # pragma: no cover - stdout without a file descriptor
            pass
        return EXIT_BROKEN_PIPE


if __name__ == "__main__":
    sys.exit(main())
