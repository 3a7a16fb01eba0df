"""Bad specs and impossible lowerings raise normonnx errors that name the problem and the fix,
and the selector never returns a strategy that onnxruntime would reject at load time."""

from __future__ import annotations

import numpy as np
import pytest

from normonnx import kernels
from normonnx.errors import LoweringError, SpecError
from normonnx.lowering import OPSETS, STRATEGIES, build_model, format_capability_table, select
from normonnx.norms import KINDS, get_kind
from normonnx.runtime import session
from normonnx.spec import NormSpec


def test_groups_not_dividing_channels_lists_valid_groups():
    with pytest.raises(SpecError) as e:
        select(NormSpec("group", channels=6, groups=4), 21)
    assert "num_groups=4 does not divide channels=6" in str(e.value)
    assert "[1, 2, 3, 6]" in e.value.note


def test_opset_below_13_is_refused_with_range():
    with pytest.raises(LoweringError) as e:
        select(NormSpec("layer", normalized_shape=(8,)), 12)
    assert "opset 12" in str(e.value) and "13.." in e.value.note


def test_unknown_kind_and_dtype():
    with pytest.raises(SpecError, match="unknown norm kind 'weird'"):
        get_kind("weird")
    with pytest.raises(SpecError, match="unsupported dtype 'int8'"):
        NormSpec("layer", normalized_shape=(4,), dtype="int8")


def test_unsupported_dtype_for_forced_strategy_names_valid_ones():
    spec = NormSpec("group", channels=8, groups=2, dtype="float64")
    with pytest.raises(LoweringError) as e:
        select(spec, 21, prefer=["via_instance"], allow_unstable=True)
    msg = str(e.value)
    assert "float64 not supported on cpu" in msg
    assert "decomposed" in e.value.note and "function" in e.value.note


def test_selection_records_reasons():
    spec = NormSpec("group", channels=32, groups=8)
    sel = select(spec, 21, prefer=["native", "decomposed"])
    assert sel.strategy == "decomposed"
    reasons = dict(sel.rejected)
    assert "E[x²]−E[x]²" in reasons["native"]
    # the default CPU order starts with the compiled kernels; without the library that is a reason too
    sel = select(spec, 21)
    if kernels.available():
        assert sel.strategy == "native_kernel" and not sel.rejected
    else:
        assert sel.strategy == "decomposed" and "library" in dict(sel.rejected)["native_kernel"]


def test_capability_table_prints_every_strategy():
    text = format_capability_table(("cpu", "cuda"))
    for name in STRATEGIES:
        assert name in text
    assert "contrib" not in format_capability_table(("cpu",))  # a CUDA-only strategy: no CPU row
    assert "GroupNormalization-21" in text


def _all_specs():
    for kind in KINDS:
        for dtype in ("float32", "float16", "float64"):
            yield {
                "batch": NormSpec("batch", channels=4, running_stats=True, dtype=dtype, rank=4),
                "layer": NormSpec("layer", normalized_shape=(4,), dtype=dtype, rank=3),
                "instance": NormSpec("instance", channels=4, dtype=dtype, rank=4),
                "group": NormSpec("group", channels=4, groups=2, dtype=dtype, rank=4),
                "rms": NormSpec("rms", normalized_shape=(4,), has_bias=False, dtype=dtype, rank=3),
                "grn": NormSpec("grn", channels=4, channels_first=True, dtype=dtype, rank=4),
            }[kind]


@pytest.mark.parametrize("opset", OPSETS)
def test_selected_strategy_always_loads_and_runs_in_onnxruntime(opset):
    from onnx import helper

    loaded = 0
    for spec in _all_specs():
        for provider_order in (None, ("function",), ("via_instance", "decomposed")):
            sel = select(spec, opset, prefer=provider_order)
            params = KINDS[spec.kind].random_params(spec, np.random.default_rng(0))
            model = build_model(spec, params, opset, sel.strategy)
            shape = (2, 4, 3, 3) if spec.rank == 4 else (2, 3, 4)
            x = np.random.default_rng(1).standard_normal(shape).astype(helper.tensor_dtype_to_np_dtype(spec.onnx_dtype))
            (y,) = session(model, optimize=False).run({"X": x})
            assert y.shape == shape and np.isfinite(y).all()
            loaded += 1
    assert loaded == 9 * len(KINDS)  # 3 dtypes x 3 orders per kind
