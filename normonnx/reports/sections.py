"""The views of the verifier's five report types: what each offers every format.

One class per report type, registered by the type's name (the reports are not imported here:
``import normonnx.reports`` stays free of torch and onnxruntime). A report type without a view
here still works in every format through :class:`~.base.View`'s defaults.
"""

from __future__ import annotations

from typing import Any

from .base import Block, Check, View, heading, para, pre, register_view
from .text import comparison_message, g


def _output_checks(group: str, outputs: Any, details: bool = True) -> list[Check]:
    out = []
    for o in outputs:
        msg = comparison_message(o)
        out.append(Check(group, o.name, None if o.passed else msg, msg if details else ""))
    return out


def _image(alt: str, png: Any) -> Block:
    return Block("image", alt, png=png)


@register_view("VerifyReport")
class VerifyView(View):
    order = 0
    title = "Outputs"

    def checks(self) -> list[Check]:
        return [c for s in self.section.samples for c in _output_checks("verify." + s.name, s.outputs)]

    def blocks(self) -> list[Block]:
        return [heading(self.title), para(self.section.summary()), pre(self.section.format_table())]


@register_view("LocalizeReport")
class LocalizeView(View):
    order = 10
    title = "Per-layer localization"

    def checks(self) -> list[Check]:
        loc = self.section
        cases = _output_checks("localize.outputs", loc.outputs)
        for lr in loc.checked():
            c = lr.isolated or lr.comparison  # a layer fails on its own error, not on upstream drift
            msg = None
            if not c.passed:
                msg = ("own error on torch's inputs: " if lr.isolated else "") + comparison_message(c)
                if loc.culprit is not None and lr.name == loc.culprit.name:
                    msg = "FIRST DIVERGENCE: " + msg
            detail = f"{lr.type} → {lr.onnx_value} ({lr.mapped_by}); accumulated {comparison_message(lr.comparison)}"
            cases.append(Check("localize.layers", lr.name, msg, detail))
        if loc.between is not None:
            cases.append(Check("localize", "divergence-location", loc.verdict(), ""))
        return cases

    def _histogram_keys(self) -> list[str]:
        """The outputs and the culprit, or on a passing run the layer closest to its tolerance."""
        loc = self.section
        keys = [k for k in loc.errors if k.startswith("output:")]
        if loc.culprit is not None and loc.culprit.name in loc.errors:
            keys.append(loc.culprit.name)
        elif loc.errors:
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
        return keys

    def blocks(self) -> list[Block]:
        from .plots import plot_error_vs_depth, plot_histograms

        loc = self.section
        out = [heading(self.title), para(loc.verdict(), bold=True)]
        if loc.notes:
            out.append(Block("bullets", items=tuple(loc.notes)))
        out.append(_image("error vs depth", lambda: plot_error_vs_depth(loc)))

        def hist() -> str:
            keys = self._histogram_keys()
            return plot_histograms(
                {k: loc.errors[k] for k in keys}, {k: loc.rel_errors[k] for k in keys if k in loc.rel_errors}
            )

        out.append(_image("error histograms", hist))
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
                    g(c.max_abs) if c else "-",
                    g(own.max_abs) if own else "-",
                    f"{judged.tolerance} {judged.tolerance_source}" if judged else "-",
                    g(judged.required_atol) if judged else "-",
                    "-" if judged is None else ("yes" if judged.passed else "NO"),
                )
            )
            bad.append(lr.passed is False)
        head = ("#", "module", "type", "onnx value", "mapped", "norm", "acc max_abs", "own max_abs", "tolerance")
        out.append(Block("table", head=(*head, "needs atol", "ok"), rows=tuple(rows), bad=tuple(bad)))
        return out


@register_view("StressReport")
class StressView(View):
    order = 20
    title = "Stress inputs (error vs a float64 torch run)"

    def checks(self) -> list[Check]:
        cases = []
        for case in self.section.cases:
            if case.skipped:
                cases.append(Check("stress." + case.name, "skipped", None, case.skipped, skipped=case.skipped))
                continue
            for o in case.outputs:
                cases.append(Check("stress." + case.name, o.name, None if o.passed else o.message(), o.message()))
        return cases

    def blocks(self) -> list[Block]:
        return [heading(self.title), pre(self.section.format_table())]


@register_view("PrecisionReport")
class PrecisionView(View):
    order = 30

    @property
    def title(self) -> str:
        return f"{self.section.dtype} deployment"

    def checks(self) -> list[Check]:
        pr = self.section
        cases = _output_checks(f"precision.{pr.dtype}.outputs", pr.outputs, details=False)
        for lp in pr.layers:
            cases.append(Check(f"precision.{pr.dtype}.layers", lp.layer, lp.problem() or None, lp.describe()))
        return cases

    def blocks(self) -> list[Block]:
        from .plots import plot_error_vs_depth

        pr = self.section
        out = [heading(self.title), para(pr.summary()), pre(pr.format_table())]
        if pr.localize is not None:
            out.append(_image(f"{pr.dtype} error vs depth", lambda: plot_error_vs_depth(pr.localize)))
        return out


@register_view("BisectReport")
class BisectView(View):
    order = 40
    title = "ONNX bisection"

    def checks(self) -> list[Check]:
        bi = self.section
        cases = _output_checks("bisect.outputs", bi.outputs, details=False)
        for v in bi.values:
            msg = None if v.comparison.passed else comparison_message(v.comparison)
            cases.append(Check("bisect.values", v.name, msg, f"{v.op_type} {v.node}"))
        return cases

    def blocks(self) -> list[Block]:
        return [heading(self.title), para(self.section.verdict(), bold=True), pre(self.section.format_table())]


__all__ = ["BisectView", "LocalizeView", "PrecisionView", "StressView", "VerifyView"]
