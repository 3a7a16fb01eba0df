"""Every bad input of README "Bad input: what you get", as a user gives it, through the real CLI.

Each row asserts the exit code (2 usage, 3 unsupported here, 4 internal), that no traceback is
printed, and the message's key words. ``run`` calls ``normonnx.cli.main`` in-process (capsys);
``sub`` runs ``python -m normonnx.cli`` where a library logger, a pipe or stdout itself matters.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from normonnx.cli import main

HERE = os.path.dirname(__file__)
TINY = os.path.join(HERE, "data", "tiny_models.py")
LN = f"{TINY}:layer_norm"


def run(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def sub(*argv: str, **kw) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "normonnx.cli", *argv], capture_output=True, text=True, timeout=300, **kw
    )


def assert_user_error(rc: int, out: str, err: str, code: int, *words: str) -> None:
    assert rc == code, out + err
    assert "Traceback" not in err and "Traceback" not in out
    text = out + err
    for w in words:
        assert w in text, f"{w!r} not in:\n{text}"
    assert (out or err).strip().splitlines()[-1].startswith("FAILED |")


@pytest.fixture(scope="module")
def ln_onnx(tmp_path_factory):
    """LayerNorm(8) exported by normonnx, input x: 2x8 float32."""
    import torch

    from normonnx.exporter import export

    sys.path.insert(0, os.path.dirname(TINY))
    import tiny_models

    path = tmp_path_factory.mktemp("bad") / "ln.onnx"
    export(tiny_models.layer_norm(), (torch.randn(2, 8),), path)
    return path


def _model(tmp_path, name: str, nodes, inits=(), opsets=(("", 20),)) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 8])
    g = helper.make_graph(nodes, name, [x], [y], initializer=list(inits))
    return helper.make_model(g, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets])


@pytest.fixture
def custom_op_onnx(tmp_path):
    """A valid file whose only node is acme.FancyNorm: onnx accepts it, onnxruntime has no such op."""
    m = _model(
        tmp_path, "custom", [helper.make_node("FancyNorm", ["x"], ["y"], domain="acme")], opsets=(("", 20), ("acme", 1))
    )
    onnx.checker.check_model(m)
    path = tmp_path / "custom.onnx"
    onnx.save(m, path)
    return path


@pytest.fixture
def missing_data_onnx(tmp_path):
    """y = x + w with w in ext.onnx.data, which is then deleted."""
    w = numpy_helper.from_array(np.ones((2, 8), np.float32), "w")
    m = _model(tmp_path, "ext", [helper.make_node("Add", ["x", "w"], ["y"])], inits=[w])
    path = tmp_path / "ext.onnx"
    onnx.save(m, path, save_as_external_data=True, location="ext.onnx.data", size_threshold=0)
    os.unlink(tmp_path / "ext.onnx.data")
    return path


@pytest.fixture(scope="module")
def f64_onnx(tmp_path_factory):
    """The all-norms model in float64: valid ONNX, but onnxruntime CPU has no float64 Conv."""
    from normonnx.exporter import export

    sys.path.insert(0, os.path.dirname(TINY))
    import tiny_models

    model, x = tiny_models.all_norms_float64()
    path = tmp_path_factory.mktemp("f64") / "f64.onnx"
    export(model, (x,), path, opset=21)
    return path


@contextlib.contextmanager
def tmpfs(path, options: str):
    """A small tmpfs at ``path`` (root only); skips with the reason where it cannot be mounted."""
    os.makedirs(path, exist_ok=True)
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True, text=True)
    if p.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {p.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=True)


# ------------------------------------------------------------------------------------------------
# inputs that do not fit the model


def test_compare_wrong_input_shape(capsys, ln_onnx):
    rc, out, err = run(capsys, "compare", str(ln_onnx), "cpu:opt", "--input", "x:2x9")
    assert_user_error(
        rc, out, err, 2, "onnxruntime rejected the inputs", "axis 1 must be 8", "Note: the model expects x:[2, 8]"
    )


def test_compare_wrong_input_dtype(capsys, ln_onnx):
    rc, out, err = run(capsys, "compare", str(ln_onnx), "cpu:opt", "--input", "x:2x8:int64")
    assert_user_error(rc, out, err, 2, "is tensor(int64), the model expects tensor(float)")


def test_huge_input_is_an_input_error(capsys):
    rc, out, err = run(capsys, "verify", LN, "ln.onnx", "--input", "x:100000x100000x1000")
    assert_user_error(rc, out, err, 2, "GiB", "more than this machine can allocate", "Note:")


def test_batch_0_refused_before_export(capsys, tmp_path):
    rc, out, err = run(capsys, "export", f"{TINY}:layer_norm_batch0", "-o", str(tmp_path / "b.onnx"))
    assert_user_error(rc, out, err, 2, "zero-size dimension", "batch 1 or more")
    assert not (tmp_path / "b.onnx").exists() and "exported ->" not in out


def test_bf16_model_in_verify_is_unsupported_here(capsys, tmp_path):
    path = tmp_path / "bf.onnx"
    rc, out, err = run(capsys, "export", f"{TINY}:layer_norm_bf16", "-o", str(path))
    assert rc == 0 and "check skipped" in out  # the export itself works
    assert onnx.load(path).graph.input[0].type.tensor_type.elem_type == TensorProto.BFLOAT16
    rc, out, err = run(capsys, "verify", f"{TINY}:layer_norm_bf16", str(path))
    assert_user_error(rc, out, err, 3, "bfloat16", "--bf16", "FAILED | unsupported here")


def test_model_spec_with_empty_module(capsys, tmp_path):
    rc, out, err = run(capsys, "export", ":factory", "-o", str(tmp_path / "x.onnx"))
    assert_user_error(rc, out, err, 2, "cannot import module ''", "package.module:factory")


# ------------------------------------------------------------------------------------------------
# flags


@pytest.mark.parametrize("command", ["export", "optimize"])
def test_unknown_strategy_names_the_valid_ones(capsys, tmp_path, ln_onnx, command):
    src = LN if command == "export" else str(ln_onnx)
    extra = ["--input", "x:2x8"] if command == "export" else []
    rc, out, err = run(capsys, command, src, "-o", str(tmp_path / "o.onnx"), *extra, "--strategy", "nope")
    assert_user_error(rc, out, err, 2, "unknown --strategy 'nope'", "valid strategies: native,", "native_kernel")
    assert not (tmp_path / "o.onnx").exists()


def test_optimize_input_name_not_in_model(capsys, tmp_path, ln_onnx):
    rc, out, err = run(capsys, "optimize", str(ln_onnx), "-o", str(tmp_path / "o.onnx"), "--input", "y:2x8")
    assert_user_error(rc, out, err, 2, "--input names y, not an input of", "Note: its inputs: x")
    assert not (tmp_path / "o.onnx").exists()


@pytest.mark.parametrize(
    "argv",
    [
        ["verify", LN, "m.onnx", "--samples", "-3"],
        ["verify", LN, "m.onnx", "--threads", "-1"],
        ["compare", "m.onnx", "cpu:opt", "--threads", "0"],
        ["optimize", "m.onnx", "-o", "o.onnx", "--samples", "-1"],
        ["verify", LN, "m.onnx", "--threads", "abc"],
    ],
    ids=["samples", "threads", "compare-threads", "optimize-samples", "threads-abc"],
)
def test_negative_counts_are_usage_errors(capsys, argv):
    with pytest.raises(SystemExit) as e:
        main(argv)
    cap = capsys.readouterr()
    assert e.value.code == 2
    assert "is below" in cap.err or "is not an integer" in cap.err
    assert cap.out.strip().splitlines()[-1].startswith("FAILED | usage error")


def test_bad_check_statistic(capsys, ln_onnx):
    rc, out, err = run(capsys, "verify", LN, str(ln_onnx), "--input", "x:2x8", "--check", "median")
    assert_user_error(rc, out, err, 2, "bad --check 'median'", "quantile:Q")


def test_verify_api_check_median_is_an_input_error(ln_onnx):
    import torch

    from normonnx.errors import InputError
    from normonnx.verify.api import verify

    sys.path.insert(0, os.path.dirname(TINY))
    import tiny_models

    with pytest.raises(InputError, match="bad check 'median'"):
        verify(tiny_models.layer_norm(), ln_onnx, (torch.randn(2, 8),), check="median")


def test_no_subcommand_prints_help_and_a_closing_line(capsys):
    rc, out, _ = run(capsys)
    assert rc == 2 and "usage: normonnx" in out and "Exit codes: 0 ok" in out
    assert out.strip().splitlines()[-1] == "FAILED | usage error: no command"


# ------------------------------------------------------------------------------------------------
# files that cannot be read


def test_text_file_as_pt2_without_torch_traceback(tmp_path):
    bad = tmp_path / "model.pt2"
    bad.write_text("hello\n")
    p = sub("export", str(bad), "-o", str(tmp_path / "x.onnx"), "--input", "x:2x8")
    assert_user_error(p.returncode, p.stdout, p.stderr, 2, "is not a readable torch.export archive")
    assert "W1" not in p.stderr and "torch/export" not in p.stderr  # torch's logger stayed quiet


def test_directory_as_onnx_file(capsys, tmp_path):
    rc, out, err = run(capsys, "verify", LN, str(tmp_path), "--input", "x:2x8")
    assert_user_error(rc, out, err, 2, "is a directory")


def test_unknown_custom_op_is_not_called_corrupt(capsys, custom_op_onnx):
    rc, out, err = run(capsys, "verify", LN, str(custom_op_onnx), "--input", "x:2x8")
    assert_user_error(rc, out, err, 2, "is a valid ONNX model, but onnxruntime", "has no kernel for op acme:FancyNorm")
    assert "corrupt" not in err


def test_missing_external_data_names_the_file(capsys, missing_data_onnx):
    rc, out, err = run(capsys, "verify", LN, str(missing_data_onnx), "--input", "x:2x8")
    assert_user_error(rc, out, err, 2, "its external data file", "ext.onnx.data is missing")


def test_float64_model_is_unsupported_here(capsys, f64_onnx):
    rc, out, err = run(capsys, "compare", str(f64_onnx), "cpu:opt")
    assert_user_error(rc, out, err, 3, "no kernel for Conv", "float32")


def test_onnxruntime_load_failures_are_told_apart(custom_op_onnx, missing_data_onnx, f64_onnx, tmp_path):
    """The session's classifier, on the real errors onnxruntime raises for each file."""
    from normonnx.errors import ModelLoadError, UnsupportedHere
    from normonnx.runtime import session

    trunc = tmp_path / "trunc.onnx"
    trunc.write_bytes(f64_onnx.read_bytes()[:100])
    expected = {
        custom_op_onnx: (ModelLoadError, "has no kernel for op acme:FancyNorm"),
        missing_data_onnx: (ModelLoadError, f"its external data file {tmp_path / 'ext.onnx.data'} is missing"),
        f64_onnx: (UnsupportedHere, "no kernel for Conv"),
        trunc: (ModelLoadError, "truncated or corrupt"),
    }
    for path, (cls, words) in expected.items():
        with pytest.raises(cls) as e:
            session(path)
        assert words in e.value.message, (path, e.value)
        assert e.value.exit_code == (3 if cls is UnsupportedHere else 2)


