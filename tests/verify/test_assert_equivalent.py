"""normonnx.testing: one-line equivalence assertions failing with the localized report."""

from __future__ import annotations

import onnx
import pytest
from _faults import plant_bn_fold_sign

from normonnx.testing import assert_onnx_equivalent
from normonnx.verify.api import VerifyReport


def test_equivalent_export_returns_the_report(net, x, exported):
    rep = assert_onnx_equivalent(net, exported[18][0], (x,), n_samples=1)
    assert isinstance(rep, VerifyReport) and rep.passed
    assert rep.max_abs < 1e-5


def test_mismatch_raises_with_the_first_wrong_module(net, x, exported, tmp_path):
    path = tmp_path / "folded.onnx"
    onnx.save(plant_bn_fold_sign(exported[18][1], net), path)
    with pytest.raises(AssertionError) as e:
        assert_onnx_equivalent(net, path, (x,), n_samples=1)
    msg = str(e.value)
    assert msg.startswith("MISMATCH: folded.onnx")
    assert "first divergence at module 'bn' (BatchNorm2d, batch norm folded into 'conv')" in msg
    assert "<== first divergence" in msg  # the per-layer table
    assert "note: 1 BatchNorm(s) folded into the op before them, each compared as the pair: 'bn' into 'conv'" in msg


def test_fixture(onnx_equivalence, net, x, exported):
    """The fixture (registered in conftest.py, as the pytest11 entry point would) is the function."""
    assert onnx_equivalence is assert_onnx_equivalent
    assert onnx_equivalence(net, exported[17][0], (x,), n_samples=0).passed
