"""Reports for people and for CI, from the data the verifier returns.

- :func:`format_layers` / :func:`format_values`: aligned text tables for the terminal;
- :func:`report_dict`: one JSON document with a section per check (``verify``, ``localize``,
  ``stress``, ``precision``, ``bisect``) — the schema is the sections' ``as_dict()``;
- :func:`write_junit`: JUnit XML, one ``<testsuite>`` per section and one ``<testcase>`` per
  output (verify: per sample × output) or per checked layer, ``<failure>`` carrying the numbers;
- :func:`write_html`: one self-contained HTML file; plots (error vs depth, histograms of absolute
  and relative errors) are drawn with matplotlib and embedded as base64 PNG. matplotlib is the
  optional extra ``normonnx[report]``, imported only here and only when HTML is asked for.

Every writer replaces its file atomically (temp file + rename).
"""

from __future__ import annotations

import base64
import html
import io
import math
import os
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .errors import UnsupportedHere

SECTIONS = ("verify", "localize", "stress", "precision", "bisect")


# ---------------------------------------------------------------------------------------------
# text


def _table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(head)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join([fmt.format(*head), fmt.format(*("-" * w for w in widths))] + [fmt.format(*r) for r in rows])


def _g(x: float) -> str:
    return f"{x:.3g}" if math.isfinite(x) else str(x)


