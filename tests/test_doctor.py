"""normonnx doctor: the report's structure, its facts against expectations written down here as data
(the capability table, the selector's choices and its rejection reasons, what it says without
CUDA), the JSON form, and exit code 3 when a required provider is not usable here."""

from __future__ import annotations

import json

import onnxruntime as ort
import pytest

from normonnx import kernels
from normonnx.cli import main
from normonnx.commands import doctor
from normonnx.lowering import MAX_OPSET, STRATEGIES, check
from normonnx.norms import KINDS
from normonnx.runtime.probe import ort_max_opset

HAS_CUDA = "CUDAExecutionProvider" in ort.get_available_providers()

# -- expectations, written down (a change to the capability table or the selector must change these) --

F16_32_64 = ("float16", "float32", "float64")
ALL_FLOATS = ("bfloat16", *F16_32_64)
DECOMPOSED = (13, {"cpu": ALL_FLOATS, "cuda": ALL_FLOATS}, True, None, "two-pass statistics in float64")
FUNCTION = (13, {"cpu": ALL_FLOATS, "cuda": ALL_FLOATS}, True, None, "stable function body")
# the compiled library is CPU float32 only: no CUDA row at all
NATIVE_KERNEL = (13, {"cpu": ("float32",)}, True, None, "compiled float32 CPU kernel")
#: (kind, strategy) -> (min opset, dtypes per provider, stable, stable_up_to, a fragment of the note)
EXPECTED_CAPABILITIES: dict[tuple[str, str], tuple] = {
    ("batch", "native"): (13, {"cpu": F16_32_64, "cuda": F16_32_64}, True, None, "BatchNormalization"),
    ("batch", "decomposed"): DECOMPOSED,
    ("batch", "function"): FUNCTION,
    ("batch", "native_kernel"): NATIVE_KERNEL,
    ("layer", "native"): (17, {"cpu": ALL_FLOATS, "cuda": ALL_FLOATS}, True, 4096, "LayerNormalization-17"),
    ("layer", "decomposed"): DECOMPOSED,
    ("layer", "function"): FUNCTION,
    ("layer", "native_kernel"): NATIVE_KERNEL,
    # onnxruntime's CPU InstanceNormalization kernel has no float64
    ("instance", "native"): (
        13,
        {"cpu": ("float16", "float32"), "cuda": F16_32_64},
        False,
        None,
        "InstanceNormalization-6",
    ),
    ("instance", "decomposed"): DECOMPOSED,
    ("instance", "function"): FUNCTION,
    ("instance", "native_kernel"): NATIVE_KERNEL,
    ("group", "native"): (21, {"cpu": F16_32_64, "cuda": F16_32_64}, False, None, "GroupNormalization-21"),
    ("group", "decomposed"): DECOMPOSED,
    ("group", "function"): FUNCTION,
    ("group", "via_instance"): (
        13,
        {"cpu": ("float16", "float32"), "cuda": F16_32_64},
        False,
        None,
        "Reshape→InstanceNormalization→Reshape",
    ),
    ("group", "native_kernel"): NATIVE_KERNEL,
    # onnxruntime's CPU RMSNormalization has no bfloat16 kernel
    ("rms", "native"): (23, {"cpu": F16_32_64, "cuda": ALL_FLOATS}, True, 4096, "RMSNormalization-23"),
    ("rms", "decomposed"): DECOMPOSED,
    ("rms", "function"): FUNCTION,
    ("rms", "native_kernel"): NATIVE_KERNEL,
    # GRN has no native ONNX op and no compiled kernel
    ("grn", "decomposed"): DECOMPOSED,
    ("grn", "function"): FUNCTION,
    # onnxruntime's contrib ops: CUDA rows only; two of them form σ² = E[x²] − E[x]² in one pass
    ("group", "contrib"): (13, {"cuda": ("float16", "float32")}, False, None, "com.microsoft.GroupNorm"),
    ("layer", "contrib"): (13, {"cuda": ("float16", "float32")}, False, None, "SkipLayerNormalization"),
    ("rms", "contrib"): (13, {"cuda": ("float16", "float32")}, True, 4096, "SimplifiedLayerNormalization"),
}

