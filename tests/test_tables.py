"""The one-table-per-fact modules: providers, dtypes, text tables, the report format registry and
the CLI's shared argument groups. Each test compares a table with the outside fact it encodes
(onnx's codes, onnxruntime's names, the CLI's flags), so a copy that drifts fails here."""

from __future__ import annotations

import argparse
import ast
import json
import pathlib
import xml.etree.ElementTree as ET

import numpy as np
import onnx
import pytest

from normonnx import dtypes, providers
from normonnx.cli import build_parser
from normonnx.commands import _common
from normonnx.reports import base, formats, render
from normonnx.text import table

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "normonnx"


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def _option(p: argparse.ArgumentParser, flag: str) -> argparse.Action | None:
    return next((a for a in p._actions if flag in a.option_strings), None)


# -- providers --------------------------------------------------------------------------------------


def test_every_provider_and_target_flag_offers_the_table():
    import onnxruntime as ort

    from normonnx.lowering.base import PROVIDERS as LOWERING_PROVIDERS
    from normonnx.optimize.driver import TARGETS
    from normonnx.runtime import PROVIDER_NAMES

    seen = {}
    for name, sub in _subparsers(build_parser()).items():
        for flag in ("--provider", "--target"):
            if (a := _option(sub, flag)) is not None:
                seen[f"{name} {flag}"] = tuple(a.choices)
    assert set(seen) == {
        "export --target", "optimize --target", "verify --provider", "bisect --provider",
        "compare --provider",  # bisect under its former name (an alias: the same parser)
        "doctor --provider", "capabilities --provider",
    }  # fmt: skip
    assert set(seen.values()) == {("cpu", "cuda")} == {providers.NAMES}
    assert PROVIDER_NAMES is providers.PROVIDERS and TARGETS == LOWERING_PROVIDERS == providers.NAMES
    # onnxruntime knows every name the table gives it (CPU is in every build)
    assert providers.ort_name("cpu") in ort.get_all_providers()
    assert providers.ort_name("cuda") in ort.get_all_providers()
    assert providers.short_name("CUDAExecutionProvider") == "cuda"
    assert providers.short_name("TensorrtExecutionProvider") == "TensorrtExecutionProvider"


# -- dtypes -----------------------------------------------------------------------------------------


def test_dtype_codes_are_onnx_own():
    onnx_spelling = {"float32": "FLOAT", "float64": "DOUBLE"}
    for name, code in dtypes.ONNX_CODES.items():
        assert code == onnx.TensorProto.DataType.Value(onnx_spelling.get(name, name.upper())), name
        if name != "bfloat16":
            assert np.dtype(onnx.helper.tensor_dtype_to_np_dtype(code)) == np.dtype(name)
    assert dtypes.FLOAT_NAMES[onnx.TensorProto.BFLOAT16] == "bfloat16"
    assert dtypes.float_name(onnx.TensorProto.INT64) is None
    assert dtypes.short(onnx.TensorProto.FLOAT16) == "fp16"
    for ort_type, name in dtypes.ORT_TYPES.items():  # "tensor(float)" is onnx's FLOAT
        code = dtypes.ONNX_CODES[name]
        assert ort_type == f"tensor({onnx.TensorProto.DataType.Name(code).lower()})"


def test_dtype_copies_are_the_table():
    from normonnx import spec
    from normonnx.verify.expose import FLOAT_ELEMS
    from normonnx.verify.half import ELEM

    assert spec.DTYPES == dtypes.FLOATS
    assert FLOAT_ELEMS == {1: "float32", 10: "float16", 11: "float64"}  # no bfloat16 in NumPy
    assert ELEM == {"float16": 10, "bfloat16": 16}


# -- text tables ------------------------------------------------------------------------------------


def test_text_table_pads_every_column():
    text = table(("kind", "strategy"), [("group", "native"), ("rms", "decomposed")])
    assert text.splitlines() == ["kind   strategy  ", "-----  ----------", "group  native    ", "rms    decomposed"]
    assert table(("a", "bb"), []).splitlines() == ["a  bb", "-  --"]


# -- reports ----------------------------------------------------------------------------------------


class _Ranges:
    """A report type no format knows: only the section protocol."""

    def __init__(self, passed: bool) -> None:
        self.passed = passed

    def summary(self) -> str:
        return "ranges ok" if self.passed else "ranges: 2 values beyond float16"

    def format_table(self) -> str:
        return table(("value", "max"), [("y", "7e4")])

    def as_dict(self) -> dict[str, object]:
        return {"passed": self.passed, "beyond": 2, "worst": float("inf")}


