"""The HTML format: one self-contained file — verdicts, tables, and plots (error vs depth,
histograms of absolute and relative errors) embedded as base64 PNG (matplotlib: normonnx[report])."""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from typing import Any

from .base import Block, Format, register_format, views
from .plots import pyplot, require_matplotlib

STYLE = (
    "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;font-size:12px}"
    "td,th{border:1px solid #ccc;padding:2px 6px;text-align:left}tr.bad{background:#fdd}"
    "pre{background:#f6f6f6;padding:8px;font-size:12px}.pass{color:green}.fail{color:#b00}</style>"
)


def html_table(head: Sequence[str], rows: Sequence[Sequence[Any]], bad: Sequence[bool] | None = None) -> str:
    th = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    trs = []
    for i, r in enumerate(rows):
        cls = ' class="bad"' if bad and bad[i] else ""
        trs.append(f"<tr{cls}>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>")
    return f"<table><tr>{th}</tr>{''.join(trs)}</table>"


def block_html(b: Block) -> str:
    if b.kind == "heading":
        return f"<h2>{html.escape(b.text)}</h2>"
    if b.kind == "para":
        text = html.escape(b.text)
        return f"<p><b>{text}</b></p>" if b.bold else f"<p>{text}</p>"
    if b.kind == "pre":
        return f"<pre>{html.escape(b.text)}</pre>"
    if b.kind == "bullets":
        return "<ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in b.items) + "</ul>"
    if b.kind == "image":
        assert b.png is not None, "an image block needs png()"
        return f"<img alt='{html.escape(b.text)}' src='data:image/png;base64,{b.png()}'>"
    if b.kind == "table":
        return html_table(b.head, b.rows, b.bad)
    raise ValueError(f"unknown report block kind {b.kind!r}")


def render(
    sections: Mapping[str, Any], *, title: str = "normonnx verification report", final: str = "", **_: Any
) -> bytes:
    plt = pyplot()
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title>",
        STYLE,
        "</head><body>",
        f"<h1>{html.escape(title)}</h1>",
    ]
    if final:
        ok = final.startswith("PASSED")
        parts.append(f"<p class='{'pass' if ok else 'fail'}'><b>{html.escape(final)}</b></p>")
    for v in views(sections):
        parts += [block_html(b) for b in v.blocks()]
    parts.append("</body></html>")
    plt.close("all")
    return "\n".join(parts).encode("utf-8")


FORMAT = register_format(
    Format(
        "html",
        "write a self-contained HTML report with error-vs-depth and histogram plots (normonnx[report])",
        render,
        require_matplotlib,
        order=2,
    )
)

__all__ = ["FORMAT", "block_html", "html_table"]
