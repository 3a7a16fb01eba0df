"""Prove that an optimized model computes what the original computes, in onnxruntime.

Both models run in onnxruntime with *its* graph optimizations disabled (so onnxruntime cannot
hide a bug in our rewrites, nor fuse the original into something else) on:

- ``n_samples`` random inputs (standard normal floats; small non-negative ints), compared
  element-wise with the table's tolerance for whole models (``tolerance(dtype, "model", target)``);
- two stress inputs: offset 1e3 (x + 1000: catastrophic cancellation in E[x²] − E[x]², fp32
  accumulation) and scale 1e-3 (x·0.001: variance below ε), compared scale-relatively (max error
  ≤ atol + rtol·max|reference|), since outputs there can be large.

A disagreement is not always the optimized model's fault: at offset 1e3 onnxruntime's
GroupNormalization-18 function body (and InstanceNormalization) is the inaccurate one. So when a
sample disagrees, both are compared with a float64 run of the *original* graph (every float
promoted to float64; onnxruntime, else onnx's reference evaluator): the sample passes only if the
optimized model is at least as close to float64 as the original (within 1.5×, or inside the
tolerance). Without a float64 reference a disagreement fails.

For ``target="cuda"`` on a machine without CUDA, onnxruntime contrib ops are replaced by their
reference semantics (:func:`normonnx.optimize.lower_cuda.cpu_equivalent`) and the check runs on CPU;
the result says so.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..compare import OutputComparison, Tolerance, compare_arrays, tolerance
from ..errors import InputError, NormOnnxError, OptimizeError

STRESS = (("offset_1e3", 1.0, 1e3), ("scale_1e-3", 1e-3, 0.0))
FLOATS = {TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16}


@dataclasses.dataclass
class SampleCheck:
    """One input sample: per-output comparison of optimized vs original."""

    name: str
    kind: str  # "random" | "stress"
    outputs: list[OutputComparison]
    passed: bool
    note: str = ""
    float64: dict[str, dict[str, float]] = dataclasses.field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "passed": self.passed,
            "note": self.note,
            "outputs": [o.as_dict() for o in self.outputs],
            "float64": self.float64,
        }


@dataclasses.dataclass
class Verification:
    """All samples; ``passed`` only if every sample passed."""

    provider: str
    samples: list[SampleCheck]
    note: str = ""
    error: str = ""

    @property
    def passed(self) -> bool:
        return not self.error and all(s.passed for s in self.samples)

    @property
    def max_abs(self) -> float:
        vals = [o.max_abs for s in self.samples for o in s.outputs]
        return max(vals) if vals else 0.0

    def max_abs_of(self, kind: str) -> float:
        vals = [o.max_abs for s in self.samples if s.kind == kind for o in s.outputs]
        return max(vals) if vals else 0.0

    def summary(self) -> str:
        if self.error:
            return f"verification failed: {self.error}"
        bad = [s for s in self.samples if not s.passed]
        if bad:
            s = bad[0]
            o = max(s.outputs, key=lambda o: o.max_abs if math.isfinite(o.max_abs) else math.inf)
            return (
                f"MISMATCH on {s.name}: output {o.name!r} max |optimized − original| {o.max_abs:.3g} "
                f"(tolerance {o.tolerance}){'; ' + s.note if s.note else ''}"
            )
        n_r = sum(s.kind == "random" for s in self.samples)
        n_s = len(self.samples) - n_r
        text = (
            f"equivalent on {n_r} random + {n_s} stress inputs: max |optimized − original| "
            f"{self.max_abs_of('random'):.3g} (random), {self.max_abs_of('stress'):.3g} (stress)"
        )
        decided = [s for s in self.samples if s.float64]
        if decided:
            errs = ", ".join(
                f"{s.name}: original {max(v['original'] for v in s.float64.values()):.3g} vs optimized "
                f"{max(v['optimized'] for v in s.float64.values()):.3g}"
                for s in decided
            )
            text += f"; where they differ the original is the less accurate one (max error vs float64 — {errs})"
        return text

    def as_dict(self) -> dict[str, Any]:
        return {
            "provider": self.provider,
            "ort_graph_optimizations": False,
            "passed": self.passed,
            "summary": self.summary(),
            "note": self.note,
            "error": self.error,
            "samples": [s.as_dict() for s in self.samples],
        }


# -- inputs -----------------------------------------------------------------------------------------
def input_specs(
    model: onnx.ModelProto, shapes: Mapping[str, Sequence[int]] | None = None
) -> list[tuple[str, tuple[int, ...], np.dtype]]:
    """(name, shape, dtype) of the inputs a caller must feed; symbolic batch dims become 2."""
    inits = {t.name for t in model.graph.initializer}
    out = []
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        tt = vi.type.tensor_type
        dt = np.dtype(helper.tensor_dtype_to_np_dtype(tt.elem_type))
        if shapes and vi.name in shapes:
            out.append((vi.name, tuple(int(d) for d in shapes[vi.name]), dt))
            continue
        dims: list[int] = []
        for i, d in enumerate(tt.shape.dim):
            if d.HasField("dim_value"):
                dims.append(int(d.dim_value))
            elif i == 0:
                dims.append(2)
            else:
                raise InputError(
                    f"input {vi.name!r} has a symbolic dim {d.dim_param or '?'} at axis {i}; verification needs a size",
                    note=f"give the shape: --input {vi.name}:" + "x".join(str(x.dim_value or 8) for x in tt.shape.dim),
                )
        out.append((vi.name, tuple(dims), dt))
    return out


def make_feeds(
    specs: Sequence[tuple[str, tuple[int, ...], np.dtype]],
    rng: np.random.Generator,
    scale: float = 1.0,
    offset: float = 0.0,
) -> dict[str, np.ndarray]:
    feeds = {}
    for name, shape, dt in specs:
        if dt.kind == "f":
            feeds[name] = (rng.standard_normal(shape) * scale + offset).astype(dt)
        elif dt.kind in "iu":
            feeds[name] = rng.integers(0, 2, shape).astype(dt)
        else:
            feeds[name] = np.zeros(shape, dt)
    return feeds


# -- float64 twin -----------------------------------------------------------------------------------
def to_float64(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy computing in float64: float inputs/outputs/initializers/constants/Cast targets promoted."""
    from onnx import inliner

    m = onnx.ModelProto()
    m.CopyFrom(inliner.inline_local_functions(model))
    _promote_graph(m.graph, next((o.version for o in m.opset_import if o.domain in ("", "ai.onnx")), 0))
    return m


