"""``BENCHMARKS.md`` rendered from a benchmark document (:mod:`normonnx.bench.report`) alone:
the op tables with their copy-floor ratios and gaps, the default-session rows, the model table,
the machine header, and the diff of two runs."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any


def _ms(v: float | None) -> str:
    if v is None or not math.isfinite(v):
        return "—"
    if v < 0.1:
        return f"{1e3 * v:.1f} µs"
    return f"{v:.3f} ms" if v < 10 else f"{v:.1f} ms"


def _spread(row: dict[str, Any]) -> str:
    m, iqr = row.get("median_ms"), row.get("iqr_ms")
    if not m or iqr is None:
        return ""
    return f"±{100 * iqr / m / 2:.0f}%"


def _err(v: float | None) -> str:
    return "—" if v is None else f"{v:.1e}"


def _table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    out = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return out


def _shape(s: Sequence[int]) -> str:
    return "[" + ",".join(map(str, s)) + "]"


KIND_TITLES = {
    "group": "GroupNorm (32 groups)",
    "layer": "LayerNorm (last axis)",
    "batch": "BatchNorm (eval, running statistics)",
    "instance": "InstanceNorm (affine)",
    "rms": "RMSNorm (last axis)",
}


def _op_groups(ops: list[dict[str, Any]]) -> dict[str, dict[tuple[int, ...], dict[str, dict[str, Any]]]]:
    by: dict[str, dict[tuple[int, ...], dict[str, dict[str, Any]]]] = {}
    for r in ops:
        by.setdefault(r["kind"], {}).setdefault(tuple(r["shape"]), {})[r["candidate"]] = r
    return by


def gaps(ops: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (kind, shape): normonnx's selected strategy, the fastest onnxruntime strategy and torch, in × floor.

    Sorted by the selected strategy's distance to the floor, largest first: the gaps that remain.
    """
    out = []
    for kind, shapes in _op_groups(ops).items():
        for shape, cands in shapes.items():
            ort = [r for n, r in cands.items() if n.startswith("onnxruntime:") and r.get("x_floor")]
            if not ort:
                continue
            sel = next((r for r in ort if r.get("selected")), None)
            best = min(ort, key=lambda r: r["x_floor"])
            torch_row = cands.get("torch", {})
            out.append(
                {
                    "kind": kind,
                    "shape": list(shape),
                    "selected": sel["strategy"] if sel else None,
                    "selected_x_floor": sel["x_floor"] if sel else None,
                    "best": best["strategy"],
                    "best_x_floor": best["x_floor"],
                    "best_stable": best.get("stable"),
                    "torch_x_floor": torch_row.get("x_floor"),
                    "floor_ms": best["floor_ms"],
                }
            )
    out.sort(key=lambda g: -(g["selected_x_floor"] or g["best_x_floor"]))
    return out


def ops_markdown(ops: list[dict[str, Any]]) -> list[str]:
    lines: list[str] = []
    if not ops:
        return lines
    opset = ops[0].get("opset")
    lines += [
        f"## Norm ops: onnxruntime CPU (opset {opset}) vs torch eager vs the copy floor",
        "",
        "Each cell: **× copy floor** (median latency ±half the interquartile range). ★ = the strategy normonnx's "
        "selector picks for this spec; † = marked numerically unstable (measured on stress inputs, see "
        "`normonnx capabilities`). Floor = the faster of `np.copyto` into a preallocated buffer and an onnxruntime "
        "`Identity` model copying the input (checked not to alias); the column gives the one that set it first, "
        "then the other.",
        "",
    ]
    for kind, shapes in _op_groups(ops).items():
        strategies: list[str] = []
        for cands in shapes.values():
            for n in cands:
                if n.startswith("onnxruntime:") and n not in strategies:
                    strategies.append(n)
        head = ["shape", "copy floor", "torch eager", *(s.split(":", 1)[1] for s in strategies)]
        rows = []
        for shape, cands in shapes.items():
            any_row = next(iter(cands.values()))
            src = any_row["floor_source"]
            other = next((r for n, r in cands.items() if n.startswith("copy:") and n != src), None)
            floor = f"{_ms(any_row['floor_ms'])} {src.split(':')[1]}"
            if other is not None and other.get("median_ms") is not None:
                floor += f" · {other['candidate'].split(':')[1]} {_ms(other['median_ms'])}"
            cells = [_shape(shape), floor]
            for name in ["torch", *strategies]:
                r = cands.get(name)
                if r is None:
                    cells.append("n/a")
                elif r.get("error"):
                    cells.append("error")
                else:
                    mark = ("★" if r.get("selected") else "") + ("†" if r.get("stable") is False else "")
                    cells.append(f"**{r['x_floor']:.2f}×**{mark} ({_ms(r['median_ms'])} {_spread(r)})")
            rows.append(cells)
        lines += [f"### {KIND_TITLES.get(kind, kind)}", "", *_table(head, rows), ""]
    # accuracy
    lines += [
        "### Accuracy of the timed outputs",
        "",
        "max |y − y_float64| on the benchmark input (N(0,1), float32); stress inputs are `normonnx` "
        "`tests/test_stress.py`'s job.",
        "",
    ]
    rows = []
    for kind, shapes in _op_groups(ops).items():
        for shape, cands in shapes.items():
            parts = [
                f"{n.split(':')[-1]} {_err(r.get('max_abs_err'))}"
                for n, r in cands.items()
                if not n.startswith("copy:") and not r.get("error")
            ]
            rows.append([kind, _shape(shape), ", ".join(parts)])
    lines += [*_table(["kind", "shape", "max abs error"], rows), ""]
    errors = [r for r in ops if r.get("error")]
    if errors:
        lines += ["Candidates that failed to run:", ""]
        lines += [f"- {r['kind']} {_shape(r['shape'])} {r['candidate']}: {r['error']}" for r in errors]
        lines.append("")
    return lines


