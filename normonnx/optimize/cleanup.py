"""Cleanup between the rule families: onnxscript's semantics-neutral passes, and ONNX shape inference.

:func:`cleanup` runs after the folds, after ``canonical`` and after lowering (see
:mod:`normonnx.optimize.pipeline`); :func:`infer` gives the rules the static shapes they prove
things with, also across the ``normonnx.<Op>`` nodes that have no ONNX inference function.
"""

from __future__ import annotations

import onnx


def cleanup(model: onnx.ModelProto) -> onnx.ModelProto:
    """onnxscript's constant folding + no-op rewrites + dead nodes/functions + CSE.

    We compose onnxscript's passes ourselves rather than calling ``onnxscript.optimizer.optimize``
    because its default rewrite rules also fold BatchNorm (in float32, without our refusal
    reasons) and fuse Cast chains; here only semantics-neutral rules run: x·1, x+0, x−0, x/1,
    identity Cast/Expand/Transpose/Reshape, Reshape∘Reshape, Transpose∘Transpose, inference
    Dropout. Functions are not inlined, so normonnx function-strategy nodes survive.
    """
    import onnx_ir as ir
    from onnxscript import optimizer, rewriter
    from onnxscript.rewriter.rules import common as R

    rules = [
        R.mul_by_1_rule,
        R.add_0_rule,
        R.sub_0_rule,
        R.div_by_1_rule,
        R.dropout_inference_rule,
        R.dropout_zero_rule,
        R.no_op_cast_rule,
        R.no_op_expand_rule,
        R.no_op_transpose_rule,
        R.reshape_reshape_rule,
        R.transpose_transpose_rule,
        R.unsqueeze_unsqueeze_rule,
        R.squeeze_reshape_1d_rule,
        R.materialize_reshape_shape_rule,
    ]
    from .. import external

    m = ir.serde.deserialize_model(infer(model))  # static shapes let Shape/Size fold
    external.set_ir_base(m)  # external weights stay lazy; folding a small one reads it from disk
    common = ir.passes.common
    with external.opaque_weights(m):  # no pass reads (or maps) a large weight
        for _ in range(2):
            folded = optimizer.fold_constants(m)
            m = rewriter.rewrite(m, rules)
            changed = common.IdentityEliminationPass()(m).modified
            if not (folded.modified or changed):
                break
        for p in (
            common.RemoveUnusedNodesPass(),
            common.LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0),
            common.DeduplicateInitializersPass(),
            common.CommonSubexpressionEliminationPass(),
            common.RemoveUnusedNodesPass(),
            common.RemoveUnusedFunctionsPass(),
            common.RemoveUnusedOpsetsPass(),
        ):
            p(m)
    return infer(ir.serde.serialize_model(m))


def infer(model: onnx.ModelProto) -> onnx.ModelProto:
    """ONNX shape inference (with data propagation) where it works; the model unchanged otherwise.

    A portable ``normonnx.<Op>`` norm has no ONNX inference function, so inference would stop at
    the first fused norm (legacy exports, whose shapes come only from inference, then could not
    prove the next GroupNorm's view). Norms keep their input's shape and type, so inference runs on
    a copy where each is an Identity, and the shapes it finds are given to the model.
    """
    from ..lowering import function
    from ..norms import BY_OP

    function.register_schemas()
    norms = [i for i, n in enumerate(model.graph.node) if n.domain == "normonnx" and n.op_type in BY_OP]
    probe = model
    if norms:
        probe = onnx.ModelProto()
        probe.CopyFrom(model)
        for i in norms:
            n = probe.graph.node[i]
            x, y = n.input[0], n.output[0]
            n.Clear()
            n.op_type, n.domain = "Identity", ""
            n.input.append(x)
            n.output.append(y)
    try:
        inferred = onnx.shape_inference.infer_shapes(probe, strict_mode=False, data_prop=True)
    except Exception:  # inference is an aid for matching, never a requirement
        return model
    if not norms:
        return inferred
    out = onnx.ModelProto()
    out.CopyFrom(model)
    del out.graph.value_info[:]
    out.graph.value_info.extend(inferred.graph.value_info)
    return out
