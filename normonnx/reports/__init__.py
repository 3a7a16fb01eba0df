"""Reports for people and for CI, from the data the verifier returns: one package, a format registry.

- :mod:`.base` — a section's :class:`~.base.View` (``to_dict`` / ``checks`` / ``blocks``: what every
  format asks of a report) and the registries of views and formats;
- :mod:`.sections` — the views of the verifier's reports (verify, localize, stress, precision,
  bisect); a report type without one gets the defaults from its ``summary()`` / ``format_table()``
  / ``as_dict()``;
- one file per format, ``format_<name>.py``, each registering a :class:`~.base.Format` whose name
  is also its CLI flag: ``text``, ``json`` (strict RFC 8259), ``junit`` (one ``<testsuite>`` per
  section, one ``<testcase>`` per check, ``<failure>`` carrying the numbers), ``html`` (one
  self-contained file, plots embedded as base64 PNG; matplotlib is the optional extra
  ``normonnx[report]``, imported only when a plot is drawn);
- :mod:`.text` — the per-module and per-value terminal tables; :mod:`.plots` — the HTML plots.

A new format is one ``format_<name>.py`` file (found by :func:`formats`); a new report type needs
no edit in any format. Every writer replaces its file atomically with
:func:`normonnx.io.write_bytes`.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
from collections.abc import Mapping
from typing import Any

from .base import FORMATS, Format
from .format_json import report_dict
from .format_junit import junit_cases
from .plots import plot_error_vs_depth, plot_histograms
from .text import format_layers, format_values

SECTIONS = ("verify", "localize", "stress", "precision", "bisect")


def formats() -> dict[str, Format]:
    """Every registered format by name, after importing each ``format_*.py`` module of this package."""
    for m in pkgutil.iter_modules(__path__):
        if m.name.startswith("format_"):
            importlib.import_module(f"{__name__}.{m.name}")
    return dict(sorted(FORMATS.items(), key=lambda kv: (kv[1].order, kv[0])))


def get_format(name: str) -> Format:
    from ..errors import InputError

    known = formats()
    if name not in known:
        raise InputError(f"unknown report format {name!r}", note=f"valid formats: {', '.join(known)}")
    return known[name]


def render(name: str, sections: Mapping[str, Any], **options: Any) -> bytes:
    """The bytes of ``sections`` in format ``name`` (options: ``passed``, ``final``, ``title``)."""
    return get_format(name).render(sections, **options)


def write(name: str, path: str | os.PathLike[str], sections: Mapping[str, Any], **options: Any) -> str:
    """Write ``sections`` in format ``name`` to ``path`` atomically; returns the path."""
    from ..io import write_bytes

    return write_bytes(path, render(name, sections, **options))


def write_junit(path: str | os.PathLike[str], sections: Mapping[str, Any], suite: str = "normonnx") -> str:
    """JUnit XML: ``<testsuites>`` with one ``<testsuite>`` per section, one ``<testcase>`` per check."""
    return write("junit", path, sections, suite=suite)


def write_html(
    path: str | os.PathLike[str],
    sections: Mapping[str, Any],
    *,
    title: str = "normonnx verification report",
    final: str = "",
) -> str:
    """One self-contained HTML file: verdicts, tables and embedded PNG plots."""
    return write("html", path, sections, title=title, final=final)


def require_html() -> None:
    """Fail early (before running anything expensive) if HTML reports cannot be written."""
    get_format("html").require()


__all__ = [
    "SECTIONS",
    "format_layers",
    "format_values",
    "formats",
    "get_format",
    "junit_cases",
    "plot_error_vs_depth",
    "plot_histograms",
    "render",
    "report_dict",
    "require_html",
    "write",
    "write_html",
    "write_junit",
]