def gaps_markdown(ops: list[dict[str, Any]], n: int = 3) -> list[str]:
    g = gaps(ops)
    if not g:
        return []
    rows = [
        [
            x["kind"],
            _shape(x["shape"]),
            f"{x['selected']} {x['selected_x_floor']:.2f}×" if x["selected"] else "—",
            f"{x['best']} {x['best_x_floor']:.2f}×" + ("†" if x["best_stable"] is False else ""),
            f"{x['torch_x_floor']:.2f}×" if x["torch_x_floor"] else "—",
        ]
        for x in g[:n]
    ]
    return [
        f"## The {min(n, len(g))} biggest gaps to the copy floor",
        "",
        "By the strategy normonnx selects by default (the distance a user pays), with the fastest onnxruntime "
        "strategy and torch eager for scale.",
        "",
        *_table(["kind", "shape", "normonnx default", "fastest onnxruntime", "torch eager"], rows),
        "",
    ]


def ops_default_markdown(rows: list[dict[str, Any]]) -> list[str]:
    """The selected strategy as deployed: default onnxruntime sessions vs torch vs copies using the threads."""
    from .ops import TORCH

    by: dict[tuple[str, tuple[int, ...]], dict[str, dict[str, Any]]] = {}
    for r in rows:
        by.setdefault((r["kind"], tuple(r["shape"])), {})[r["candidate"]] = r
    lines = [
        "## Norm ops in default onnxruntime sessions (as deployed)",
        "",
        "The strategy normonnx selects, in an onnxruntime session with default options (idle intra-op workers "
        "spin, so short kernels get both threads), next to torch eager and three copies of the input: "
        "`np.copyto` (1 thread), and `Identity` and `Mul(X, 1)` in default sessions (onnxruntime splits the "
        "element-wise Mul over its threads). Floor = the fastest copy. One candidate alive at a time, shuffled "
        "rounds of blocks (spinning workers would steal the cores from the next candidate); the × ratios are "
        "paired: the median over rounds of the two block medians' ratio.",
        "",
    ]
    table = []
    for (kind, shape), c in by.items():
        sel = next((r for r in c.values() if r.get("strategy")), None)
        floor = next(iter(c.values()))
        torch_row = c.get(TORCH)
        table.append(
            [
                kind,
                _shape(shape),
                f"{_ms(floor['floor_ms'])} ({floor['floor_source']})",
                f"{sel['strategy']} **{sel['x_floor']:.2f}×** floor ({_ms(sel['median_ms'])}) · {sel['x_torch']:.2f}× torch"
                if sel
                else "-",
                f"{torch_row['x_floor']:.2f}× floor ({_ms(torch_row['median_ms'])})" if torch_row else "-",
            ]
        )
    return [*lines, *_table(["kind", "shape", "copy floor", "normonnx (selected)", "torch eager"], table), ""]


def _model_cell(r: dict[str, Any]) -> str:
    if r.get("skipped"):
        return "skipped"
    if r.get("error") or r.get("median_ms") is None:
        return "error"
    s = f"{_ms(r['median_ms'])} {_spread(r)} · **{r['x_torch']:.2f}×** torch · err {_err(r.get('max_abs_err'))}"
    if r.get("opset"):
        s += f" · opset {r['opset']}"
    return s


