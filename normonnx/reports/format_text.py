"""The plain-text format: every section's page as text (what the terminal shows, in one file);
images are left out, cell tables aligned with :func:`normonnx.text.table`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..text import table
from .base import Block, Format, register_format, views


def block_text(b: Block) -> str | None:
    if b.kind == "heading":
        return f"\n== {b.text} =="
    if b.kind in ("para", "pre"):
        return b.text
    if b.kind == "bullets":
        return "\n".join(f"- {n}" for n in b.items)
    if b.kind == "table":
        return table(b.head, [tuple(map(str, r)) for r in b.rows])
    return None  # an image has no text form


def render(sections: Mapping[str, Any], *, final: str = "", **_: Any) -> bytes:
    lines = [t for v in views(sections) for b in v.blocks() if (t := block_text(b)) is not None]
    if final:
        lines += ["", final]
    return ("\n".join(lines).lstrip("\n") + "\n").encode("utf-8")


FORMAT = register_format(Format("text", "write the report's tables as plain text", render, order=3))

__all__ = ["FORMAT", "block_text"]
