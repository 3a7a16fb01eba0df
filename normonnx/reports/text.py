"""Terminal tables of the per-module and per-value reports, and the number format reports share."""

from __future__ import annotations

import math
from typing import Any

from ..text import table


def g(x: float) -> str:
    """``x`` in 3 significant digits; ``inf`` / ``nan`` as Python spells them."""
    return f"{x:.3g}" if math.isfinite(x) else str(x)


def comparison_message(c: Any) -> str:
    """One line of an :class:`~normonnx.verify.compare.OutputComparison`: errors, tolerance, needed atol."""
    return (
        f"max_abs={g(c.max_abs)} max_rel={g(c.max_rel)} rel_to_scale={g(c.rel_to_scale)} "
        f"mismatched={c.mismatched}/{c.total} ({c.tolerance} {c.tolerance_source}, check={c.check}; "
        f"needs atol>={g(c.required_atol)})"
    )


def format_layers(rep: Any, all_layers: bool = False) -> str:
    """The per-module table of a :class:`~normonnx.verify.localize.LocalizeReport`.

    ``acc max_abs``: the ONNX value after the whole run vs torch (upstream drift included);
    ``own max_abs``: the module's ONNX nodes fed with torch's inputs (its own error), judged under
    ``tolerance`` (``table``, ``derived`` from the error model, or ``user``); ``needs``: the
    smallest atol that passes it. ``ok`` is the own verdict. By default: every checked module up
    to two rows past the first failure, then failing rows only.
    """
    head = (
        "#", "module", "type", "onnx value", "mapped", "acc max_abs", "own max_abs", "tolerance", "needs", "ok",
    )  # fmt: skip
    rows = []
    after_fail = 0
    culprit = rep.culprit.name if rep.culprit else None
    for lr in rep.layers:
        c = lr.comparison
        own = lr.isolated
        judged = own or c
        if c is None and not all_layers:
            continue
        if not all_layers and after_fail > 2 and (judged is None or judged.passed):
            continue
        if judged is not None and not judged.passed:
            after_fail += 1
        ok = "-" if judged is None else ("yes" if judged.passed else "NO")
        if lr.name == culprit:
            ok += "  <== first divergence"
        kind = f" [{lr.norm['kind']}:{lr.norm.get('strategy') or '?'}]" if lr.norm else ""
        rows.append(
            (
                str(lr.index),
                ("  " if not lr.leaf else "") + lr.name,
                lr.type + kind,
                str(lr.onnx_value or "-"),
                lr.mapped_by + (f"+{lr.folded_with}" if lr.folded_with and lr.onnx_value else ""),
                g(c.max_abs) if c else "-",
                g(own.max_abs) if own else "-",
                f"{judged.tolerance} {judged.tolerance_source}" if judged else "-",
                g(judged.required_atol) if judged else "-",
                ok,
            )
        )
    return table(head, rows)


def format_values(rep: Any, limit: int = 40) -> str:
    """The per-value table of a :class:`~normonnx.verify.bisect.BisectReport` (failing values first 40)."""
    head = ("#", "value", "op", "scope", "max_abs", "rel_scale", "inputs", "ok")
    rows = []
    first = rep.first.name if rep.first else None
    shown = [v for v in rep.values if not v.comparison.passed][:limit] or rep.values[:limit]
    for v in shown:
        c = v.comparison
        ok = "yes" if c.passed else "NO"
        if v.name == first:
            ok += "  <== first divergence"
        rows.append(
            (
                str(v.index),
                v.name,
                v.op_type,
                v.scope or "-",
                g(c.max_abs),
                g(c.rel_to_scale),
                {True: "agree", False: "DIFFER", None: "?"}[v.inputs_agree],
                ok,
            )
        )
    return table(head, rows)


__all__ = ["comparison_message", "format_layers", "format_values", "g"]
