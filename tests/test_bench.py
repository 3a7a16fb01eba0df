"""normonnx bench: the JSON schema of a --quick run, its invariants, the round-robin timer, the copy
floor, profiler attribution of norm nodes, and --compare. No assertion depends on how fast anything
ran (the machine is shared); the invariants hold by construction or by orders of magnitude."""

from __future__ import annotations

import copy
import dataclasses
import json
import math

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from normonnx import kernels
from normonnx.bench import ops as bops
from normonnx.bench import report
from normonnx.bench.models import norm_node_names, norm_replaced, profile
from normonnx.bench.timing import default_visit, measure, measure_isolated, paired_ratio
from normonnx.cli import main
from normonnx.lowering import select
from normonnx.lowering.graph import lower_model, make_norm_node
from normonnx.spec import NormSpec
from normonnx.verify import tolerance

OP_ROW_KEYS = {
    "kind",
    "shape",
    "spec",
    "opset",
    "threads",
    "candidate",
    "strategy",
    "stable",
    "selected",
    "max_abs_err",
    "floor_ms",
    "floor_source",
    "bytes",
    "ref_scale",
    "note",
    "error",
    "median_ms",
    "q1_ms",
    "q3_ms",
    "iqr_ms",
    "samples",
    "calls_per_sample",
    "x_floor",
    "gb_per_s",
}


#: the opset a --quick run benchmarks at: normonnx's MAX_OPSET, which onnxruntime 1.32 loads
QUICK_OPSET = 23
#: per quick kind at QUICK_OPSET on CPU: the strategies benchmarked (every one whose check accepts,
#: unstable ones included), the unstable ones among them, and the selector's pick with / without the
#: compiled kernel library (which is benchmarked only when present)
EXPECTED_QUICK = {
    # GroupNormalization-21 and the InstanceNormalization route both form σ² = E[x²] − E[x]²: unstable
    "group": ({"native", "decomposed", "function", "via_instance"}, {"native", "via_instance"}, "decomposed"),
    "layer": ({"native", "decomposed", "function"}, set(), "native"),
    # BatchNormalization is stable but comes last on CPU (KIND_PREFERENCE: fidelity and speed)
    "batch": ({"native", "decomposed", "function"}, set(), "decomposed"),
    "instance": ({"native", "decomposed", "function"}, {"native"}, "decomposed"),
    "rms": ({"native", "decomposed", "function"}, set(), "native"),
}

#: (kind, dtype, opset, provider) -> the selector's pick (with the compiled library, without it), for
#: the quick shape's spec (norm cases of 64 elements per group; one layer case of 8192)
EXPECTED_SELECTION: dict[tuple[str, str, int, str], tuple[str, str]] = {
    ("group", "float32", 13, "cpu"): ("native_kernel", "decomposed"),
    ("group", "float32", 23, "cpu"): ("native_kernel", "decomposed"),  # GroupNormalization-21 unstable
    ("group", "float32", 23, "cuda"): ("decomposed", "decomposed"),  # no compiled kernel on CUDA
    ("group", "float16", 23, "cpu"): ("decomposed", "decomposed"),  # the kernel is float32 only
    ("layer", "float32", 13, "cpu"): ("native_kernel", "decomposed"),  # before LayerNormalization-17
    ("layer", "float32", 17, "cpu"): ("native_kernel", "native"),
    ("layer", "float32", 13, "cuda"): ("decomposed", "decomposed"),
    ("layer", "float32", 17, "cuda"): ("native", "native"),
    ("layer", "float16", 23, "cpu"): ("native", "native"),
    ("layer", "bfloat16", 23, "cpu"): ("native", "native"),
    ("layer8192", "float32", 23, "cpu"): ("native_kernel", "decomposed"),  # past stable_up_to=4096
    ("layer8192", "float32", 23, "cuda"): ("decomposed", "decomposed"),
    ("batch", "float32", 23, "cpu"): ("native_kernel", "decomposed"),  # BatchNormalization last on CPU
    ("batch", "float32", 13, "cuda"): ("native", "native"),
    ("instance", "float32", 23, "cpu"): ("native_kernel", "decomposed"),  # InstanceNormalization unstable
    ("instance", "float32", 23, "cuda"): ("decomposed", "decomposed"),
    ("rms", "float32", 21, "cpu"): ("native_kernel", "decomposed"),  # before RMSNormalization-23
    ("rms", "float32", 23, "cpu"): ("native_kernel", "native"),
    # onnxruntime's RMSNorm (contrib SimplifiedLayerNormalization) below opset 23 on CUDA
    ("rms", "float32", 21, "cuda"): ("contrib", "contrib"),
    ("rms", "float32", 23, "cuda"): ("native", "native"),
    ("rms", "bfloat16", 23, "cpu"): ("decomposed", "decomposed"),  # no bfloat16 RMSNormalization on CPU
    ("rms", "bfloat16", 23, "cuda"): ("native", "native"),
}


