"""Contrib lowering: onnxruntime's own fused norm ops, where their semantics equal the normonnx op's.

One strategy, ``contrib``, with a capability entry per kind like every other strategy, so the
selector, the capability table and ``--prefer`` treat it the same way. It is a ``--target cuda``
strategy, tried first there. Two of the ops have CPU kernels too, which is how their wiring is
verified here; on CPU normonnx's own kernels are the better lowering, so no CPU rows.

- group → ``com.microsoft.GroupNorm`` (the diffusion kernel; CUDA/ROCm only):
  ``Transpose(NCHW→NHWC) → GroupNorm(channels_last=1, groups, epsilon, activation) → Transpose``.
  It computes ``(x − μ_ng)/√(σ²_ng + ε)·γ_c + β_c``, with ``activation=1`` the SiLU ``y·sigmoid(y)``.
  The kernel takes rank 4, float32/float16, an even number of channels per group and at most 512
  of them (its channels-per-block sizes); γ/β are float32 inputs (a float16 model's are Cast,
  exactly; missing ones become ones/zeros).
- rms → ``SimplifiedLayerNormalization`` (default domain as onnxruntime registers it, CPU and
  CUDA): ``x/√(mean(x²) + ε)·scale`` over the trailing axes, ``stash_type=1`` (float32 statistics).
  Below opset 23 only (RMSNormalization-23 is the better lowering there). A residual input is
  spelled out as the ``Add`` before it.
- layer with a residual input (``residual.layer`` fused it) → ``com.microsoft.SkipLayerNormalization``
  (CPU and CUDA): inputs ``(x, residual, γ, β)``, ε; output 3 is ``x + residual`` when the residual
  stream reads it. Last axis only, rank 2 or 3. A plain LayerNorm is the native op's (or the
  kernel's): the contrib op saves nothing without a residual. A fused modulation is spelled out
  after it.

Fidelity (the kernels' source):
- the contrib GroupNorm (``contrib_ops/cuda/diffusion/group_norm_impl.cu``) accumulates Σx and Σx²
  in float32 and forms σ² = E[x²] − E[x]²;
- SkipLayerNormalization forms ``rsigma = rsqrt(Σx²/n − μ² + ε)`` from one pass, in float32 on
  CUDA (``bert/layer_norm.cuh``) and in the input type on CPU (``cpu/skip_layer_norm.cc``).
That is the hazard for which GroupNormalization-21 is marked unstable: catastrophic cancellation
when |mean| ≫ std (offset 1e3 inputs). Both are marked unstable and are taken only with
``allow_unstable``. SimplifiedLayerNormalization sums squares (no cancellation): stable up to
4096 elements, the bound the table gives onnxruntime's other float32-accumulating norm kernels.

:func:`cpu_equivalent` replaces the CUDA-only GroupNorm by its reference semantics in standard
ops (same layout and parameters) so a ``--target cuda`` graph can be run and checked on CPU.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..rejection import OK, CheckResult, Rejection
from ..spec import NormSpec
from .base import Capability, Strategy
from .builder import Builder
from .decomposed import build_decomposed
from .fused import modulate

MS_DOMAIN = "com.microsoft"
MAX_CHANNELS_PER_GROUP = 512
RMS_MAX_ELEMENTS = 4096
_F32_16 = frozenset({"float32", "float16"})
NOTE_GROUP = "com.microsoft.GroupNorm (CUDA): σ² = E[x²] − E[x]² accumulated in float32"
NOTE_SKIP = "com.microsoft.SkipLayerNormalization: residual Add + LayerNorm, σ² = E[x²] − E[x]² in one float32 pass"
NOTE_RMS = "SimplifiedLayerNormalization: onnxruntime's RMSNorm kernel, float32 statistics; below opset 23"


class Contrib(Strategy):
    name = "contrib"
    description = "onnxruntime contrib ops (GroupNorm, SkipLayerNormalization, SimplifiedLayerNormalization)"
    capabilities = {
        "group": Capability(13, {"cpu": frozenset(), "cuda": _F32_16}, False, NOTE_GROUP),
        "layer": Capability(13, {"cpu": frozenset(), "cuda": _F32_16}, False, NOTE_SKIP),
        "rms": Capability(13, {"cpu": frozenset(), "cuda": _F32_16}, True, NOTE_RMS, RMS_MAX_ELEMENTS),
    }

    def check_spec(self, spec: NormSpec, opset: int, provider: str) -> CheckResult:
        if spec.gated:
            return Rejection("a gated residual (x + gate·r) has no contrib op")
        if spec.kind == "group":
            return _check_group(spec)
        if spec.kind == "rms":
            if opset >= 23:
                return Rejection("opset >= 23: the native RMSNormalization is the better lowering")
            return OK
        return _check_skip(spec)

    def lower(self, b: Builder, spec: NormSpec, x: str, params: Mapping[str, str]) -> str:
        if spec.kind == "layer":  # the residual input is the op's own (check_spec requires it)
            y = _skip_layer_norm(b, spec, x, params)
            return modulate(b, spec, y, params)
        return super().lower(b, spec, x, params)

    def build(self, b: Builder, spec: NormSpec, x: str, params: Mapping[str, str]) -> str:
        if spec.kind == "group":
            return _group_norm(b, spec, x, params)
        if spec.kind == "rms":
            return _simplified_layer_norm(b, spec, x, params)
        raise AssertionError("check_spec admits only residual LayerNorms, which lower() builds")

    def extra_opsets(self) -> dict[str, int]:
        return {MS_DOMAIN: 1}


def _check_group(spec: NormSpec) -> CheckResult:
    if spec.activation not in ("", "silu"):
        return Rejection(f"com.microsoft.GroupNorm fuses SiLU only, not {spec.activation}")
    if spec.rank != 4:
        return Rejection(f"com.microsoft.GroupNorm takes rank-4 inputs, this one is rank {spec.rank}")
    cpg = (spec.channels or 0) // (spec.groups or 1)
    if cpg % 2:
        return Rejection(f"{cpg} channels per group is odd; the kernel reads channels in pairs")
    if cpg > MAX_CHANNELS_PER_GROUP:
        return Rejection(f"{cpg} channels per group exceeds the kernel's block of {MAX_CHANNELS_PER_GROUP}")
    return OK


def _check_skip(spec: NormSpec) -> CheckResult:
    if not spec.residual:
        return Rejection("SkipLayerNormalization needs a residual input; a plain LayerNorm is the native op's")
    if spec.channels_first:
        return Rejection("channels-first LayerNorm: SkipLayerNormalization normalises the last axis")
    n_axes = len(spec.normalized_shape or ())
    if n_axes != 1:
        return Rejection(f"normalises {n_axes} trailing axes; SkipLayerNormalization normalises one")
    if spec.rank not in (2, 3):
        return Rejection(f"rank-{spec.rank} input; SkipLayerNormalization takes rank 2 or 3")
    return OK


def _float32(b: Builder, spec: NormSpec, value: str | None, fill: float, n: int) -> str:
    """γ/β as the float32 input the contrib GroupNorm reads: Cast (exact from float16), or filled."""
    if not value:
        return b.const(np.full((n,), fill, np.float32))
    return value if spec.onnx_dtype == TensorProto.FLOAT else b.cast(value, TensorProto.FLOAT)


def _group_norm(b: Builder, spec: NormSpec, x: str, params: Mapping[str, str]) -> str:
    c = spec.channels or 0
    gamma = _float32(b, spec, params.get("weight"), 1.0, c)
    beta = _float32(b, spec, params.get("bias"), 0.0, c)
    xt = b.op("Transpose", [x], perm=[0, 2, 3, 1])
    y = b.op(
        "GroupNorm",
        [xt, gamma, beta],
        domain=MS_DOMAIN,
        activation=1 if spec.activation == "silu" else 0,
        channels_last=1,
        epsilon=spec.eps,
        groups=spec.groups,
    )
    return b.op("Transpose", [y], perm=[0, 3, 1, 2])


def _simplified_layer_norm(b: Builder, spec: NormSpec, x: str, params: Mapping[str, str]) -> str:
    ns = tuple(spec.normalized_shape or ())
    scale = params.get("weight") or b.const(np.ones(ns, helper.tensor_dtype_to_np_dtype(spec.onnx_dtype)))
    return b.op("SimplifiedLayerNormalization", [x, scale], axis=-len(ns), epsilon=spec.eps, stash_type=1)


def _skip_layer_norm(b: Builder, spec: NormSpec, x: str, params: Mapping[str, str]) -> str:
    """``SkipLayerNormalization(x, residual, γ, β)``; its output 3 is the sum (``b.named["sum"]``,
    which the lowering names after the node's second output or drops when nothing reads it)."""
    ns = tuple(spec.normalized_shape or ())
    gamma = params.get("weight") or b.const(np.ones(ns, helper.tensor_dtype_to_np_dtype(spec.onnx_dtype)))
    inputs = [x, params["residual"], gamma] + ([params["bias"]] if params.get("bias") else [])
    y, s = b.fresh("skip_layer_norm"), b.fresh("input_skip_sum")
    # outputs 1 and 2 (mean, inv_std_var) are training outputs, not produced
    b.nodes.append(
        helper.make_node(
            "SkipLayerNormalization",
            inputs,
            [y, "", "", s],
            name=b.fresh("SkipLayerNormalization"),
            domain=MS_DOMAIN,
            epsilon=spec.eps,
        )
    )
    b.named["sum"] = s
    return y


#: onnxruntime ops this strategy emits in the default domain, where onnxruntime registers them and
#: onnx defines nothing by that name (onnx's checker does not know them)
DEFAULT_DOMAIN_OPS = frozenset({"SimplifiedLayerNormalization"})


def for_checker(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` as onnx's checker can validate it: :data:`DEFAULT_DOMAIN_OPS` nodes moved to the
    contrib domain, which the checker does not look into (the model itself unchanged)."""
    if not any(n.op_type in DEFAULT_DOMAIN_OPS and n.domain in ("", "ai.onnx") for n in model.graph.node):
        return model
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for n in out.graph.node:
        if n.op_type in DEFAULT_DOMAIN_OPS and n.domain in ("", "ai.onnx"):
            n.domain = MS_DOMAIN
    if not any(o.domain == MS_DOMAIN for o in out.opset_import):
        out.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
    return out


def cpu_equivalent(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model with each ``com.microsoft.GroupNorm`` replaced by its reference semantics in
    standard ops (NHWC in and out; statistics two-pass in float64), so a CUDA-targeted graph can be
    run and checked on CPU. Other contrib ops have CPU kernels and stay."""
    if not any(n.domain == MS_DOMAIN and n.op_type == "GroupNorm" for n in model.graph.node):
        return model
    from .graph import value_types

    out = onnx.ModelProto()
    out.CopyFrom(model)
    opset = next(o.version for o in out.opset_import if o.domain in ("", "ai.onnx"))
    types = value_types(out)
    consts = {t.name: t for t in out.graph.initializer}
    nodes: list[onnx.NodeProto] = []
    for k, node in enumerate(out.graph.node):
        if node.domain != MS_DOMAIN or node.op_type != "GroupNorm":
            nodes.append(node)
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if not int(attrs.get("channels_last", 1)):
            raise ValueError("only channels_last=1 GroupNorm is emitted by normonnx")
        t = types.get(node.input[0])
        et = t.tensor_type.elem_type if t is not None else TensorProto.FLOAT
        gamma = consts.get(node.input[1])
        c = int(numpy_helper.to_array(gamma).shape[0]) if gamma is not None else int(_dims(types, node.input[1])[0])
        spec = NormSpec(
            "group",
            eps=float(attrs.get("epsilon", 1e-5)),
            channels=c,
            groups=int(attrs["groups"]),
            activation="silu" if int(attrs.get("activation", 0)) else "",
            dtype={TensorProto.FLOAT: "float32", TensorProto.FLOAT16: "float16"}[et],
            rank=4,
        )
        b = Builder(opset, prefix=f"{node.name or 'gn'}_{k}/reference")
        gb = list(node.input[1:3]) if et == TensorProto.FLOAT else [b.cast(v, et) for v in node.input[1:3]]
        xt = b.op("Transpose", [node.input[0]], perm=[0, 3, 1, 2])
        y = build_decomposed(b, spec, xt, {"weight": gb[0], "bias": gb[1]})
        b.nodes.append(
            helper.make_node("Transpose", [y], [node.output[0]], name=b.fresh("Transpose"), perm=[0, 2, 3, 1])
        )
        nodes.extend(b.nodes)
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    if not any(n.domain == MS_DOMAIN for n in nodes):
        keep = [o for o in out.opset_import if o.domain != MS_DOMAIN]
        del out.opset_import[:]
        out.opset_import.extend(keep)
    return out


def _dims(types: Mapping[str, onnx.TypeProto], name: str) -> list[int]:
    t = types.get(name)
    if t is None or not t.tensor_type.HasField("shape"):
        raise ValueError(f"the shape of GroupNorm's gamma {name!r} is unknown")
    return [d.dim_value for d in t.tensor_type.shape.dim]


STRATEGY = Contrib()
