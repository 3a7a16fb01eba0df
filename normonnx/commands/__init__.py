"""CLI subcommands, one per file. Each module defines ``HELP``, ``add_arguments(parser)`` and
``run(args) -> int``; its docstring is the subcommand's ``--help`` description."""

from __future__ import annotations

import json
import os
import sys
from typing import Any


def final_line(ok: bool, text: str) -> None:
    """The one grep-able closing line of every run."""
    print(f"{'PASSED' if ok else 'FAILED'} | {text}")
    sys.stdout.flush()


def write_json(path: str, data: Any) -> None:
    """Write ``data`` as JSON to ``path`` ("-" = stdout) atomically."""
    text = json.dumps(data, indent=2, default=str)
    if path == "-":
        print(text)
        return
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text + "\n")
    os.replace(tmp, path)


def progress(iterable: Any, total: int | None = None, desc: str = "") -> Any:
    """A progress bar on a terminal (tqdm if installed), plain iteration in CI / pipes."""
    if not sys.stderr.isatty() or os.environ.get("CI"):
        return iterable
    try:
        from tqdm import tqdm
    except ImportError:
        return iterable
    return tqdm(iterable, total=total, desc=desc, file=sys.stderr, leave=False)