def _selection_spec(kind: str, dtype: str) -> NormSpec:
    if kind == "layer8192":
        return NormSpec("layer", normalized_shape=(8192,), rank=3, dtype=dtype)
    return dataclasses.replace(bops.spec_for(kind, bops.QUICK_SHAPES[kind][0]), dtype=dtype)


@pytest.mark.parametrize("library", [True, False], ids=["with_library", "without_library"])
@pytest.mark.parametrize("case", list(EXPECTED_SELECTION), ids=lambda c: "-".join(map(str, c)))
def test_selector_picks_the_expected_strategy(case, library, monkeypatch):
    if not library:
        monkeypatch.setenv("NORMONNX_DISABLE_KERNELS", "1")
    elif not kernels.available():
        pytest.skip(f"native kernel library not available: {kernels.unavailable_reason()}")
    kind, dtype, opset, provider = case
    expected = EXPECTED_SELECTION[case][0 if library else 1]
    assert select(_selection_spec(kind, dtype), opset, provider).strategy == expected


@pytest.fixture(scope="module")
def quick_doc(tmp_path_factory):
    """One `normonnx bench ops --quick` run over every kind, through the CLI."""
    d = tmp_path_factory.mktemp("bench")
    path, md = d / "quick.json", d / "BENCHMARKS.md"
    rc = main(["bench", "ops", "--quick", "--json", str(path), "--markdown", str(md)])
    assert rc == 0
    return json.loads(path.read_text()), md.read_text(), path


def _groups(rows):
    out: dict[tuple, dict[str, dict]] = {}
    for r in rows:
        out.setdefault((r["kind"], tuple(r["shape"])), {})[r["candidate"]] = r
    return out


def test_quick_ops_schema(quick_doc):
    doc, _, _ = quick_doc
    assert doc["schema"] == report.SCHEMA
    assert doc["quick"] is True and doc["threads"] == 2 and doc["models"] is None
    assert doc["command"].startswith("normonnx bench ops --quick --threads 2")
    assert {"cpu", "cores", "loadavg_start", "loadavg_end"} <= set(doc["machine"])
    assert {"torch", "onnx", "onnxruntime", "onnxscript", "numpy"} <= set(doc["versions"])
    assert {"timing", "copy floor", "OpenMP wait policy"} <= set(doc["method"])
    groups = _groups(doc["ops"])
    # one group per quick shape of every kind
    assert sorted(groups) == sorted((k, tuple(s)) for k, shapes in bops.QUICK_SHAPES.items() for s in shapes)
    library = kernels.available()
    for (kind, shape), cands in groups.items():
        assert {r["opset"] for r in cands.values()} == {QUICK_OPSET}
        strategies, unstable, selected = EXPECTED_QUICK[kind]
        if library:  # the compiled kernel (stable) is benchmarked, and chosen, where it is built
            strategies, selected = strategies | {"native_kernel"}, "native_kernel"
        assert {r["strategy"] for r in cands.values() if r["strategy"]} == strategies, kind
        assert {r["strategy"] for r in cands.values() if r["strategy"] and not r["stable"]} == unstable, kind
        assert {bops.COPY_NUMPY, bops.COPY_ORT, bops.TORCH} <= set(cands)
        for r in cands.values():
            assert set(r) == OP_ROW_KEYS or r["error"], (kind, r["candidate"], set(r) ^ OP_ROW_KEYS)
            assert r["bytes"] == 4 * math.prod(shape)
        # exactly the selector's choice is flagged
        assert [r["strategy"] for r in cands.values() if r["selected"]] == [selected], kind


