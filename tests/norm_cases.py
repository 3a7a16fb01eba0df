"""The conformance matrix, generated from the registry: every kind gets specs covering its
ranks, C=1, groups=1 and groups=C, H=W=1, batch 1 and 8, with/without affine. Adding a kind to
normonnx.norms adds its cases here without new test code (see ``cases_for``)."""

from __future__ import annotations

from normonnx.norms import KINDS
from normonnx.spec import NormSpec


def cases_for(kind: str) -> list[tuple[str, NormSpec, tuple[int, ...]]]:
    """(id, spec, input shape) triples for ``kind``."""
    out: list[tuple[str, NormSpec, tuple[int, ...]]] = []

    def add(id_: str, spec: NormSpec, shape: tuple[int, ...]) -> None:
        out.append((f"{kind}-{id_}", spec.replace(rank=len(shape)), shape))

    if kind == "batch":
        add("r4", NormSpec("batch", channels=6, running_stats=True), (2, 6, 5, 4))
        add("r2", NormSpec("batch", channels=6, running_stats=True), (8, 6))
        add(
            "r3-noaffine",
            NormSpec("batch", channels=3, running_stats=True, has_weight=False, has_bias=False),
            (1, 3, 7),
        )
        add("r5-c1", NormSpec("batch", channels=1, running_stats=True), (2, 1, 2, 3, 4))
        add("batchstats", NormSpec("batch", channels=4, running_stats=False), (8, 4, 3, 3))
    elif kind == "layer":
        add("r3", NormSpec("layer", normalized_shape=(16,)), (2, 5, 16))
        add("r2-b8", NormSpec("layer", normalized_shape=(12,)), (8, 12))
        add("r4-two-axes", NormSpec("layer", normalized_shape=(3, 4)), (2, 5, 3, 4))
        add("noaffine", NormSpec("layer", normalized_shape=(10,), has_weight=False, has_bias=False), (1, 3, 10))
        add("nobias", NormSpec("layer", normalized_shape=(10,), has_bias=False), (2, 10))
        add("cf-r4", NormSpec("layer", normalized_shape=(6,), channels_first=True), (2, 6, 3, 5))
        add("cf-r4-hw1", NormSpec("layer", normalized_shape=(4,), channels_first=True), (1, 4, 1, 1))
    elif kind == "instance":
        add("r4", NormSpec("instance", channels=5), (2, 5, 6, 7))
        add("r3-b1", NormSpec("instance", channels=3), (1, 3, 9))
        add("r5", NormSpec("instance", channels=2), (2, 2, 3, 4, 5))
        add("noaffine", NormSpec("instance", channels=4, has_weight=False, has_bias=False), (8, 4, 4, 4))
        add("running", NormSpec("instance", channels=4, running_stats=True), (2, 4, 5, 5))
    elif kind == "group":
        add("r4", NormSpec("group", channels=8, groups=4), (2, 8, 5, 6))
        add("g1", NormSpec("group", channels=6, groups=1), (2, 6, 4, 4))
        add("gC", NormSpec("group", channels=6, groups=6), (2, 6, 4, 4))
        add("c1", NormSpec("group", channels=1, groups=1), (3, 1, 4, 5))
        add("r2", NormSpec("group", channels=8, groups=2), (8, 8))
        add("r3", NormSpec("group", channels=4, groups=2), (1, 4, 10))
        add("r5", NormSpec("group", channels=4, groups=2), (2, 4, 2, 3, 4))
        add("hw1", NormSpec("group", channels=8, groups=4), (2, 8, 1, 1))
        add("noaffine", NormSpec("group", channels=8, groups=2, has_weight=False, has_bias=False), (2, 8, 3, 3))
        add("silu", NormSpec("group", channels=8, groups=4, activation="silu"), (2, 8, 4, 4))
    elif kind == "rms":
        add("r3", NormSpec("rms", normalized_shape=(16,), has_bias=False), (2, 5, 16))
        add("r2-b8", NormSpec("rms", normalized_shape=(12,), has_bias=False), (8, 12))
        add("two-axes", NormSpec("rms", normalized_shape=(3, 4), has_bias=False), (2, 3, 4))
        add("noweight", NormSpec("rms", normalized_shape=(10,), has_weight=False, has_bias=False), (1, 10))
    elif kind == "grn":
        add("cl-r4", NormSpec("grn", channels=8, eps=1e-6), (2, 5, 4, 8))
        add("cf-r4", NormSpec("grn", channels=6, channels_first=True, eps=1e-6), (2, 6, 3, 5))
        add("cf-r3-b1", NormSpec("grn", channels=4, channels_first=True), (1, 4, 9))
        add("cl-hw1", NormSpec("grn", channels=4), (2, 1, 1, 4))
        add("noaffine", NormSpec("grn", channels=4, has_weight=False, has_bias=False), (2, 3, 3, 4))
    else:  # a new kind: one default case from its own random spec is better than none
        raise AssertionError(f"add conformance cases for new kind {kind!r} in tests/norm_cases.py")
    return out


ALL_CASES = [c for k in KINDS for c in cases_for(k)]
