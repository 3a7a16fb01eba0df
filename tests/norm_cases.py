"""The conformance matrix, generated from the registry: every kind declares its cases
(``NormKind.examples``: its ranks, C=1, groups=1 and groups=C, H=W=1, batch 1 and 8, with/without
affine). Adding a kind to normonnx.norms adds its cases here without new test code."""

from __future__ import annotations

from normonnx.norms import KINDS
from normonnx.spec import NormSpec


def cases_for(kind: str) -> list[tuple[str, NormSpec, tuple[int, ...]]]:
    """(id, spec, input shape) triples for ``kind``: its declared examples, ids prefixed by the kind."""
    examples = KINDS[kind].examples()
    assert examples, f"norm kind {kind!r} declares no examples (NormKind.examples)"
    return [(f"{kind}-{id_}", spec.replace(rank=len(shape)), shape) for id_, spec, shape in examples]


ALL_CASES = [c for k in KINDS for c in cases_for(k)]