def test_ratios_finite_positive_and_consistent(quick_doc):
    doc, _, _ = quick_doc
    for r in doc["ops"]:
        assert not r["error"], r
        assert math.isfinite(r["x_floor"]) and r["x_floor"] > 0
        assert r["q1_ms"] <= r["median_ms"] <= r["q3_ms"]
        assert r["x_floor"] == pytest.approx(r["median_ms"] / r["floor_ms"], rel=1e-9)
        assert r["samples"] >= 3 and r["calls_per_sample"] >= 1


def test_copy_floor_is_below_every_norm(quick_doc):
    doc, _, _ = quick_doc
    for (kind, shape), cands in _groups(doc["ops"]).items():
        floor = {r["floor_ms"] for r in cands.values()}
        assert len(floor) == 1
        source = next(iter(cands.values()))["floor_source"]
        assert source in (bops.COPY_NUMPY, bops.COPY_ORT)
        assert floor == {cands[source]["median_ms"]}
        assert cands[source]["x_floor"] == 1.0
        for name, r in cands.items():
            if not name.startswith("copy:"):
                assert r["median_ms"] > r["floor_ms"], (kind, shape, name)
                assert r["x_floor"] > 1.0


def test_timed_outputs_are_accurate(quick_doc):
    doc, _, _ = quick_doc
    tol = tolerance("float32")
    for r in doc["ops"]:
        if r["candidate"].startswith("copy:"):
            assert r["max_abs_err"] is None
            continue
        assert r["max_abs_err"] is not None and r["max_abs_err"] <= tol.atol + tol.rtol * r["ref_scale"], r


def test_markdown_has_every_kind_and_the_gaps(quick_doc):
    doc, md, _ = quick_doc
    for kind in bops.QUICK_SHAPES:
        assert f"### {report.KIND_TITLES[kind]}" in md
    assert "biggest gaps to the copy floor" in md
    assert doc["command"] in md
    # every measured ratio of the first group appears in its table row
    (kind, shape), cands = next(iter(_groups(doc["ops"]).items()))
    row = next(line for line in md.splitlines() if line.startswith(f"| {report._shape(shape)} "))
    assert f"**{cands['torch']['x_floor']:.2f}×**" in row
    # gaps are sorted, largest first, and refer to ORT strategies
    g = report.gaps(doc["ops"])
    assert len(g) == len(_groups(doc["ops"]))
    keys = [x["selected_x_floor"] for x in g]
    assert keys == sorted(keys, reverse=True)


def test_default_session_rows_for_every_shape(quick_doc):
    doc, md, _ = quick_doc
    groups = _groups(doc["ops_default"])
    assert {k for k, _ in groups} == set(bops.QUICK_SHAPES)
    for cands in groups.values():
        assert {bops.COPY_NUMPY, bops.COPY_ORT, bops.COPY_ORT_MUL, bops.TORCH} < set(cands)
        selected = [r for r in cands.values() if r["strategy"]]
        assert len(selected) == 1 and selected[0]["candidate"] == f"onnxruntime:{selected[0]['strategy']}"
        floor = min(cands[c]["median_ms"] for c in (bops.COPY_NUMPY, bops.COPY_ORT, bops.COPY_ORT_MUL))
        for r in cands.values():
            assert r["session"] == "default" and r["floor_ms"] == floor and r["x_floor"] > 0
        floor_row = cands[cands[bops.TORCH]["floor_source"]]
        assert floor_row["median_ms"] == floor and floor_row["x_floor"] == pytest.approx(1.0)
        assert cands[bops.TORCH]["x_torch"] == pytest.approx(1.0)
    assert "## Norm ops in default onnxruntime sessions (as deployed)" in md


