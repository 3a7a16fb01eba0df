"""CLI subcommands, one per file. Each module defines ``HELP``, ``add_arguments(parser)`` and
``run(args) -> int``; its docstring is the subcommand's ``--help`` description."""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
from collections.abc import Iterator, Mapping
from typing import Any, TextIO

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


def strict(obj: Any) -> Any:
    """``obj`` made encodable as strict JSON (RFC 8259: no NaN or Infinity literals).

    Non-finite floats become the *strings* ``"NaN"``, ``"Infinity"`` and ``"-Infinity"`` (not
    null: a reader must be able to tell an overflow from a missing value); NumPy scalars and
    arrays become numbers and lists; tuples become lists; other objects their ``str``.
    """
    if isinstance(obj, bool) or obj is None or isinstance(obj, (str, int)):
        return obj
    if isinstance(obj, float):
        if math.isfinite(obj):
            return obj
        return "NaN" if math.isnan(obj) else ("Infinity" if obj > 0 else "-Infinity")
    if isinstance(obj, Mapping):
        return {str(k): strict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [strict(v) for v in obj]
    tolist = getattr(obj, "tolist", None)  # numpy scalars and arrays, without importing numpy
    if callable(tolist) and type(obj).__module__ == "numpy":
        return strict(tolist())
    return str(obj)


def dumps(data: Any) -> str:
    """The one JSON encoder of the CLI: strict (see :func:`strict`), indented."""
    return json.dumps(strict(data), indent=2, allow_nan=False)


def write_json(path: str, data: Any) -> None:
    """Write ``data`` as strict JSON to ``path`` ("-" = stdout) atomically."""
    text = dumps(data)
    if path == "-":
        out = _data_out or sys.stdout
        out.write(text + "\n")
        out.flush()
        return
    write_text(path, text + "\n")


def write_text(path: str, text: str) -> None:
    """Replace ``path`` by ``text`` atomically (:func:`normonnx.reports.write_atomic`)."""
    from ..reports import write_atomic

    write_atomic(path, text.encode("utf-8"))


def progress(iterable: Any, total: int | None = None, desc: str = "") -> Any:
    """A progress bar on a terminal (tqdm if installed), plain iteration in CI / pipes."""
    if not sys.stderr.isatty() or os.environ.get("CI"):
        return iterable
    try:
        from tqdm import tqdm
    except ImportError:
        return iterable
    return tqdm(iterable, total=total, desc=desc, file=sys.stderr, leave=False)