def test_session_api_refuses_directory_and_bad_threads(tmp_path, ln_onnx):
    from normonnx.errors import InputError, ModelLoadError
    from normonnx.runtime import session

    with pytest.raises(ModelLoadError, match="is a directory"):
        session(tmp_path)
    with pytest.raises(InputError, match="threads"):
        session(ln_onnx, threads="abc")


def test_model_returning_none(capsys, tmp_path):
    rc, out, err = run(capsys, "export", f"{TINY}:returns_none", "-o", str(tmp_path / "n.onnx"))
    assert_user_error(rc, out, err, 2, "the model returns no tensor outputs")


def test_export_api_opset_as_string(tmp_path):
    import torch

    from normonnx.exporter import export

    sys.path.insert(0, os.path.dirname(TINY))
    import tiny_models

    res = export(tiny_models.layer_norm(), (torch.randn(2, 8),), tmp_path / "o.onnx", opset="20")
    assert res.opset == 20


# ------------------------------------------------------------------------------------------------
# outputs that cannot be written: refused before any work


def test_output_is_a_directory(capsys, tmp_path):
    rc, out, err = run(capsys, "export", LN, "--input", "x:2x8", "-o", str(tmp_path))
    assert_user_error(rc, out, err, 2, "-o", "is a directory", "FAILED | output error")
    assert "exported ->" not in out


