"""Stress: the inputs where a norm lowering breaks (:data:`.inputs.STRESS`), through one norm
kernel and through a whole model.

Kernel level — :func:`measure`: one norm built with one strategy, in onnxruntime CPU, against the
kind's float64 reference and torch fp32 on the same input (``normal``, ``offset``,
``tiny_scale``, ``constant``); :func:`large_shape` gives ≥ 1M elements per set of statistics,
where fp32 sequential accumulation drifts.

Whole model — :func:`stress_model`: each case builds inputs of the model's example shapes (float inputs only; integer inputs such
as token ids are kept), computes them in float64, rounds them once to the model's dtype, and
compares three runs on the same rounded inputs:

- ``onnx``:  the ONNX file in onnxruntime;
- ``torch``: the torch model in its own dtype (float32);
- ``ref``:   a float64 copy of the torch model — the reference.

A case passes when ONNX is finite wherever the reference is, and
``|onnx − ref| <= max(RATIO · |torch − ref|, atol + rtol · max|ref|)`` (max over elements): the
ONNX file may be as inexact as the table's tolerance or a few times as inexact as torch itself,
whichever is larger. Large offsets make torch fp32 itself imprecise; that is the point of
measuring against float64 rather than against torch.

Cases:
- ``offset``:            N(1000, 1) — E[x²]−E[x]² cancels catastrophically in fp32;
- ``tiny_scale``:        N(0, 1e-3²) — variance comparable to ε;
- ``constant_channels``: every channel (axis 1) constant — zero variance per instance/group;
- ``large_spatial``:     4× the example size along each dynamic non-batch axis (skipped when the
                         ONNX file has static shapes);
- ``eps_small`` / ``eps_large``: every norm's ε set to 1e-12 (tiny-scale input) / 1.0 (normal
                         input) in a copy of the model, exported again with the file's opset and
                         target — the lowering must carry extreme ε exactly.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import tempfile
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import onnx

from .. import io as nio
from ..spec import NormSpec
from .inputs import STRESS, large_shapes, random_like
from .tolerances import UNIT_ROUNDOFF, tolerance
from .trace import flat_tensors, norm_kind_of

#: ONNX may be this many times as far from float64 as torch fp32 itself (max over elements)
RATIO = 4.0
#: torch's own error is floored at this many float32 roundings of the output scale in the ratio
NOISE_ULPS = 16.0
#: the whole-model cases, in :data:`.inputs.STRESS`
CASES = ("offset", "tiny_scale", "constant_channels", "large_spatial", "eps_small", "eps_large")
DESCRIPTIONS = {c: STRESS[c].description for c in CASES}


@dataclasses.dataclass
class StressOutput:
    name: str
    onnx_err: float  # max |onnx − ref|
    torch_err: float  # max |torch − ref|
    scale: float  # max |ref|
    bound: float
    nonfinite: int  # non-finite ONNX elements where ref is finite
    passed: bool

    @property
    def ratio(self) -> float:
        """onnx_err / torch_err, torch's error floored at ``NOISE_ULPS`` float32 roundings of the
        output's scale: a ratio to an error that happens to be ~0 measures luck, not the lowering."""
        den = max(self.torch_err, NOISE_ULPS * UNIT_ROUNDOFF["float32"] * self.scale)
        if den > 0:
            return self.onnx_err / den
        return 0.0 if self.onnx_err == 0 else math.inf

    def message(self) -> str:
        return (
            f"|onnx−f64|={self.onnx_err:.3g} |torch−f64|={self.torch_err:.3g} (×{self.ratio:.3g}) "
            f"scale={self.scale:.3g} bound={self.bound:.3g}"
            + (f" nonfinite={self.nonfinite}" if self.nonfinite else "")
        )

    def as_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["ratio"] = self.ratio if math.isfinite(self.ratio) else str(self.ratio)
        for k in ("onnx_err", "torch_err", "bound"):
            if not math.isfinite(d[k]):
                d[k] = str(d[k])
        return d


@dataclasses.dataclass
class StressCase:
    name: str
    description: str
    input_shapes: list[list[int]]
    outputs: list[StressOutput]
    skipped: str = ""

    @property
    def passed(self) -> bool:
        return bool(self.skipped) or all(o.passed for o in self.outputs)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "input_shapes": self.input_shapes,
            "skipped": self.skipped,
            "passed": self.passed,
            "outputs": [o.as_dict() for o in self.outputs],
        }