def test_compare_reports_changes_removals_and_noise(quick_doc, tmp_path):
    doc, _, _ = quick_doc
    old, new = copy.deepcopy(doc), copy.deepcopy(doc)
    dropped = (new["ops"][0]["kind"], tuple(new["ops"][0]["shape"]))
    new["ops"] = [r for r in new["ops"] if (r["kind"], tuple(r["shape"])) != dropped]
    slow = next(r for r in new["ops"] if r["candidate"] == "onnxruntime:decomposed")
    key = (slow["kind"], slow["shape"], slow["candidate"])
    # the row's spread in both runs is set, not measured: a --quick run on a loaded machine can
    # see more than 100% spread, which (rightly) makes a doubling "same"
    before = next(r for r in old["ops"] if (r["kind"], r["shape"], r["candidate"]) == key)
    before["iqr_ms"] = 0.01 * before["median_ms"]
    slow["x_floor"] *= 2.0
    slow["median_ms"] *= 2.0
    slow["iqr_ms"] = 0.01 * slow["median_ms"]
    old_path = tmp_path / "old.json"
    old_path.write_text(json.dumps(old))
    new_path = tmp_path / "new.json"
    new_path.write_text(json.dumps(new))

    diff = report.diff_documents(report.load_document(str(old_path)), report.load_document(str(new_path)))
    by_key = {(e["key"][0], tuple(e["key"][1]), e["key"][2]): e for e in diff["ops"]}
    e = by_key[(slow["kind"], tuple(slow["shape"]), slow["candidate"])]
    assert e["status"] == "changed" and e["change"] == pytest.approx(1.0)
    removed = [k for k, e in by_key.items() if e["status"] == "removed"]
    assert {k[:2] for k in removed} == {dropped}
    assert sum(e["status"] == "same" for e in diff["ops"]) == len(new["ops"]) - 1
    md = "\n".join(report.diff_markdown(diff))
    assert "+100% (slower)" in md and "removed:" in md


def test_compare_through_the_cli(quick_doc, tmp_path, capsys):
    _, _, old_path = quick_doc
    out = tmp_path / "again.json"
    rc = main(["bench", "ops", "--quick", "--kinds", "rms", "--json", str(out), "--compare", str(old_path)])
    assert rc == 0
    doc = json.loads(out.read_text())
    statuses = {e["status"] for e in doc["compare"]["ops"]}
    assert "removed" in statuses  # the other kinds
    assert statuses <= {"same", "changed", "removed", "added", "not comparable"}
    assert "PASSED | bench ops" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["bench", "ops", "--quick", "--kinds", "batchnorm"], "unknown norm kind"),
        (["bench", "ops", "--quick", "--compare", "{missing}"], "no such benchmark file"),
        (["bench", "ops", "--quick", "--compare", "{notbench}"], "not a normonnx benchmark file"),
        (["bench", "ops", "--quick", "--threads", "0"], "--threads must be at least 1"),
    ],
)
def test_usage_errors_exit_2_before_running(argv, message, tmp_path, capsys):
    notbench = tmp_path / "other.json"
    notbench.write_text(json.dumps({"schema": "something/else"}))
    argv = [a.format(missing=tmp_path / "nope.json", notbench=notbench) for a in argv]
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert message in captured.err and "FAILED |" in captured.out


def test_measure_interleaves_round_robin():
    log: list[str] = []
    cands = {n: (lambda n=n: log.append(n)) for n in "abc"}
    t = measure(cands, budget_s=0.0, warmup=1, min_rounds=5, max_rounds=5, sample_s=0.0, max_inner=1)
    assert [t[n].n for n in "abc"] == [5, 5, 5]
    timed = log[3:]  # after one warm-up call each
    # every round: (untimed + timed call) for each candidate in some order
    rounds = [timed[i : i + 6] for i in range(0, len(timed), 6)]
    assert len(rounds) == 5
    for r in rounds:
        assert sorted(r) == ["a", "a", "b", "b", "c", "c"]
        assert r[0] == r[1] and r[2] == r[3] and r[4] == r[5]
    assert len({tuple(r[::2]) for r in rounds}) > 1  # the order is reshuffled