@pytest.mark.parametrize("flag", ["--json", "--junit", "--markdown"])
def test_report_into_missing_directory_fails_before_work(capsys, tmp_path, ln_onnx, flag):
    target = str(tmp_path / "nodir" / "r.out")
    argv = {
        "--json": ["export", LN, "--input", "x:2x8", "-o", str(tmp_path / "x.onnx"), "--json", target],
        "--junit": ["verify", LN, str(ln_onnx), "--input", "x:2x8", "--junit", target],
        "--markdown": ["bench", "ops", "--quick", "--markdown", target],
    }[flag]
    rc, out, err = run(capsys, *argv)
    assert_user_error(rc, out, err, 2, flag, "does not exist", "mkdir -p")
    assert "exported ->" not in out and "latency" not in out  # nothing ran
    assert not (tmp_path / "x.onnx").exists() and not (tmp_path / "nodir").exists()


def test_output_same_as_input(capsys, ln_onnx):
    rc, out, err = run(capsys, "optimize", str(ln_onnx), "-o", str(ln_onnx))
    assert_user_error(rc, out, err, 2, "is the input file", "writing it would destroy the input")


def test_output_on_read_only_file_system(capsys, tmp_path):
    with tmpfs(tmp_path / "ro", "size=64k,ro") as ro:
        rc, out, err = run(capsys, "export", LN, "--input", "x:2x8", "-o", str(ro / "x.onnx"))
    assert_user_error(rc, out, err, 2, "cannot write", "read-only file system")


