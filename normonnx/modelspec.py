"""Resolve the CLI's MODEL argument to a torch model (and its example inputs when known).

MODEL is one of:
- a name from ``models/`` (``resnet``, ``unet``...): the entry's factory and example inputs;
- ``package.module:factory`` — a callable returning an ``nn.Module`` (or ``(module, inputs)``);
- ``path/to/file.py:factory`` — the same, from a file;
- ``path/to/program.pt2`` — a ``torch.export`` archive (its stored example inputs if any).
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import importlib.util
import logging
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import InputError, ModelLoadError


@dataclasses.dataclass
class ResolvedModel:
    name: str
    model: Any  # nn.Module or ExportedProgram
    example_inputs: tuple[Any, ...] | None
    input_names: list[str] | None = None
    dynamic_axes: dict[str, dict[int, str]] | None = None
    second_size_inputs: tuple[Any, ...] | None = None


def models_registry() -> Any:
    """The ``models`` package of the repository (importable from a checkout or the cwd)."""
    try:
        return importlib.import_module("models")
    except ImportError:
        pass
    for root in (Path.cwd(), Path(__file__).resolve().parents[1]):
        if (root / "models" / "__init__.py").exists():
            sys.path.insert(0, str(root))
            try:
                return importlib.import_module("models")
            except ImportError:
                sys.path.remove(str(root))
    return None


def resolve(spec: str) -> ResolvedModel:
    """Resolve ``spec`` or raise :class:`ModelLoadError` saying which forms are accepted."""
    forms = "a name from models/ (see `normonnx zoo --list`), package.module:factory, path/to/file.py:factory, or a .pt2 archive"
    if spec.endswith(".pt2"):
        return _load_pt2(spec)
    reg = models_registry()
    if reg is not None and ":" not in spec and spec in getattr(reg, "MODELS", {}):
        e = reg.MODELS[spec]
        return ResolvedModel(
            e.name,
            e.factory(),
            tuple(e.example_inputs()),
            list(e.input_names),
            dict(e.dynamic_axes),
            tuple(e.second_size_inputs()),
        )
    if ":" not in spec:
        known = ", ".join(sorted(getattr(reg, "MODELS", {}))) if reg is not None else "(models/ not found)"
        raise ModelLoadError(f"cannot resolve MODEL {spec!r}", note=f"use {forms}; bundled models: {known}")
    target, _, attr = spec.rpartition(":")
    if target.endswith(".py") or os.sep in target:
        if not os.path.exists(target):
            raise ModelLoadError(f"no such file: {target}", note=f"MODEL must be {forms}")
        mod_name = f"_normonnx_user_{Path(target).stem}"
        s = importlib.util.spec_from_file_location(mod_name, target)
        if s is None or s.loader is None:
            raise ModelLoadError(f"cannot import {target}")
        module = importlib.util.module_from_spec(s)
        sys.modules[mod_name] = module
        try:
            s.loader.exec_module(module)
        except Exception as e:
            raise ModelLoadError(f"importing {target} failed: {type(e).__name__}: {e}") from None
    else:
        try:
            module = importlib.import_module(target)
        except (ImportError, ValueError) as e:  # ValueError: ":factory" (empty module name)
            raise ModelLoadError(f"cannot import module {target!r}: {e}", note=f"MODEL must be {forms}") from None
    factory = getattr(module, attr, None)
    if factory is None or not callable(factory):
        raise ModelLoadError(f"{target} has no callable {attr!r}", note="name a function returning an nn.Module")
    try:
        made = factory()
    except Exception as e:
        raise ModelLoadError(f"{spec}() raised {type(e).__name__}: {e}") from None
    inputs = None
    if isinstance(made, tuple) and len(made) == 2:
        made, inputs = made
        inputs = (inputs,) if not isinstance(inputs, (tuple, list)) else tuple(inputs)
    import torch

    if not isinstance(made, torch.nn.Module):
        raise ModelLoadError(f"{spec}() returned {type(made).__name__}, not a torch.nn.Module")
    return ResolvedModel(spec, made, inputs)


@contextlib.contextmanager
def _quiet_logger(name: str) -> Iterator[None]:
    """Silence a library logger around a call whose failure normonnx reports itself (torch's
    ``torch.export.load`` logs the whole traceback as a warning before raising)."""
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        logger.setLevel(level)


def _load_pt2(path: str) -> ResolvedModel:
    import torch

    if not os.path.exists(path):
        raise ModelLoadError(f"no such file: {path}")
    if os.path.isdir(path):
        raise ModelLoadError(f"{path} is a directory, not a torch.export archive")
    try:
        with _quiet_logger("torch.export"):
            ep = torch.export.load(path)
    except Exception as e:
        raise ModelLoadError(f"{path} is not a readable torch.export archive: {type(e).__name__}: {e}") from None
    ex = getattr(ep, "example_inputs", None)
    inputs = tuple(ex[0]) if ex and ex[0] else None
    return ResolvedModel(Path(path).stem, ep, inputs)


def parse_input_specs(items: list[str] | None) -> list[tuple[str | None, tuple[int, ...], str]]:
    """``["x:1x3x224x224", "mask:1x16:int64", "2x8"]`` → (name, shape, dtype) triples."""
    out = []
    for item in items or []:
        parts = item.split(":")
        name: str | None = None
        dtype = "float32"
        if len(parts) == 1:
            shape_s = parts[0]
        elif len(parts) == 2:
            if re.fullmatch(r"\d+(x\d+)*", parts[0].lower()):  # SHAPE:DTYPE, else NAME:SHAPE
                shape_s, dtype = parts
            else:
                name, shape_s = parts
        elif len(parts) == 3:
            name, shape_s, dtype = parts
        else:
            raise InputError(f"bad --input {item!r}", note="use name:1x3x224x224[:dtype]")
        try:
            shape = tuple(int(d) for d in shape_s.lower().split("x"))
        except ValueError:
            raise InputError(
                f"bad shape in --input {item!r}", note="dimensions are integers joined by 'x', e.g. 1x3x224x224"
            ) from None
        if any(d <= 0 for d in shape):
            raise InputError(f"non-positive dimension in --input {item!r}")
        out.append((name, shape, dtype))
    return out


def check_example_inputs(inputs: Any) -> None:
    """Refuse example inputs with a zero-size dimension before export: torch specializes such a
    dim and the exported model would then reject every real input."""
    for i, t in enumerate(inputs if isinstance(inputs, (tuple, list)) else (inputs,)):
        shape = tuple(getattr(t, "shape", ()))
        if any(d == 0 for d in shape):
            raise InputError(
                f"example input {i} has shape {list(shape)}: a zero-size dimension (batch 0?) cannot be exported",
                note="give example inputs with every dimension >= 1 (batch 1 or more)",
            )