def _promote_type(t: onnx.TypeProto) -> None:
    if t.HasField("tensor_type") and t.tensor_type.elem_type in FLOATS:
        t.tensor_type.elem_type = TensorProto.DOUBLE


def _promote_tensor(t: onnx.TensorProto) -> None:
    if t.data_type in FLOATS:
        arr = numpy_helper.to_array(t).astype(np.float64)
        t.CopyFrom(numpy_helper.from_array(arr, name=t.name))


#: norm ops whose ``stash_type`` (statistics precision, default float32) must become float64
_STASH_OPS = {"LayerNormalization": 17, "GroupNormalization": 21, "RMSNormalization": 23}


def _promote_graph(g: onnx.GraphProto, opset: int = 0) -> None:
    for v in (*g.input, *g.output, *g.value_info):
        _promote_type(v.type)
    for t in g.initializer:
        _promote_tensor(t)
    for n in g.node:
        if (
            n.op_type in _STASH_OPS
            and opset >= _STASH_OPS[n.op_type]
            and not any(a.name == "stash_type" for a in n.attribute)
        ):
            n.attribute.append(helper.make_attribute("stash_type", TensorProto.DOUBLE))
        for a in n.attribute:
            if a.name in ("to", "dtype", "stash_type") and a.type == onnx.AttributeProto.INT and a.i in FLOATS:
                a.i = TensorProto.DOUBLE  # stash_type: the norm ops' statistics precision
            elif a.type == onnx.AttributeProto.TENSOR:
                _promote_tensor(a.t)
            elif a.type == onnx.AttributeProto.FLOAT and n.op_type == "Constant" and a.name == "value_float":
                pass
            elif a.type == onnx.AttributeProto.GRAPH:
                _promote_graph(a.g, opset)
            elif a.type == onnx.AttributeProto.GRAPHS:
                for sub in a.graphs:
                    _promote_graph(sub, opset)
        if n.op_type == "Constant" and any(a.name in ("value_float", "value_floats") for a in n.attribute):
            vals = next(a for a in n.attribute if a.name in ("value_float", "value_floats"))
            arr = np.float64(vals.f) if vals.name == "value_float" else np.asarray(list(vals.floats), np.float64)
            del n.attribute[:]
            n.attribute.append(helper.make_attribute("value", numpy_helper.from_array(np.asarray(arr))))