#: doctor's example spec label -> strategy -> None (accepted) or a fragment of the rejection reason,
#: at opset 20 on CPU with the compiled library present; the other cases are overrides below
NO_VIA_INSTANCE = "via_instance has no lowering for {} norm"
EXPECTED_VERDICTS: dict[str, dict[str, str | None]] = {
    "batch": {"native": None, "decomposed": None, "function": None, "via_instance": NO_VIA_INSTANCE},
    "layer": {"native": None, "decomposed": None, "function": None, "via_instance": NO_VIA_INSTANCE},
    "layer (channels-first)": {
        "native": "LayerNormalization normalises trailing axes; channels-first needs the decomposition",
        "decomposed": None,
        "function": None,
        "via_instance": NO_VIA_INSTANCE,
    },
    "instance": {
        "native": "numerically unstable: InstanceNormalization-6",
        "decomposed": None,
        "function": None,
        "via_instance": NO_VIA_INSTANCE,
    },
    "group": {
        "native": "needs opset >= 21 (GroupNormalization-21",
        "decomposed": None,
        "function": None,
        "via_instance": "numerically unstable: Reshape→InstanceNormalization",
    },
    "rms": {
        "native": "needs opset >= 23 (RMSNormalization-23",
        "decomposed": None,
        "function": None,
        "via_instance": NO_VIA_INSTANCE,
    },
    "grn": {
        "native": "native has no lowering for grn norm",
        "decomposed": None,
        "function": None,
        "via_instance": NO_VIA_INSTANCE,
    },
}
#: at opset 23 GroupNormalization exists (and is refused as unstable) and RMSNormalization is accepted
AT_OPSET_23 = {("group", "native"): "numerically unstable: GroupNormalization-21", ("rms", "native"): None}
NO_LIBRARY = "the native kernel library is not available: "
#: the contrib strategy's verdicts on CUDA (on CPU it has no rows); label -> reason fragment or None
CONTRIB_ON_CUDA: dict[str, str | None] = {
    "batch": "contrib has no lowering for batch norm",
    "layer": "SkipLayerNormalization needs a residual input",
    "layer (channels-first)": "SkipLayerNormalization needs a residual input",
    "instance": "contrib has no lowering for instance norm",
    "group": "numerically unstable: com.microsoft.GroupNorm",
    "rms": None,  # SimplifiedLayerNormalization below opset 23
    "grn": "contrib has no lowering for grn norm",
}
#: kinds the compiled library registers no kernel for (it says so before anything else)
NO_KERNEL_OF = {"grn": "the native kernel library registers no GlobalResponseNorm kernel"}
NO_KERNEL_ON_CUDA = "float32 not supported on cuda (supported: none)"

