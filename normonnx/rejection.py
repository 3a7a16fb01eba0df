"""One type for "no, and here is why": :class:`Rejection`.

A lowering strategy that cannot serve a spec, a rewrite rule whose pattern does not match, and a
rule whose check refuses a match all answer with a :class:`Rejection`: the reason in words, the
offending value (a value name, a number, or an array shown by dtype, shape and first elements),
and, once the caller knows them, the rule or strategy and the node it was about. It prints the
same way wherever it shows up::

    group_norm.decomposed at 'GN_3': ε is not a constant ('eps' is a graph input) [eps]

A check returns :data:`OK` (truthy) or a Rejection (falsy), so ``if not (r := check(...)): return r``
passes the reason up unchanged. This module imports nothing of normonnx: the lowering strategies
(``normonnx.lowering``) and the rewrite rules (``normonnx.optimize``) both sit above it.
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Any, Final, Literal, TypeAlias

__all__ = ["OK", "Accepted", "CheckResult", "Rejection"]


@dataclasses.dataclass(frozen=True)
class Rejection:
    """Why something does not apply.

    reason: what is wrong, in words (the values it depends on may be part of the sentence).
    value:  the offending value as text; an array or any other object given here is shortened to
            ``dtype[shape] [first elements]`` / ``str(value)`` when the rejection is made.
    rule:   the rule or strategy that rejected (filled in by whoever records the rejection).
    node:   the node it was about (likewise).
    """

    reason: str
    value: Any = ""
    rule: str = ""
    node: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.value, str):
            object.__setattr__(self, "value", _short(self.value))

    def __bool__(self) -> Literal[False]:
        return False

    def at(self, rule: str, node: str) -> Rejection:
        """The same rejection, attributed to ``rule`` at ``node``."""
        return dataclasses.replace(self, rule=rule, node=node)

    def __str__(self) -> str:
        where = f"{self.rule} at {self.node!r}: " if self.rule and self.node else f"{self.rule}: " if self.rule else ""
        return where + self.reason + (f" [{self.value}]" if self.value else "")

    def as_dict(self) -> dict[str, str]:
        return {"rule": self.rule, "node": self.node, "reason": self.reason, "value": self.value}


class Accepted:
    """The answer of a check that passed (truthy); there is one, :data:`OK`."""

    __slots__ = ()

    def __bool__(self) -> Literal[True]:
        return True

    def __repr__(self) -> str:
        return "OK"


OK: Final = Accepted()

#: what a check returns: :data:`OK` or the :class:`Rejection` saying why not
CheckResult: TypeAlias = Accepted | Rejection


def _short(value: object) -> str:
    np = sys.modules.get("numpy")  # an array can only be given once NumPy is imported: no import here
    if np is not None and isinstance(value, np.ndarray):
        flat = value.reshape(-1)
        body = ", ".join(f"{v:.6g}" for v in flat[:4]) + (", …" if flat.size > 4 else "")
        return f"{value.dtype}{list(value.shape)} [{body}]"
    return str(value)
