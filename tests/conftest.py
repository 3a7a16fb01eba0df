"""Shared fixtures: onnxruntime runs with its own graph optimizations disabled, so it cannot
hide a bug in ours (STYLE.md habit 7); every test starts torch's and NumPy's global generators
from a seed of its own, so its data do not depend on which tests ran before it."""

from __future__ import annotations

import zlib

import numpy as np
import onnx
import pytest


@pytest.fixture(autouse=True)
def _global_generators_per_test(request):
    """torch.randn / module initialisers / np.random.* in a test draw from a seed derived from its node
    id (CRC-32: the same on every run and platform), not from whatever the previous test left."""
    import torch

    seed = zlib.crc32(request.node.nodeid.encode())
    torch.manual_seed(seed)
    np.random.seed(seed)
    yield


def run_ort(model: onnx.ModelProto, feeds: dict[str, np.ndarray], optimize: bool = False) -> list[np.ndarray]:
    from normonnx.runtime import session

    return session(model, optimize=optimize).run(feeds)


@pytest.fixture
def ort_run():
    return run_ort