def format_layers(rep: Any, all_layers: bool = False) -> str:
    """The per-module table of a :class:`~normonnx.localize.LocalizeReport`.

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
                _g(c.max_abs) if c else "-",
                _g(own.max_abs) if own else "-",
                f"{judged.tolerance} {judged.tolerance_source}" if judged else "-",
                _g(judged.required_atol) if judged else "-",
                ok,
            )
        )
    return _table(head, rows)


def format_values(rep: Any, limit: int = 40) -> str:
    """The per-value table of a :class:`~normonnx.localize.BisectReport` (failing values first 40)."""
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
                _g(c.max_abs),
                _g(c.rel_to_scale),
                {True: "agree", False: "DIFFER", None: "?"}[v.inputs_agree],
                ok,
            )
        )
    return _table(head, rows)


# ---------------------------------------------------------------------------------------------
# JSON


def report_dict(sections: Mapping[str, Any]) -> dict[str, Any]:
    """``{"passed": all sections passed, <section>: section.as_dict(), ...}``."""
    out: dict[str, Any] = {"passed": all(bool(s.passed) for s in sections.values() if s is not None)}
    for k, s in sections.items():
        if s is not None:
            out[k] = s.as_dict()
    return out


# ---------------------------------------------------------------------------------------------
# JUnit


def write_atomic(path: str | os.PathLike[str], data: bytes) -> str:
    """Replace ``path`` by ``data`` with :func:`normonnx.io.write_bytes`: one write protocol (temp
    file, rename as the commit point, mode from the umask or the old file, temp files swept) for
    every file normonnx writes."""
    from .io import write_bytes

    return write_bytes(path, data)


def _cmp_message(c: Any) -> str:
    return (
        f"max_abs={_g(c.max_abs)} max_rel={_g(c.max_rel)} rel_to_scale={_g(c.rel_to_scale)} "
        f"mismatched={c.mismatched}/{c.total} ({c.tolerance} {c.tolerance_source}, check={c.check}; "
        f"needs atol>={_g(c.required_atol)})"
    )


def junit_cases(name: str, section: Any) -> list[tuple[str, str, str | None, str]]:
    """(classname, testcase name, failure message or None, details) for one report section."""
    cases: list[tuple[str, str, str | None, str]] = []
    name = name.split("_")[0]  # "precision_bf16" is a precision section
    if name == "verify":
        for s in section.samples:
            for o in s.outputs:
                cases.append(("verify." + s.name, o.name, None if o.passed else _cmp_message(o), _cmp_message(o)))
    elif name == "localize":
        for o in section.outputs:
            cases.append(("localize.outputs", o.name, None if o.passed else _cmp_message(o), _cmp_message(o)))
        for lr in section.checked():
            c = lr.isolated or lr.comparison  # a layer fails on its own error, not on upstream drift
            msg = None
            if not c.passed:
                msg = ("own error on torch's inputs: " if lr.isolated else "") + _cmp_message(c)
                if section.culprit is not None and lr.name == section.culprit.name:
                    msg = "FIRST DIVERGENCE: " + msg
            detail = f"{lr.type} → {lr.onnx_value} ({lr.mapped_by}); accumulated {_cmp_message(lr.comparison)}"
            cases.append(("localize.layers", lr.name, msg, detail))
        if section.between is not None:
            cases.append(("localize", "divergence-location", section.verdict(), ""))
    elif name == "stress":
        for case in section.cases:
            if case.skipped:
                cases.append(("stress." + case.name, "skipped", None, case.skipped))
                continue
            for o in case.outputs:
                msg = None if o.passed else o.message()
                cases.append(("stress." + case.name, o.name, msg, o.message()))
    elif name == "precision":
        for o in section.outputs:
            cases.append((f"precision.{section.dtype}.outputs", o.name, None if o.passed else _cmp_message(o), ""))
        for lp in section.layers:
            cases.append(
                (f"precision.{section.dtype}.layers", lp.layer, lp.problem() if lp.problem() else None, lp.describe())
            )
    elif name == "bisect":
        for o in section.outputs:
            cases.append(("bisect.outputs", o.name, None if o.passed else _cmp_message(o), ""))
        for v in section.values:
            msg = None if v.comparison.passed else _cmp_message(v.comparison)
            cases.append(("bisect.values", v.name, msg, f"{v.op_type} {v.node}"))
    return cases


def write_junit(path: str | os.PathLike[str], sections: Mapping[str, Any], suite: str = "normonnx") -> str:
    """JUnit XML: ``<testsuites>`` with one ``<testsuite>`` per section, one ``<testcase>`` per check."""
    root = ET.Element("testsuites", name=suite)
    total = failures = 0
    for name, section in sections.items():
        if section is None:
            continue
        cases = junit_cases(name, section)
        ts = ET.SubElement(root, "testsuite", name=f"{suite}.{name}")
        nfail = 0
        skipped = 0
        for classname, case, failure, details in cases:
            tc = ET.SubElement(ts, "testcase", classname=classname, name=case, time="0")
            if case == "skipped":
                ET.SubElement(tc, "skipped", message=details)
                skipped += 1
            elif failure is not None:
                f = ET.SubElement(tc, "failure", message=failure, type="NumericalMismatch")
                f.text = details or failure
                nfail += 1
            elif details:
                out = ET.SubElement(tc, "system-out")
                out.text = details
        ts.set("tests", str(len(cases)))
        ts.set("failures", str(nfail))
        ts.set("errors", "0")
        ts.set("skipped", str(skipped))
        total += len(cases)
        failures += nfail
    root.set("tests", str(total))
    root.set("failures", str(failures))
    ET.indent(root)
    return write_atomic(path, ET.tostring(root, encoding="utf-8", xml_declaration=True))


# ---------------------------------------------------------------------------------------------
# HTML


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise UnsupportedHere(
            "the HTML report needs matplotlib, which is not installed",
            note="install the report extra: pip install 'normonnx[report]' (or drop --html; --json and --junit need nothing)",
        ) from None
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def require_html() -> None:
    """Fail early (before running anything expensive) if HTML reports cannot be written."""
    _pyplot()


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def plot_error_vs_depth(loc: Any) -> str:
    """Per-layer max |error| against execution order — accumulated (the whole ONNX run) and own
    (the module's nodes on torch's inputs) — with each layer's tolerance (base64 PNG)."""
    plt = _pyplot()
    layers = [lr for lr in loc.checked() if lr.leaf]
    fig, ax = plt.subplots(figsize=(9, 3.6))
    tiny = 1e-12

    def clip(x: float) -> float:
        return max(x, tiny) if math.isfinite(x) else 1e6

    if layers:
        xs = np.arange(len(layers))
        acc = [clip(lr.comparison.max_abs) for lr in layers]
        ax.semilogy(xs, acc, "o-", label="accumulated max |onnx − torch|", ms=3)
        own = [(i, clip(lr.isolated.max_abs)) for i, lr in enumerate(layers) if lr.isolated is not None]
        if own:
            ax.semilogy([i for i, _ in own], [v for _, v in own], "s--", label="own (torch's inputs)", ms=3)
        bound = [clip((lr.isolated or lr.comparison).tolerance.atol) for lr in layers]
        ax.semilogy(xs, bound, ":", color="gray", label="atol applied")
        for i, lr in enumerate(layers):
            if lr.norm:
                ax.axvline(i, color="tab:green", alpha=0.15)
            if lr.passed is False:
                ax.plot(i, clip((lr.isolated or lr.comparison).max_abs), "x", color="red", ms=8)
        if loc.culprit is not None and loc.culprit in layers:
            i = layers.index(loc.culprit)
            ax.annotate(
                loc.culprit.name, (i, acc[i]), textcoords="offset points", xytext=(5, 10), color="red", fontsize=8
            )
        step = max(1, len(layers) // 30)
        ax.set_xticks(xs[::step])
        ax.set_xticklabels([lr.name for lr in layers][::step], rotation=70, fontsize=6)
    ax.set_xlabel("module (execution order; green: norm layers, red x: own error beyond tolerance)")
    ax.set_ylabel("error")
    ax.legend(fontsize=7)
    ax.grid(True, which="both", alpha=0.3)
    return _png(fig)


def plot_histograms(errors: Mapping[str, np.ndarray], rel_errors: Mapping[str, np.ndarray] | None = None) -> str:
    """Histograms (log10 bins) of elementwise absolute and relative errors, one series per key."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    tiny = 1e-16
    for ax, data in ((axes[0], errors), (axes[1], rel_errors or {})):
        for key, e in list(data.items())[:6]:
            e = np.asarray(e, dtype=np.float64)
            e = e[np.isfinite(e)]
            if e.size:
                ax.hist(np.log10(np.maximum(e, tiny)), bins=60, alpha=0.5, label=key)
    axes[0].set_xlabel("log10 |onnx − torch|")
    axes[1].set_xlabel("log10 |onnx − torch| / |torch|")
    for ax in axes:
        ax.set_ylabel("elements")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=6)
    return _png(fig)


def _html_table(head: Sequence[str], rows: Sequence[Sequence[str]], bad: Sequence[bool] | None = None) -> str:
    th = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    trs = []
    for i, r in enumerate(rows):
        cls = ' class="bad"' if bad is not None and bad[i] else ""
        trs.append(f"<tr{cls}>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>")
    return f"<table><tr>{th}</tr>{''.join(trs)}</table>"


def _text_block(text: str) -> str:
    return f"<pre>{html.escape(text)}</pre>"


def write_html(
    path: str | os.PathLike[str],
    sections: Mapping[str, Any],
    *,
    title: str = "normonnx verification report",
    final: str = "",
) -> str:
    """One self-contained HTML file: verdicts, tables and embedded PNG plots."""
    plt = _pyplot()
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title>",
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;font-size:12px}"
        "td,th{border:1px solid #ccc;padding:2px 6px;text-align:left}tr.bad{background:#fdd}"
        "pre{background:#f6f6f6;padding:8px;font-size:12px}.pass{color:green}.fail{color:#b00}</style>",
        "</head><body>",
        f"<h1>{html.escape(title)}</h1>",
    ]
    if final:
        ok = final.startswith("PASSED")
        parts.append(f"<p class='{'pass' if ok else 'fail'}'><b>{html.escape(final)}</b></p>")
    ver = sections.get("verify")
    if ver is not None:
        parts.append("<h2>Outputs</h2>")
        parts.append(f"<p>{html.escape(ver.summary())}</p>")
        parts.append(_text_block(ver.format_table()))
    loc = sections.get("localize")
    if loc is not None:
        parts.append("<h2>Per-layer localization</h2>")
        parts.append(f"<p><b>{html.escape(loc.verdict())}</b></p>")
        if loc.notes:
            parts.append("<ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in loc.notes) + "</ul>")
        parts.append(f"<img alt='error vs depth' src='data:image/png;base64,{plot_error_vs_depth(loc)}'>")
        keys = [k for k in loc.errors if k.startswith("output:")]
        if loc.culprit is not None and loc.culprit.name in loc.errors:
            keys.append(loc.culprit.name)
        elif loc.errors:  # a passing run: the outputs and the layer closest to its tolerance
            worst = max(
                (lr for lr in loc.checked() if lr.name in loc.errors),
                key=lambda lr: (
                    (lr.isolated or lr.comparison).required_atol
                    / max((lr.isolated or lr.comparison).tolerance.atol, 1e-30)
                ),
                default=None,
            )
            if worst is not None:
                keys.append(worst.name)
        hist = plot_histograms(
            {k: loc.errors[k] for k in keys}, {k: loc.rel_errors[k] for k in keys if k in loc.rel_errors}
        )
        parts.append(f"<img alt='error histograms' src='data:image/png;base64,{hist}'>")
        rows, bad = [], []
        for lr in loc.layers:
            c, own = lr.comparison, lr.isolated
            judged = own or c
            rows.append(
                (
                    lr.index,
                    lr.name,
                    lr.type,
                    lr.onnx_value or "-",
                    lr.mapped_by,
                    f"{lr.norm['kind']}:{lr.norm.get('strategy')}" if lr.norm else "",
                    _g(c.max_abs) if c else "-",
                    _g(own.max_abs) if own else "-",
                    f"{judged.tolerance} {judged.tolerance_source}" if judged else "-",
                    _g(judged.required_atol) if judged else "-",
                    "-" if judged is None else ("yes" if judged.passed else "NO"),
                )
            )
            bad.append(lr.passed is False)
        head = ("#", "module", "type", "onnx value", "mapped", "norm", "acc max_abs", "own max_abs", "tolerance")
        parts.append(_html_table((*head, "needs atol", "ok"), rows, bad))
    st = sections.get("stress")
    if st is not None:
        parts.append("<h2>Stress inputs (error vs a float64 torch run)</h2>")
        parts.append(_text_block(st.format_table()))
    for key, pr in sections.items():
        if not key.startswith("precision") or pr is None:
            continue
        parts.append(f"<h2>{html.escape(pr.dtype)} deployment</h2>")
        parts.append(f"<p>{html.escape(pr.summary())}</p>")
        parts.append(_text_block(pr.format_table()))
        if pr.localize is not None:
            parts.append(
                f"<img alt='{pr.dtype} error vs depth' src='data:image/png;base64,{plot_error_vs_depth(pr.localize)}'>"
            )
    bi = sections.get("bisect")
    if bi is not None:
        parts.append("<h2>ONNX bisection</h2>")
        parts.append(f"<p><b>{html.escape(bi.verdict())}</b></p>")
        parts.append(_text_block(bi.format_table()))
    parts.append("</body></html>")
    plt.close("all")
    return write_atomic(path, "\n".join(parts).encode("utf-8"))


__all__ = [
    "SECTIONS",
    "format_layers",
    "format_values",
    "junit_cases",
    "plot_error_vs_depth",
    "plot_histograms",
    "report_dict",
    "require_html",
    "write_html",
    "write_junit",
]