def test_a_new_report_type_works_in_every_format_unchanged():
    sections = {"ranges": _Ranges(False)}
    assert list(formats()) == ["json", "junit", "html", "text"]
    doc = json.loads(render("json", sections, passed=False))
    assert doc == {"passed": False, "beyond": 2, "worst": "Infinity"}  # strict JSON: no Infinity literal
    root = ET.fromstring(render("junit", sections))
    assert root.get("tests") == "1" and root.get("failures") == "1"
    failure = root.find("testsuite/testcase/failure")
    assert failure is not None and failure.get("message") == "ranges: 2 values beyond float16"
    text = render("text", sections, final="FAILED | ranges").decode()
    assert text.splitlines()[:3] == ["== ranges ==", "ranges: 2 values beyond float16", "value  max"]
    assert text.endswith("FAILED | ranges\n")
    page = render("html", sections, final="FAILED | ranges").decode()
    assert "<h2>ranges</h2>" in page and "<pre>value  max" in page and "class='fail'" in page


def test_a_new_format_is_one_registration_and_every_report_command_gets_its_flag(tmp_path):
    fmt = base.Format("tsv", "write the checks as TSV", lambda sections, **_: _tsv(sections), order=9)
    base.register_format(fmt)
    try:
        subs = _subparsers(build_parser())
        assert _option(subs["verify"], "--tsv") is not None and _option(subs["compare"], "--tsv") is not None
        assert _option(subs["export"], "--tsv") is None  # export writes no report sections
        args = argparse.Namespace(tsv=str(tmp_path / "r.tsv"), json=None, junit=None, html=None, text=None)
        _common.write_reports(args, {"ranges": _Ranges(True)}, True, "ranges ok")
        assert (tmp_path / "r.tsv").read_text() == "ranges\tpassed\tok\n"
    finally:
        del base.FORMATS["tsv"]


def _tsv(sections):
    rows = [c for k, s in sections.items() for c in base.view(k, s).checks()]
    return "".join(f"{c.group}\t{c.name}\t{'ok' if c.failure is None else 'FAIL'}\n" for c in rows).encode()


def test_cli_json_document_keeps_the_first_section_on_top():
    from normonnx.reports.format_json import report_dict, run_document

    sections = {"main": _Ranges(True), "extra": _Ranges(False)}
    assert run_document(sections, passed=False) == {
        "passed": False, "beyond": 2, "worst": float("inf"), "extra": _Ranges(False).as_dict()
    }  # fmt: skip
    assert report_dict(sections)["passed"] is False and set(report_dict(sections)) == {"passed", "main", "extra"}


# -- argument groups, import direction ----------------------------------------------------------------


@pytest.mark.parametrize("command", ["verify", "compare"])
def test_report_and_tolerance_flags_come_from_the_groups(command):
    sub = _subparsers(build_parser())[command]
    for name in formats():
        a = _option(sub, f"--{name}")
        assert a is not None and a.dest == name and a.metavar == "FILE"
    for flag in ("--atol", "--rtol", "--check", "--threads", "--input", "--seed"):
        assert _option(sub, flag) is not None, flag


def _imports(path: pathlib.Path) -> set[str]:
    """Modules a file imports, relative ones resolved against normonnx's package layout."""
    tree = ast.parse(path.read_text())
    pkg = path.relative_to(PACKAGE.parent).with_suffix("").parts[:-1]
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base_parts = list(pkg[: len(pkg) - node.level + 1]) if node.level else []
            out.add(".".join([*base_parts, *(node.module.split(".") if node.module else [])]))
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return out


@pytest.mark.parametrize("layer", ["bench", "reports", "verify", "optimize", "lowering", "norms", "io", "runtime"])
def test_lower_layers_never_import_the_cli(layer):
    offenders = {
        str(f.relative_to(PACKAGE)): sorted(
            m for m in _imports(f) if m.startswith(("normonnx.commands", "normonnx.cli"))
        )
        for f in sorted((PACKAGE / layer).glob("*.py"))
    }
    assert {f: m for f, m in offenders.items() if m} == {}
    assert offenders  # the layer's files were read


#: the stages below the pipeline, and what each must never import (the import graph points one way:
#: commands → pipeline (exporter, optimize) → lowering → norms → spec)
UPWARD = {
    "lowering": ("normonnx.optimize", "normonnx.exporter", "normonnx.capture", "normonnx.verify"),
    "norms": ("normonnx.lowering", "normonnx.optimize", "normonnx.exporter", "normonnx.verify"),
}


@pytest.mark.parametrize("layer", sorted(UPWARD))
def test_lower_stages_never_import_the_stages_above(layer):
    offenders = {
        str(f.relative_to(PACKAGE)): sorted(m for m in _imports(f) if m.startswith(UPWARD[layer]))
        for f in sorted((PACKAGE / layer).glob("*.py"))
    }
    assert {f: m for f, m in offenders.items() if m} == {}
    assert offenders
    spec = _imports(PACKAGE / "spec.py")
    assert {m for m in spec if m.startswith("normonnx")} <= {"normonnx.dtypes", "normonnx.errors"}
