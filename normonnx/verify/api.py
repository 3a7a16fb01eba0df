"""Prove an ONNX file computes what the torch model computes, and return the evidence.

``verify`` runs the torch model (eval mode, no grad) and an onnxruntime session on the same
inputs — the example inputs, ``n_samples`` random samples of the same shapes, and, when the ONNX
model has symbolic (dynamic) dims, a sample at a second size — and compares every output with
:func:`normonnx.verify.compare.compare_arrays` under the tolerance table (or the caller's overrides).
It returns a :class:`VerifyReport`; it never just returns a bool.

Usage errors (:class:`~normonnx.errors.InputError`, CLI exit 2) are raised before anything runs:
an unknown ``check``, a NaN, Inf or negative atol/rtol. Latency is measured only when asked
(``latency_reps``): warm-up calls first, then the median of that many timed calls per side.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import onnx

from .. import io as nio
from ..errors import ExportError, InputError, UnsupportedHere
from .compare import OutputComparison, compare_arrays
from .inputs import inputs_from_onnx, random_like
from .inputs import second_size as second_size_of  # ``second_size`` is verify's argument
from .tolerances import Tolerance, check_statistic, check_tolerance, tolerance
from .trace import flat_tensors


@dataclasses.dataclass
class SampleResult:
    name: str
    input_shapes: dict[str, list[int]]
    outputs: list[OutputComparison]

    @property
    def passed(self) -> bool:
        return all(o.passed for o in self.outputs)


@dataclasses.dataclass
class VerifyReport:
    """Evidence of equivalence (or not) between a torch model and an ONNX file."""

    onnx_path: str
    provider: str
    samples: list[SampleResult]
    lowerings: list[dict[str, object]]
    torch_ms: float | None  # median of timed warm calls; None: not measured
    ort_ms: float | None
    float64_max_abs: dict[str, float]
    versions: dict[str, str]
    latency_reps: int = 0

    @property
    def warnings(self) -> list[str]:
        return [f"{s.name}/{o.name}: {w}" for s in self.samples for o in s.outputs for w in o.warnings]

    @property
    def passed(self) -> bool:
        return bool(self.samples) and all(s.passed for s in self.samples)

    def worst(self) -> dict[str, OutputComparison]:
        """Per output name, the comparison with the largest error relative to its bound."""
        out: dict[str, OutputComparison] = {}
        for s in self.samples:
            for o in s.outputs:
                cur = out.get(o.name)
                if cur is None or (not o.passed and cur.passed) or (o.passed == cur.passed and o.max_abs > cur.max_abs):
                    out[o.name] = o
        return out

    @property
    def max_abs(self) -> float:
        return max((o.max_abs for s in self.samples for o in s.outputs), default=0.0)

    def summary(self) -> str:
        w = self.worst()
        parts = [
            f"{n}: max_abs={o.max_abs:.3g} rel_to_scale={o.rel_to_scale:.3g} ({o.tolerance})" for n, o in w.items()
        ]
        n_cmp = sum(len(s.outputs) for s in self.samples)
        verdict = "equivalent" if self.passed else "MISMATCH"
        text = (
            f"{verdict}: {os.path.basename(self.onnx_path)} on {self.provider}, {len(self.samples)} samples, {n_cmp} comparisons; "
            + "; ".join(parts)
        )
        if self.warnings:
            text += f"; {len(self.warnings)} warning(s): {self.warnings[0]}"
        return text

    def format_table(self) -> str:
        head = (
            "sample", "output", "shape", "dtype", "max_abs", "max_rel", "rel_scale", "mismatch", "tolerance",
            "needs atol", "ok",
        )  # fmt: skip
        rows = []
        for s in self.samples:
            for o in s.outputs:
                rows.append(
                    (
                        s.name,
                        o.name,
                        "x".join(map(str, o.shape)),
                        o.dtype,
                        f"{o.max_abs:.3g}",
                        f"{o.max_rel:.3g}",
                        f"{o.rel_to_scale:.3g}",
                        f"{o.mismatched}/{o.total}",
                        f"{o.tolerance} {o.tolerance_source}",
                        f"{o.required_atol:.3g}",
                        "yes" if o.passed else "NO",
                    )
                )
        from ..text import table

        return table(head, rows)

    def as_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "onnx_path": self.onnx_path,
            "provider": self.provider,
            "max_abs": self.max_abs,
            "latency": None
            if self.torch_ms is None
            else {"torch_ms": self.torch_ms, "ort_ms": self.ort_ms, "median_of": self.latency_reps, "warmup": _WARMUP},
            "warnings": self.warnings,
            "float64_max_abs": {k: (v if math.isfinite(v) else str(v)) for k, v in self.float64_max_abs.items()},
            "versions": self.versions,
            "lowerings": self.lowerings,
            "samples": [
                {
                    "name": s.name,
                    "input_shapes": s.input_shapes,
                    "passed": s.passed,
                    "outputs": [o.as_dict() for o in s.outputs],
                }
                for s in self.samples
            ],
        }


def verify(
    model: Any,
    onnx_path: str | os.PathLike[str],
    example_inputs: Any = None,
    *,
    provider: str = "cpu",
    rtol: float | None = None,
    atol: float | None = None,
    per_output: Mapping[str, Tolerance] | None = None,
    n_samples: int = 2,
    seed: int = 0,
    check: str = "elementwise",
    second_size: Any = None,
    threads: int | None = None,
    ort_optimize: bool = True,
    float64: bool = True,
    latency_reps: int = 0,
    release_model: bool = False,
) -> VerifyReport:
    """Compare ``model`` (torch, eval) with the ONNX file on several inputs; return the evidence.

    rtol/atol:    override the table's defaults for every output; ``per_output`` overrides by name.
    n_samples:    random samples (standard normal, same shapes) besides the example inputs.
    second_size:  explicit inputs at another size; by default derived from the symbolic dims.
    float64:      also run a float64 copy of the torch model and report each output's error vs it
                  (skipped for models over :data:`FLOAT64_TWIN_MAX` of weights: the copy is 2x them).
    latency_reps: > 0: time both sides on the example inputs (3 warm-up calls, then the median
                  of ``latency_reps`` calls); 0 (default): no latency in the report.
    release_model: the caller gives the torch model up: once torch's outputs are computed (all
                  of them come first) its weights are freed, before onnxruntime loads the file, so
                  that peak memory is the larger of the two sides, not their sum (the model is
                  unusable afterwards; the CLI rebuilds it if a later step needs it).
    """
    import torch

    from ..runtime.session import require_provider, session

    check_statistic(check)
    check_tolerance(atol, "atol")
    check_tolerance(rtol, "rtol")
    for k, t in (per_output or {}).items():
        if not isinstance(t, Tolerance):
            raise InputError(f"per_output[{k!r}] is {type(t).__name__}, not a Tolerance")
    require_provider(provider)  # before torch runs every case: a missing provider fails first
    proto = nio.load_lazy(onnx_path)  # a large inline file is scanned, its weights left in it
    if isinstance(model, torch.nn.Module):
        training = [n or "<root>" for n, m in model.named_modules() if m.training]
        if training:
            raise ExportError(
                f"the torch model is in training mode ({', '.join(training[:5])}...); verification compares eval semantics",
                note="call model.eval() first (CLI: --eval)",
            )
    elif isinstance(model, torch.export.ExportedProgram):
        model = model.module()
    if example_inputs is None:
        example_inputs = inputs_from_onnx(proto, seed)
    if isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)
    _refuse_bfloat16(proto, onnx_path, example_inputs)
    ex = [t.detach().cpu().numpy() if isinstance(t, torch.Tensor) else np.asarray(t) for t in example_inputs]
    for i, a in enumerate(ex):
        if a.dtype.kind == "f" and not np.isfinite(a).all():
            raise InputError(f"input {i} contains NaN or Inf", note="verification needs finite inputs")
    graph_inputs = [vi.name for vi in proto.graph.input if vi.name not in {t.name for t in proto.graph.initializer}]
    if len(ex) != len(graph_inputs):
        raise InputError(
            f"{len(ex)} inputs given but the ONNX model takes {len(graph_inputs)} ({', '.join(graph_inputs)})"
        )
    rng = np.random.default_rng(seed)
    cases: list[tuple[str, list[np.ndarray]]] = [("example", ex)]
    for k in range(n_samples):
        cases.append((f"random{k}", random_like(ex, rng)))
    second = (
        [t.detach().cpu().numpy() if isinstance(t, torch.Tensor) else np.asarray(t) for t in second_size]
        if second_size is not None
        else second_size_of(proto, ex)
    )
    if second is not None:
        cases.append(("second_size", second))
    m64 = None
    if float64 and isinstance(model, torch.nn.Module) and _float64_twin_fits(model):
        import copy

        m64 = copy.deepcopy(model).double()
    names = [o.name for o in proto.graph.output]
    samples: list[SampleResult] = []
    f64_err: dict[str, float] = {}
    # torch first, every case (and its float64 twin), then onnxruntime: with release_model the
    # torch weights are gone before the session holds the file's
    refs, r64s = [], []
    for cname, arrays in cases:
        tin = [torch.from_numpy(np.ascontiguousarray(a)) for a in arrays]
        with torch.no_grad():
            try:
                refs.append([t.detach().cpu().numpy() for t in flat_tensors(model(*tin))])
            except Exception as e:
                raise InputError(f"the torch model rejected the {cname} inputs: {str(e).splitlines()[0]}") from None
            if m64 is not None:
                r64s.append(
                    [t.numpy() for t in flat_tensors(m64(*[t.double() if t.is_floating_point() else t for t in tin]))]
                )
    t_ms = None
    if latency_reps > 0:
        tin = [torch.from_numpy(np.ascontiguousarray(a)) for a in ex]
        with torch.no_grad():
            t_ms = _median_ms(lambda: model(*tin), latency_reps)
    del m64
    if release_model and isinstance(model, torch.nn.Module):
        _release(model)
    if os.path.getsize(onnx_path) >= nio.LAZY_MIN:
        # a large inline file: onnxruntime would hold the parsed file and its tensors (2x the
        # weights); given references into the file, it reads each tensor once
        from .. import external

        with external.reading(os.path.dirname(os.path.abspath(onnx_path))):
            sess = session(proto, provider, threads=threads, optimize=ort_optimize)
    else:
        sess = session(onnx_path, provider, threads=threads, optimize=ort_optimize)
    for k, (cname, arrays) in enumerate(cases):
        ref = refs[k]
        got = sess.run(arrays)
        if len(ref) != len(got):
            raise InputError(
                f"torch returned {len(ref)} outputs but the ONNX model {len(got)}",
                note="was the file exported from this model?",
            )
        outs = []
        for name, a, r in zip(names, got, ref):
            dt = str(r.dtype)
            tol, source = tolerance(dt, "model", provider), "table"
            if rtol is not None or atol is not None:
                tol = Tolerance(atol if atol is not None else tol.atol, rtol if rtol is not None else tol.rtol)
                source = "user"
            if per_output and name in per_output:
                tol, source = per_output[name], "user"
            cmp = compare_arrays(name, a, r, tol, check)
            cmp.tolerance_source = source  # whole-model outputs: the table's "model" row (errors compound)
            outs.append(cmp)
        if r64s:
            for name, a, r in zip(names, got, r64s[k]):
                if a.dtype.kind == "f":
                    e = float(np.abs(a.astype(np.float64) - r).max()) if a.size else 0.0
                    f64_err[name] = max(f64_err.get(name, 0.0), e)
        samples.append(SampleResult(cname, {n: list(a.shape) for n, a in zip(sess.input_names, arrays)}, outs))
    from ..lowering.graph import recorded_lowerings
    from ..runtime.probe import ort_version

    o_ms = None
    if latency_reps > 0:
        o_ms = _median_ms(lambda: sess.run(ex), latency_reps)
    return VerifyReport(
        os.fspath(onnx_path),
        provider,
        samples,
        recorded_lowerings(proto),
        t_ms,
        o_ms,
        f64_err,
        {"torch": torch.__version__, "onnxruntime": ort_version(), "onnx": onnx.__version__},
        latency_reps,
    )


# -- memory budget (issue 15: verify of large models) ------------------------------------------
#: largest float32 weights for which verify also builds a float64 copy of the torch model (which
#: holds twice their bytes): above it the copy would more than double verify's memory
FLOAT64_TWIN_MAX = 512 << 20


def _release(model: Any) -> None:
    """Free a torch model's weights (every parameter and buffer becomes an empty tensor) and hand
    the memory back to the OS, so that onnxruntime's copy of them replaces them instead of adding."""
    import ctypes
    import gc

    import torch

    with torch.no_grad():
        for t in (*model.parameters(), *model.buffers()):
            t.data = torch.empty(0, dtype=t.dtype)
    gc.collect()
    try:  # glibc keeps freed heap pages (tensors under its mmap threshold) unless asked
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _float64_twin_fits(model: Any) -> bool:
    n = sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))
    return n <= FLOAT64_TWIN_MAX


