"""Aligned plain-text tables: the one formatter behind every ``format_table`` and terminal table.

:func:`table` left-aligns each column to its widest cell (header included), separates columns by
two spaces and underlines the header with dashes::

    kind   strategy
    -----  --------
    group  native

Every column is padded, the last one too, so a row's length is the table's width. This module
imports nothing: lowering, verification and the CLI all use it without depending on each other.
"""

from __future__ import annotations

from collections.abc import Sequence


def table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """``head`` and ``rows`` (strings, one per column) as aligned text; no rows: header and rule."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(head)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join([fmt.format(*head), fmt.format(*("-" * w for w in widths))] + [fmt.format(*r) for r in rows])


__all__ = ["table"]