def models_markdown(models: list[dict[str, Any]], top: int = 6) -> list[str]:
    if not models:
        return []
    from .models import CANDIDATES

    by: dict[str, dict[str, dict[str, Any]]] = {}
    for r in models:
        by.setdefault(r["model"], {})[r["candidate"]] = r
    lines = [
        "## Models: torch eager vs ONNX exports in onnxruntime (CPU)",
        "",
        "Each cell: median latency ±half the IQR · **latency ÷ torch eager's** · max |error| against the model run "
        "in float64 by torch · opset. `default` = `torch.onnx.export(model, inputs, dynamo=True)` with default "
        "arguments; `normonnx` = `normonnx.exporter.export`; `+optimize` = after `normonnx.optimize.optimize_model`. "
        "Static shapes (the entries' example inputs).",
        "",
    ]
    head = ["model", *CANDIDATES]
    rows = [[m, *(_model_cell(c.get(n, {"skipped": "-"})) for n in CANDIDATES)] for m, c in by.items()]
    lines += [*_table(head, rows), ""]
    skipped = {r["skipped"] for r in models if r.get("skipped")}
    for s in sorted(skipped):
        lines.append(f"Skipped column: {s}.")
    errs = [r for r in models if r.get("error")]
    for r in errs:
        lines.append(f"- {r['model']} {r['candidate']}: {r['error']}")
    if skipped or errs:
        lines.append("")
    iso_names = [n for n in CANDIDATES if any((c.get(n) or {}).get("default_session") for c in by.values())]
    if iso_names:
        lines += [
            "### End to end in default onnxruntime sessions",
            "",
            "The same files in onnxruntime sessions with default options (idle intra-op workers spin, as in a "
            "deployment; same thread count), which cannot share the cores with each other or with torch: rounds of "
            "blocks, one session alive at a time, in a shuffled order per round. Each cell: median ±half the IQR of "
            "the pooled samples · **speed-up over the default export**: the median over rounds of (the default "
            "export's block median ÷ this file's block median in the same round). Headroom columns: normonnx's "
            "best file with every norm node replaced by `Neg` — one cheap pass that, like any custom op, keeps the "
            "layout conversions around it: **no norm implementation can beat it** — and with the norm nodes removed "
            "(onnxruntime then also drops those conversions). Timed only: they compute something else.",
            "",
        ]
        from .models import BOUND_NEG, NO_NORM

        def cell(d: dict[str, Any] | None) -> str:
            if not d:
                return "-"
            sp = d.get("speedup_vs_default_export")
            return f"{_ms(d['median_ms'])} {_spread(d)}" + (f" · **{sp:.2f}×**" if sp else "")

        rows = []
        for m, c in by.items():
            head = next(
                (h for n in iso_names if (h := ((c.get(n) or {}).get("default_session") or {}).get("headroom"))), {}
            )
            cells = [cell((c.get(n) or {}).get("default_session")) for n in iso_names]
            rows.append([m, *cells, cell(head.get(BOUND_NEG)), cell(head.get(NO_NORM))])
        lines += [*_table(["model", *iso_names, f"headroom: {BOUND_NEG}", f"headroom: {NO_NORM}"], rows), ""]
    lines += [
        "### Where the time goes (profilers)",
        "",
        f"Kernel time per run grouped by op type, top {top}; **bold** = nodes of a normalization (normonnx "
        "metadata, torch's module scope, or a norm op type). `norm` = time and share of kernel time in "
        "normalization nodes; `÷ torch` = that time over torch eager's norm time. onnxruntime: its profiler's "
        "per-node kernel times; torch: `torch.profiler` self CPU time per aten op (norm = the aten batch/layer/"
        "group/instance/rms norm kernels; a fused GroupNorm+SiLU node in onnxruntime also carries the SiLU).",
        "",
    ]
    rows = []
    for m, c in by.items():
        t = (c.get(CANDIDATES[0]) or {}).get("profile")
        for n in CANDIDATES:
            p = (c.get(n) or {}).get("profile")
            if not p:
                continue
            parts = []
            for g in p["by_op"][:top]:
                label = f"{g['op']} {100 * g['share']:.0f}%"
                parts.append(f"**{label}**" if g["norm"] else label)
            vs = f"{p['norm_ms'] / t['norm_ms']:.2f}×" if t and t["norm_ms"] > 0 and p["norm_ms"] > 0 else "-"
            rows.append(
                [
                    m,
                    n,
                    _ms(p["kernel_ms"]),
                    f"{_ms(p['norm_ms'])} ({100 * p['norm_share']:.0f}%)",
                    vs,
                    ", ".join(parts),
                ]
            )
    lines += [*_table(["model", "run", "kernel time", "norm", "÷ torch", "top op types"], rows), ""]
    return lines


