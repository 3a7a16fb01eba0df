"""normonnx doctor: the report's structure, its facts against the capability table and the selector,
the JSON form, and exit code 3 when a required provider is not usable here."""

from __future__ import annotations

import json

import onnxruntime as ort
import pytest

from normonnx.cli import main
from normonnx.commands import doctor
from normonnx.lowering import MAX_OPSET, capability_table, select
from normonnx.norms import KINDS
from normonnx.runtime.probe import ort_max_opset

HAS_CUDA = "CUDAExecutionProvider" in ort.get_available_providers()


@pytest.fixture(scope="module")
def rep():
    return doctor.collect()


def test_versions_and_providers(rep):
    v = rep["versions"]
    assert v["onnxruntime"] == ort.__version__ or v["onnxruntime-gpu"] == ort.__version__
    for dist in ("torch", "onnx", "onnxscript", "numpy"):
        assert v[dist], dist
    assert rep["providers"]["available"] == ort.get_available_providers()
    assert rep["providers"]["cuda"]["available"] is HAS_CUDA
    assert rep["opsets"]["probed_at"] == min(MAX_OPSET, ort_max_opset())


def test_kernel_matrix_covers_every_native_op_on_each_probed_provider(rep):
    probed = [p for p in ("CPUExecutionProvider", "CUDAExecutionProvider") if p in rep["providers"]["available"]]
    rows = {(k["provider"], k["op"]): k for k in rep["kernels"]}
    assert set(rows) == {(p, k.native_op) for p in probed for k in KINDS.values() if k.native_op}
    cpu = {op: r for (p, op), r in rows.items() if p == "CPUExecutionProvider"}
    # the facts the capability table is built on (onnxruntime CPU): a LayerNormalization kernel exists,
    # GroupNormalization-21 has none (its function body is inlined)
    assert cpu["LayerNormalization"]["float32"] is True
    assert cpu["GroupNormalization"]["float32"] is False
    assert all(isinstance(r[d], bool) for r in cpu.values() for d in doctor.PROBE_DTYPES)


def test_choices_agree_with_the_selector(rep):
    kinds = {s.kind + (" (channels-first)" if s.channels_first else "") for s in doctor.example_specs()}
    for target in ("cpu", "cuda"):
        rows = [c for c in rep["choices"] if c["target"] == target]
        assert {c["kind"] for c in rows} == kinds
        for c, spec in zip(rows, doctor.example_specs()):
            assert c["strategy"] == select(spec, c["opset"], target).strategy
            if target == "cpu":
                assert c["opset"] <= ort_max_opset()
    cpu_group = next(c for c in rep["choices"] if c["target"] == "cpu" and c["kind"] == "group")
    # an unstable strategy (GroupNormalization-21, via_instance) is never the default
    assert cpu_group["strategy"] not in ("native", "via_instance")


def test_capabilities_and_cuda_lowering_sections(rep):
    assert rep["capabilities"] == capability_table(("cpu", "cuda"))
    lib = rep["native_kernel_library"]
    assert lib["built"] == (lib["path"] is not None)
    if not lib["built"]:
        assert lib["reason"]


def test_cli_text_and_json(tmp_path, capsys):
    path = tmp_path / "doctor.json"
    assert main(["doctor", "--json", str(path)]) == 0
    out = capsys.readouterr().out
    data = json.loads(path.read_text())
    assert set(data) >= {"versions", "providers", "kernels", "native_kernel_library", "capabilities", "choices"}
    assert "execution providers:" in out and "what normonnx would choose" in out
    assert out.strip().splitlines()[-1].startswith("PASSED | doctor: onnxruntime")
    # --json - prints only JSON on stdout; the closing line goes to stderr
    assert main(["doctor", "--json", "-"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["versions"] == data["versions"]
    assert captured.err.strip().splitlines()[-1].startswith("PASSED | doctor")


@pytest.mark.skipif(HAS_CUDA, reason="this machine has the CUDA execution provider")
def test_requiring_cuda_here_exits_3(capsys):
    assert main(["doctor", "--provider", "cuda"]) == 3
    captured = capsys.readouterr()
    assert "CUDAExecutionProvider is not in onnxruntime.get_available_providers()" in captured.err
    assert "Note: " in captured.err and "normonnx[cuda]" in captured.err
    assert captured.out.strip().splitlines()[-1].startswith("FAILED | unsupported here")


def test_requiring_cpu_passes():
    assert main(["doctor", "--provider", "cpu", "--json", "-"]) == 0
