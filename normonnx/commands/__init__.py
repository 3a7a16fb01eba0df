"""CLI subcommands, one per file. Each module defines ``HELP``, ``add_arguments(parser)`` and
``run(args) -> int``; its docstring is the subcommand's ``--help`` description. The flags several
commands share (``--target`` / ``--provider``, report files, tolerances, inputs) are built by
:mod:`._common`."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from typing import Any, TextIO

from ..reports.format_json import dumps
from ..reports.format_json import strict as strict  # re-exported: the CLI's JSON rules

#: where ``write_json(..., "-")`` writes: the real stdout while :func:`human_text_to_stderr` is on
_data_out: TextIO | None = None


def final_line(ok: bool, text: str) -> None:
    """The one grep-able closing line of every run."""
    print(f"{'PASSED' if ok else 'FAILED'} | {text}")
    sys.stdout.flush()


@contextlib.contextmanager
def human_text_to_stderr(enabled: bool) -> Iterator[None]:
    """While on, ``print`` (tables, notes, the closing line) goes to stderr and only
    :func:`write_json` with ``"-"`` reaches stdout: ``--json - | python -m json.tool`` works."""
    global _data_out
    if not enabled:
        yield
        return
    saved, _data_out = _data_out, sys.stdout
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        _data_out = saved


def write_json(path: str, data: Any) -> None:
    """Write ``data`` as strict JSON (:func:`dumps`) to ``path`` ("-" = stdout) atomically."""
    write_text(path, dumps(data) + "\n")


def write_text(path: str, text: str | bytes) -> None:
    """Replace ``path`` by ``text`` atomically (:func:`normonnx.io.write_bytes`); "-" = stdout, the
    data stream that stays stdout under :func:`human_text_to_stderr`."""
    if path == "-":
        out = _data_out or sys.stdout
        out.write(text if isinstance(text, str) else text.decode("utf-8"))
        out.flush()
        return
    from ..io import write_bytes

    write_bytes(path, text)


def progress(iterable: Any, total: int | None = None, desc: str = "") -> Any:
    """A progress bar on a terminal (tqdm if installed), plain iteration in CI / pipes."""
    if not sys.stderr.isatty() or os.environ.get("CI"):
        return iterable
    try:
        from tqdm import tqdm
    except ImportError:
        return iterable
    return tqdm(iterable, total=total, desc=desc, file=sys.stderr, leave=False)
