"""The torch side of verification: every module call's inputs and output, in execution order.

:func:`trace_torch` runs the model once with forward pre/post hooks on every submodule. Each call
records a snapshot of its floating inputs (taken before the call, so in-place ops cannot rewrite
them), its first floating output, where each input came from (a model input, an earlier call, or
functional code), and, for a norm module, its kind and ε. A norm module whose output is not its
norm's output (an activation inside its own forward, as timm's ``BatchNormAct2d``) also gets a
*norm point* ``name[norm]``: its kind's functional call recomputed from the module's input.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..tensors import flatten as flat_tensors  # the one flattener (normonnx.tensors)


@dataclasses.dataclass
class ModuleCall:
    name: str
    module: str
    type: str
    index: int
    leaf: bool
    output: np.ndarray | None
    inputs: list[np.ndarray]
    sources: list[str | None]  # per float input: "input:i", a call name, or None (functional)
    identity: bool
    norm_kind: str | None
    eps: float | None
    obj: Any = dataclasses.field(default=None, repr=False)  # the torch module (error models read its weights)
    #: "output" (the module's output) or "norm" (the norm's own output inside a module that does
    #: more, e.g. ``act(batch_norm(x))`` in a BatchNorm2d subclass; recomputed from its input)
    point: str = "output"


def norm_kind_of(module: Any) -> str | None:
    from ..norms import KINDS

    for kind in KINDS.values():
        classes = kind.torch_modules()
        if classes and isinstance(module, classes):
            return kind.name
    return None


def _norm_output(module: Any, kind: str, x: Any) -> Any:
    """The norm's own functional output on ``x`` (its kind's torch call with the module's
    parameters), or None when the module cannot be described by its kind."""
    import torch

    from ..norms import KINDS

    try:
        spec, params = KINDS[kind].from_module(module, x.ndim)
        tp = {k: torch.from_numpy(v).to(x.dtype) for k, v in params.items()}
        return KINDS[kind].torch_forward(spec, x, tp)
    except Exception:
        return None


def to_numpy(t: Any) -> np.ndarray:
    return t.detach().cpu().numpy()


def trace_torch(model: Any, inputs: Sequence[Any]) -> tuple[list[ModuleCall], list[np.ndarray]]:
    """Run ``model`` once with hooks on every submodule; return (calls in execution order, outputs).

    A call's position is its exit, except the ``norm`` point of a norm module that does more than
    its norm (an activation inside its forward): that point is recomputed from the module's input
    and placed where the module was entered, before its children."""
    import torch

    if isinstance(model, torch.export.ExportedProgram):
        model = model.module()
    calls: list[ModuleCall] = []
    keep: list[Any] = list(inputs)  # keeps tensors alive so id() stays unique during the run
    producers: dict[int, str] = {id(t): f"input:{i}" for i, t in enumerate(inputs) if isinstance(t, torch.Tensor)}
    counts: dict[str, int] = {}
    snapshots: dict[int, list[tuple[list[Any], int]]] = {}
    handles = []

    def pre_hook(mod: Any, args: Any, kwargs: Any) -> None:
        flat = [t for t in flat_tensors((args, kwargs)) if t.is_floating_point()]
        snapshots.setdefault(id(mod), []).append(([(t, t.detach().clone()) for t in flat], len(calls)))

    def make_hook(path: str, leaf: bool) -> Any:
        def hook(mod: Any, args: Any, kwargs: Any, out: Any) -> None:
            pairs, entered = snapshots[id(mod)].pop()
            k = counts.get(path, 0) + 1
            counts[path] = k
            name = path if k == 1 else f"{path}#{k}"
            outs = [t for t in flat_tensors(out) if t.is_floating_point()]
            primary = outs[0] if outs else None
            identity = primary is not None and any(primary is t and torch.equal(primary, snap) for t, snap in pairs)
            kind = norm_kind_of(mod)
            eps = getattr(mod, "eps", None)
            eps = float(eps) if isinstance(eps, (int, float)) else None
            ins = [to_numpy(snap) for _, snap in pairs]
            srcs = [producers.get(id(t)) for t, _ in pairs]
            is_leaf = leaf
            if kind is not None and primary is not None and pairs:
                y = _norm_output(mod, kind, pairs[0][1])
                if y is not None and y.shape == primary.shape and not torch.equal(y, primary):
                    # the module does more than its norm: its norm point is a row of its own
                    calls.insert(
                        entered,
                        ModuleCall(
                            f"{name}[norm]",
                            path,
                            type(mod).__name__,
                            0,
                            True,
                            to_numpy(y),
                            ins,
                            srcs,
                            False,
                            kind,
                            eps,
                            mod,
                            "norm",
                        ),
                    )
                    kind, is_leaf = None, False
            calls.append(
                ModuleCall(
                    name,
                    path,
                    type(mod).__name__,
                    0,
                    is_leaf,
                    to_numpy(primary.detach().clone()) if primary is not None else None,
                    ins,
                    srcs,
                    identity,
                    kind,
                    eps,
                    mod,
                )
            )
            keep.extend(outs)
            if identity:
                return
            for t in outs:
                if is_leaf:
                    producers[id(t)] = name
                else:
                    producers.setdefault(id(t), name)

        return hook

    for path, mod in model.named_modules():
        if path == "":
            continue
        leaf = not any(True for _ in mod.children()) or norm_kind_of(mod) is not None
        handles.append(mod.register_forward_pre_hook(pre_hook, with_kwargs=True))
        handles.append(mod.register_forward_hook(make_hook(path, leaf), with_kwargs=True))
    try:
        with torch.no_grad():
            out = model(*inputs)
    finally:
        for h in handles:
            h.remove()
    for i, c in enumerate(calls):
        c.index = i
    outputs = [to_numpy(t) for t in flat_tensors(out)]
    keep.clear()
    return calls, outputs


__all__ = ["ModuleCall", "flat_tensors", "norm_kind_of", "to_numpy", "trace_torch"]