CHANNELS_FIRST = ["native", "LayerNormalization normalises trailing axes; channels-first needs the decomposition"]
#: what doctor says normonnx would choose: target -> label -> (opset, strategy, [(rejected, reason fragment)])
EXPECTED_CHOICES_WITH_LIBRARY = {label: (20, "native_kernel", []) for label in EXPECTED_VERDICTS if label != "grn"}
EXPECTED_CHOICES_WITH_LIBRARY["grn"] = (
    20,
    "decomposed",
    [["native_kernel", NO_KERNEL_OF["grn"]], ["native", "native has no lowering for grn norm"]],
)
EXPECTED_CHOICES_WITHOUT_LIBRARY = {
    "batch": (20, "decomposed", [["native_kernel", NO_LIBRARY]]),
    "layer": (20, "native", [["native_kernel", NO_LIBRARY]]),
    "layer (channels-first)": (20, "decomposed", [["native_kernel", NO_LIBRARY], CHANNELS_FIRST]),
    "instance": (20, "decomposed", [["native_kernel", NO_LIBRARY], ["native", "numerically unstable"]]),
    "group": (20, "decomposed", [["native_kernel", NO_LIBRARY], ["native", "needs opset >= 21"]]),
    "rms": (23, "native", [["native_kernel", NO_LIBRARY]]),
    "grn": (20, "decomposed", [["native_kernel", NO_LIBRARY], ["native", "native has no lowering for grn norm"]]),
}
#: on CUDA the contrib strategy is tried first (rms: after RMSNormalization-23)
EXPECTED_CHOICES_CUDA = {
    "batch": (20, "native", [["contrib", CONTRIB_ON_CUDA["batch"]]]),
    "layer": (20, "native", [["contrib", CONTRIB_ON_CUDA["layer"]]]),
    "layer (channels-first)": (20, "decomposed", [["contrib", CONTRIB_ON_CUDA["layer"]], CHANNELS_FIRST]),
    "instance": (
        20,
        "decomposed",
        [["contrib", CONTRIB_ON_CUDA["instance"]], ["native", "numerically unstable: InstanceNormalization-6"]],
    ),
    "group": (20, "decomposed", [["contrib", CONTRIB_ON_CUDA["group"]], ["native", "needs opset >= 21"]]),
    "rms": (23, "native", []),
    "grn": (20, "decomposed", [["contrib", CONTRIB_ON_CUDA["grn"]], ["native", "native has no lowering for grn norm"]]),
}


def _label(spec) -> str:
    return spec.kind + (" (channels-first)" if spec.channels_first else "")


def _expected_verdict(spec, strategy: str, opset: int, target: str, library: bool) -> str | None:
    label = _label(spec)
    if strategy == "native_kernel":
        if library and label in NO_KERNEL_OF:
            return NO_KERNEL_OF[label]
        return NO_KERNEL_ON_CUDA if target == "cuda" else (None if library else NO_LIBRARY)
    if strategy == "contrib":
        if target == "cpu":
            no_row = spec.kind in ("batch", "instance", "grn")
            return (
                f"contrib has no lowering for {spec.kind} norm" if no_row else "not supported on cpu (supported: none)"
            )
        return "opset >= 23" if label == "rms" and opset == 23 else CONTRIB_ON_CUDA[label]
    if opset == 23 and (label, strategy) in AT_OPSET_23:
        return AT_OPSET_23[(label, strategy)]
    return EXPECTED_VERDICTS[label][strategy].format(spec.kind) if EXPECTED_VERDICTS[label][strategy] else None


def _assert_choices(rows: list[dict], expected: dict[str, tuple]) -> None:
    got = {c["kind"]: c for c in rows}
    assert set(got) == set(expected)
    for label, (opset, strategy, rejected) in expected.items():
        c = got[label]
        assert (c["opset"], c["strategy"]) == (opset, strategy), (label, c)
        assert [r[0] for r in c["rejected"]] == [r[0] for r in rejected], (label, c["rejected"])
        for (_, reason), (_, fragment) in zip(c["rejected"], rejected):
            assert fragment in reason, (label, reason)


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


def test_choices_are_the_expected_ones(rep):
    assert [_label(s) for s in doctor.example_specs()] == list(EXPECTED_VERDICTS)
    cpu = [c for c in rep["choices"] if c["target"] == "cpu"]
    _assert_choices(cpu, EXPECTED_CHOICES_WITH_LIBRARY if kernels.available() else EXPECTED_CHOICES_WITHOUT_LIBRARY)
    _assert_choices([c for c in rep["choices"] if c["target"] == "cuda"], EXPECTED_CHOICES_CUDA)
    assert all(c["opset"] <= ort_max_opset() for c in cpu)


