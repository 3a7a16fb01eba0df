"""The one input generator (normonnx.verify.inputs): every check draws the same values for the
same stress entry and seed, sizes follow the ONNX file's symbolic dims, and ``normonnx.verify``
is the callable package however it is reached."""

from __future__ import annotations

import types

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from normonnx.errors import InputError
from normonnx.verify import inputs as gen


def _model(*inputs: tuple[str, int, list]) -> onnx.ModelProto:
    ins = [helper.make_tensor_value_info(n, et, dims) for n, et, dims in inputs]
    out = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    node = helper.make_node("Identity", [inputs[0][0]], ["y"])
    return helper.make_model(helper.make_graph([node], "g", ins, [out]))


def test_draw_takes_its_values_from_the_stress_table():
    ref = np.random.default_rng(3).standard_normal((4, 5))
    for name, expect in (("normal", ref), ("offset", ref + 1000.0), ("tiny_scale", ref * 1e-3)):
        got = gen.draw((4, 5), np.float32, np.random.default_rng(3), name)
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got, expect.astype(np.float32))
    const = gen.draw((2, 3, 4), np.float32, np.random.default_rng(0), "constant_channels")
    assert [float(v) for v in np.unique(const[:, 1])] == [3.75]
    ints = gen.draw((1000,), np.int64, np.random.default_rng(0))
    assert set(np.unique(ints).tolist()) == set(range(gen.INT_HIGH))
    assert not gen.draw((8,), np.bool_, np.random.default_rng(0)).any()


def test_optimize_feeds_and_model_stress_draw_the_same_offset_values():
    m = _model(("x", TensorProto.FLOAT, ["N", 6]))
    specs = gen.input_specs(m)
    assert specs == [("x", (2, 6), np.dtype("float32"))]  # a symbolic batch becomes 2
    fed = gen.feeds(specs, np.random.default_rng(5), "offset")["x"]
    like = gen.random_like([np.zeros((2, 6), np.float32)], np.random.default_rng(5), "offset")[0]
    np.testing.assert_array_equal(fed, like)
    assert 990 < float(fed.mean()) < 1010


def test_second_size_gives_one_size_per_dim_name_and_none_when_static():
    m = _model(("x", TensorProto.FLOAT, ["N", 4, "T"]), ("ids", TensorProto.INT64, ["N", "T"]))
    ex = [np.zeros((2, 4, 5), np.float32), np.zeros((2, 5), np.int64)]
    second = gen.second_size(m, ex)
    assert [a.shape for a in second] == [(3, 4, 10), (3, 10)]
    assert second[0].dtype == np.float32 and second[1].dtype == np.int64
    assert gen.second_size(_model(("x", TensorProto.FLOAT, [2, 4])), [np.zeros((2, 4), np.float32)]) is None


def test_large_shapes_scale_only_dynamic_non_batch_axes_of_float_inputs():
    m = _model(("x", TensorProto.FLOAT, ["N", 3, "H", "W"]), ("ids", TensorProto.INT64, ["N", "T"]))
    ex = [np.zeros((1, 3, 8, 8), np.float32), np.zeros((1, 7), np.int64)]
    assert gen.large_shapes(m, ex, 4) == [(1, 3, 32, 32), (1, 7)]
    assert gen.large_shapes(_model(("x", TensorProto.FLOAT, [1, 3])), [np.zeros((1, 3), np.float32)], 4) is None


def test_inputs_from_onnx_refuses_dynamic_dims():
    with pytest.raises(InputError, match="dynamic dims"):
        gen.inputs_from_onnx(_model(("x", TensorProto.FLOAT, ["N", 3])), 0)
    (a,) = gen.inputs_from_onnx(_model(("x", TensorProto.FLOAT16, [2, 3])), 0)
    assert a.shape == (2, 3) and a.dtype == np.float16


def test_normonnx_verify_is_the_callable_package(net, x, exported):
    import normonnx
    import normonnx.verify.localize  # importing a submodule binds normonnx.verify to the package

    assert isinstance(normonnx.verify, types.ModuleType)
    rep = normonnx.verify(net, exported[18][0], (x,), n_samples=1)
    assert rep.passed and [s.name for s in rep.samples][:2] == ["example", "random0"]
    assert rep.samples[0].outputs[0].max_abs < 1e-4