def test_measure_isolated_keeps_one_candidate_alive_at_a_time():
    log: list[tuple[str, str]] = []
    alive: set[str] = set()

    class Candidate:
        def __init__(self, name: str) -> None:
            assert not alive, f"{name} built while {alive} still alive"
            self.name = name
            alive.add(name)
            log.append(("build", name))

        def __call__(self) -> None:
            assert alive == {self.name}
            log.append(("call", self.name))

        def __del__(self) -> None:
            alive.discard(self.name)
            log.append(("release", self.name))

    factories = {n: (lambda n=n: Candidate(n)) for n in "abc"}
    t = measure_isolated(factories, rounds=4, block_s=0.0, warmup=2, sample_s=0.0, max_inner=1)
    assert not alive
    assert [len(t[n].block_medians_ms) for n in "abc"] == [4, 4, 4]
    assert all(t[n].n == 4 for n in "abc")  # block_s=0: one sample per block
    builds = [n for e, n in log if e == "build"]
    assert len(builds) == 12 and all(sorted(builds[i : i + 3]) == ["a", "b", "c"] for i in range(0, 12, 3))
    # build, warm-up call, estimate call, timed sample, release: never another candidate in between
    for i in range(0, len(log), 5):
        assert [e for e, _ in log[i : i + 5]] == ["build", "call", "call", "call", "release"]
        assert len({n for _, n in log[i : i + 5]}) == 1
    # paired ratio: per round a/b, then the median
    t["a"].block_medians_ms[:] = [2.0, 4.0, 9.0, 2.0]
    t["b"].block_medians_ms[:] = [1.0, 1.0, 3.0, 1.0]
    assert paired_ratio(t["a"], t["b"]) == pytest.approx(2.5)


def test_quick_model_bench_times_default_sessions(tmp_path):
    """One real model through `bench models --quick`: the default-session block is there for the
    three ONNX files, with paired speed-ups (1 for the default export itself) and its table."""
    path, md = tmp_path / "m.json", tmp_path / "m.md"
    # a file written before, with another script's marked section (bench_export's, in BENCHMARKS.md)
    kept = "<!-- bench_export: begin -->\n## export table\n| a | b |\n<!-- bench_export: end -->\n"
    md.write_text("# an older bench report\n\nold numbers\n\n" + kept)
    assert (
        main(["bench", "models", "--quick", "--models", "resnet_gn", "--json", str(path), "--markdown", str(md)]) == 0
    )
    rows = {r["candidate"]: r for r in json.loads(path.read_text())["models"]}
    assert "default_session" not in rows["torch"]
    for name in ("onnx:default", "onnx:normonnx", "onnx:normonnx+optimize"):
        d = rows[name]["default_session"]
        assert d["median_ms"] > 0 and d["rounds"] >= 1 and d["samples"] >= 1
        assert math.isfinite(d["speedup_vs_default_export"]) and d["speedup_vs_default_export"] > 0
    assert rows["onnx:default"]["default_session"]["speedup_vs_default_export"] == 1.0
    head = rows["onnx:normonnx+optimize"]["default_session"]["headroom"]
    assert set(head) == {"norm→Neg", "norm removed"}
    assert all(h["median_ms"] > 0 and h["speedup_vs_default_export"] > 0 for h in head.values())
    text = md.read_text()
    assert "### End to end in default onnxruntime sessions" in text and "| resnet_gn |" in text
    assert "headroom: norm→Neg" in text
    assert text.count(kept) == 1 and "old numbers" not in text  # the report is new, the section kept


def test_keep_sections_appends_only_the_marked_blocks_the_new_report_lacks():
    from normonnx.bench.markdown import keep_sections

    a = "<!-- a: begin -->\nA1\n<!-- a: end -->\n"
    b = "<!-- b-2: begin -->\nB\n<!-- b-2: end -->\n"
    old = "stale text\n" + a + "between\n" + b
    assert keep_sections(old, "fresh\n") == "fresh\n\n" + a + "\n" + b
    fresh_a = "<!-- a: begin -->\nA2\n<!-- a: end -->\n"
    assert keep_sections(old, "fresh\n" + fresh_a) == "fresh\n" + fresh_a + "\n" + b  # the new a wins
    assert keep_sections("no sections", "fresh") == "fresh"
    # a begin without its end is not a section
    assert keep_sections("<!-- c: begin -->\nC\n", "fresh\n") == "fresh\n"


