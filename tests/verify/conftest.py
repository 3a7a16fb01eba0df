"""Fixtures for the verification tests: the small Net exported once per session.

Exported at opsets 17 and 18, lowered to standard ops only (``prefer``: native, then decomposed):
the fault tests edit those graphs (an epsilon constant, LayerNormalization's axis). Both keep
torch's module-scope metadata (normonnx restores it after the 18 → 17 conversion);
``test_without_scope_metadata_the_same_culprit_is_found`` strips it to exercise the other mapping.
"""

from __future__ import annotations

import contextlib

import onnx
import pytest
import torch
from _faults import example, make_net

from normonnx.exporter import export

STANDARD_OPS = ("native", "decomposed")


@contextlib.contextmanager
def one_torch_thread():
    """torch on one intra-op thread: these models are tiny and the test machine's cores are
    shared; two threads make every conv ~10× slower here. Restored afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


@pytest.fixture(autouse=True)
def _one_thread():
    with one_torch_thread():
        yield


@pytest.fixture(scope="session")
def net():
    return make_net()


@pytest.fixture(scope="session")
def x():
    return example()


@pytest.fixture(scope="session")
def exported(net, x, tmp_path_factory):
    """opset → (path, ModelProto) of the healthy export."""
    d = tmp_path_factory.mktemp("verify_exports")
    out = {}
    with one_torch_thread():
        for opset in (17, 18):
            path = d / f"net{opset}.onnx"
            export(net, (x,), path, opset=opset, prefer=STANDARD_OPS)
            out[opset] = (path, onnx.load(path))
    return out
