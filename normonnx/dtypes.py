"""The element types normonnx handles: one table of names, ONNX codes and short names.

A dtype is named as NumPy and torch name it (``"float32"``, ``"bfloat16"``); its ONNX code is
``onnx.TensorProto``'s (``FLOAT`` = 1; the codes are part of the ONNX standard and written here as
numbers so this module imports nothing). NumPy has no bfloat16: :data:`NUMPY_FLOATS` are the
floating types an ``np.ndarray`` can hold, :data:`HALF` the 16-bit ones a deployment converts to.
"""

from __future__ import annotations

#: floating dtype name → ONNX ``TensorProto`` code: the dtypes a norm can be lowered for
FLOATS: dict[str, int] = {"float32": 1, "float16": 10, "float64": 11, "bfloat16": 16}
#: ONNX code → dtype name, for the floating dtypes above
FLOAT_NAMES: dict[int, str] = {code: name for name, code in FLOATS.items()}
#: dtype name → the short name used in value names and reports (``x::fp16``)
SHORT: dict[str, str] = {"float32": "fp32", "float16": "fp16", "float64": "fp64", "bfloat16": "bf16"}
#: the floating dtypes NumPy (hence onnxruntime's Python API) can hold
NUMPY_FLOATS: tuple[str, ...] = ("float32", "float16", "float64")
#: the 16-bit dtypes a model is deployed in (``verify --fp16 / --bf16``)
HALF: tuple[str, ...] = ("float16", "bfloat16")
#: non-floating dtype name → ONNX code, for the inputs and values normonnx feeds (indices, masks)
OTHERS: dict[str, int] = {"int64": 7, "int32": 6, "int8": 3, "uint8": 2, "bool": 9}
#: every dtype name above → ONNX code
ONNX_CODES: dict[str, int] = {**FLOATS, **OTHERS}
#: onnxruntime's type string (``NodeArg.type``) → dtype name, for the dtypes NumPy can hold
ORT_TYPES: dict[str, str] = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(double)": "float64",
    "tensor(int64)": "int64",
    "tensor(int32)": "int32",
    "tensor(int8)": "int8",
    "tensor(uint8)": "uint8",
    "tensor(bool)": "bool",
}


def onnx_code(name: str) -> int:
    """``"float16"`` → 10 (KeyError for a dtype normonnx does not handle)."""
    return ONNX_CODES[name]


def float_name(code: int | None) -> str | None:
    """10 → ``"float16"``; None for a non-floating or unknown code."""
    return FLOAT_NAMES.get(code or 0)


def short(code_or_name: int | str) -> str:
    """``"fp16"`` for 10 or ``"float16"``."""
    name = code_or_name if isinstance(code_or_name, str) else FLOAT_NAMES[code_or_name]
    return SHORT[name]


__all__ = [
    "FLOATS",
    "FLOAT_NAMES",
    "HALF",
    "NUMPY_FLOATS",
    "ONNX_CODES",
    "ORT_TYPES",
    "OTHERS",
    "SHORT",
    "float_name",
    "onnx_code",
    "short",
]