def test_choices_without_the_kernel_library(monkeypatch):
    """The same report on a machine without the compiled library (whether or not this one has it)."""
    monkeypatch.setenv("NORMONNX_DISABLE_KERNELS", "1")
    _assert_choices(doctor.choices(("cpu",)), EXPECTED_CHOICES_WITHOUT_LIBRARY)


@pytest.mark.parametrize("target", ["cpu", "cuda"])
@pytest.mark.parametrize("opset", [20, 23])
def test_every_verdict_on_the_example_specs_is_expected(target, opset):
    """Each strategy's verdict on each example spec: accepted, or rejected for the expected reason
    (a rejection the table does not expect fails, and so does an acceptance)."""
    assert set(STRATEGIES) == {s for v in EXPECTED_VERDICTS.values() for s in v} | {"native_kernel", "contrib"}
    library = kernels.available()
    for spec in doctor.example_specs():
        label = _label(spec)
        for strategy in STRATEGIES:
            verdict = check(spec, strategy, opset, target, allow_unstable=False)
            expected = _expected_verdict(spec, strategy, opset, target, library)
            if expected is None:
                assert verdict, (label, strategy, verdict.reason)
            else:
                assert not verdict and expected in verdict.reason, (label, strategy, verdict.reason, expected)


def test_capability_table_is_the_expected_one(rep):
    got: dict[tuple[str, str], dict] = {}
    for r in rep["capabilities"]:
        entry = got.setdefault((r["kind"], r["strategy"]), {"rows": {}})
        entry["rows"][r["provider"]] = (r["min_opset"], tuple(r["dtypes"]), r["stable"], r["stable_up_to"], r["note"])
    # a kind registered beyond the built-in ones (a toy kind of a test) is not this table's business;
    # every built-in kind is, and so is every (kind, strategy) row it has or lacks
    builtin = {k for k, _ in EXPECTED_CAPABILITIES}
    assert builtin <= set(KINDS)
    got = {key: v for key, v in got.items() if key[0] in builtin}
    assert set(got) == set(EXPECTED_CAPABILITIES), set(got) ^ set(EXPECTED_CAPABILITIES)
    for key, (opset, dtypes, stable, up_to, note) in EXPECTED_CAPABILITIES.items():
        rows = got[key]["rows"]
        assert set(rows) == set(dtypes), (key, set(rows))
        for provider, (g_opset, g_dtypes, g_stable, g_up_to, g_note) in rows.items():
            assert (g_opset, g_dtypes, g_stable, g_up_to) == (opset, dtypes[provider], stable, up_to), (key, provider)
            assert note in g_note, (key, provider, g_note)


def test_library_section_and_the_cuda_provider(rep):
    lib = rep["native_kernel_library"]
    assert lib["built"] == (lib["path"] is not None) == kernels.available()
    if not lib["built"]:
        assert lib["reason"] == kernels.unavailable_reason() != ""
    text = doctor.format_report(rep)
    # onnxruntime's contrib ops are a strategy: rows of the capability table, not a section
    assert "lower_cuda" not in rep and "lower_cuda" not in text
    if HAS_CUDA:
        assert rep["providers"]["cuda"] == {
            "available": True,
            "reason": f"CUDAExecutionProvider available (onnxruntime {ort.__version__})",
        }
        return
    reason = (
        f"CUDAExecutionProvider is not in onnxruntime.get_available_providers() (onnxruntime {ort.__version__}: "
        f"{', '.join(ort.get_available_providers())}); install normonnx[cuda] on a machine with an NVIDIA GPU and "
        "CUDA/cuDNN"
    )
    assert rep["providers"]["cuda"] == {"available": False, "reason": reason}
    assert f"  CUDA: not available — {reason}" in text
    # no CUDA provider: its kernels are not probed (the CUDA choices above still come from the table)
    assert {k["provider"] for k in rep["kernels"]} == {"CPUExecutionProvider"}


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
