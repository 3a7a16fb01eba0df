"""``normonnx optimize`` end to end: what it prints, --json, exit codes 0/1/2, atomic write only after
verification, the input left untouched."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from optimize_helpers import model, ops, rng
from strict_tolerances import REWRITE_ATOL
from test_fuse_group import inits, tutorial_text, via_instance_text
from test_fuse_layer import BETA, GAMMA, ln_text

from normonnx import kernels
from normonnx.cli import main


@pytest.fixture
def gn_file(tmp_path):
    p = tmp_path / "gn.onnx"
    onnx.save(model(via_instance_text(), **inits()), p)
    return p


def lines(capsys) -> list[str]:
    return capsys.readouterr().out.strip().splitlines()


def test_optimize_prints_rules_and_writes(gn_file, tmp_path, capsys):
    out = tmp_path / "out.onnx"
    assert main(["optimize", str(gn_file), "-o", str(out)]) == 0
    text = lines(capsys)
    assert text[-1].startswith("PASSED | 4 rewrites") and str(out) in text[-1]
    assert any(line.split() == ["group_norm.via_instance", "1"] for line in text)
    assert any(line.split() == ["group_norm.silu", "1"] for line in text)
    # the CPU default: normonnx's compiled kernel (GroupNorm with the SiLU fused in) when the library is built
    expected = "native_kernel" if kernels.available() else "decomposed"
    assert f"lowered: group:{expected} ×1" in text
    assert any(
        line.startswith("verification (onnxruntime cpu, graph optimizations disabled): equivalent") for line in text
    )
    assert "InstanceNormalization" not in ops(onnx.load(out))
    if kernels.available():
        assert ops(onnx.load(out)) == [f"{kernels.DOMAIN}.GroupNorm"]


def test_json_report(gn_file, tmp_path, capsys):
    out, js = tmp_path / "out.onnx", tmp_path / "report.json"
    assert main(["optimize", str(gn_file), "-o", str(out), "--json", str(js)]) == 0
    data = json.loads(js.read_text())
    assert data["written"] is True and data["output"] == str(out)
    assert data["fired"] == {"group_norm.via_instance": 1, "group_norm.affine": 2, "group_norm.silu": 1}
    assert data["verification"]["passed"] is True and data["verification"]["ort_graph_optimizations"] is False
    assert [s["name"] for s in data["verification"]["samples"]] == [
        "random0",
        "random1",
        "random2",
        "offset_1e3",
        "scale_1e-3",
    ]
    assert data["nodes_before"] == 9 and data["ops_before"]["InstanceNormalization"] == 1


def test_refusals_are_printed_with_reasons(tmp_path, capsys):
    src = tmp_path / "tut.onnx"
    onnx.save(
        model(
            tutorial_text(unbiased=False, axes="3,4"),
            gamma=GAMMA[:8].reshape(1, 8, 1, 1),
            beta=BETA[:8].reshape(1, 8, 1, 1),
        ),
        src,
    )
    assert main(["optimize", str(src), "-o", str(tmp_path / "o.onnx")]) == 0
    text = "\n".join(lines(capsys))
    # statistics over the view's last two axes are a LayerNorm of the view, not a GroupNorm
    assert "rules fired:" in text and any(ln.split() == ["layer_norm.decomposed", "1"] for ln in text.splitlines())
    assert "group_norm.decomposed at" in text and "not over all of 2..4" in text


def test_mismatch_exits_1_and_writes_nothing(tmp_path, capsys, monkeypatch):
    """Fault injection: a LayerNorm rule that records the wrong ε must be caught by verification."""
    from normonnx.optimize import fuse_layer

    right = fuse_layer.LayerNormDecomposed.check

    def wrong_eps(self, g, m):
        v = right(self, g, m)
        if v:
            m.facts["spec"] = m.facts["spec"].replace(eps=0.5)
        return v

    monkeypatch.setattr(fuse_layer.LayerNormDecomposed, "check", wrong_eps)
    src, out = tmp_path / "ln.onnx", tmp_path / "out.onnx"
    onnx.save(model(ln_text(), gamma=GAMMA, beta=BETA), src)
    before = src.read_bytes()
    assert main(["optimize", str(src), "-o", str(out), "--json", str(tmp_path / "r.json")]) == 1
    text = lines(capsys)
    assert text[-1].startswith("FAILED | ") and "MISMATCH on random0" in text[-1] and "nothing written" in text[-1]
    assert not out.exists() and src.read_bytes() == before
    assert json.loads((tmp_path / "r.json").read_text())["written"] is False


def test_no_verify(gn_file, tmp_path, capsys):
    assert main(["optimize", str(gn_file), "-o", str(tmp_path / "o.onnx"), "--no-verify"]) == 0
    assert "not verified (--no-verify)" in lines(capsys)[-1]


def test_target_cuda(gn_file, tmp_path, capsys):
    out = tmp_path / "o.onnx"
    assert main(["optimize", str(gn_file), "-o", str(out), "--target", "cuda"]) == 0
    assert not any("group:contrib" in line for line in lines(capsys))  # unstable: not by default
    assert main(["optimize", str(gn_file), "-o", str(out), "--target", "cuda", "--allow-unstable"]) == 0
    text = lines(capsys)
    assert "lowered: group:contrib ×1" in text
    assert any("verified on CPU" in line for line in text)
    assert ops(onnx.load(out)) == ["Transpose", "com.microsoft.GroupNorm", "Transpose"]


def test_debug_prints_near_misses(gn_file, tmp_path, capsys):
    assert main(["optimize", str(gn_file), "-o", str(tmp_path / "o.onnx"), "--debug"]) == 0
    assert any(line.startswith("near misses (") for line in lines(capsys))


def test_rules_and_opset(tmp_path, capsys):
    src = tmp_path / "ln13.onnx"
    onnx.save(model(ln_text(opset=13), gamma=GAMMA, beta=BETA), src)
    out = tmp_path / "o.onnx"
    standard = ["--strategy", "native", "--strategy", "decomposed"]
    assert main(["optimize", str(src), "-o", str(out), "--opset", "17", *standard]) == 0
    assert ops(onnx.load(out)) == ["LayerNormalization"]
    assert main(["optimize", str(src), "-o", str(out), "--rules", "fold_batchnorm"]) == 0
    assert "rules fired: none" in lines(capsys)
    assert "LayerNormalization" not in ops(onnx.load(out))


def test_dynamic_dims_need_input_shapes(tmp_path, capsys):
    src = tmp_path / "dyn.onnx"
    onnx.save(model(ln_text(shape="N,T,16"), gamma=GAMMA, beta=BETA), src)
    out = tmp_path / "o.onnx"
    assert main(["optimize", str(src), "-o", str(out)]) == 2
    assert "symbolic dim T at axis 1" in lines(capsys)[-1] and not out.exists()
    assert main(["optimize", str(src), "-o", str(out), "--input", "x:3x7x16"]) == 0
    assert lines(capsys)[-1].startswith("PASSED")


@pytest.mark.parametrize("case", ["missing", "corrupt", "unknown_rule"])
def test_usage_errors_exit_2(case, gn_file, tmp_path, capsys):
    out = tmp_path / "o.onnx"
    if case == "missing":
        argv = ["optimize", str(tmp_path / "nope.onnx"), "-o", str(out)]
    elif case == "corrupt":
        bad = tmp_path / "bad.onnx"
        bad.write_bytes(gn_file.read_bytes()[:40])
        argv = ["optimize", str(bad), "-o", str(out)]
    else:
        argv = ["optimize", str(gn_file), "-o", str(out), "--rules", "no_such_rule"]
    assert main(argv) == 2
    last = lines(capsys)[-1]
    assert last.startswith("FAILED | ") and ("load error" in last or "optimize error" in last)
    assert not out.exists()


def test_missing_output_flag_is_a_usage_error(gn_file, capsys):
    with pytest.raises(SystemExit) as e:
        main(["optimize", str(gn_file)])
    assert e.value.code == 2
    assert "FAILED | usage error" in capsys.readouterr().out


def test_numbers_of_written_model(gn_file, tmp_path):
    from optimize_helpers import run

    out = tmp_path / "o.onnx"
    assert main(["optimize", str(gn_file), "-o", str(out)]) == 0
    x = rng().standard_normal((2, 8, 5, 6)).astype(np.float32)
    np.testing.assert_allclose(run(onnx.load(out), x)[0], run(onnx.load(gn_file), x)[0], atol=REWRITE_ATOL)


def test_old_opset_skips_fusions_with_a_note(tmp_path, capsys):
    src = tmp_path / "ln11.onnx"
    onnx.save(model(ln_text(opset=11), gamma=GAMMA, beta=BETA), src)
    assert main(["optimize", str(src), "-o", str(tmp_path / "o.onnx")]) == 0
    text = lines(capsys)
    assert any(line.startswith("note: norm fusions skipped: the model's opset 11") for line in text)
    assert text[-1].startswith("PASSED")
