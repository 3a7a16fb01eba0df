"""The main job: export every bundled model, run it in onnxruntime, verify it, and tabulate.

For each model in ``models/``: export with normonnx (opset chosen per target unless given; with
the model's dynamic axes), verify against torch on the example inputs, random samples and a
second size, and time torch eager vs onnxruntime (same thread count, medians). A model whose
norms are not each one norm node (or folded into a constant) as its entry's ``expected_norms``
says fails its row, hand-written norms included. Returns rows; :func:`format_rows` prints the table.
"""

from __future__ import annotations

import dataclasses
import os
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

from .errors import NormOnnxError


@dataclasses.dataclass
class ZooRow:
    model: str
    norms: dict[str, int]
    strategies: dict[str, int]
    opset: int
    export_s: float
    max_abs: float
    max_abs_f64: float
    torch_ms: float
    ort_ms: float
    passed: bool
    error: str = ""
    #: norms folded into constants at export: BatchNorms into their Conv/Gemm ("batch"), norms of
    #: weights such as weight standardization ("param")
    folded: dict[str, int] = dataclasses.field(default_factory=dict)
    #: norms that are not one norm node as the model's entry expects ("" when every one is)
    missing: str = ""

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _median_ms(fn: Callable[[], Any], reps: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def run_model(
    entry: Any,
    out_dir: str,
    *,
    opset: int | None = None,
    target: str = "cpu",
    threads: int = 2,
    reps: int = 10,
    n_samples: int = 1,
) -> ZooRow:
    """Export, verify and time one ``models`` entry."""
    import torch

    from .exporter import export
    from .runtime.session import session
    from .verify.api import verify

    model = entry.factory()
    inputs = tuple(entry.example_inputs())
    os.makedirs(out_dir, exist_ok=True)  # the output directory is ours to create; export() refuses a missing one
    path = os.path.join(out_dir, f"{entry.name}.onnx")
    res = export(
        model,
        inputs,
        path,
        opset=opset,
        target=target,
        dynamic=entry.dynamic_axes or None,
        input_names=list(entry.input_names),
    )
    rep = verify(
        model,
        path,
        inputs,
        n_samples=n_samples,
        second_size=tuple(entry.second_size_inputs()) if entry.dynamic_axes else None,
        threads=threads,
    )
    norms: dict[str, int] = {}
    for s in res.specs:
        norms[s.kind] = norms.get(s.kind, 0) + 1
    folded = {
        k: v
        for k, v in {
            "batch": sum(n for r, n in res.fired.items() if r.startswith("batchnorm.into_")),
            "param": res.fired.get("param_norm.fold", 0),
        }.items()
        if v
    }
    expected = getattr(entry, "expected_norms", None)
    got = {k: norms.get(k, 0) + (folded.get("batch", 0) if k == "batch" else 0) for k in (expected or {})}
    missing = ", ".join(f"{k} {got[k]}/{n}" for k, n in (expected or {}).items() if got[k] != n)
    torch.set_num_threads(threads)
    with torch.no_grad():
        t_ms = _median_ms(lambda: model(*inputs), reps)
    sess = session(path, threads=threads)
    feed = [t.numpy() for t in inputs]
    o_ms = _median_ms(lambda: sess.run(feed), reps)
    return ZooRow(
        entry.name,
        norms,
        res.strategies,
        res.opset,
        res.seconds,
        rep.max_abs,
        max(rep.float64_max_abs.values(), default=float("nan")),
        t_ms,
        o_ms,
        rep.passed and not missing,
        f"norms not each one node: {missing}" if missing else "",
        folded,
        missing,
    )


def run_zoo(
    names: Sequence[str] | None = None,
    out_dir: str = "out",
    *,
    opset: int | None = None,
    threads: int = 2,
    reps: int = 10,
    progress: Callable[[Any], Any] = lambda x: x,
) -> list[ZooRow]:
    """Run :func:`run_model` over the bundled models (all by default); errors become failed rows."""
    from .modelspec import models_registry

    reg = models_registry()
    if reg is None:
        raise NormOnnxError("models/ not found", note="run from a normonnx checkout")
    names = list(names) if names else reg.names()
    rows = []
    for name in progress(names):
        entry = reg.get(name)
        try:
            rows.append(run_model(entry, out_dir, opset=opset, threads=threads, reps=reps))
        except NormOnnxError as e:
            rows.append(
                ZooRow(
                    name,
                    {},
                    {},
                    opset or 0,
                    0.0,
                    float("nan"),
                    float("nan"),
                    float("nan"),
                    float("nan"),
                    False,
                    e.message,
                )
            )
    return rows


def format_rows(rows: Sequence[ZooRow]) -> str:
    head = (
        "model",
        "norm nodes",
        "folded",
        "strategies",
        "opset",
        "export s",
        "max err",
        "vs f64",
        "torch ms",
        "ort ms",
        "ort/torch",
        "ok",
    )
    cells = []
    for r in rows:
        ratio = r.ort_ms / r.torch_ms if r.torch_ms and r.torch_ms == r.torch_ms else float("nan")
        cells.append(
            (
                r.model,
                ",".join(f"{k}×{v}" for k, v in r.norms.items()),
                ",".join(f"{k}×{v}" for k, v in r.folded.items()) or "-",
                ",".join(f"{k}×{v}" for k, v in r.strategies.items()),
                str(r.opset),
                f"{r.export_s:.1f}",
                f"{r.max_abs:.2g}",
                f"{r.max_abs_f64:.2g}",
                f"{r.torch_ms:.2f}",
                f"{r.ort_ms:.2f}",
                f"{ratio:.2f}",
                "yes" if r.passed else f"NO: {r.error[:100]}",
            )
        )
    from .text import table

    return table(head, cells)
