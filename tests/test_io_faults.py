"""Fault injection for normonnx's writes (io.save, io.write_bytes, exporter.export): nothing lost, ever.

Each case sets up a previous model (pair) at the target and records its outputs in onnxruntime,
then breaks a write for real -- a SIGKILL after each step of the protocol (a subprocess with
NORMONNX_TEST_KILL_AT), a full tmpfs, a read-only mount, a missing directory, an input as the
output, symlinks -- and checks that the previous file pair still loads and gives its *old*
outputs (or, past the commit point, the new pair gives the new ones), and that no temp file is
left (for the kill cases: after the next write, which sweeps them).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import stat
import subprocess
import sys
import time

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from normonnx import io as nio
from normonnx.errors import ModelLoadError, OutputError
from normonnx.runtime import session

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
N = 64
X = np.random.default_rng(0).standard_normal((2, N)).astype(np.float32)


def make_model(seed: int, n: int = N) -> onnx.ModelProto:
    """y = LayerNormalization(x @ W) * gamma + beta, weights drawn from ``seed``."""
    rng = np.random.default_rng(seed)
    inits = [
        numpy_helper.from_array(rng.standard_normal((n, n)).astype(np.float32), "W"),
        numpy_helper.from_array((1 + rng.standard_normal(n)).astype(np.float32), "gamma"),
        numpy_helper.from_array(rng.standard_normal(n).astype(np.float32), "beta"),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "W"], ["h"]),
        helper.make_node("LayerNormalization", ["h", "gamma", "beta"], ["y"], axis=-1, epsilon=1e-5),
    ]
    g = helper.make_graph(
        nodes,
        "ln",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, n])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, n])],
        inits,
    )
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)


def outputs(path: str | os.PathLike[str], n: int = N) -> np.ndarray:
    x = X if n == N else np.random.default_rng(0).standard_normal((2, n)).astype(np.float32)
    (y,) = session(os.fspath(path), optimize=False).run([x])
    return y


def listing(d: str | os.PathLike[str]) -> list[str]:
    return sorted(os.listdir(d))


@pytest.fixture(scope="module")
def new_model_file(tmp_path_factory):
    """The model a killed subprocess was writing, as a file it can read (outside the targets)."""
    p = tmp_path_factory.mktemp("src") / "new.onnx"
    onnx.save(make_model(2), p)
    return p


def assert_previous_intact(target, old_outputs, old_listing):
    assert listing(target.parent) == old_listing  # same files, no temp left, no new data file
    np.testing.assert_array_equal(outputs(target), old_outputs)


# ---------------------------------------------------------------------------------------------
# kill -9 after each step of a save

# (step, external data, state after the kill: "old" pair or "new" pair, files left to sweep)
KILL_CASES = [
    ("model_partial", False, "old", True),
    ("model_written", False, "old", True),
    ("model_renamed", False, "new", False),
    ("data_partial", True, "old", True),
    ("data_written", True, "old", True),
    ("model_partial", True, "old", True),
    ("model_written", True, "old", True),
    ("data_renamed", True, "old", True),  # the old model must not read the new data here
    ("model_renamed", True, "new", True),  # committed; the old data file is not removed yet
    ("done", True, "new", False),
]


def test_kill_cases_cover_every_step():
    assert {c[0] for c in KILL_CASES if c[1]} == set(nio._STEPS)
    assert {c[0] for c in KILL_CASES if not c[1]} == set(nio._STEPS) - {
        "data_partial",
        "data_written",
        "data_renamed",
        "done",
    }


@pytest.mark.parametrize(
    ("step", "external", "state", "leftovers"),
    KILL_CASES,
    ids=[f"{s}-{'external' if e else 'inline'}" for s, e, _, _ in KILL_CASES],
)
def test_kill_9_at_each_step_keeps_one_whole_pair(tmp_path, new_model_file, step, external, state, leftovers):
    d = tmp_path / "out"
    d.mkdir()
    target = d / "m.onnx"
    nio.save(make_model(1), target, external_data=external)
    old_out, old_files = outputs(target), listing(d)
    new_out = outputs(new_model_file)
    assert np.abs(new_out - old_out).max() > 0.5  # the two pairs are told apart by their outputs

    env = dict(os.environ, NORMONNX_TEST_KILL_AT=step, PYTHONPATH=ROOT)
    code = "import sys, onnx; from normonnx import io; io.save(onnx.load(sys.argv[1]), sys.argv[2], external_data=sys.argv[3] == '1')"
    p = subprocess.run(
        [sys.executable, "-c", code, str(new_model_file), str(target), "1" if external else "0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == -9, p.stderr  # really killed at that step

    np.testing.assert_array_equal(outputs(target), old_out if state == "old" else new_out)
    if state == "old" and external:
        assert nio.external_data_files(target) == [str(d / f) for f in old_files if f.endswith(".data")]
    left = sorted(set(listing(d)) - {"m.onnx", *(os.path.basename(f) for f in nio.external_data_files(target))})
    assert bool(left) == leftovers, left

    # the next write sweeps what the killed one left and commits normally
    nio.save(make_model(3), target, external_data=external)
    (data,) = nio.external_data_files(target) if external else (None,)
    assert listing(d) == sorted(["m.onnx", *([os.path.basename(data)] if data else [])])
    np.testing.assert_array_equal(outputs(target), outputs_of(make_model(3)))


def outputs_of(model: onnx.ModelProto) -> np.ndarray:
    (y,) = session(model, optimize=False).run([X])
    return y


def test_sweep_removes_only_our_stale_names(tmp_path):
    d = tmp_path
    target = d / "m.onnx"
    nio.save(make_model(1), target, external_data=True)
    (current,) = nio.external_data_files(target)
    past = time.time() - 3600
    stale = [
        ".m.onnx.ab12cd_9.tmp",  # tempfile.mkstemp name of earlier versions
        ".m.onnx.ab12cd_9.tmp.data",  # and its data file
        ".m.onnx.999999999-0123abcd.tmp",  # ours, from a process that is gone
        ".m.onnx.999999999-0123abcd.data.tmp",
        "m.onnx.deadbeef.data",  # renamed data that no model names
    ]
    kept = [
        f".m.onnx.{os.getpid()}-0123abcd.tmp",  # a write of a live process (this one)
        ".other.onnx.ab12cd_9.tmp",  # another target's temp
        "other.onnx.deadbeef.data",
        "m.onnx.data.bak",
        "weights.bin",
    ]
    for name in stale + kept:
        (d / name).write_bytes(b"x")
        os.utime(d / name, (past, past))
    fresh = d / "m.onnx.feedf00d.data"  # newer than the write below: perhaps a concurrent one
    fresh.write_bytes(b"x")
    os.utime(fresh, (time.time() + 60, time.time() + 60))

    nio.save(make_model(2), target, external_data=True)
    (new,) = nio.external_data_files(target)
    assert new != current  # a name unique to the write
    assert listing(d) == sorted(["m.onnx", os.path.basename(new), fresh.name, *kept])


def test_overwrite_removes_the_previous_data_file_named_by_normonnx_only(tmp_path):
    target = tmp_path / "m.onnx"
    # a model written by another tool, reading "weights.bin": that file may be shared, keep it
    onnx.save(make_model(1), target, save_as_external_data=True, location="weights.bin", size_threshold=0)
    nio.save(make_model(2), target, external_data=True)
    assert "weights.bin" in listing(tmp_path)
    # torch.onnx / earlier normonnx name it m.onnx.data: that one goes with its model
    onnx.save(make_model(1), target, save_as_external_data=True, location="m.onnx.data", size_threshold=0)
    nio.save(make_model(2), target)
    assert listing(tmp_path) == ["m.onnx", "weights.bin"]
    np.testing.assert_array_equal(outputs(target), outputs_of(make_model(2)))


def test_a_model_without_its_data_file_says_so(tmp_path):
    target = tmp_path / "m.onnx"
    nio.save(make_model(1), target, external_data=True)
    (data,) = nio.external_data_files(target)
    os.unlink(data)  # copied without its data file
    with pytest.raises(
        ModelLoadError, match=f"names the external data file {os.path.basename(data)}, which is missing"
    ):
        nio.load(target)


# ---------------------------------------------------------------------------------------------
# disk full, read-only, missing directory


@contextlib.contextmanager
def tmpfs(d, size: str):
    """A small tmpfs at ``d`` (root only; skip with the reason otherwise)."""
    d.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (CI runs these as root)")
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(d)], capture_output=True, text=True)
    if p.returncode != 0:
        pytest.skip(f"mount -t tmpfs not permitted here: {p.stderr.strip()}")
    try:
        yield d
    finally:
        subprocess.run(["umount", str(d)], check=True)


@pytest.mark.parametrize("external", [False, True], ids=["inline", "external"])
def test_disk_full_is_an_output_error_and_the_previous_pair_is_untouched(tmp_path, external):
    with tmpfs(tmp_path / "small", "256k") as d:
        target = d / "m.onnx"
        nio.save(make_model(1), target, external_data=external)  # 16 KB of weights: fits
        old_out, old_files = outputs(target), listing(d)
        big = make_model(2, n=320)  # 400 KB of weights: does not
        with pytest.raises(OutputError) as e:
            nio.save(big, target, external_data=external)
        assert str(e.value).startswith(f"no space left on device writing {target}; the previous file is untouched")
        assert e.value.exit_code == 2 and "Note: free space" in str(e.value)
        assert_previous_intact(target, old_out, old_files)
        # a new file on a full disk: nothing is left behind either
        with pytest.raises(OutputError, match="nothing was written"):
            nio.save(big, d / "other.onnx", external_data=external)
        assert listing(d) == old_files


def test_read_only_directory_is_refused_before_writing(tmp_path):
    d = tmp_path / "ro"
    if os.geteuid() == 0:  # chmod does not stop root: a tmpfs remounted read-only does
        ctx = tmpfs(d, "1m")
    else:
        d.mkdir()
        ctx = contextlib.nullcontext(d)
    with ctx:
        target = d / "m.onnx"
        nio.save(make_model(1), target)
        old_out, old_files = outputs(target), listing(d)
        if os.geteuid() == 0:
            subprocess.run(["mount", "-o", "remount,ro", str(d)], check=True)
            reason = "is on a read-only file system"
        else:
            d.chmod(0o555)
            reason = "no write permission in"
        try:
            with pytest.raises(OutputError, match=reason) as e:
                nio.save(make_model(2), target)
            assert e.value.exit_code == 2
            with pytest.raises(OutputError, match=reason):
                nio.check_report_path(d / "report.json")
            assert_previous_intact(target, old_out, old_files)
        finally:
            if os.geteuid() != 0:
                d.chmod(0o755)


def test_missing_directory_and_directory_path_are_refused_and_nothing_created(tmp_path):
    missing = tmp_path / "no" / "such"
    with pytest.raises(OutputError, match=re.escape(f"the directory {missing} does not exist")) as e:
        nio.save(make_model(1), missing / "m.onnx")
    assert f"mkdir -p {missing}" in e.value.note
    assert not (tmp_path / "no").exists()  # not created on the way
    with pytest.raises(OutputError, match="is a directory"):
        nio.save(make_model(1), tmp_path)
    with pytest.raises(OutputError, match="does not exist"):
        nio.write_bytes(missing / "r.json", "{}")
    with pytest.raises(OutputError, match="does not exist"):
        nio.check_report_path(missing / "r.xml")
    nio.check_report_path("-")  # stdout and "not given" always pass
    nio.check_report_path(None)
    assert listing(tmp_path) == []


def test_output_equal_to_an_input_is_refused_also_through_links(tmp_path):
    src = tmp_path / "a.onnx"
    nio.save(make_model(1), src)
    old = outputs(src)
    os.link(src, tmp_path / "hard.onnx")
    os.symlink(src, tmp_path / "soft.onnx")
    for out in (src, tmp_path / "hard.onnx", tmp_path / "soft.onnx"):
        with pytest.raises(OutputError, match="is the input file"):
            nio.check_output_path(out, inputs=[str(src)])
    assert nio.check_output_path(tmp_path / "b.onnx", inputs=[src, None]) == str(tmp_path / "b.onnx")
    np.testing.assert_array_equal(outputs(src), old)


# ---------------------------------------------------------------------------------------------
# symlinks and permissions


def test_symlink_is_written_through_and_kept(tmp_path):
    real = tmp_path / "v1.onnx"
    nio.save(make_model(1), real, external_data=True)
    link = tmp_path / "latest.onnx"
    link.symlink_to("v1.onnx")
    nio.save(make_model(2), link, external_data=True)
    assert os.readlink(link) == "v1.onnx"  # still a link, to the same file
    new = outputs_of(make_model(2))
    np.testing.assert_array_equal(outputs(link), new)
    np.testing.assert_array_equal(outputs(real), new)
    (data,) = nio.external_data_files(real)
    assert listing(tmp_path) == sorted(["latest.onnx", "v1.onnx", os.path.basename(data)])
    assert os.path.basename(data).startswith("v1.onnx.")  # named after the file, not the link

    dangling = tmp_path / "next.onnx"
    dangling.symlink_to("v2.onnx")
    nio.save(make_model(3), dangling)
    assert os.path.islink(dangling) and os.path.isfile(tmp_path / "v2.onnx")


def test_symlink_into_another_directory_refuses_external_data_only(tmp_path):
    (tmp_path / "store").mkdir()
    real = tmp_path / "store" / "m.onnx"
    nio.save(make_model(1), real)
    link = tmp_path / "m.onnx"
    link.symlink_to(real)
    old_out = outputs(link)
    with pytest.raises(OutputError, match=r"symlink to .* in another directory"):
        nio.save(make_model(2), link, external_data=True)
    assert listing(tmp_path / "store") == ["m.onnx"]
    np.testing.assert_array_equal(outputs(link), old_out)
    nio.save(make_model(2), link)  # inline: written through
    assert os.path.islink(link)
    np.testing.assert_array_equal(outputs(real), outputs_of(make_model(2)))


@contextlib.contextmanager
def umask(mask: int):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def mode(p) -> int:
    return stat.S_IMODE(os.stat(p).st_mode)


def test_new_files_follow_the_umask_and_overwrites_keep_the_mode(tmp_path):
    with umask(0o022):
        nio.save(make_model(1), tmp_path / "a.onnx", external_data=True)
        nio.write_bytes(tmp_path / "r.json", "{}")
    (data,) = nio.external_data_files(tmp_path / "a.onnx")
    assert (mode(tmp_path / "a.onnx"), mode(data), mode(tmp_path / "r.json")) == (0o644, 0o644, 0o644)
    with umask(0o077):
        nio.save(make_model(1), tmp_path / "b.onnx")
    assert mode(tmp_path / "b.onnx") == 0o600

    os.chmod(tmp_path / "a.onnx", 0o640)
    with umask(0o022):
        nio.save(make_model(2), tmp_path / "a.onnx", external_data=True)
    (data,) = nio.external_data_files(tmp_path / "a.onnx")
    assert (mode(tmp_path / "a.onnx"), mode(data)) == (0o640, 0o640)


# ---------------------------------------------------------------------------------------------
# exporter.export: a failed export never deletes the user's file


@pytest.fixture(scope="module")
def torch_model():
    import torch

    class Tiny(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = torch.nn.Linear(8, 8)
            self.ln = torch.nn.LayerNorm(8)
            self.calls = 0

        def forward(self, x):
            self.calls += 1
            return self.ln(self.lin(x))

    torch.manual_seed(0)
    return Tiny().eval(), torch.randn(2, 8)


@pytest.fixture
def exported(torch_model, tmp_path):
    from normonnx.exporter import export

    model, x = torch_model
    target = tmp_path / "m.onnx"
    export(model, (x,), target, opset=18)
    (y,) = session(str(target), optimize=False).run([x.numpy()])
    return target, y, target.read_bytes()


def test_failed_exports_keep_the_previous_model(torch_model, exported):
    import torch

    from normonnx.errors import ExportError, InputError, NormOnnxError
    from normonnx.exporter import export

    model, x = torch_model
    target, y_old, old_bytes = exported
    failures = [
        (lambda: export(model, (torch.randn(2, 5),), target), InputError),  # wrong shape
        (lambda: export(model, (x,), target, opset=99), NormOnnxError),
        (lambda: export(model.train(), (x,), target), ExportError),
    ]
    for run, cls in failures:
        with pytest.raises(cls) as e:
            run()
        model.eval()
        assert f"{target} still holds the previous model, unchanged" in str(e.value)
        assert target.read_bytes() == old_bytes
    assert listing(target.parent) == ["m.onnx"]
    (y,) = session(str(target), optimize=False).run([x.numpy()])
    np.testing.assert_array_equal(y, y_old)


def test_ctrl_c_during_export_keeps_the_previous_model(exported):
    import signal

    import torch

    from normonnx.exporter import export

    class Interrupted(torch.nn.Module):
        def forward(self, x):
            signal.raise_signal(signal.SIGINT)  # a real SIGINT: Python's handler raises KeyboardInterrupt
            return x

    target, _, old_bytes = exported
    with pytest.raises(KeyboardInterrupt):
        export(Interrupted().eval(), (torch.randn(2, 8),), target)
    assert target.read_bytes() == old_bytes and listing(target.parent) == ["m.onnx"]


def test_export_refuses_bad_output_paths_before_any_work(torch_model, tmp_path):
    from normonnx.exporter import export

    model, x = torch_model
    before = model.calls
    with pytest.raises(OutputError, match="does not exist"):
        export(model, (x,), tmp_path / "missing" / "m.onnx")
    with pytest.raises(OutputError, match="is a directory"):
        export(model, (x,), tmp_path)
    assert model.calls == before  # the model never ran
    assert listing(tmp_path) == []


def test_export_refuses_to_overwrite_the_model_source(tmp_path):
    """``-o model.py`` pointing at the file that defines the model: refused, the source kept."""
    src = tmp_path / "mymodel.py"
    src.write_text(
        "import torch\n\nclass M(torch.nn.Module):\n    def forward(self, x):\n        return torch.relu(x)\n"
    )
    spec = importlib.util.spec_from_file_location("mymodel_for_io_faults", src)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
        import torch

        from normonnx.exporter import export

        text = src.read_text()
        with pytest.raises(OutputError, match="is the input file"):
            export(module.M().eval(), (torch.randn(2, 3),), src)
        assert src.read_text() == text
    finally:
        del sys.modules[spec.name]


def test_export_onto_a_full_disk_keeps_the_previous_model(torch_model, tmp_path):
    import torch

    from normonnx.exporter import export

    model, x = torch_model
    with tmpfs(tmp_path / "small", "256k") as d:
        target = d / "m.onnx"
        export(model, (x,), target, opset=18)
        old_bytes = target.read_bytes()
        big = torch.nn.Sequential(torch.nn.Linear(8, 300), torch.nn.LayerNorm(300), torch.nn.Linear(300, 300)).eval()
        with pytest.raises(OutputError, match=r"no space left on device writing .*; the previous file is untouched"):
            export(big, (x,), target, opset=18)
        assert target.read_bytes() == old_bytes and listing(d) == ["m.onnx"]


def test_cli_missing_output_directory_is_exit_2_without_traceback(tmp_path):
    tiny = os.path.join(ROOT, "tests", "data", "tiny_models.py")
    out = tmp_path / "missing" / "m.onnx"
    p = subprocess.run(
        [sys.executable, "-m", "normonnx.cli", "export", f"{tiny}:all_norms", "-o", str(out), "--input", "x:1x3x8x8"],
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ, PYTHONPATH=ROOT),
    )
    assert p.returncode == 2, p.stderr
    assert "does not exist" in p.stderr + p.stdout and "Traceback" not in p.stderr
    assert not (tmp_path / "missing").exists()