def test_norm_replaced_swaps_exactly_the_norm_nodes():
    """bench models' headroom files: every norm node becomes Neg / Identity of its input, or no file."""
    spec = NormSpec("layer", normalized_shape=(64,), rank=3)
    rng = np.random.default_rng(0)
    m = _norm_model()
    # a decomposed norm has no single node to swap: no bound
    assert norm_replaced(m, "Neg") is None
    # one LayerNormalization node (native lowering) between the Relus
    native, _ = lower_model(
        helper.make_model(
            helper.make_graph(
                [
                    helper.make_node("Relu", ["x"], ["r"], name="pre"),
                    make_norm_node(spec, "r", {"weight": "w", "bias": "b"}, "y", "ln"),
                    helper.make_node("Relu", ["y"], ["out"], name="post"),
                ],
                "m",
                [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8, 64])],
                [helper.make_tensor_value_info("out", TensorProto.FLOAT, [2, 8, 64])],
                [
                    numpy_helper.from_array(rng.standard_normal(64).astype(np.float32), "w"),
                    numpy_helper.from_array(rng.standard_normal(64).astype(np.float32), "b"),
                ],
                value_info=[helper.make_tensor_value_info("r", TensorProto.FLOAT, [2, 8, 64])],
            ),
            opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("normonnx", 1)],
            ir_version=10,
        ),
        prefer=["native"],
    )
    assert [n.op_type for n in native.graph.node] == ["Relu", "LayerNormalization", "Relu"]
    neg = norm_replaced(native, "Neg")
    assert [n.op_type for n in neg.graph.node] == ["Relu", "Neg", "Relu"] and list(neg.graph.node[1].input) == ["r"]
    x = rng.standard_normal((2, 8, 64)).astype(np.float32)
    (y,) = onnxruntime.InferenceSession(neg.SerializeToString()).run(None, {"x": x})
    np.testing.assert_array_equal(y, np.maximum(-np.maximum(x, 0), 0))
    assert norm_replaced(neg, "Identity") is None  # no norm left


def test_ort_copy_really_copies():
    x = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    fn, op = bops.ort_copy(x, threads=1)
    assert op == "Identity"
    y = fn()[0]
    assert np.array_equal(x, y) and not np.shares_memory(x, y)
    with pytest.raises(ValueError, match="Identity or Mul"):
        bops.copy_model("Add")


def _norm_model() -> onnx.ModelProto:
    """Relu → normonnx LayerNorm (lowered: decomposed, with metadata) → Relu, plus a torch-scoped node."""
    spec = NormSpec("layer", normalized_shape=(64,), rank=3)
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array((1 + 0.1 * rng.standard_normal(64)).astype(np.float32), "w")
    b = numpy_helper.from_array((0.1 * rng.standard_normal(64)).astype(np.float32), "b")
    gn_scoped = helper.make_node("Neg", ["y"], ["z"], name="scoped_neg")
    gn_scoped.metadata_props.add(
        key="namespace", value=": M/gn: torch.nn.modules.normalization.GroupNorm/neg: aten.neg.default"
    )
    nodes = [
        helper.make_node("Relu", ["x"], ["r"], name="pre"),
        make_norm_node(spec, "r", {"weight": "w", "bias": "b"}, "y", "ln"),
        gn_scoped,
        helper.make_node("Relu", ["z"], ["out"], name="post"),
    ]
    g = helper.make_graph(
        nodes,
        "m",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8, 64])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [2, 8, 64])],
        [w, b],
        value_info=[helper.make_tensor_value_info("r", TensorProto.FLOAT, [2, 8, 64])],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("normonnx", 1)])
    m.ir_version = 10
    lowered, records = lower_model(m, prefer=["decomposed"])
    assert [r.strategy for r in records] == ["decomposed"]
    return lowered


def test_norm_attribution_and_profile(tmp_path):
    model = _norm_model()
    names = norm_node_names(model)
    lowered = [n.name for n in model.graph.node if any(p.key == "normonnx.norm" for p in n.metadata_props)]
    assert len(lowered) > 3
    assert names == set(lowered) | {"scoped_neg"}  # Relu nodes are not norm nodes
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    p = profile(str(path), {"x": np.ones((2, 8, 64), np.float32)}, threads=1, runs=2)
    assert p["kernel_ms"] > 0 and 0 < p["norm_share"] < 1
    assert sum(g["share"] for g in p["by_op"]) == pytest.approx(1.0)
    relu = [g for g in p["by_op"] if g["op"] == "Relu"]
    assert relu and all(not g["norm"] for g in relu)
    # whatever onnxruntime fused the decomposition into, its time is attributed to the norm
    assert any(g["norm"] for g in p["by_op"])