@dataclasses.dataclass
class StressReport:
    onnx_path: str
    provider: str
    cases: list[StressCase]

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.cases)

    def summary(self) -> str:
        ran = [c for c in self.cases if not c.skipped]
        bad = [c.name for c in ran if not c.passed]
        worst = max((o.ratio for c in ran for o in c.outputs if math.isfinite(o.ratio)), default=0.0)
        text = (
            f"{len(ran)} stress cases ({len(self.cases) - len(ran)} skipped), worst onnx/torch error ratio ×{worst:.3g}"
        )
        return text + (f"; FAILED: {', '.join(bad)}" if bad else "")

    def format_table(self) -> str:
        head = ("case", "output", "|onnx−f64|", "|torch−f64|", "ratio", "scale", "bound", "ok")
        rows = []
        for c in self.cases:
            if c.skipped:
                rows.append((c.name, "-", "-", "-", "-", "-", "-", f"skipped: {c.skipped}"))
            for o in c.outputs:
                rows.append(
                    (
                        c.name,
                        o.name,
                        f"{o.onnx_err:.3g}",
                        f"{o.torch_err:.3g}",
                        f"{o.ratio:.3g}",
                        f"{o.scale:.3g}",
                        f"{o.bound:.3g}",
                        "yes" if o.passed else ("NO (nonfinite)" if o.nonfinite else "NO"),
                    )
                )
        from ..text import table

        return table(head, rows)

    def as_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "onnx_path": self.onnx_path,
            "provider": self.provider,
            "ratio_allowed": RATIO,
            "summary": self.summary(),
            "cases": [c.as_dict() for c in self.cases],
        }


def _set_eps(model: Any, eps: float) -> int:
    n = 0
    for m in model.modules():
        if norm_kind_of(m) is not None and hasattr(m, "eps"):
            m.eps = eps
            n += 1
    return n


def _compare(name: str, got: np.ndarray, t32: np.ndarray, ref: np.ndarray, provider: str) -> StressOutput:
    g = got.astype(np.float64)
    fin_ref = np.isfinite(ref)
    nonfinite = int((~np.isfinite(g) & fin_ref).sum())
    diff = np.abs(g - ref)[fin_ref]
    onnx_err = math.inf if nonfinite else (float(diff.max()) if diff.size else 0.0)
    tdiff = np.abs(t32.astype(np.float64) - ref)[fin_ref]
    torch_err = float(np.nan_to_num(tdiff, nan=np.inf).max()) if tdiff.size else 0.0
    scale = float(np.abs(ref[fin_ref]).max()) if fin_ref.any() else 0.0
    tol = tolerance(str(got.dtype), "model", provider)
    bound = max(RATIO * torch_err, tol.atol + tol.rtol * scale)
    return StressOutput(name, onnx_err, torch_err, scale, bound, nonfinite, onnx_err <= bound)


def stress_model(
    model: Any,
    onnx_path: str | os.PathLike[str],
    inputs: Sequence[Any],
    *,
    provider: str = "cpu",
    cases: Sequence[str] = CASES,
    seed: int = 0,
    threads: int | None = None,
) -> StressReport:
    """Run the stress ``cases`` through ``model`` and the ONNX file; see the module docstring."""
    import torch

    from ..errors import InputError
    from ..runtime.session import session

    unknown = [c for c in cases if c not in CASES]
    if unknown:
        raise InputError(f"unknown stress case(s) {', '.join(unknown)}", note=f"valid: {', '.join(CASES)}")
    path = os.fspath(onnx_path)
    proto = nio.load(path, load_external=False)
    base = [t.detach().cpu().numpy() if isinstance(t, torch.Tensor) else np.asarray(t) for t in inputs]
    names = [o.name for o in proto.graph.output]
    sess = session(path, provider, threads=threads, optimize=True)
    m64 = copy.deepcopy(model).double().eval()
    results: list[StressCase] = []

    def run(m: Any, m_64: Any, s: Any, arrays: list[np.ndarray]) -> list[StressOutput]:
        tin = [torch.from_numpy(np.ascontiguousarray(a)) for a in arrays]
        with torch.no_grad():
            t32 = [t.numpy() for t in flat_tensors(m(*tin))]
            r64 = [t.numpy() for t in flat_tensors(m_64(*[t.double() if t.is_floating_point() else t for t in tin]))]
        got = s.run(arrays)
        return [_compare(n, a, t, r, provider) for n, a, t, r in zip(names, got, t32, r64)]

    for case in cases:
        rng = np.random.default_rng(seed)
        stress = STRESS[case]
        desc = stress.description
        shapes = [a.shape for a in base]
        if stress.spatial != 1:
            big = large_shapes(proto, base, stress.spatial)
            if big is None:
                results.append(StressCase(case, desc, [list(s) for s in shapes], [], "the ONNX file has static shapes"))
                continue
            shapes = big
        arrays = random_like(base, rng, case, shapes)
        if stress.eps is not None:
            eps = stress.eps
            try:
                outs = _eps_case(model, proto, path, eps, arrays, provider, threads, run)
            except Exception as e:  # the re-export is part of the test; report, do not crash
                results.append(
                    StressCase(case, desc, [list(s) for s in shapes], [], f"re-export failed: {str(e).splitlines()[0]}")
                )
                continue
            if outs is None:
                results.append(
                    StressCase(case, desc, [list(s) for s in shapes], [], "the model has no norm with an eps")
                )
                continue
        else:
            outs = run(model, m64, sess, arrays)
        results.append(StressCase(case, desc, [list(s) for s in shapes], outs))
    return StressReport(path, provider, results)


