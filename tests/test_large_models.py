"""The large-model path on a small model: weights kept on disk from torch's exporter to the file.

A model over 256 MiB of weights (or exported with ``external_data=True``) never has its weights in
a ``ModelProto``: they go to a stage file beside the output right after torch's exporter and the
passes see references (``normonnx.external``). These tests force that path on a CI-sized stack of
LayerNorm + Linear blocks with a hand-written RMSNorm -- the model of ``scripts/bench_scale.py``,
which measures the real sizes (0.4-5 GiB) -- and check the files, the fusions and the numbers in
onnxruntime against torch.
"""

from __future__ import annotations

import os

import numpy as np
import onnx
import pytest
import torch

from normonnx import external
from normonnx import io as nio
from normonnx.exporter import export
from normonnx.runtime import session

D = 256  # a 256x256 float32 weight is 256 KiB: above external.INLINE_MAX, so it is staged


class RMSNorm(torch.nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.rand(d) + 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * self.weight


class Stack(torch.nn.Module):
    def __init__(self, d: int = D, n: int = 3) -> None:
        super().__init__()
        self.lns = torch.nn.ModuleList([torch.nn.LayerNorm(d) for _ in range(n)])
        self.fcs = torch.nn.ModuleList([torch.nn.Linear(d, d) for _ in range(n)])
        self.norm = RMSNorm(d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for ln, fc in zip(self.lns, self.fcs):
            x = x + fc(ln(x))
        return self.norm(x)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return Stack().eval(), torch.randn(2, 8, D)


def run(path, x) -> np.ndarray:
    (y,) = session(os.fspath(path), optimize=False).run([x.numpy()])
    return y


def reference(m, x) -> np.ndarray:
    with torch.no_grad():
        return m(x).numpy()


def test_forced_external_export_is_one_data_file_of_references_and_matches_torch(model, tmp_path):
    m, x = model
    res = export(m, (x,), tmp_path / "m.onnx", external_data=True)
    assert res.strategies == {"layer:native_kernel": 3, "rms:native_kernel": 1}
    assert res.fired.get("rms_norm.decomposed") == 1  # the hand-written RMSNorm, recognised from references
    assert res.peak_rss_bytes > 0
    (data,) = nio.external_data_files(tmp_path / "m.onnx")
    assert sorted(os.listdir(tmp_path)) == ["m.onnx", os.path.basename(data)]  # no stage or check temp left
    proto = onnx.load(tmp_path / "m.onnx", load_external_data=False)
    assert proto.graph.initializer and all(external.is_external(t) for t in proto.graph.initializer)
    big = [t for t in proto.graph.initializer if np.prod(t.dims) * 4 > external.ALIGN_MIN // 8]
    assert len(big) == 3  # the three Linear weights
    onnx.checker.check_model(str(tmp_path / "m.onnx"))
    np.testing.assert_allclose(run(tmp_path / "m.onnx", x), reference(m, x), rtol=1e-4, atol=1e-4)

    from normonnx.verifier import verify

    report = verify(m, tmp_path / "m.onnx", (x,), n_samples=1)
    assert report.passed and report.max_abs < 1e-4


def test_optimize_keeps_external_weights_on_disk_and_save_copies_them(model, tmp_path):
    from normonnx.optimize import optimize_model

    m, x = model
    src = tmp_path / "in" / "m.onnx"
    src.parent.mkdir()
    export(m, (x,), src, external_data=True)
    res = optimize_model(src)
    assert res.passed and res.verification is not None and res.verification.samples
    assert res.base_dir == str(src.parent)
    assert any(external.is_external(t) for t in res.model.graph.initializer)  # references, not weights
    out = tmp_path / "out" / "o.onnx"
    out.parent.mkdir()
    with external.reading(res.base_dir):
        nio.save(res.model, out, external_data=True)  # another directory: the data is copied
        nio.save(res.model, tmp_path / "out" / "inline.onnx")  # inline: streamed tensor by tensor
    (data,) = nio.external_data_files(out)
    assert os.path.dirname(data) == str(out.parent)
    inline = onnx.load(tmp_path / "out" / "inline.onnx")
    assert not any(external.is_external(t) for t in inline.graph.initializer)
    ref = reference(m, x)
    for p in (out, tmp_path / "out" / "inline.onnx"):
        np.testing.assert_allclose(run(p, x), ref, rtol=1e-4, atol=1e-4)


def test_staged_export_written_inline_streams_the_weights(model, tmp_path, monkeypatch):
    """A model staged for its size but under 2 GiB: its weights stay in memory behind the
    references (the stage file stays empty: one disk write, the final one), one inline file."""
    import normonnx.exporter as exporter

    m, x = model
    monkeypatch.setattr(exporter, "STAGE_MIN", 0)  # the 256 MiB threshold, for a CI-sized model
    seen = []
    check = nio.Stage.check

    def spy(stage, lowered, fn):
        seen.append((os.path.getsize(stage.path), len(stage.memory or {})))
        refs = [t for t in lowered.graph.initializer if external.is_external(t)]
        seen.append(float(np.abs(external.array(refs[0])).sum()))  # readable from memory
        return check(stage, lowered, fn)

    monkeypatch.setattr(nio.Stage, "check", spy)
    export(m, (x,), tmp_path / "m.onnx")
    assert seen[0] == (0, 3)  # nothing on disk; the three Linear weights in memory
    sums = [float(fc.weight.detach().abs().sum()) for fc in m.fcs]
    assert min(abs(seen[1] - s) / s for s in sums) < 1e-6  # a reference reads the torch weight back
    assert os.listdir(tmp_path) == ["m.onnx"]
    proto = onnx.load(tmp_path / "m.onnx")
    assert not any(external.is_external(t) for t in proto.graph.initializer)
    np.testing.assert_allclose(run(tmp_path / "m.onnx", x), reference(m, x), rtol=1e-4, atol=1e-4)


def test_every_constant_external_still_fuses_and_matches(model, tmp_path, monkeypatch):
    """Norm weights, eps and axes read back through GraphView.const from the data file."""
    m, x = model
    monkeypatch.setattr(external, "INLINE_MAX", 0)
    res = export(m, (x,), tmp_path / "m.onnx", external_data=True)
    assert res.fired.get("rms_norm.decomposed") == 1
    assert res.strategies == {"layer:native_kernel": 3, "rms:native_kernel": 1}
    np.testing.assert_allclose(run(tmp_path / "m.onnx", x), reference(m, x), rtol=1e-4, atol=1e-4)


def test_external_array_is_the_tensor_and_copy_on_write(tmp_path):
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    t = onnx.numpy_helper.from_array(a, "w")
    (tmp_path / "w.bin").write_bytes(b"\0" * 8 + t.raw_data)
    t.ClearField("raw_data")
    t.data_location = onnx.TensorProto.EXTERNAL
    for k, v in (("location", "w.bin"), ("offset", "8"), ("length", str(a.nbytes))):
        t.external_data.add(key=k, value=v)
    with pytest.raises(RuntimeError, match=r"outside normonnx\.external\.reading"):
        external.array(t)
    with external.reading(tmp_path):
        v = external.array(t)
        np.testing.assert_array_equal(v, a)
        v[0, 0] = 99  # a rule writing into a constant must not change the file
        np.testing.assert_array_equal(external.array(t), a)


def test_an_unused_stage_leaves_nothing(tmp_path):
    target = tmp_path / "m.onnx"
    with nio.Stage(target) as stage:
        stage.file.write(b"x" * 100)
        assert os.path.exists(stage.path) and os.path.basename(stage.path).startswith(".m.onnx.")
    assert os.listdir(tmp_path) == []


def test_inline_over_the_protobuf_limit_is_refused(tmp_path):
    """A model whose references add up to more than 2 GiB cannot be written as one file."""
    t = onnx.TensorProto(name="w", data_type=onnx.TensorProto.FLOAT, dims=[1 << 30])
    t.data_location = onnx.TensorProto.EXTERNAL
    for k, v in (("location", "w.bin"), ("offset", "0"), ("length", str(4 << 30))):
        t.external_data.add(key=k, value=v)
    g = onnx.helper.make_graph(
        [onnx.helper.make_node("Identity", ["w"], ["y"])],
        "g",
        [],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)],
        [t],
    )
    from normonnx.errors import OutputError

    with pytest.raises(OutputError, match="does not fit in one ONNX file"):
        nio.save(onnx.helper.make_model(g), tmp_path / "m.onnx", external_data=False)
    assert os.listdir(tmp_path) == []
