"""Report files parsed back: JSON keys and values, JUnit XML structure, HTML with embedded PNGs."""

from __future__ import annotations

import base64
import json
import re
import sys
import xml.etree.ElementTree as ET

import onnx
import pytest
from _faults import plant_wrong_eps

from normonnx.errors import UnsupportedHere
from normonnx.reports import report_dict, write_html, write_junit
from normonnx.verify.api import verify
from normonnx.verify.bisect import bisect
from normonnx.verify.localize import localize

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def sections(net, x, exported, tmp_path_factory):
    path = tmp_path_factory.mktemp("reports") / "bad.onnx"
    bad, _ = plant_wrong_eps(exported[18][1], "group_norm", 1e-3)
    onnx.save(bad, path)
    return {
        "verify": verify(net, path, (x,), n_samples=1),
        "localize": localize(net, path, (x,)),
        "bisect": bisect(exported[18][0], path, [x.numpy()]),
    }


def test_json_document(sections, tmp_path):
    doc = report_dict(sections)
    text = json.dumps(doc)  # must be serialisable as is (no numpy scalars, no Inf)
    back = json.loads(text)
    assert set(back) == {"passed", "verify", "localize", "bisect"}
    assert back["passed"] is False
    v = back["verify"]
    assert {"passed", "onnx_path", "provider", "max_abs", "samples", "lowerings", "versions"} <= set(v)
    assert [s["name"] for s in v["samples"]] == ["example", "random0"]
    loc = back["localize"]
    assert {"passed", "verdict", "culprit", "between", "mapping", "notes", "outputs", "layers"} <= set(loc)
    assert loc["culprit"]["name"] == "gn" and loc["culprit"]["norm"]["strategy"] == "decomposed"
    assert loc["culprit"]["comparison"]["max_abs"] > 2e-3
    assert [lr["name"] for lr in loc["layers"]][:4] == ["conv", "bn", "act", "gn"]
    assert {"name", "type", "onnx_value", "mapped_by", "comparison", "inputs_agree", "norm", "passed"} <= set(
        loc["layers"][0]
    )
    assert back["bisect"]["first"]["op_type"] == "Add"  # var + ε, reading the edited ε


def test_junit_xml(sections, tmp_path):
    path = write_junit(tmp_path / "report.xml", sections)
    root = ET.parse(path).getroot()
    assert root.tag == "testsuites"
    suites = {s.get("name"): s for s in root.findall("testsuite")}
    assert set(suites) == {"normonnx.verify", "normonnx.localize", "normonnx.bisect"}
    loc = suites["normonnx.localize"]
    cases = loc.findall("testcase")
    # one testcase per output and per checked layer (conv is folded with bn: one value, on bn)
    assert len(cases) == 1 + 7 == int(loc.get("tests"))
    names = [c.get("name") for c in cases if c.get("classname") == "localize.layers"]
    assert names == ["bn", "act", "gn", "conv2", "inorm", "ln", "fc"]
    failed = {c.get("name"): c.find("failure") for c in cases if c.find("failure") is not None}
    # the output and gn: layers after gn diverge only through their inputs (their own error passes)
    assert int(loc.get("failures")) == len(failed) == 1 + 1
    assert failed["gn"].get("message").startswith("FIRST DIVERGENCE: own error on torch's inputs: max_abs=")
    assert "conv" not in failed
    ver = suites["normonnx.verify"].findall("testcase")
    assert [(c.get("classname"), c.get("name")) for c in ver] == [
        ("verify.example", "linear"),
        ("verify.random0", "linear"),
    ]
    assert int(root.get("tests")) == sum(int(s.get("tests")) for s in suites.values())


def test_html_is_self_contained_with_plots(sections, tmp_path):
    path = write_html(tmp_path / "report.html", sections, final="FAILED | test")
    text = open(path, encoding="utf-8").read()
    assert text.startswith("<!doctype html>") and text.rstrip().endswith("</html>")
    assert "first divergence at module &#x27;gn&#x27;" in text
    pngs = re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", text)
    assert len(pngs) == 2  # error vs depth, histograms
    for b in pngs:
        raw = base64.b64decode(b)
        assert raw.startswith(PNG) and len(raw) > 5000
    assert "src='http" not in text and 'src="http' not in text  # nothing external


def test_html_without_matplotlib_names_the_extra(sections, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib → ImportError
    with pytest.raises(UnsupportedHere) as e:
        write_html(tmp_path / "r.html", sections)
    assert "normonnx[report]" in e.value.note
    assert e.value.exit_code == 3
    assert not (tmp_path / "r.html").exists()


def test_stress_and_precision_sections_are_strict_json_and_junit(net, x, exported, tmp_path):
    from normonnx.verify.precision import check_precision
    from normonnx.verify.stress import stress_model

    path = exported[18][0]
    sections = {
        "stress": stress_model(net, path, (x,), cases=("offset", "constant_channels")),
        "precision": check_precision(net, path, (x,)),
    }
    doc = json.loads(json.dumps(report_dict(sections), allow_nan=False))
    assert doc["passed"] is True
    assert [c["name"] for c in doc["stress"]["cases"]] == ["offset", "constant_channels"]
    assert doc["stress"]["cases"][0]["outputs"][0]["onnx_err"] < 1e-5
    assert doc["precision"]["dtype"] == "float16" and doc["precision"]["overflow_layers"] == []
    assert doc["precision"]["conversion"]["norms"] == "fp32"
    root = ET.parse(write_junit(tmp_path / "r.xml", sections)).getroot()
    suites = {s.get("name"): s for s in root.findall("testsuite")}
    assert suites["normonnx.stress"].get("tests") == "2" and suites["normonnx.stress"].get("failures") == "0"
    layers = [c for c in suites["normonnx.precision"].iter("testcase") if c.get("classname").endswith(".layers")]
    assert len(layers) == len(sections["precision"].layers) > 5


def test_passing_html_report_has_the_plots_and_names_nothing(exported, tmp_path, capsys):
    """A passing ``verify --html`` (no --localize) still carries error vs depth and histograms."""
    import os

    from normonnx.cli import main

    here = os.path.dirname(os.path.abspath(__file__))
    out = tmp_path / "ok.html"
    rc = main(
        ["verify", f"{here}/_faults.py:net_and_inputs", str(exported[18][0]), "--samples", "0", "--html", str(out)]
    )
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert rc == 0 and last.startswith("PASSED | equivalent") and "divergence" not in last
    text = out.read_text(encoding="utf-8")
    pngs = re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", text)
    assert len(pngs) == 2 and all(base64.b64decode(b).startswith(PNG) for b in pngs)
    assert "every checked module agrees" in text and "first divergence" not in text
    assert "own max_abs" in text and "needs atol" in text
