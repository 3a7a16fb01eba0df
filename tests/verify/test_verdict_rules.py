"""Verdict rules through the real CLI and API: a NaN/Inf on one side fails under every statistic;
NaN, Inf or negative tolerances and unknown checks are usage errors (exit 2) before anything runs;
the JSON report is strict JSON (``json.loads`` with no NaN/Infinity literals)."""

from __future__ import annotations

import json
import os

import numpy as np
import onnx
import pytest
from _faults import make_net
from onnx import helper, numpy_helper

from normonnx.cli import main
from normonnx.errors import InputError
from normonnx.verify.api import verify
from normonnx.verify.bisect import bisect
from normonnx.verify.localize import localize
from normonnx.verify.precision import check_precision

HERE = os.path.dirname(os.path.abspath(__file__))
MODEL = os.path.join(HERE, "_faults.py") + ":net_and_inputs"


def run(capsys, *argv):
    rc = main([str(a) for a in argv])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def _strict(text: str):
    def refuse(tok):
        raise AssertionError(f"non-strict JSON literal {tok}")

    return json.loads(text, parse_constant=refuse)


@pytest.fixture(scope="module")
def nan_path(exported, tmp_path_factory):
    """The healthy export with one NaN added to one of the 512 output elements (ONNX side only)."""
    m = onnx.ModelProto()
    m.CopyFrom(exported[18][1])
    g = m.graph
    out = g.output[0].name
    k = np.zeros((2, 64, 4), np.float32)
    k[1, 5, 2] = np.nan
    g.initializer.append(numpy_helper.from_array(k, "planted_nan"))
    for n in g.node:
        for i, v in enumerate(n.output):
            if v == out:
                n.output[i] = "pre_nan"
    g.node.append(helper.make_node("Add", ["pre_nan", "planted_nan"], [out], name="planted_nan_add"))
    path = tmp_path_factory.mktemp("nan") / "nan.onnx"
    onnx.save(m, path)
    return path


@pytest.mark.parametrize("check", ["elementwise", "max", "mean", "quantile:0.99", "quantile:0.5"])
def test_nan_on_the_onnx_side_only_fails_every_check(capsys, nan_path, check):
    rc, out, err = run(capsys, "verify", MODEL, nan_path, "--check", check, "--samples", "0", "--no-localize")
    assert rc == 1, out + err
    last = out.strip().splitlines()[-1]
    assert last.startswith("FAILED | MISMATCH: nan.onnx") and "max_abs=inf" in last


@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("--atol", "nan"),
        ("--atol", "inf"),
        ("--atol", "-1"),
        ("--rtol", "nan"),
        ("--rtol", "-inf"),
        ("--atol", "y:nan"),
    ],
)
def test_bad_tolerances_are_usage_errors_before_any_work(capsys, flag, value):
    # the ONNX path does not exist: the tolerance is refused before the model or the file is read
    rc, out, err = run(capsys, "verify", MODEL, "/nonexistent/x.onnx", f"{flag}={value}")
    assert rc == 2, out + err
    assert "is not a finite number >= 0" in out.strip().splitlines()[-1]
    assert "Traceback" not in err


@pytest.mark.parametrize("value", ["nan", "-1"])
def test_compare_refuses_bad_tolerances(capsys, value):
    rc, out, _ = run(capsys, "compare", "/nonexistent/a.onnx", "/nonexistent/b.onnx", "--atol", value)
    assert rc == 2 and "is not a finite number >= 0" in out


@pytest.mark.parametrize("kw", [{"atol": float("nan")}, {"atol": float("inf")}, {"rtol": -1.0}, {"check": "median"}])
@pytest.mark.parametrize("api", ["verify", "localize", "bisect", "check_precision"])
def test_api_refuses_bad_tolerances_before_any_work(kw, api):
    net = make_net()
    with pytest.raises(InputError, match=r"is not a finite number >= 0|bad check"):
        if api == "verify":
            verify(net, "/nonexistent/x.onnx", **kw)
        elif api == "localize":
            localize(net, "/nonexistent/x.onnx", **kw)
        elif api == "bisect":
            bisect("/nonexistent/x.onnx", "/nonexistent/y.onnx", **kw)
        else:
            check_precision(net, "/nonexistent/x.onnx", **kw)


def test_api_nan_tolerance_no_longer_passes_a_mismatch(nan_path, x):
    rep = verify(make_net(), nan_path, (x,), n_samples=0, atol=1e-3)
    assert not rep.passed
    (o,) = rep.samples[0].outputs
    assert o.nonfinite_mismatch == 1 and o.nonfinite_actual == 1


def test_json_report_of_a_nan_mismatch_is_strict(capsys, nan_path):
    rc, out, _ = run(capsys, "verify", MODEL, nan_path, "--samples", "0", "--no-localize", "--json", "-")
    assert rc == 1
    doc = _strict(out)
    o = doc["samples"][0]["outputs"][0]
    assert o["max_abs"] == "inf" and o["required_atol"] == "inf" and o["nonfinite_mismatch"] == 1
    assert doc["latency"] is None  # not measured unless asked


def test_all_nan_on_both_sides_is_a_warning(capsys, tmp_path):
    """A model whose output is NaN everywhere (log of a negative constant) in torch and ONNX alike."""
    import torch

    from normonnx.exporter import export

    class AllNan(torch.nn.Module):
        def forward(self, x):
            return torch.log(-1.0 - x * x)

    path = tmp_path / "allnan.onnx"
    x = torch.randn(2, 3)
    net = AllNan().eval()
    export(net, (x,), path)
    rep = verify(net, path, (x,), n_samples=0)
    assert rep.passed
    assert rep.warnings == [
        "example/" + rep.samples[0].outputs[0].name + ": all 6 values are NaN on both sides: nothing was compared"
    ]
    assert "warning(s): example/" in rep.summary()
    assert _strict(json.dumps(rep.as_dict()))["warnings"] == rep.warnings


def test_latency_is_a_median_of_warm_calls(exported, x):
    rep = verify(make_net(), exported[18][0], (x,), n_samples=0, latency_reps=5)
    assert rep.torch_ms is not None and 0 < rep.torch_ms < 2000
    assert rep.ort_ms is not None and 0 < rep.ort_ms < 2000
    lat = rep.as_dict()["latency"]
    assert lat["median_of"] == 5 and lat["warmup"] == 3
    assert verify(make_net(), exported[18][0], (x,), n_samples=0).torch_ms is None
