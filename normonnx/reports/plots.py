"""The plots of the HTML report, drawn with matplotlib and returned as base64 PNG.

matplotlib is the optional extra ``normonnx[report]``, imported only here and only when a plot is
drawn; :func:`require_matplotlib` fails early (before any work) with the fix.
"""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from ..errors import UnsupportedHere


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the Agg backend, or :class:`UnsupportedHere` naming the extra."""
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


def require_matplotlib() -> None:
    """Fail early (before running anything expensive) if the plots cannot be drawn."""
    pyplot()


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def plot_error_vs_depth(loc: Any) -> str:
    """Per-layer max |error| against execution order — accumulated (the whole ONNX run) and own
    (the module's nodes on torch's inputs) — with each layer's tolerance (base64 PNG)."""
    plt = pyplot()
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
    plt = pyplot()
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


__all__ = ["plot_error_vs_depth", "plot_histograms", "pyplot", "require_matplotlib"]
