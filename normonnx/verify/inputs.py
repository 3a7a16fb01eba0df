"""Inputs for verification: the one generator and the one stress table.

Every check draws its inputs here, so a float input means the same thing everywhere:

- :func:`draw` makes one array: a float dtype gets the values of a :data:`STRESS` entry (drawn in
  float64, rounded once to the dtype), an integer dtype uniform integers in ``[0, INT_HIGH)``
  (valid indices into any axis of size ≥ 2, masks, token ids), bool ``False``;
- :func:`inputs_from_onnx` — arrays for an ONNX file's static input shapes (no example given);
- :func:`random_like` — a random sample of the example's shapes (integer inputs kept);
- :func:`second_size` — the example at another size along the file's symbolic dims;
- :func:`input_specs` / :func:`feeds` — named feeds for an ONNX model (optimize's check);
- :func:`random_inputs` — torch tensors for the CLI's ``--input NAME:SHAPE[:DTYPE]`` specs;
- :func:`torch_inputs` — example inputs as torch tensors and arrays, NaN/Inf refused.

:data:`STRESS` holds the stress inputs, kernel-level and whole-model: a distribution, an
optional size factor along dynamic non-batch axes, an optional ε written into every norm.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import onnx
from onnx import helper

from ..errors import InputError

#: integer inputs are drawn uniformly from [0, INT_HIGH)
INT_HIGH = 2


def _normal(shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    return rng.standard_normal(shape)


def _offset(shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    return rng.standard_normal(shape) + 1000.0


def _tiny(shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    return rng.standard_normal(shape) * 1e-3


def _constant(shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    return np.full(shape, 3.25)


def _constant_channels(shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    x = np.empty(shape)
    if len(shape) < 2:
        x[...] = 3.25
        return x
    for c in range(shape[1]):
        x[:, c] = 3.25 + 0.5 * c
    return x


@dataclasses.dataclass(frozen=True)
class StressInput:
    """One stress input: where a naive norm lowering breaks."""

    name: str
    description: str
    values: Callable[[tuple[int, ...], np.random.Generator], np.ndarray]  # float64 values of a shape
    spatial: int = 1  # the example's dynamic non-batch axes multiplied by this
    eps: float | None = None  # every norm's ε set to this (whole models: exported again)


#: the stress table. ``offset``: E[x²]−E[x]² cancels catastrophically in fp32; ``tiny_scale``:
#: variance comparable to ε; ``constant`` / ``constant_channels``: zero variance per instance /
#: group (the output must be finite and equal β)
STRESS: dict[str, StressInput] = {
    s.name: s
    for s in (
        StressInput("normal", "N(0, 1) inputs", _normal),
        StressInput("offset", "N(1000, 1) inputs", _offset),
        StressInput("tiny_scale", "N(0, 1e-3²) inputs", _tiny),
        StressInput("constant", "every element 3.25 (zero variance)", _constant),
        StressInput("constant_channels", "every channel constant (zero variance)", _constant_channels),
        StressInput("large_spatial", "4x the example size along dynamic non-batch axes", _normal, spatial=4),
        StressInput(
            "eps_small", "every norm's eps = 1e-12 (tiny-scale inputs), model exported again", _tiny, eps=1e-12
        ),
        StressInput("eps_large", "every norm's eps = 1 (normal inputs), model exported again", _normal, eps=1.0),
    )
}


def draw(shape: Sequence[int], dtype: Any, rng: np.random.Generator, stress: str = "normal") -> np.ndarray:
    """One input array of ``shape`` and ``dtype`` (see the module docstring)."""
    dt = np.dtype(dtype)
    shape = tuple(int(d) for d in shape)
    if dt.kind == "f":
        return STRESS[stress].values(shape, rng).astype(dt)
    if dt.kind in "iu":
        return rng.integers(0, INT_HIGH, shape).astype(dt)
    return np.zeros(shape, dt)


def _np_dtype(elem_type: int) -> np.dtype:
    if elem_type == onnx.TensorProto.BFLOAT16:
        return np.dtype("float32")  # numpy has no bfloat16: the caller refuses or casts
    return np.dtype(helper.tensor_dtype_to_np_dtype(elem_type or onnx.TensorProto.FLOAT))


def _graph_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    inits = {t.name for t in model.graph.initializer}
    return [vi for vi in model.graph.input if vi.name not in inits]


def inputs_from_onnx(model: onnx.ModelProto, seed: int) -> list[np.ndarray]:
    """Arrays for the ONNX file's inputs at their static shapes; a dynamic dim is an InputError."""
    rng = np.random.default_rng(seed)
    out = []
    for vi in _graph_inputs(model):
        dims = vi.type.tensor_type.shape.dim
        if any(not d.HasField("dim_value") for d in dims):
            raise InputError(
                f"input {vi.name!r} has dynamic dims; example inputs are needed to pick sizes",
                note="pass example_inputs (CLI: --input name:1x3x224x224)",
            )
        out.append(draw([d.dim_value for d in dims], _np_dtype(vi.type.tensor_type.elem_type), rng))
    return out