def float64_reference(model: onnx.ModelProto, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray] | None:
    """Outputs of ``model`` computed in float64 (onnxruntime, else onnx.reference); None if neither runs."""
    try:
        m64 = to_float64(model)
    except Exception:
        return None
    f64 = {k: (v.astype(np.float64) if v.dtype.kind == "f" else v) for k, v in feeds.items()}
    try:
        from ..runtime.session import session

        return session(m64, optimize=False, custom_ops=False).run(f64)
    except Exception:
        pass
    try:
        from onnx.reference import ReferenceEvaluator

        return [np.asarray(o) for o in ReferenceEvaluator(m64).run(None, f64)]
    except Exception:
        return None


def _err(a: np.ndarray, r: np.ndarray) -> float:
    d = np.abs(a.astype(np.float64) - r.astype(np.float64))
    return float(np.where(np.isnan(d), np.inf, d).max()) if d.size else 0.0


# -- the check ---------------------------------------------------------------------------------------
def verify_models(
    original: onnx.ModelProto,
    optimized: onnx.ModelProto,
    *,
    n_samples: int = 3,
    seed: int = 0,
    shapes: Mapping[str, Sequence[int]] | None = None,
    target: str = "cpu",
    threads: int | None = None,
) -> Verification:
    """Run both models on random and stress inputs and compare every output (see module doc)."""
    from ..runtime.session import session

    note = ""
    if target == "cuda":
        from . import lower_cuda

        optimized = lower_cuda.cpu_equivalent(optimized)
        note = "target cuda verified on CPU: onnxruntime contrib ops replaced by their reference semantics"
    specs = input_specs(original, shapes)
    names = [o.name for o in original.graph.output]
    if [o.name for o in optimized.graph.output] != names:
        return Verification("cpu", [], note, error="the optimized model's outputs differ from the original's")
    rng = np.random.default_rng(seed)
    cases: list[tuple[str, str, dict[str, np.ndarray]]] = [
        (f"random{k}", "random", make_feeds(specs, rng)) for k in range(n_samples)
    ]
    for name, scale, offset in STRESS:
        cases.append((name, "stress", make_feeds(specs, rng, scale, offset)))
    # one session at a time: the original's outputs first, then the optimized model's session (two
    # sessions of a large model would hold its weights twice)
    try:
        s_orig = session(original, "cpu", threads=threads, optimize=False)
    except NormOnnxError as e:
        raise OptimizeError(
            f"the original model does not run in onnxruntime here, so the result cannot be verified: {e.message}",
            note="pass --no-verify to optimize without verification",
        ) from None
    refs = [s_orig.run(feeds) for _, _, feeds in cases]
    del s_orig
    try:
        s_opt = session(optimized, "cpu", threads=threads, optimize=False)
    except NormOnnxError as e:
        return Verification("cpu", [], note, error=f"the optimized model does not load in onnxruntime: {e.message}")
    samples = []
    for (name, kind, feeds), ref in zip(cases, refs):
        try:
            got = s_opt.run(feeds)
        except NormOnnxError as e:
            return Verification("cpu", samples, note, error=f"the optimized model fails on {name}: {e.message}")
        outs = []
        for oname, a, r in zip(names, got, ref):
            tol: Tolerance = tolerance(str(r.dtype), "model", target)
            outs.append(compare_arrays(oname, a, r, tol, "elementwise" if kind == "random" else "max"))
        check = SampleCheck(name, kind, outs, all(o.passed for o in outs))
        if not check.passed:
            _adjudicate(original, feeds, check, got, ref)
        samples.append(check)
    return Verification("cpu", samples, note)


def _adjudicate(
    original: onnx.ModelProto,
    feeds: Mapping[str, np.ndarray],
    check: SampleCheck,
    got: list[np.ndarray],
    ref: list[np.ndarray],
) -> None:
    """Decide a disagreement with a float64 run of the original graph."""
    r64 = float64_reference(original, feeds)
    if r64 is None:
        check.note = "no float64 reference could be computed to decide which model is right"
        return
    ok = True
    for o, a, r, f in zip(check.outputs, got, ref, r64):
        if o.passed or a.dtype.kind != "f":
            ok &= o.passed
            continue
        e_orig, e_opt = _err(r, f), _err(a, f)
        scale = float(np.abs(f).max()) if f.size else 0.0
        check.float64[o.name] = {"original": e_orig, "optimized": e_opt}
        ok &= math.isfinite(e_opt) and e_opt <= max(1.5 * e_orig, o.tolerance.atol + o.tolerance.rtol * scale)
    check.passed = ok
    errs = "; ".join(
        f"{k}: original {v['original']:.3g}, optimized {v['optimized']:.3g}" for k, v in check.float64.items()
    )
    check.note = (
        f"the original is less accurate here (max error vs float64 — {errs})"
        if ok
        else f"the optimized model is further from float64 than the original ({errs})"
    )
