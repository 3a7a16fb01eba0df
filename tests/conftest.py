"""Shared fixtures: onnxruntime runs with its own graph optimizations disabled, so it cannot
hide a bug in ours (STYLE.md habit 7)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest


def run_ort(model: onnx.ModelProto, feeds: dict[str, np.ndarray], optimize: bool = False) -> list[np.ndarray]:
    from normonnx.runtime import session

    return session(model, optimize=optimize).run(feeds)


@pytest.fixture
def ort_run():
    return run_ort
