"""Benchmark results as data (JSON) and as ``BENCHMARKS.md``, and the diff between two runs.

The JSON document is the record; the markdown is rendered from it alone, so a saved JSON can be
re-rendered or compared later (``--compare old.json``). Comparisons use *ratios measured in the
same run* (``× floor`` for ops, ``× torch`` for models) besides the raw milliseconds: ratios
survive a change of machine or of background load, milliseconds do not.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import platform
import sys
from collections.abc import Sequence
from typing import Any

from .markdown import KIND_TITLES, _shape, diff_markdown, gaps, markdown

# the renderers are :mod:`normonnx.bench.markdown`'s; re-exported here, where callers read the document
__all__ = ["KIND_TITLES", "diff_documents", "diff_markdown", "gaps", "load_document", "make_document", "markdown"]

SCHEMA = "normonnx.bench/1"
#: a change smaller than this (relative) is never reported as a change, whatever the spread says
MIN_CHANGE = 0.05


# -- metadata ------------------------------------------------------------------------------------


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo (Linux), else platform.processor()."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def loadavg() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (OSError, AttributeError):
        return None


def versions() -> dict[str, str]:
    import numpy
    import onnx
    import onnxruntime
    import torch

    from .. import __version__

    out = {
        "normonnx": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "numpy": numpy.__version__,
    }
    try:
        import onnxscript

        out["onnxscript"] = onnxscript.__version__
    except Exception:
        out["onnxscript"] = "not installed"
    return out


def machine() -> dict[str, Any]:
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "loadavg_start": loadavg(),
    }


def make_document(
    *,
    command: str,
    threads: int,
    quick: bool,
    ops: list[dict[str, Any]] | None,
    models: list[dict[str, Any]] | None,
    machine_info: dict[str, Any],
    ops_default: list[dict[str, Any]] | None = None,
    method: dict[str, Any],
    notes: Sequence[str] = (),
) -> dict[str, Any]:
    """The JSON record of one benchmark run."""
    m = dict(machine_info)
    m["loadavg_end"] = loadavg()
    return {
        "schema": SCHEMA,
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": command,
        "threads": threads,
        "quick": quick,
        "machine": m,
        "versions": versions(),
        "method": method,
        "ops": ops,
        "ops_default": ops_default,
        "models": models,
        "notes": list(notes),
    }


def load_document(path: str) -> dict[str, Any]:
    """Read a benchmark JSON file; a clear :class:`InputError` if it is not one."""
    from ..errors import InputError

    try:
        with open(path) as f:
            doc = json.load(f)
    except FileNotFoundError:
        raise InputError(
            f"no such benchmark file: {path}", note="give a JSON file written by `normonnx bench --json`"
        ) from None
    except json.JSONDecodeError as e:
        raise InputError(
            f"{path} is not JSON: {e}", note="give a JSON file written by `normonnx bench --json`"
        ) from None
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
        raise InputError(
            f"{path} is not a normonnx benchmark file (schema {doc.get('schema') if isinstance(doc, dict) else None!r})",
            note=f"expected schema {SCHEMA!r}, written by `normonnx bench --json`",
        )
    return doc


# -- formatting helpers --------------------------------------------------------------------------


# -- compare -------------------------------------------------------------------------------------


def _key(section: str, r: dict[str, Any]) -> tuple[Any, ...]:
    if section == "ops":
        return (r["kind"], tuple(r["shape"]), r["candidate"])
    return (r["model"], r["candidate"])


def _rel_spread(r: dict[str, Any]) -> float:
    m, iqr = r.get("median_ms"), r.get("iqr_ms")
    return (iqr / m) if m and iqr is not None and m > 0 else 0.0


def diff_documents(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """What changed between two benchmark documents, row by row.

    For each row present in both: old/new median and ratio (× floor for ops, × torch for models).
    ``change`` = new ratio / old ratio − 1; a row is ``changed`` when |change| exceeds both
    :data:`MIN_CHANGE` and the two runs' combined relative spread (IQR/median), i.e. the
    difference is larger than the noise either run saw.
    """
    out: dict[str, Any] = {"old": {"date": old.get("date"), "command": old.get("command")}, "ops": [], "models": []}
    for section, ratio in (("ops", "x_floor"), ("models", "x_torch")):
        olds = {_key(section, r): r for r in old.get(section) or []}
        news = {_key(section, r): r for r in new.get(section) or []}
        for k in list(news) + [k for k in olds if k not in news]:
            o, n = olds.get(k), news.get(k)
            entry: dict[str, Any] = {"key": list(k) if section == "models" else [k[0], list(k[1]), k[2]]}
            if o is None or n is None:
                entry["status"] = "added" if o is None else "removed"
                out[section].append(entry)
                continue
            ro, rn = o.get(ratio), n.get(ratio)
            entry.update({"old_ms": o.get("median_ms"), "new_ms": n.get("median_ms"), "old_ratio": ro, "new_ratio": rn})
            if ro and rn and ro > 0:
                change = rn / ro - 1.0
                noise = math.hypot(_rel_spread(o), _rel_spread(n))
                entry["change"] = change
                entry["noise"] = noise
                entry["status"] = "changed" if abs(change) > max(MIN_CHANGE, noise) else "same"
            else:
                entry["status"] = "not comparable"
            out[section].append(entry)
    return out


def print_summary(doc: dict[str, Any], file: Any = sys.stdout) -> None:
    """A short text summary for the terminal (the markdown is the full report)."""
    if doc.get("ops"):
        print("biggest gaps to the copy floor (normonnx default strategy):", file=file)
        for g in gaps(doc["ops"])[:3]:
            sel = f"{g['selected']} {g['selected_x_floor']:.2f}×" if g["selected"] else "none selected"
            tx = f"{g['torch_x_floor']:.2f}×" if g["torch_x_floor"] else "—"
            print(
                f"  {g['kind']:8s} {_shape(g['shape']):18s} {sel:24s} fastest {g['best']} {g['best_x_floor']:.2f}×  torch {tx}",
                file=file,
            )
    if doc.get("models"):
        print("models (median ms, × torch eager):", file=file)
        by: dict[str, list[str]] = {}
        for r in doc["models"]:
            if r.get("median_ms") is not None:
                by.setdefault(r["model"], []).append(f"{r['candidate']} {r['median_ms']:.1f} ({r['x_torch']:.2f}×)")
        for mname, parts in by.items():
            print(f"  {mname:15s} " + "  ".join(parts), file=file)