def test_disk_full(capsys, tmp_path, ln_onnx):
    with tmpfs(tmp_path / "full", "size=64k") as full:
        with open(full / "fill", "wb", buffering=0) as f, contextlib.suppress(OSError):
            while True:  # until ENOSPC
                f.write(b"\0" * 4096)
        rc, out, err = run(capsys, "verify", LN, str(ln_onnx), "--input", "x:2x8", "--json", str(full / "r.json"))
        left = sorted(os.listdir(full))
    assert_user_error(rc, out, err, 2, "no space left on device writing", "r.json", "Note: free space")
    assert left == ["fill"]  # no temp file left behind


# ------------------------------------------------------------------------------------------------
# the CLI's own contract


def test_internal_error_keeps_traceback_and_exit_4(capsys, monkeypatch):
    """A bug (here: a command raising ZeroDivisionError) is not a mismatch (1) nor a user error."""
    from normonnx.commands import capabilities

    def broken(args):
        return 1 / 0

    monkeypatch.setattr(capabilities, "run", broken)
    rc, out, err = run(capsys, "capabilities")
    assert rc == 4 and "Traceback" in err and "ZeroDivisionError" in err
    assert out.strip().splitlines()[-1].startswith("FAILED | internal error")


@pytest.mark.parametrize("command", ["capabilities", "doctor"])
def test_closed_pipe_ends_quietly(command):
    p = subprocess.Popen(
        [sys.executable, "-m", "normonnx.cli", command], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    p.stdout.close()  # the reader is gone before the first line, like `| head -0`
    err = p.stderr.read().decode()
    assert p.wait(timeout=300) == 141
    assert "BrokenPipeError" not in err and "Traceback" not in err


def test_capabilities_table_shows_limits_and_no_cuda_kernel_rows(capsys):
    rc, out, _ = run(capsys, "capabilities", "--provider", "cpu", "--provider", "cuda")
    assert rc == 0
    rows = [line.split() for line in out.splitlines()]
    native = {(r[0], r[2]): r[4] for r in rows if len(r) > 4 and r[1] == "native"}
    assert native[("layer", "cpu")] == native[("rms", "cuda")] == "<=4096"  # stable_up_to, not plain "yes"
    assert native[("batch", "cpu")] == "yes" and native[("group", "cpu")] == "no"
    assert not [r for r in rows if len(r) > 2 and r[1] == "native_kernel" and r[2] == "cuda"]
    assert [r for r in rows if len(r) > 2 and r[1] == "native_kernel" and r[2] == "cpu"]
    with pytest.raises(SystemExit):
        main(["capabilities", "--help"])
    assert "--spec" not in capsys.readouterr().out


def test_strict_json_encodes_non_finite_as_strings():
    from normonnx.commands import dumps

    text = dumps({"a": float("inf"), "b": [float("nan"), -float("inf")], "c": np.float32(1.5), "d": np.arange(2)})
    assert json.loads(text, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}")) == {
        "a": "Infinity",
        "b": ["NaN", "-Infinity"],
        "c": 1.5,
        "d": [0, 1],
    }
