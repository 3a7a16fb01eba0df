"""Tolerances that follow from the math: the rounding error a healthy module can show.

For one module call, fed torch's own inputs (the isolated comparison), the error of a correct
float implementation is bounded by the unit roundoff ``u`` of the dtype times the size of what it
adds up. The models below use the probabilistic √n growth of rounding error (Higham, *Accuracy
and Stability of Numerical Algorithms*, §3.1 and the rule of thumb of §2.8) with a safety factor
``C = 8``, and the magnitudes torch itself computed:

- Conv / Linear (reduction depth ``K`` = in_features, or in_channels/groups × kernel size):
  ``C·u·√K·max(|W|·|x| + |b|)`` — the sum of |products| a dot product accumulates, computed with
  the module's own |weights| on |input| (cancellation does not hide it);
- a BatchNorm folded into the Conv before it: the Conv bound scaled by ``max|γ/√(σ²+ε)|`` plus
  ``C·u·max(|μ·s| + |β|)`` for the shift;
- norms (reduction size ``N``, 1 for BatchNorm with running statistics): the mean and variance of
  ``N`` values carry ``√N·u`` relative error, and ``x − μ`` loses ``u·max|x|/σ`` to cancellation
  (large activations with a large mean): ``C·u·(max|γ|·(√N·max|x̂| + max|x|/σ_min + max|x̂|) + max|β|)``;
- any other module: ``C·u·max|y|`` (a few roundings of each output).

The table in :mod:`.tolerances` stays the floor: a derived tolerance only ever raises ``atol`` above
it, and is reported next to the one applied; tolerances a user gives are applied as given.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .tolerances import UNIT_ROUNDOFF

C = 8.0


def _amax(a: Any) -> float:
    a = np.asarray(a, dtype=np.float64)
    a = a[np.isfinite(a)]
    return float(np.abs(a).max()) if a.size else 0.0


def linear_bound(module: Any, x: np.ndarray) -> tuple[float, int] | None:
    """(max over outputs of Σ|w·x| + |b|, reduction depth K) of an nn.Conv*/nn.Linear on ``x``."""
    import torch
    import torch.nn.functional as F

    w = getattr(module, "weight", None)
    if not isinstance(w, torch.Tensor) or x is None or x.dtype.kind != "f":
        return None
    ax = torch.from_numpy(np.abs(x.astype(np.float64)))
    aw = w.detach().abs().double()
    b = getattr(module, "bias", None)
    ab = b.detach().abs().double() if isinstance(b, torch.Tensor) else None
    try:
        if isinstance(module, torch.nn.Linear):
            k = int(w.shape[1])
            s = F.linear(ax, aw, ab)
        elif isinstance(module, (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d)):
            k = int(np.prod(w.shape[1:]))
            conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[w.ndim - 2]
            pad = module.padding if isinstance(module.padding, (int, tuple)) else 0
            if module.padding_mode != "zeros" or isinstance(module.padding, str):
                s = None
            else:
                s = conv(ax, aw, ab, module.stride, pad, module.dilation, module.groups)
            if s is None:
                return _amax(x) * _amax(aw.numpy()) * k, k
        else:
            return None
    except Exception:  # a subclass with another calling convention: no model for it
        return None
    return float(s.max()) if s.numel() else 0.0, k


def norm_bound(kind: str, spec: Any, params: dict[str, np.ndarray], x: np.ndarray) -> float:
    """The bracket of the norm model above (multiply by ``C·u``)."""
    x64 = x.astype(np.float64)
    eps = float(spec.eps)
    g = _amax(params.get("weight", 1.0))
    b = _amax(params.get("bias", 0.0))
    if kind == "batch" and "var" in params:
        s = np.asarray(params.get("weight", 1.0)) / np.sqrt(params["var"] + eps)
        return _amax(s) * (_amax(x64) + _amax(params["mean"])) + b
    axes, n = _reduction(kind, spec, x64)
    if axes is None:
        return C * _amax(x64)
    if kind == "group":
        shp = (x64.shape[0], int(spec.groups), -1)
        xr = x64.reshape(shp)
        mu = xr.mean(axis=2, keepdims=True)
        var = xr.var(axis=2, keepdims=True)
        xh = (xr - mu) / np.sqrt(var + eps)
    else:
        mu = x64.mean(axis=axes, keepdims=True) if kind != "rms" else 0.0
        var = x64.var(axis=axes, keepdims=True) if kind != "rms" else (x64 * x64).mean(axis=axes, keepdims=True)
        xh = (x64 - mu) / np.sqrt(var + eps)
    sig = float(np.sqrt(np.min(var) + eps))
    return g * (math.sqrt(n) * _amax(xh) + _amax(x64) / sig + _amax(xh)) + b


def _reduction(kind: str, spec: Any, x: np.ndarray) -> tuple[tuple[int, ...] | None, int]:
    nd = x.ndim
    if kind == "group" and spec.groups:
        return (2,), int(np.prod(x.shape[1:]) // int(spec.groups))
    if kind == "instance" or (kind == "batch" and not spec.running_stats):
        axes = tuple(range(2, nd)) if kind == "instance" else (0, *range(2, nd))
        return axes, int(np.prod([x.shape[a] for a in axes])) if axes else 1
    if kind in ("layer", "rms") and spec.normalized_shape:
        if spec.channels_first:
            return (1,), int(x.shape[1])
        k = len(spec.normalized_shape)
        axes = tuple(range(nd - k, nd))
        return axes, int(np.prod(spec.normalized_shape))
    return None, 1


def derived_atol(
    dtype: str,
    module: Any,
    kind: str | None,
    x: np.ndarray | None,
    y: np.ndarray,
    *,
    folded_into: Any = None,
    folded_input: np.ndarray | None = None,
) -> tuple[float, str]:
    """(atol, the model used) for one module call's isolated output ``y`` on input ``x``."""
    u = UNIT_ROUNDOFF.get(dtype, UNIT_ROUNDOFF["float32"])
    if folded_into is not None and kind == "batch" and folded_input is not None:
        lb = linear_bound(folded_into, folded_input)
        spec, params = _spec(module, folded_input.ndim)
        if lb is not None and spec is not None and "var" in params:
            s = np.asarray(params.get("weight", 1.0)) / np.sqrt(params["var"] + float(spec.eps))
            m, k = lb
            shift = _amax(s) * _amax(params["mean"]) + _amax(params.get("bias", 0.0))
            return C * u * (math.sqrt(k) * m * _amax(s) + shift), f"conv+batchnorm fold, K={k}"
    if kind is not None and x is not None:
        spec, params = _spec(module, x.ndim)
        if spec is not None:
            return C * u * norm_bound(kind, spec, params, x), f"{kind} norm"
    if x is not None:
        lb = linear_bound(module, x)
        if lb is not None:
            m, k = lb
            return C * u * math.sqrt(k) * m, f"dot products, K={k}"
    return C * u * _amax(y), "elementwise"


def _spec(module: Any, rank: int) -> tuple[Any, dict[str, np.ndarray]]:
    from ..norms import KINDS

    for kind in KINDS.values():
        classes = kind.torch_modules()
        if classes and isinstance(module, classes):
            try:
                return kind.from_module(module, rank)
            except Exception:
                return None, {}
    return None, {}