class _ResidualNorms(torch.nn.Module):
    """A pre-norm residual step (plain and gated) whose sums are read again: fused with their
    residual Adds by normonnx export, with the sum as a second output."""

    def __init__(self, identity_norms: bool = False) -> None:
        super().__init__()
        make = (lambda: torch.nn.Identity()) if identity_norms else (lambda: torch.nn.LayerNorm(64))
        self.n1, self.n2 = make(), make()

    def forward(self, x, r, g):
        s = x + r
        t = s + g.unsqueeze(1) * self.n1(s)
        return self.n2(t), t


def test_norm_replaced_keeps_the_residual_sums_of_fused_forms(tmp_path):
    """A fused residual (and gated residual) LayerNorm kernel node becomes its sum, written to its
    sum output, then Neg / Identity: the Identity file computes the model with identity norms."""
    from normonnx.exporter import export

    torch.manual_seed(0)
    model = _ResidualNorms().eval()
    args = tuple(torch.randn(*s) for s in ((2, 8, 64), (2, 8, 64), (2, 64)))
    path = str(tmp_path / "m.onnx")
    res = export(model, args, path)
    assert res.fired.get("residual.layer", 0) >= 1, res.fired
    m = onnx.load(path)
    kernels = [n for n in m.graph.node if n.op_type == "LayerNorm"]
    assert kernels and any(len(n.output) > 1 for n in kernels)  # a fused form with its sum read again
    ident = norm_replaced(m, "Identity")
    assert ident is not None and not [n for n in ident.graph.node if n.op_type == "LayerNorm"]
    feed = {i.name: a.numpy() for i, a in zip(m.graph.input, args)}
    got = onnxruntime.InferenceSession(ident.SerializeToString()).run(None, feed)
    with torch.no_grad():
        want = _ResidualNorms(identity_norms=True)(*args)
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b.numpy(), rtol=1e-6, atol=1e-6)
    neg = norm_replaced(m, "Neg")
    assert neg is not None and sum(n.op_type == "Neg" for n in neg.graph.node) == len(kernels)


@pytest.mark.parametrize("as_list", [False, True])
def test_default_visit_runs_the_model_on_its_feed(as_list):
    """The benchmark scripts' candidate: each visit opens a session of the model and its call runs
    that session on the feed (by input name, or a list in input order)."""
    g = helper.make_graph(
        [helper.make_node("Sub", ["A", "B"], ["Y"])],
        "sub",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, [2, 3]) for n in ("A", "B")],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [2, 3])],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    a, b = np.arange(6, dtype=np.float32).reshape(2, 3), np.full((2, 3), 2.0, np.float32)
    build = default_visit(m, [a, b] if as_list else {"B": b, "A": a}, 1)
    call = build()
    (y,) = call()
    np.testing.assert_array_equal(y, a - b)  # the inputs in their places: A − B, not B − A
    (y2,) = build()()
    np.testing.assert_array_equal(y2, y)


@pytest.mark.parametrize("case", ["layer:2,5,32", "layer_cf:1,8,3,4", "rms:2,3,64"])
def test_kernel_chain_computes_the_node_length_times(case):
    """scripts/bench_kernel_chain.py times a chain of one norm node: it must compute that node applied
    `length` times, each reading the previous output (checked against the one-node file run three
    times), and its Neg chain must be that of Neg."""
    import importlib.util
    import pathlib

    path = pathlib.Path(__file__).resolve().parents[1] / "scripts" / "bench_kernel_chain.py"
    spec = importlib.util.spec_from_file_location("bench_kernel_chain", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    one, shape, x = mod.kernel_one(case)
    m = mod.chain(one, shape, 3)
    op = one.graph.node[0].op_type
    assert [n.op_type for n in m.graph.node] == [op] * 3 and op in {"LayerNorm", "RMSNorm"}
    y = x
    for _ in range(3):
        y = default_visit(one, {"X": y}, 1)()()[0]
    (got,) = default_visit(m, {"X": x}, 1)()()
    np.testing.assert_array_equal(got, y)
    (neg,) = default_visit(mod.chain(mod.neg_one(shape), shape, 3), {"X": x}, 1)()()
    np.testing.assert_array_equal(neg, -x)
