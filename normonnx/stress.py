"""Stress inputs for norms: the inputs where a naive lowering breaks.

- ``offset``:     N(1000, 1) — E[x²]−E[x]² cancels catastrophically in fp32 (NaN or garbage).
- ``tiny_scale``: N(0, 1e-3²) — variance comparable to ε; tests that ε is applied exactly.
- ``constant``:   every element 3.25 — zero variance; the output must be finite and equal β.
- ``large``:      ≥ 1M elements per normalised group — fp32 sequential accumulation drifts.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .spec import NormSpec

Generator = Callable[[tuple[int, ...], np.random.Generator], np.ndarray]

STRESS: dict[str, Generator] = {
    "offset": lambda shape, rng: rng.standard_normal(shape) + 1000.0,
    "tiny_scale": lambda shape, rng: rng.standard_normal(shape) * 1e-3,
    "constant": lambda shape, rng: np.full(shape, 3.25),
    "normal": lambda shape, rng: rng.standard_normal(shape),
}


def large_shape(spec: NormSpec, elements: int = 1 << 20) -> tuple[int, ...]:
    """An input shape with at least ``elements`` per set of statistics, for ``spec``'s kind (the
    kind declares it: ``NormKind.large_shape``)."""
    from .norms import get_kind

    return get_kind(spec.kind).large_shape(spec, elements)


def large_spec(kind: str) -> NormSpec:
    """A representative spec of ``kind`` with few channels so :func:`large_shape` stays ~8 MB
    (the kind declares it: ``NormKind.large_spec``)."""
    from .norms import get_kind

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

    from .lowering import build_model
    from .norms import KINDS
    from .runtime import session

    rng = np.random.default_rng(seed)
    kind = KINDS[spec.kind]
    params = kind.random_params(spec, rng)
    x = STRESS[stress](shape, rng).astype(np.float32)
    p32 = {k: v.astype(np.float32) for k, v in params.items()}
    ref = kind.reference(spec, x, p32)
    with torch.no_grad():
        t = kind.torch_forward(spec, torch.from_numpy(x), {k: torch.from_numpy(v) for k, v in p32.items()}).numpy()
    model = build_model(spec, params, opset, strategy, allow_unstable=True)
    (y,) = session(model, optimize=False, threads=threads).run({"X": x})
    err = float(np.abs(y.astype(np.float64) - ref).max()) if np.isfinite(y).all() else float("inf")
    return err, float(np.abs(t.astype(np.float64) - ref).max()), y, params