def _eps_case(
    model: Any,
    proto: onnx.ModelProto,
    path: str,
    eps: float,
    arrays: list[np.ndarray],
    provider: str,
    threads: int | None,
    run: Callable[..., list[StressOutput]],
) -> list[StressOutput] | None:
    from ..exporter import export
    from ..runtime.session import session

    m = copy.deepcopy(model)
    if not _set_eps(m, eps):
        return None
    from ..lowering import PREFERENCE
    from ..lowering.graph import recorded_lowerings

    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    meta = {p.key: p.value for p in proto.metadata_props}
    target = meta.get("normonnx.target", provider)
    # reproduce the file's lowerings: its strategies first (unstable ones were chosen on purpose)
    used = list(dict.fromkeys(str(r["strategy"]) for r in recorded_lowerings(proto)))
    prefer = used + [s for s in PREFERENCE.get(target, PREFERENCE["cpu"]) if s not in used]
    import torch

    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "eps.onnx")
        export(
            m,
            tuple(torch.from_numpy(a) for a in arrays),
            out,
            opset=opset,
            target=target,
            prefer=prefer,
            allow_unstable=bool(used),
        )
        s = session(out, provider, threads=threads, optimize=True)
        return run(m, copy.deepcopy(m).double().eval(), s, arrays)


# -- kernel level ----------------------------------------------------------------------------------


def large_shape(spec: NormSpec, elements: int = 1 << 20) -> tuple[int, ...]:
    """An input shape with at least ``elements`` per set of statistics, for ``spec``'s kind (the
    kind declares it: ``NormKind.large_shape``)."""
    from ..norms import get_kind

    return get_kind(spec.kind).large_shape(spec, elements)


def large_spec(kind: str) -> NormSpec:
    """A representative spec of ``kind`` with few channels so :func:`large_shape` stays ~8 MB
    (the kind declares it: ``NormKind.large_spec``)."""
    from ..norms import get_kind

    return get_kind(kind).large_spec()


def measure(
    spec: NormSpec,
    shape: tuple[int, ...],
    stress: str,
    strategy: str,
    *,
    opset: int = 23,
    seed: int = 0,
    threads: int = 2,
) -> tuple[float, float, np.ndarray, dict[str, np.ndarray]]:
    """Max |error| vs the float64 reference of ``strategy`` in onnxruntime CPU (its optimizations
    off) and of torch fp32 on the same fp32 input: ``(ours, torch, our output, params)``.
    A non-finite output counts as an infinite error."""
    import torch

    from ..lowering import build_model
    from ..norms import KINDS
    from ..runtime import session

    rng = np.random.default_rng(seed)
    kind = KINDS[spec.kind]
    params = kind.random_params(spec, rng)
    x = STRESS[stress].values(shape, rng).astype(np.float32)
    p32 = {k: v.astype(np.float32) for k, v in params.items()}
    ref = kind.reference(spec, x, p32)
    with torch.no_grad():
        t = kind.torch_forward(spec, torch.from_numpy(x), {k: torch.from_numpy(v) for k, v in p32.items()}).numpy()
    model = build_model(spec, params, opset, strategy, allow_unstable=True)
    (y,) = session(model, optimize=False, threads=threads).run({"X": x})
    err = float(np.abs(y.astype(np.float64) - ref).max()) if np.isfinite(y).all() else float("inf")
    return err, float(np.abs(t.astype(np.float64) - ref).max()), y, params


__all__ = [
    "CASES",
    "RATIO",
    "StressCase",
    "StressOutput",
    "StressReport",
    "large_shape",
    "large_spec",
    "measure",
    "stress_model",
]
