"""``normonnx verify`` / ``normonnx compare`` as a user runs them: exit codes 0/1/2/3, the final
``PASSED | …`` / ``FAILED | …`` line, and the report files they write."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET

import onnx
import pytest
from _faults import plant_wrong_eps

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MODEL = os.path.join(ROOT, "tests", "verify", "_faults.py") + ":net_and_inputs"


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "normonnx.cli", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


def final(p: subprocess.CompletedProcess) -> str:
    return p.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def bad_path(exported, tmp_path_factory):
    path = tmp_path_factory.mktemp("cli") / "bad.onnx"
    onnx.save(plant_wrong_eps(exported[18][1], "group_norm", 1e-3)[0], path)
    return path


def test_equivalent_exit_0(exported):
    p = cli("verify", MODEL, exported[18][0], "--localize", "--samples", "1", "--threads", "1")
    assert p.returncode == 0, p.stdout + p.stderr
    assert final(p).startswith("PASSED | equivalent: net18.onnx on cpu")
    assert "every checked module agrees" in p.stdout


@pytest.mark.slow
def test_mismatch_exit_1_names_the_module_and_writes_reports(bad_path, tmp_path):
    j, x, h = tmp_path / "r.json", tmp_path / "r.xml", tmp_path / "r.html"
    p = cli("verify", MODEL, bad_path, "--samples", "1", "--json", j, "--junit", x, "--html", h)
    assert p.returncode == 1, p.stdout + p.stderr
    line = final(p)
    assert line.startswith("FAILED | MISMATCH: bad.onnx")
    assert "first divergence at module 'gn' (GroupNorm, group norm lowered as decomposed)" in line
    assert "<== first divergence" in p.stdout  # localized automatically on the mismatch
    doc = json.loads(j.read_text())
    assert doc["passed"] is False and doc["localize"]["culprit"]["name"] == "gn"
    assert [s["name"] for s in doc["samples"]] == ["example", "random0"]  # the verify document stays on top
    assert ET.parse(x).getroot().get("failures") != "0"
    assert h.stat().st_size > 20000


def test_usage_errors_exit_2(exported):
    p = cli("verify", MODEL, exported[18][0], "--check", "median")
    assert p.returncode == 2
    assert final(p) == "FAILED | inputs error: bad --check 'median'"
    assert "Note: use elementwise, max, mean or quantile:Q" in p.stderr
    assert "Traceback" not in p.stderr
    p = cli("verify", MODEL)  # argparse: ONNX missing
    assert p.returncode == 2 and final(p).startswith("FAILED | usage error:")


def test_cuda_exit_3(exported):
    p = cli("verify", MODEL, exported[18][0], "--provider", "cuda", "--samples", "0")
    assert p.returncode == 3, p.stdout + p.stderr
    assert final(p).startswith("FAILED | unsupported here: the CUDA execution provider is not available")


def test_compare_subcommand(exported, bad_path, tmp_path):
    p = cli("compare", exported[18][0], bad_path, "--junit", tmp_path / "c.xml")
    assert p.returncode == 1, p.stdout + p.stderr
    assert final(p).startswith("FAILED | first divergence at value 'node_group_norm/add_")  # var + ε
    assert "in module 'gn', group norm lowered as decomposed" in final(p)
    cases = ET.parse(tmp_path / "c.xml").getroot().iter("testcase")
    assert sum(1 for _ in cases) > 30  # one per shared value (39 after BatchNorm folding)
    p = cli("compare", exported[18][0], "cpu:opt")
    assert p.returncode == 0 and final(p).startswith("PASSED | ")