def random_like(
    example: Sequence[np.ndarray],
    rng: np.random.Generator,
    stress: str = "normal",
    shapes: Sequence[Sequence[int]] | None = None,
) -> list[np.ndarray]:
    """A sample of the example's dtypes and shapes (or ``shapes``, for float inputs): floats drawn
    from the ``stress`` entry, other inputs (token ids) kept as given."""
    shapes = shapes if shapes is not None else [a.shape for a in example]
    return [draw(s, a.dtype, rng, stress) if a.dtype.kind == "f" else a for s, a in zip(shapes, example)]


def second_size(model: onnx.ModelProto, example: Sequence[np.ndarray]) -> list[np.ndarray] | None:
    """Inputs at another size along the ONNX model's symbolic dims (batch+1, others ×2; one size
    per dim name across inputs), or None when every dim is static."""
    sizes: dict[str, int] = {}
    shapes = []
    for vi, x in zip(_graph_inputs(model), example):
        shape = list(x.shape)
        for i, d in enumerate(vi.type.tensor_type.shape.dim):
            if d.dim_param and i < len(shape):
                shape[i] = sizes.setdefault(d.dim_param, shape[i] + 1 if i == 0 else shape[i] * 2)
        shapes.append(shape)
    if not sizes:
        return None
    rng = np.random.default_rng(1234)
    return [draw(s, x.dtype, rng) for s, x in zip(shapes, example)]


def large_shapes(model: onnx.ModelProto, example: Sequence[np.ndarray], factor: int) -> list[tuple[int, ...]] | None:
    """The example's shapes with the dynamic non-batch axes of float inputs ×``factor``, or None
    when the file has no such axis."""
    shapes, changed = [], False
    for vi, a in zip(_graph_inputs(model), example):
        s = list(a.shape)
        for i, d in enumerate(vi.type.tensor_type.shape.dim):
            if 0 < i < len(s) and d.dim_param and a.dtype.kind == "f":
                s[i] *= factor
                changed = True
        shapes.append(tuple(s))
    return shapes if changed else None


def input_specs(
    model: onnx.ModelProto, shapes: Mapping[str, Sequence[int]] | None = None
) -> list[tuple[str, tuple[int, ...], np.dtype]]:
    """(name, shape, dtype) of the inputs a caller must feed; symbolic batch dims become 2."""
    out = []
    for vi in _graph_inputs(model):
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


def feeds(
    specs: Sequence[tuple[str, tuple[int, ...], np.dtype]], rng: np.random.Generator, stress: str = "normal"
) -> dict[str, np.ndarray]:
    """Named arrays for ``specs`` (from :func:`input_specs`)."""
    return {name: draw(shape, dt, rng, stress) for name, shape, dt in specs}


def random_inputs(specs: list[tuple[str | None, tuple[int, ...], str]], seed: int = 0) -> tuple[Any, ...]:
    """Seeded torch tensors for ``--input`` specs (``(name, shape, torch dtype name)``, as parsed by
    :func:`normonnx.modelspec.parse_input_specs`), drawn by :func:`draw`; an input too large to
    allocate is an :class:`InputError` saying how many bytes it asked for."""
    import torch

    rng = np.random.default_rng(seed)
    out = []
    for name, shape, dtype in specs:
        dt = getattr(torch, dtype, None)
        if not isinstance(dt, torch.dtype):
            raise InputError(f"unknown dtype {dtype!r} in --input", note="e.g. float32, float16, int64")
        try:
            a = draw(shape, np.float32 if dt.is_floating_point else np.int64, rng)
            out.append(torch.from_numpy(a).to(dt))
        except (MemoryError, RuntimeError, ValueError) as e:
            if not isinstance(e, MemoryError) and "alloc" not in str(e) and "too large" not in str(e):
                raise
            size = math.prod(shape) * max(dt.itemsize, 4)
            shown = "x".join(map(str, shape))
            raise InputError(
                f"--input {name + ':' if name else ''}{shown} needs {size / 2**30:.3g} GiB, more than this machine can allocate",
                note="use a smaller example input; the exported model keeps dynamic axes with --dynamic",
            ) from None
    return tuple(out)


def torch_inputs(model: onnx.ModelProto, example_inputs: Any, seed: int) -> tuple[list[Any], list[np.ndarray]]:
    """(torch tensors, numpy arrays) of the example inputs (drawn from the file when None);
    NaN or Inf in a float input is an InputError (localization needs finite inputs)."""
    import torch

    if example_inputs is None:
        example_inputs = [torch.from_numpy(a) for a in inputs_from_onnx(model, seed)]
    if isinstance(example_inputs, (torch.Tensor, np.ndarray)):
        example_inputs = (example_inputs,)
    tin = [t if isinstance(t, torch.Tensor) else torch.from_numpy(np.asarray(t)) for t in example_inputs]
    arrays = [t.detach().cpu().numpy() for t in tin]
    for i, a in enumerate(arrays):
        if a.dtype.kind == "f" and not np.isfinite(a).all():
            raise InputError(f"input {i} contains NaN or Inf", note="localization needs finite inputs")
    return tin, arrays


__all__ = [
    "INT_HIGH",
    "STRESS",
    "StressInput",
    "draw",
    "feeds",
    "input_specs",
    "inputs_from_onnx",
    "large_shapes",
    "random_inputs",
    "random_like",
    "second_size",
    "torch_inputs",
]
