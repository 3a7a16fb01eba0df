"""The CLI through a subprocess, as a user or CI runs it: exit codes (0 ok, 1 mismatch, 2 usage,
3 unsupported here), the closing PASSED/FAILED line, JSON reports, and readable user errors
without tracebacks."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from normonnx.verify import tolerance

HERE = os.path.dirname(__file__)
TINY = os.path.join(HERE, "data", "tiny_models.py")


def cli(*args: str, cwd: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "normonnx.cli", *args], capture_output=True, text=True, timeout=300, cwd=cwd
    )


def last_line(p: subprocess.CompletedProcess[str]) -> str:
    return p.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "tiny.onnx"
    j = out.with_suffix(".json")
    p = cli(
        "export",
        f"{TINY}:all_norms",
        "-o",
        str(out),
        "--input",
        "x:2x3x8x8",
        "--dynamic",
        "batch,h,w",
        "--opset",
        "21",
        "--json",
        str(j),
    )
    assert p.returncode == 0, p.stderr + p.stdout
    assert last_line(p).startswith("PASSED | export")
    data = json.loads(j.read_text())
    assert data["fired"]["batchnorm.into_preceding"] == 1  # the BatchNorm after the Conv, folded into it
    assert data["opset"] == 21 and {r["kind"] for r in data["lowerings"]} == {
        "group",
        "instance",
        "layer",
        "rms",
    }
    return out


@pytest.mark.slow
def test_verify_equivalent_exit_0_with_json(exported, tmp_path):
    report = tmp_path / "r.json"
    p = cli("verify", f"{TINY}:all_norms", str(exported), "--input", "x:2x3x8x8", "--json", str(report))
    assert p.returncode == 0, p.stdout + p.stderr
    assert last_line(p).startswith("PASSED | equivalent")
    data = json.loads(report.read_text())
    assert data["passed"] is True
    names = [s["name"] for s in data["samples"]]
    assert names[0] == "example" and "second_size" in names  # dynamic axes were exercised
    out = data["samples"][0]["outputs"][0]
    assert set(out) >= {"max_abs", "max_rel", "rel_to_scale", "tolerance", "passed", "shape", "dtype"}
    assert out["max_abs"] < tolerance("float32").atol


@pytest.mark.slow
def test_verify_mismatch_exit_1(exported):
    p = cli("verify", f"{TINY}:all_norms_other_weights", str(exported), "--input", "x:2x3x8x8")
    assert p.returncode == 1
    assert last_line(p).startswith("FAILED | MISMATCH")
    assert "Traceback" not in p.stderr


def test_verify_per_output_tolerance_override_is_parsed(exported):
    p = cli(
        "verify",
        f"{TINY}:all_norms_other_weights",
        str(exported),
        "--input",
        "x:2x3x8x8",
        "--atol",
        "rms_norm:100",
        "--rtol",
        "0",
        "--samples",
        "0",
    )
    assert p.returncode == 0, p.stdout  # a huge per-output atol accepts the wrong weights
    assert "atol=100" in p.stdout


def test_inspect_lists_lowered_norms(exported):
    p = cli("inspect", str(exported), "--json", "-")
    assert p.returncode == 0
    info = json.loads(p.stdout[: p.stdout.rindex("}") + 1])
    # the BatchNorm after the Conv was folded into it at export: four norms remain, each lowered
    assert {r["kind"] for r in info["lowerings"]} == {"group", "instance", "layer", "rms"}
    assert len(info["lowered_norms"]) == 4


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["verify", f"{TINY}:all_norms", "/nonexistent/model.onnx", "--input", "x:2x3x8x8"], "no such ONNX file"),
        (["export", "no_such_module:factory", "-o", "x.onnx"], "cannot import module"),
        (["export", "not_a_model_name", "-o", "x.onnx"], "cannot resolve MODEL"),
        (["export", f"{TINY}:not_a_module", "-o", "x.onnx", "--input", "x:1x3x8x8"], "not a torch.nn.Module"),
        (["export", f"{TINY}:all_norms", "-o", "x.onnx", "--input", "x:1x5x8x8"], "rejected example inputs"),
        (["export", f"{TINY}:all_norms", "-o", "x.onnx", "--input", "x:1xfoo"], "bad shape"),
        (["export", f"{TINY}:all_norms_training", "-o", "x.onnx", "--input", "x:1x3x8x8"], "training mode"),
        (["export", f"{TINY}:all_norms", "-o", "x.onnx", "--input", "x:1x3x8x8", "--opset", "9"], "opset 9"),
    ],
    ids=[
        "missing-onnx",
        "bad-module",
        "bad-name",
        "not-module",
        "wrong-shape",
        "bad-shape-syntax",
        "training",
        "old-opset",
    ],
)
def test_user_errors_exit_2_without_traceback(args, needle, tmp_path):
    p = cli(*args, cwd=str(tmp_path))
    assert p.returncode == 2, p.stdout + p.stderr
    assert needle in p.stderr
    assert "Traceback" not in p.stderr
    assert last_line(p).startswith("FAILED |")
    assert not (tmp_path / "x.onnx").exists()


def test_truncated_onnx_exit_2(exported, tmp_path):
    bad = tmp_path / "trunc.onnx"
    bad.write_bytes(exported.read_bytes()[:200])
    p = cli("verify", f"{TINY}:all_norms", str(bad), "--input", "x:2x3x8x8")
    assert p.returncode == 2
    assert "truncated or corrupt" in p.stderr and "Traceback" not in p.stderr


def test_cuda_provider_unavailable_exit_3(exported):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this machine has the CUDA provider")
    p = cli("verify", f"{TINY}:all_norms", str(exported), "--input", "x:2x3x8x8", "--provider", "cuda")
    assert p.returncode == 3
    assert "CUDA execution provider is not available" in p.stderr and "normonnx[cuda]" in p.stderr
    assert last_line(p).startswith("FAILED | unsupported here")


def test_usage_error_exit_2():
    p = cli("export")
    assert p.returncode == 2 and last_line(p).startswith("FAILED | usage error")


def test_help_lists_commands():
    p = cli("--help")
    assert p.returncode == 0
    for c in ("export", "verify", "inspect", "zoo", "capabilities"):
        assert c in p.stdout
    assert "bisect (compare)" in p.stdout  # ONNX-vs-ONNX bisection, under its former name too


def _strict_json(text: str):
    def refuse(constant: str):
        raise AssertionError(f"non-standard JSON constant {constant}")

    return json.loads(text, parse_constant=refuse)


@pytest.mark.slow
@pytest.mark.parametrize(
    "command", ["verify", "optimize", "bisect", "compare", "doctor", "inspect", "export", "capabilities"]
)
def test_json_dash_writes_only_json_to_stdout(exported, tmp_path, command):
    """`normonnx CMD … --json - | python -c "import json,sys; json.load(sys.stdin)"` works: stdout
    (a pipe here, as in a shell) is one strict JSON document, and the human text is on stderr."""
    argv = {
        "verify": ["verify", f"{TINY}:all_norms", str(exported), "--input", "x:2x3x8x8"],
        "optimize": ["optimize", str(exported), "-o", str(tmp_path / "o.onnx"), "--input", "x:2x3x8x8"],
        "bisect": ["bisect", str(exported), "cpu:opt", "--input", "x:2x3x8x8"],
        "compare": ["compare", str(exported), "cpu:opt", "--input", "x:2x3x8x8"],  # bisect's alias
        "doctor": ["doctor"],
        "inspect": ["inspect", str(exported)],
        "export": ["export", f"{TINY}:all_norms", "-o", str(tmp_path / "e.onnx"), "--input", "x:2x3x8x8"],
        "capabilities": ["capabilities"],
    }[command]
    p = cli(*argv, "--json", "-")
    assert p.returncode == 0, p.stderr
    data = _strict_json(p.stdout)  # the whole of stdout is one strict JSON document
    assert data, p.stdout
    assert p.stderr.strip().splitlines()[-1].startswith("PASSED |")  # the human text went to stderr
    if command == "verify":
        assert data["passed"] is True and data["samples"][0]["name"] == "example"
    if command == "optimize":
        assert data["written"] is True and data["output"] == str(tmp_path / "o.onnx")
