"""The JSON format: strict RFC 8259 JSON (no NaN literals), one document per run.

The CLI's document is the first section's own (a verify run's JSON is a verify document), the
other sections as keys in it and ``passed`` the whole run's verdict; :func:`report_dict` is the
API's flat form, ``{"passed": ..., <section>: ...}``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

from .base import Format, passed_of, register_format, view


def strict(obj: Any) -> Any:
    """``obj`` made encodable as strict JSON (RFC 8259: no NaN or Infinity literals).

    Non-finite floats become the *strings* ``"NaN"``, ``"Infinity"`` and ``"-Infinity"`` (not
    null: a reader must be able to tell an overflow from a missing value); NumPy scalars and
    arrays become numbers and lists; tuples become lists; other objects their ``str``.
    """
    if isinstance(obj, bool) or obj is None or isinstance(obj, (str, int)):
        return obj
    if isinstance(obj, float):
        if math.isfinite(obj):
            return obj
        return "NaN" if math.isnan(obj) else ("Infinity" if obj > 0 else "-Infinity")
    if isinstance(obj, Mapping):
        return {str(k): strict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [strict(v) for v in obj]
    tolist = getattr(obj, "tolist", None)  # numpy scalars and arrays, without importing numpy
    if callable(tolist) and type(obj).__module__ == "numpy":
        return strict(tolist())
    return str(obj)


def dumps(data: Any) -> str:
    """The one JSON encoder of normonnx's reports and CLI: strict (see :func:`strict`), indented."""
    return json.dumps(strict(data), indent=2, allow_nan=False)


def report_dict(sections: Mapping[str, Any]) -> dict[str, Any]:
    """``{"passed": all sections passed, <section>: section.as_dict(), ...}``."""
    out: dict[str, Any] = {"passed": passed_of(sections)}
    for k, s in sections.items():
        if s is not None:
            out[k] = s.as_dict()
    return out


def run_document(sections: Mapping[str, Any], passed: bool | None = None) -> dict[str, Any]:
    """The CLI's document: the first section's, the others as keys, ``passed`` for the whole run."""
    given = [(k, s) for k, s in sections.items() if s is not None]
    if not given:
        return {"passed": True if passed is None else passed}
    data = view(*given[0]).to_dict()
    for k, s in given[1:]:
        data[k] = view(k, s).to_dict()
    data["passed"] = passed_of(sections) if passed is None else passed
    return data


def render(sections: Mapping[str, Any], *, passed: bool | None = None, **_: Any) -> bytes:
    return (dumps(run_document(sections, passed)) + "\n").encode("utf-8")


FORMAT = register_format(Format("json", "write the report as JSON ('-' for stdout)", render, order=0))

__all__ = ["FORMAT", "dumps", "report_dict", "run_document", "strict"]
