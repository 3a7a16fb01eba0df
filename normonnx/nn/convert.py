"""Swap a model's norm layers for normonnx.nn ones that compute the same numbers.

:func:`plan` finds the candidates and proves each swap; :func:`convert` applies the proven ones.

Candidates come from what a module *is*: torch's own norm modules (``nn.LayerNorm``,
``nn.GroupNorm``, ``nn.RMSNorm``, ``nn.BatchNorm*d``, ``nn.InstanceNorm*d`` and subclasses that
override ``forward``, like timm's ``LayerNorm2d``), hand-written leaf modules whose class is
named like a norm (or declares ``norm_kind``) with their ``weight``/``bias`` (``gamma``/``beta``),
eps (``eps``, ``variance_epsilon``, ``epsilon``) and groups (``num_groups``, ``G``, ``groups``)
attributes, and ``nn.Conv2d`` subclasses with their own ``forward`` (weight-standardized convs).

A swap is made only when it is proven: the replacement loads the original's state dict
unchanged (``strict=True``), and both run in float64 on two seeded probe inputs, one of them
with a variance near ε (so a wrong ε, a missing mean or an unbiased variance show) and agree to
:data:`PROBE_RTOL` relative to the output's scale. Among several candidates (layout, ε, Gemma's
``1 + w`` scale) the closest wins. Every refusal is a :class:`Swap` with ``target=None`` and the
reason (e.g. the tutorial GroupNorm with ``x.var()`` is 6e-3 away from any GroupNorm: unbiased).
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from . import layers

#: agreement required of a swap on the float64 probes, relative to max |original output|
PROBE_RTOL = 1e-6
_EPS_ATTRS = ("eps", "variance_epsilon", "epsilon")
_GROUP_ATTRS = ("num_groups", "G", "groups", "num_group")
_EPS_GUESSES = (1e-5, 1e-6)
_WS_EPS_GUESSES = (1e-5, 1e-6, 1e-8, 1e-10)


@dataclasses.dataclass(frozen=True)
class Swap:
    """One module considered for conversion.

    name:   its path in the model ("" is the root).
    source: its class (``module.qualname``).
    target: the normonnx.nn replacement (its repr), or None when refused.
    reason: why it was swapped (the candidate) or why not.
    error:  max relative difference of the chosen (or closest) candidate on the probes.
    """

    name: str
    source: str
    target: str | None
    reason: str
    error: float | None = None


Factory = Callable[[], nn.Module]


def plan(model: nn.Module) -> list[Swap]:
    """What :func:`convert` would do to ``model``, one :class:`Swap` per candidate module."""
    return [s for s, _ in _plan(model)]


def convert(model: nn.Module, *, inplace: bool = False) -> nn.Module:
    """``model`` with every proven swap of :func:`plan` made (a deep copy unless ``inplace``).

    The result keeps the original's state-dict keys, devices, dtypes and training mode.
    """
    if not inplace:
        model = copy.deepcopy(model)
    for swap, new in _plan(model):
        if new is None:
            continue
        parent_name, _, attr = swap.name.rpartition(".")
        parent = model.get_submodule(parent_name)
        setattr(parent, attr, new)
    return model


# ----------------------------------------------------------------------------------------------


def _plan(model: nn.Module) -> list[tuple[Swap, nn.Module | None]]:
    out: list[tuple[Swap, nn.Module | None]] = []
    skip: set[str] = set()
    for name, module in model.named_modules():
        if not name or any(name.startswith(p + ".") for p in skip):
            continue
        cands = _candidates(module)
        if cands is None:
            continue
        skip.add(name)
        out.append(_prove(name, module, cands))
    return out


def _qualname(module: nn.Module) -> str:
    t = type(module)
    return f"{t.__module__}.{t.__qualname__}"


_TORCH_NORMS = (
    nn.LayerNorm,
    nn.GroupNorm,
    nn.RMSNorm,
    nn.modules.batchnorm._BatchNorm,
    nn.modules.instancenorm._InstanceNorm,
)
_OURS = (
    layers.LayerNorm,
    layers.RMSNorm,
    layers.GroupNorm,
    layers.BatchNorm,
    layers.InstanceNorm,
    layers.WSConv2d,
    layers.GlobalResponseNorm,
    layers.AdaLayerNorm,
)


def _candidates(m: nn.Module) -> list[tuple[str, Factory, torch.Tensor]] | None:
    """(description, factory, probe input) triples for ``m``; None if ``m`` is not a candidate."""
    if isinstance(m, _OURS):
        return None
    from torch.nn.utils import parametrize

    if isinstance(m, nn.Conv2d):
        if type(m).forward is nn.Conv2d.forward or parametrize.is_parametrized(m):
            return None  # a plain conv, or weight_norm-style parametrization: not a standardization
        return _ws_candidates(m)
    if isinstance(m, _TORCH_NORMS):
        return _torch_candidates(m)
    declared = getattr(type(m), "norm_kind", None)
    named = isinstance(declared, str) or "norm" in type(m).__name__.lower()
    has_weight = any(n in ("weight", "gamma") for n, _ in m.named_parameters(recurse=False))
    if named and has_weight and not any(True for _ in m.children()):  # a leaf norm with a scale
        return _hand_candidates(m)
    return None


def _dd(m: nn.Module) -> dict[str, Any]:
    """device/dtype of ``m``'s parameters (for constructing the replacement alike)."""
    p = next(iter(m.parameters()), None)
    return {"device": p.device, "dtype": p.dtype} if p is not None else {}