def markdown(doc: dict[str, Any], diff: dict[str, Any] | None = None) -> str:
    """``BENCHMARKS.md`` for a benchmark document (and a diff against an older one)."""
    m, v, meth = doc["machine"], doc["versions"], doc["method"]
    lines = [
        "# normonnx benchmarks",
        "",
        f"Generated {doc['date']} by `{doc['command']}`"
        + (" (quick mode: tiny shapes, short budgets)" if doc["quick"] else "")
        + ".",
        "Every number below was measured in that one run; compare ratios, not milliseconds, across machines.",
        "",
        f"- Machine: {m['cpu']}, {m['cores']} cores ({m['platform']}); load average "
        f"{m.get('loadavg_start')} at start, {m.get('loadavg_end')} at end"
        + (
            " — **the machine was shared; absolute times are noisy, the side-by-side ratios are the result**"
            if _busy(m)
            else ""
        ),
        "- Versions: " + ", ".join(f"{k} {val}" for k, val in v.items()),
        f"- Threads: {doc['threads']} for everyone (torch `set_num_threads`, onnxruntime intra-op threads, inter-op 1)",
    ]
    lines += [f"- {k[:1].upper() + k[1:]}: {val}" for k, val in meth.items()]
    lines.append("")
    if doc.get("ops"):
        lines += gaps_markdown(doc["ops"])
        lines += ops_markdown(doc["ops"])
    if doc.get("ops_default"):
        lines += ops_default_markdown(doc["ops_default"])
    if doc.get("models"):
        lines += models_markdown(doc["models"])
    if diff is not None:
        lines += diff_markdown(diff)
    if doc.get("notes"):
        lines += ["## Notes", "", *(f"- {n}" for n in doc["notes"]), ""]
    return "\n".join(lines).rstrip() + "\n"


def diff_markdown(diff: dict[str, Any]) -> list[str]:
    lines = [
        f"## Changes since {diff['old'].get('date')} (`{diff['old'].get('command')}`)",
        "",
        "Ratio change beyond both 5 % and the runs' combined spread; ops compare × floor, models × torch.",
        "",
    ]
    rows = []
    for section, label in (("ops", "× floor"), ("models", "× torch")):
        # rows added / removed are listed once per group (op shape or model), not per candidate
        grouped: dict[tuple[str, str], list[str]] = {}
        for e in diff[section]:
            if e["status"] in ("added", "removed"):
                group = " ".join(_shape(p) if isinstance(p, list) else str(p) for p in e["key"][:-1])
                grouped.setdefault((e["status"], group), []).append(str(e["key"][-1]))
        for (status, group), cands in grouped.items():
            rows.append([section, group, f"{status}: {', '.join(cands)}", "", ""])
        for e in diff[section]:
            if e["status"] in ("same", "added", "removed"):
                continue
            key = " ".join(_shape(p) if isinstance(p, list) else str(p) for p in e["key"])
            if e["status"] == "not comparable":
                rows.append([section, key, e["status"], "", ""])
                continue
            arrow = "slower" if e["change"] > 0 else "faster"
            rows.append(
                [
                    section,
                    key,
                    f"{e['old_ratio']:.2f}{label} → {e['new_ratio']:.2f}{label}",
                    f"{100 * e['change']:+.0f}% ({arrow})",
                    f"{_ms(e['old_ms'])} → {_ms(e['new_ms'])}",
                ]
            )
    same = sum(1 for s in ("ops", "models") for e in diff[s] if e["status"] == "same")
    if rows:
        lines += _table(["section", "row", "ratio", "change", "median"], rows)
    else:
        lines.append("No row changed beyond the noise.")
    lines += ["", f"{same} row(s) unchanged within the noise.", ""]
    return lines


def _busy(m: dict[str, Any]) -> bool:
    loads = [x for x in (m.get("loadavg_start"), m.get("loadavg_end")) if x]
    cores = m.get("cores") or 1
    return any(x[0] > 0.5 * cores for x in loads)


_SECTION = re.compile(r"<!-- ([\w.-]+): begin -->\n.*?<!-- \1: end -->\n?", re.S)


def keep_sections(old: str, new: str) -> str:
    """``new`` followed by every ``<!-- NAME: begin --> … <!-- NAME: end -->`` block of ``old``
    that ``new`` does not have, in ``old``'s order: the sections other scripts write into the
    same file (BENCHMARKS.md: bench_export, bench_scale, …) survive a ``normonnx bench`` rewrite."""
    have = {m.group(1) for m in _SECTION.finditer(new)}
    kept = [m.group(0) for m in _SECTION.finditer(old) if m.group(1) not in have]
    if not kept:
        return new
    out = new if new.endswith("\n") else new + "\n"
    for block in kept:
        out += "\n" + (block if block.endswith("\n") else block + "\n")
    return out
