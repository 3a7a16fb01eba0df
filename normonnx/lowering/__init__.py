"""Lowering strategies, the capability table, and the selector.

``STRATEGIES`` holds every strategy; ``preference(provider, kind)`` is the default order to try
them in (``PREFERENCE`` per provider, ``KIND_PREFERENCE`` for per-kind exceptions). ``select``
walks that order, asks each strategy ``check``, and returns the first that accepts together with
every rejection and its reason. ``capability_table()`` is the same data as rows, for printing.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..errors import LoweringError
from ..norms import KINDS, get_kind
from ..rejection import CheckResult
from ..spec import NormSpec
from . import contrib, decomposed, function, native, native_kernel, via_instance
from .base import MIN_OPSET, PROVIDERS, Capability, Strategy
from .builder import Builder

STRATEGIES: dict[str, Strategy] = {
    s.name: s
    for s in (
        native.STRATEGY,
        decomposed.STRATEGY,
        function.STRATEGY,
        via_instance.STRATEGY,
        native_kernel.STRATEGY,
        contrib.STRATEGY,
    )
}
#: default order of preference per provider: the first valid *and stable* strategy wins.
PREFERENCE: dict[str, tuple[str, ...]] = {
    "cpu": ("native_kernel", "native", "decomposed", "function", "via_instance"),
    # onnxruntime's contrib ops first where they are stable (its RMSNorm); the unstable ones
    # (contrib GroupNorm, SkipLayerNormalization) are passed over unless allow_unstable
    "cuda": ("contrib", "native", "decomposed", "function", "via_instance"),
}
#: per-(provider, kind) exceptions to ``PREFERENCE``
KIND_PREFERENCE: dict[tuple[str, str], tuple[str, ...]] = {
    # eval BatchNorm next to a Conv/Gemm is folded into it by the pipeline (fold_batchnorm), so only
    # standalone ones are lowered. For those onnxruntime's BatchNormalization comes last, by
    # fidelity and speed: it evaluates x·s + t in float32, 2.8x torch's error vs float64 when the
    # input and the running mean are near 1e3 (kernel 0.008x, decomposed 0.012x at [2,64,32,32];
    # tests/test_export.py::test_standalone_batchnorm_at_large_running_mean), and runs at 1.2-3.5x
    # the copy floor against the kernel's 0.5-1.6x.
    ("cpu", "batch"): ("native_kernel", "decomposed", "function", "native"),
    # RMSNormalization-23 before onnxruntime's SimplifiedLayerNormalization, which is a standard
    # op's stand-in below opset 23 (and a file onnx's checker does not know)
    ("cuda", "rms"): ("native", "contrib", "decomposed", "function", "via_instance"),
}
#: highest default-domain opset normonnx targets (onnx may define newer ones; runtimes lag).
MAX_OPSET = 23
OPSETS = tuple(range(MIN_OPSET, MAX_OPSET + 1))


@dataclasses.dataclass(frozen=True)
class Selection:
    """The chosen strategy for one spec, and why each other candidate was not chosen."""

    spec: NormSpec
    opset: int
    provider: str
    strategy: str
    rejected: tuple[tuple[str, str], ...]

    def explain(self) -> str:
        why = "; ".join(f"{n}: {r}" for n, r in self.rejected) or "first choice"
        return f"{self.strategy} (rejected: {why})" if self.rejected else self.strategy


def check_opset(opset: int) -> None:
    if not isinstance(opset, int) or not (MIN_OPSET <= opset <= MAX_OPSET):
        raise LoweringError(
            f"opset {opset} is not supported",
            note=f"normonnx emits opsets {MIN_OPSET}..{MAX_OPSET}",
        )


def check_provider(provider: str) -> None:
    if provider not in PROVIDERS:
        raise LoweringError(f"unknown provider {provider!r}", note=f"valid providers: {', '.join(PROVIDERS)}")


def get_strategy(name: str) -> Strategy:
    try:
        return STRATEGIES[name]
    except KeyError:
        raise LoweringError(
            f"unknown lowering strategy {name!r}", note=f"valid strategies: {', '.join(STRATEGIES)}"
        ) from None


def select(
    spec: NormSpec,
    opset: int,
    provider: str = "cpu",
    *,
    prefer: Iterable[str] | None = None,
    allow_unstable: bool = False,
) -> Selection:
    """Pick the best valid strategy for ``spec``; raise :class:`LoweringError` if there is none.

    ``prefer`` replaces the default order (e.g. ``["via_instance"]`` to force one strategy; add
    ``allow_unstable=True`` to accept a strategy marked numerically unstable).
    """
    get_kind(spec.kind).validate(spec)
    check_opset(opset)
    check_provider(provider)
    order = tuple(prefer) if prefer is not None else preference(provider, spec.kind)
    rejected: list[tuple[str, str]] = []
    for name in order:
        answer = get_strategy(name).check(spec, opset, provider, allow_unstable=allow_unstable)
        if answer:
            return Selection(spec, opset, provider, name, tuple(rejected))
        rejected.append((name, str(answer)))
    reasons = "\n  ".join(f"{n}: {r}" for n, r in rejected)
    valid = [n for n in STRATEGIES if STRATEGIES[n].check(spec, opset, provider, allow_unstable=True)]
    raise LoweringError(
        f"no strategy can lower {spec.kind} norm ({spec.dtype}, opset {opset}, {provider}):\n  {reasons}",
        note=(f"strategies valid for this spec: {', '.join(valid)}" if valid else "change the opset or dtype"),
    )


def preference(provider: str, kind: str) -> tuple[str, ...]:
    """The default order in which ``select`` tries strategies for a ``kind`` norm on ``provider``."""
    check_provider(provider)
    return KIND_PREFERENCE.get((provider, kind), PREFERENCE[provider])


def check(
    spec: NormSpec, strategy: str, opset: int, provider: str = "cpu", *, allow_unstable: bool = True
) -> CheckResult:
    """What one named strategy answers for ``spec``: OK or the Rejection saying why not (unstable
    strategies allowed unless told otherwise)."""
    return get_strategy(strategy).check(spec, opset, provider, allow_unstable=allow_unstable)


def capability_table(providers: Iterable[str] = PROVIDERS) -> list[dict[str, object]]:
    """One row per (kind, strategy, provider) that can run there (a strategy with no dtype on a
    provider, e.g. ``native_kernel`` on CUDA, has no row): min opset, dtypes, stability (with
    ``stable_up_to``, the elements per normalised group up to which it is stable), note."""
    rows: list[dict[str, object]] = []
    for kind in KINDS:
        for s in STRATEGIES.values():
            cap: Capability | None = s.capabilities.get(kind)
            if cap is None:
                continue
            for p in providers:
                if not cap.dtypes.get(p):
                    continue
                rows.append(
                    {
                        "kind": kind,
                        "strategy": s.name,
                        "provider": p,
                        "min_opset": cap.min_opset,
                        "dtypes": sorted(cap.dtypes.get(p, ())),
                        "stable": cap.stable,
                        "stable_up_to": cap.stable_up_to,
                        "note": cap.note,
                    }
                )
    return rows


def _stable_cell(row: Mapping[str, object]) -> str:
    if not row["stable"]:
        return "no"
    return f"<={row['stable_up_to']} elems" if row.get("stable_up_to") else "yes"


def format_capability_table(providers: Iterable[str] = ("cpu",)) -> str:
    """The capability table as aligned text (what ``normonnx doctor``/``capabilities`` print)."""
    rows = capability_table(providers)
    head = ("kind", "strategy", "provider", "opset", "stable", "dtypes", "note")
    cells = [
        (
            str(r["kind"]),
            str(r["strategy"]),
            str(r["provider"]),
            f">={r['min_opset']}",
            _stable_cell(r),
            ",".join(r["dtypes"]),
            str(r["note"]),
        )  # type: ignore[arg-type]
        for r in rows
    ]
    from ..text import table

    return table(head, cells)


def build_model(
    spec: NormSpec,
    params: Mapping[str, np.ndarray],
    opset: int,
    strategy: str | None = None,
    provider: str = "cpu",
    *,
    params_as_inputs: bool = False,
    allow_unstable: bool = False,
) -> onnx.ModelProto:
    """A one-norm ONNX model ``X → Y`` lowered by ``strategy`` (or the selected one).

    A residual spec also takes input ``R`` and outputs ``S = X + R``; a modulated one takes inputs
    ``scale`` and ``shift``, a gated one ``gate`` (rank ``1 + len(normalized_shape)`` for a
    ``sample_operands`` spec).

    Parameters become initializers in the spec's dtype (or graph inputs with
    ``params_as_inputs``). Used by tests, benchmarks and the capability report.
    """
    if strategy is None:
        strategy = select(spec, opset, provider, allow_unstable=allow_unstable).strategy
    s = get_strategy(strategy)
    get_kind(spec.kind).validate(spec)
    check_opset(opset)
    answer = s.check(spec, opset, provider, allow_unstable=True)
    if not answer:
        raise LoweringError(f"strategy {strategy!r} cannot lower this {spec.kind} norm: {answer}")
    np_dt = helper.tensor_dtype_to_np_dtype(spec.onnx_dtype)
    b = Builder(opset, prefix=spec.kind)
    names = {k: f"p_{k}" for k in get_kind(spec.kind).param_names(spec)}
    # run-time operands of the fused forms are graph inputs: R (residual), scale, shift
    extra = (["residual"] if spec.residual else []) + (["scale", "shift"] if spec.modulation else [])
    extra += ["gate"] if spec.gated else []
    extra_names = {"residual": "R", "scale": "scale", "shift": "shift", "gate": "gate"}
    y = s.lower(b, spec, "X", {**names, **{k: extra_names[k] for k in extra}})
    nodes = [*b.nodes, helper.make_node("Identity", [y], ["Y"], name="output")]
    if spec.residual:
        nodes.append(helper.make_node("Identity", [b.named["sum"]], ["S"], name="sum_output"))
    tensors = {k: numpy_helper.from_array(np.asarray(params[k]).astype(np_dt), name=n) for k, n in names.items()}
    rank = spec.rank
    x_shape = [f"d{i}" for i in range(rank)] if rank is not None else None
    inputs = [helper.make_tensor_value_info("X", spec.onnx_dtype, x_shape)]
    mod_shape = [f"m{i}" for i in range(rank)] if rank is not None else None
    if spec.sample_operands and mod_shape is not None:  # [N or 1, *normalized_shape]
        mod_shape = [mod_shape[0], *mod_shape[rank - len(spec.normalized_shape or ()) :]]
    inputs += [
        helper.make_tensor_value_info(extra_names[k], spec.onnx_dtype, x_shape if k == "residual" else mod_shape)
        for k in extra
    ]
    initializers: list[onnx.TensorProto] = []
    if params_as_inputs:
        inputs += [helper.make_tensor_value_info(t.name, spec.onnx_dtype, list(t.dims)) for t in tensors.values()]
    else:
        initializers = list(tensors.values())
    graph = helper.make_graph(
        nodes,
        f"{spec.kind}_{strategy}",
        inputs,
        [helper.make_tensor_value_info("Y", spec.onnx_dtype, x_shape)]
        + ([helper.make_tensor_value_info("S", spec.onnx_dtype, x_shape)] if spec.residual else []),
        initializers,
    )
    opsets = [helper.make_opsetid("", opset)] + [helper.make_opsetid(d, v) for d, v in s.extra_opsets().items()]
    if s.extra_opsets():
        function.register_schemas()
    model = helper.make_model(graph, opset_imports=opsets, functions=s.functions(spec, opset), producer_name="normonnx")
    model.ir_version = 10  # function overloads need IR 10; onnxruntime 1.17+ reads it
    return model


__all__ = [
    "KIND_PREFERENCE",
    "MAX_OPSET",
    "MIN_OPSET",
    "OPSETS",
    "PREFERENCE",
    "STRATEGIES",
    "Selection",
    "build_model",
    "capability_table",
    "check",
    "format_capability_table",
    "get_strategy",
    "preference",
    "select",
]