_WARMUP = 3


def _median_ms(fn: Any, reps: int) -> float:
    """Median wall time of ``reps`` calls of ``fn`` after ``_WARMUP`` untimed ones, in ms."""
    for _ in range(_WARMUP):
        fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * float(np.median(times))


__all__ = ["SampleResult", "VerifyReport", "check_statistic", "check_tolerance", "verify"]


def _refuse_bfloat16(proto: onnx.ModelProto, path: Any, example_inputs: Sequence[Any]) -> None:
    """bfloat16 cannot cross onnxruntime's Python API (NumPy has no bfloat16): say so, and how
    to check a bfloat16 deployment instead, rather than fail inside a conversion."""
    import torch

    ins = [vi.name for vi in proto.graph.input if vi.type.tensor_type.elem_type == onnx.TensorProto.BFLOAT16]
    tins = [i for i, t in enumerate(example_inputs) if isinstance(t, torch.Tensor) and t.dtype == torch.bfloat16]
    if ins or tins:
        what = (
            f"{os.fspath(path)} takes bfloat16 inputs ({', '.join(ins)})" if ins else "the example inputs are bfloat16"
        )
        raise UnsupportedHere(
            f"{what}: verify feeds onnxruntime through NumPy, which has no bfloat16",
            note="verify the float32 model and check its bfloat16 deployment with --bf16 "
            "(Python: normonnx.verify.precision.check_precision(..., dtype='bfloat16'))",
        )
