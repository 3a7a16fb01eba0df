"""Two old spellings, kept only for ``fuse_modulated.py`` and ``fuse_residual.py``.

Their bodies are another helper's room this round (H-kernels), so they still write
``NoMatch(reason)`` and ``Verdict.fail(reason, value)``; both build a
:class:`~normonnx.rejection.Rejection`. Once both branches are merged, spell them directly and
delete this file::

    sed -i -e 's/NoMatch(/Rejection(/g; s/Verdict\\.fail(/Rejection(/g' \\
        -e 's/Match | NoMatch/Match | Rejection/; s/isinstance(m, NoMatch)/isinstance(m, Rejection)/' \\
        -e 's/-> Verdict:/-> CheckResult:/' normonnx/optimize/fuse_modulated.py normonnx/optimize/fuse_residual.py

(then import ``OK, CheckResult, Rejection`` from ``normonnx.rejection``).
"""

from __future__ import annotations

from ..rejection import Rejection

#: ``NoMatch(reason)`` is ``Rejection(reason)``
NoMatch = Rejection


class Verdict:
    """Not a type: ``Verdict.fail(reason, value)`` is ``Rejection(reason, value)``."""

    fail = staticmethod(Rejection)
