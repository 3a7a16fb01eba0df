"""One-line equivalence checks for users' own test suites.

    from normonnx.testing import assert_onnx_equivalent

    def test_export(tmp_path):
        path = export(model, (x,), tmp_path / "m.onnx").path
        assert_onnx_equivalent(model, path, (x,))

On a mismatch the AssertionError carries the verification table *and* the localized report
(the first module whose output diverges, its norm kind and lowering strategy), not just a max
error. As a pytest plugin (entry point ``pytest11: normonnx = normonnx.testing``) this module
also provides the fixture ``onnx_equivalence``, which is the same function.
"""

from __future__ import annotations

import os
from typing import Any

from .verify.api import VerifyReport, verify


def assert_onnx_equivalent(
    model: Any,
    path: str | os.PathLike[str],
    example_inputs: Any = None,
    *,
    localize_on_failure: bool = True,
    **kw: Any,
) -> VerifyReport:
    """Verify ``path`` against ``model`` (keywords as :func:`normonnx.verify.api.verify`); return the
    report, or raise AssertionError with the evidence and the first diverging module."""
    rep = verify(model, path, example_inputs, **kw)
    if rep.passed:
        return rep
    lines = [rep.summary(), "", rep.format_table()]
    if localize_on_failure:
        from .verify.localize import localize

        loc_kw = {k: kw[k] for k in ("provider", "rtol", "atol", "check", "threads", "seed") if k in kw}
        try:
            loc = localize(model, path, example_inputs, **loc_kw)
            lines += ["", loc.verdict(), "", loc.format_table()]
            if loc.culprit is not None and loc.culprit.norm and loc.culprit.norm.get("warning"):
                lines.append(f"hint: {loc.culprit.norm['warning']}")
            lines += [f"note: {n}" for n in loc.notes]
        except Exception as e:  # localization is extra evidence; the mismatch stands without it
            lines += ["", f"(localization failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"]
    raise AssertionError("\n".join(lines))


try:  # the fixture exists only where pytest does
    import pytest

    @pytest.fixture
    def onnx_equivalence() -> Any:
        """The :func:`assert_onnx_equivalent` function, as a fixture."""
        return assert_onnx_equivalent

except ImportError:  # pragma: no cover
    pass


__all__ = ["assert_onnx_equivalent"]