def _probe(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _nchw(c: int) -> torch.Tensor:
    return _probe((2, c, 5, 4), 0)


def _trailing(shape: tuple[int, ...]) -> torch.Tensor:
    return _probe((2, 3, *shape), 1)


def _torch_candidates(m: nn.Module) -> list[tuple[str, Factory, torch.Tensor]]:
    dd = _dd(m)
    if isinstance(m, nn.LayerNorm):
        ns = tuple(m.normalized_shape)
        affine, bias = m.elementwise_affine, m.bias is not None
        out = [
            (
                "LayerNorm",
                lambda: layers.LayerNorm(ns, m.eps, affine, bias, **dd),
                _trailing(ns),
            )
        ]
        if type(m).forward is not nn.LayerNorm.forward and len(ns) == 1:  # e.g. timm's LayerNorm2d
            out.append(
                (
                    "LayerNorm(channel_axis=1)",
                    lambda: layers.LayerNorm(ns, m.eps, affine, bias, channel_axis=1, **dd),
                    _nchw(ns[0]),
                )
            )
        return out
    if isinstance(m, nn.GroupNorm):
        return [
            (
                "GroupNorm",
                lambda: layers.GroupNorm(m.num_groups, m.num_channels, m.eps, m.affine, **dd),
                _nchw(m.num_channels),
            )
        ]
    if isinstance(m, nn.RMSNorm):
        ns = tuple(m.normalized_shape)
        return [("RMSNorm", lambda: layers.RMSNorm(ns, m.eps, m.elementwise_affine, **dd), _trailing(ns))]
    cls = layers.BatchNorm if isinstance(m, nn.modules.batchnorm._BatchNorm) else layers.InstanceNorm
    return [
        (
            cls.__name__,
            lambda: cls(m.num_features, m.eps, m.momentum, m.affine, m.track_running_stats, **dd),
            _nchw(m.num_features),
        )
    ]


def _attr(m: nn.Module, names: tuple[str, ...]) -> Any:
    return next((getattr(m, n) for n in names if isinstance(getattr(m, n, None), (int, float))), None)


def _hand_candidates(m: nn.Module) -> list[tuple[str, Factory, torch.Tensor]]:
    params = dict(m.named_parameters(recurse=False))
    weight = params.get("weight", params.get("gamma"))
    bias = params.get("bias", params.get("beta"))
    assert weight is not None
    c = weight.numel()
    dd = _dd(m)
    eps = _attr(m, _EPS_ATTRS)
    epses = (float(eps),) if eps is not None else _EPS_GUESSES
    groups = _attr(m, _GROUP_ATTRS)
    has_b = bias is not None
    out: list[tuple[str, Factory, torch.Tensor]] = []
    for e in epses:
        out.append(
            (f"LayerNorm({c}, eps={e:g})", lambda e=e: layers.LayerNorm(c, e, True, has_b, **dd), _trailing((c,)))
        )
        out.append(
            (
                f"LayerNorm({c}, eps={e:g}, channel_axis=1)",
                lambda e=e: layers.LayerNorm(c, e, True, has_b, channel_axis=1, **dd),
                _nchw(c),
            )
        )
        if not has_b:
            for off in (0.0, 1.0):
                out.append(
                    (
                        f"RMSNorm({c}, eps={e:g}" + (", weight_offset=1.0)" if off else ")"),
                        lambda e=e, off=off: layers.RMSNorm(c, e, weight_offset=off, **dd),
                        _trailing((c,)),
                    )
                )
        if isinstance(groups, int) and has_b and groups >= 1 and c % groups == 0:
            out.append(
                (f"GroupNorm({groups}, {c}, eps={e:g})", lambda e=e: layers.GroupNorm(groups, c, e, **dd), _nchw(c))
            )
        if has_b:
            for cf in (False, True):
                out.append(
                    (
                        f"GlobalResponseNorm({c}, eps={e:g}" + (", channel_axis=1)" if cf else ")"),
                        lambda e=e, cf=cf: layers.GlobalResponseNorm(c, e, channel_axis=1 if cf else -1, **dd),
                        _nchw(c) if cf else _probe((2, 5, 4, c), 2),
                    )
                )
    return out


def _ws_candidates(m: nn.Conv2d) -> list[tuple[str, Factory, torch.Tensor]]:
    eps = _attr(m, ("eps",))
    epses = (float(eps),) if eps is not None else _WS_EPS_GUESSES
    x = _probe((2, m.in_channels, 9, 9), 3)
    kw = dict(
        stride=m.stride,
        padding=m.padding,
        dilation=m.dilation,
        groups=m.groups,
        bias=m.bias is not None,
        padding_mode=m.padding_mode,
        **_dd(m),
    )

    def make(e: float) -> Factory:
        return lambda: layers.WSConv2d(m.in_channels, m.out_channels, m.kernel_size, eps=e, **kw)  # type: ignore[arg-type]

    return [(f"WSConv2d(eps={e:g})", make(e), x) for e in epses]


def _inputs(x: torch.Tensor) -> Iterator[torch.Tensor]:
    """The probe at unit scale, then shifted with a variance near ε (1e-4: eps 1e-5 vs 1e-6 and
    unbiased vs biased variance differ by >1e-3 there)."""
    yield 0.5 + 2.0 * x
    yield 3.0 + 1e-2 * x


@torch.no_grad()
def _prove(name: str, module: nn.Module, cands: list[tuple[str, Factory, torch.Tensor]]) -> tuple[Swap, Any]:
    src = _qualname(module)
    if not cands:
        return Swap(name, src, None, "no candidate layer for it"), None
    ref = copy.deepcopy(module).double().eval()
    state = module.state_dict()
    best: tuple[float, str, nn.Module | None] = (float("inf"), "", None)
    why_not: list[str] = []
    for desc, factory, x in cands:
        try:
            new = factory()
            new.load_state_dict(state, strict=True)
        except Exception as e:  # the candidate cannot hold this module's state: not it
            why_not.append(f"{desc}: {str(e).splitlines()[0]}")
            continue
        probe = copy.deepcopy(new).double().eval()
        err = 0.0
        try:
            for xi in _inputs(x):
                a, b = probe(xi), ref(xi)
                err = max(err, float((a - b).abs().max() / b.abs().max().clamp_min(1e-30)))
        except Exception as e:  # the original rejects this layout's probe (wrong rank/axis)
            why_not.append(f"{desc}: the original fails on its probe ({type(e).__name__})")
            continue
        if not err <= best[0]:
            continue
        best = (err, desc, new.train(module.training))
    err, desc, new = best
    if new is not None and err <= PROBE_RTOL:
        return Swap(name, src, repr(new), f"equal to {desc} (state dict loads unchanged)", err), new
    if new is None:
        return Swap(name, src, None, "no candidate loads its state dict and runs: " + "; ".join(why_not[:3])), None
    return (
        Swap(name, src, None, f"closest candidate {desc} differs by {err:.2g} relative (limit {PROBE_RTOL:g})", err),
        None,
    )
