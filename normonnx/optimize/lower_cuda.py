"""``--target cuda``: onnxruntime contrib ops where their semantics equal the normonnx op's.

Runs before :func:`normonnx.lowering.graph.lower_model`; every normonnx node it does not take (with
the reason recorded as a refusal) is lowered by the core's selector as usual.

- group → ``com.microsoft.GroupNorm`` (onnxruntime's diffusion kernel, CUDA/ROCm only):
  ``Transpose(NCHW→NHWC) → GroupNorm(channels_last=1, groups, epsilon, activation) → Transpose back``.
  The op computes exactly ``(x − μ_ng)/√(σ²_ng + ε)·γ_c + β_c`` with ``activation=1`` the SiLU
  ``y·sigmoid(y)``. Taken only where the kernel accepts the input: rank 4, float32/float16, C/G
  even and C/G ≤ 512 (its channels-per-block limits), γ/β fed as float32 (constants converted,
  exactly; missing ones become ones/zeros). Numerical note: the kernel accumulates Σx and Σx² in
  float32 and forms σ² = E[x²] − E[x]², so it loses accuracy when |mean| ≫ std (offset 1e3
  inputs); mathematically equal, numerically weaker than the float64 decomposition.
- rms → ``SimplifiedLayerNormalization`` (onnxruntime's RMSNorm, default domain, CPU and CUDA
  kernels): ``x/√(mean(x²) + ε)·scale`` over the trailing axes, statistics in float32
  (stash_type=1). Only below opset 23 (where RMSNormalization exists) and for ≤ 4096 normalised
  elements, the bound the core applies to onnxruntime's float32-accumulating norm kernels.
  onnxruntime registers it in the default domain (as its own transformer optimizer emits it), so
  ``onnx.checker`` does not know it; the model is for onnxruntime.

- residual Add + layer → ``com.microsoft.SkipLayerNormalization`` (onnxruntime's BERT fusion op,
  CPU and CUDA kernels): inputs (input, skip, gamma, beta), attribute epsilon, outputs (output,
  mean, inv_std_var, input_skip_bias_sum); it computes ``LN(input + skip)·γ + β`` over the last
  axis of a rank-2/3 input. Taken when the LayerNorm's input is an ``Add`` of two operands of
  the same shape (no broadcasting), the norm is over the last axis only (not channels-first),
  float32/float16, γ/β constant (a missing γ becomes ones). When the sum is read elsewhere too
  (the residual stream of a transformer block) those reads take the fourth output, so the Add
  disappears entirely. A LayerNorm whose residual input the CPU pipeline already fused
  (``residual.layer``) is taken the same way, with its sum output as output 3 and a fused
  modulation spelled out after it; a fused residual RMSNorm becomes Add + the RMSNorm lowering
  again. Numerical note: the kernels form σ² from Σx and Σx² in one pass (like
  the contrib GroupNorm), mathematically equal, weaker than the float64 decomposition at large
  offsets; the CPU provider has the kernel too, so the rewrite is verified numerically here.

No CUDA here: :func:`cpu_equivalent` replaces the contrib GroupNorm by its reference semantics in
standard ops (same layout and parameters; statistics two-pass in float64) so the lowered graph's
wiring — transposes, γ/β, ε, groups, activation — is verified numerically on CPU.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper

from ..lowering.builder import Builder
from ..lowering.decomposed import build_decomposed
from ..spec import NormSpec
from ._graph import OK, GraphView, Rewrite, Verdict, apply_rewrites, attr, norm_node_params, spec_of_node, tensor

MS_DOMAIN = "com.microsoft"
MAX_CHANNELS_PER_GROUP = 512
RMS_MAX_ELEMENTS = 4096
NOTE_GROUP = "com.microsoft.GroupNorm: σ² = E[x²] − E[x]² accumulated in float32 (weaker than float64 at large offsets)"


def check_group(g: GraphView, spec: NormSpec) -> Verdict:
    if spec.rank != 4:
        return Verdict.fail(f"com.microsoft.GroupNorm takes rank-4 inputs, this one is rank {spec.rank}")
    if spec.dtype not in ("float32", "float16"):
        return Verdict.fail(f"com.microsoft.GroupNorm has float32/float16 kernels, not {spec.dtype}")
    cpg = (spec.channels or 0) // (spec.groups or 1)
    if cpg % 2:
        return Verdict.fail(f"{cpg} channels per group is odd; the kernel reads channels in pairs")
    if cpg > MAX_CHANNELS_PER_GROUP:
        return Verdict.fail(f"{cpg} channels per group exceeds the kernel's block of {MAX_CHANNELS_PER_GROUP}")
    return OK


def check_rms(g: GraphView, spec: NormSpec) -> Verdict:
    if g.opset >= 23:
        return Verdict.fail("opset >= 23: the native RMSNormalization is the better lowering")
    n = spec.reduction_size
    if n is None or n > RMS_MAX_ELEMENTS:
        return Verdict.fail(
            f"{n} normalised elements: onnxruntime's float32 accumulation is accurate up to {RMS_MAX_ELEMENTS}"
        )
    return OK


def check_skip(
    g: GraphView, spec: NormSpec, operands: tuple[str, str], at: onnx.NodeProto, params: dict[str, str]
) -> Verdict:
    """Can ``SkipLayerNormalization(*operands, γ, β)`` placed at node ``at`` (the residual Add, or
    a LayerNorm with a fused residual input) replace the residual Add and the LayerNorm?"""
    if spec.channels_first:
        return Verdict.fail("channels-first LayerNorm: SkipLayerNormalization normalises the last axis")
    if len(spec.normalized_shape or ()) != 1:
        return Verdict.fail(
            f"normalises {len(spec.normalized_shape or ())} trailing axes; SkipLayerNormalization normalises one"
        )
    if spec.dtype not in ("float32", "float16"):
        return Verdict.fail(f"SkipLayerNormalization has float32/float16 kernels, not {spec.dtype}")
    sa, sb = g.shape(operands[0]), g.shape(operands[1])
    if sa is None or sb is None or None in sa or None in sb:
        return Verdict.fail("the residual Add's operand shapes are unknown", operands[0])
    if tuple(sa) != tuple(sb):
        return Verdict.fail(
            f"the residual Add broadcasts {list(sa)} with {list(sb)}; SkipLayerNormalization needs equal shapes",
            operands[0],
        )
    if len(sa) not in (2, 3):
        return Verdict.fail(f"rank-{len(sa)} input; SkipLayerNormalization takes rank 2 or 3", operands[0])
    for slot in ("weight", "bias"):
        v = params.get(slot)
        if not v:
            continue
        if g.const(v) is None:
            return Verdict.fail(f"the LayerNorm's {slot} is computed at run time, not a constant", v)
        producer = g.op(v)
        if producer is not None and g.index[id(producer)] > g.index[id(at)]:
            return Verdict.fail(f"the LayerNorm's {slot} is produced after the residual Add", v)
    return OK


def _float32_param(
    g: GraphView, value: str | None, fill: float, c: int, b: Builder
) -> tuple[str, list[onnx.TensorProto]]:
    """γ/β as float32 for the kernel: constants converted (exact), run-time values Cast, absent filled."""
    if not value:
        t = tensor(g, f"cuda_gn_{'gamma' if fill else 'beta'}", np.full((c,), fill, np.float32))
        return t.name, [t]
    arr = g.const(value)
    if arr is not None:
        if arr.dtype == np.float32:
            return value, []
        t = tensor(g, f"{value}/float32", arr.astype(np.float32))
        return t.name, [t]
    return b.cast(value, TensorProto.FLOAT), []


#: contrib lowerings whose kernels are numerically weaker than the selector's stable strategies:
#: taken only with ``allow_unstable`` (like GroupNormalization-21, whose function body forms σ² the
#: same way, in the capability table)
UNSTABLE = {"cuda.group_norm": NOTE_GROUP}


def lower_for_cuda(
    model: onnx.ModelProto, report: Any, *, allow_unstable: bool = False
) -> tuple[onnx.ModelProto, list[dict[str, Any]]]:
    """Replace the normonnx nodes onnxruntime's CUDA contrib ops compute exactly; others stay.

    ``com.microsoft.GroupNorm`` forms σ² = E[x²] − E[x]² in float32 (its CUDA kernel source), the
    hazard for which GroupNormalization-21 is marked unstable: it is refused, with that reason,
    unless ``allow_unstable``."""
    g = GraphView(model)
    rewrites: list[Rewrite] = []
    records: list[dict[str, Any]] = []
    claimed: set[int] = set()  # residual Adds already fused (one Add may feed two LayerNorms)
    for node in g.nodes:
        if node.domain != "normonnx" or node.op_type not in ("GroupNorm", "RMSNorm", "LayerNorm"):
            continue
        spec = spec_of_node(g, node)
        if spec is None:
            continue
        if spec.gated:  # no contrib op takes a gated residual: the node stays (its function body runs)
            rule = "cuda.skip_layer_norm" if spec.kind == "layer" else "cuda.rms_norm"
            report.refuse(rule, node, Verdict.fail("a gated residual (x + gate·r) has no contrib op", node.input[0]))
            continue
        if spec.kind == "layer":
            rewrite, record = _skip_layer_norm(g, node, spec, report, claimed)
            if rewrite is not None:
                rewrites.append(rewrite)
                records.append(record)
            continue
        rule = "cuda.group_norm" if spec.kind == "group" else "cuda.rms_norm"
        if rule in UNSTABLE and not allow_unstable:
            report.refuse(
                rule,
                node,
                Verdict.fail(f"numerically unstable ({UNSTABLE[rule]}); pass allow_unstable to use it", node.output[0]),
            )
            continue
        verdict = check_group(g, spec) if spec.kind == "group" else check_rms(g, spec)
        if not verdict:
            report.refuse(rule, node, Verdict.fail(verdict.reason, node.output[0]))
            continue
        b = Builder(g.opset, prefix=g.fresh(node.name or node.output[0]))
        params = norm_node_params(node)
        inits: list[onnx.TensorProto] = []
        if spec.kind == "group":
            c = spec.channels or 0
            gamma, t1 = _float32_param(g, params.get("weight"), 1.0, c, b)
            beta, t2 = _float32_param(g, params.get("bias"), 0.0, c, b)
            inits += t1 + t2
            xt = b.op("Transpose", [node.input[0]], perm=[0, 2, 3, 1])
            y = b.op(
                "GroupNorm",
                [xt, gamma, beta],
                domain=MS_DOMAIN,
                activation=1 if spec.activation == "silu" else 0,
                channels_last=1,
                epsilon=spec.eps,
                groups=spec.groups,
            )
            b.nodes.append(
                helper.make_node("Transpose", [y], [node.output[0]], name=b.fresh("Transpose"), perm=[0, 3, 1, 2])
            )
            strategy, note = f"contrib:{MS_DOMAIN}.GroupNorm", NOTE_GROUP
        else:
            ns = spec.normalized_shape or ()
            x_in = node.input[0]
            if spec.residual:  # the Add the fusion took in, spelled out again (as before the fusion)
                x_in = node.output[1] if len(node.output) > 1 else b.fresh("residual_sum")
                b.nodes.append(
                    helper.make_node("Add", [node.input[0], params["residual"]], [x_in], name=b.fresh("Add"))
                )
            scale = params.get("weight")
            if not scale:
                t = tensor(g, "cuda_rms_scale", np.ones(ns, helper.tensor_dtype_to_np_dtype(spec.onnx_dtype)))
                inits.append(t)
                scale = t.name
            b.nodes.append(
                helper.make_node(
                    "SimplifiedLayerNormalization",
                    [x_in, scale],
                    [node.output[0]],
                    name=b.fresh("SimplifiedLayerNormalization"),
                    axis=-len(ns),
                    epsilon=spec.eps,
                    stash_type=1,
                )
            )
            strategy, note = "contrib:SimplifiedLayerNormalization", "onnxruntime RMSNorm kernel, float32 statistics"
        for n in b.nodes:
            n.metadata_props.add(key="normonnx.norm", value=node.name)
            n.metadata_props.add(key="normonnx.strategy", value=strategy)
        rewrites.append(Rewrite([node], b.nodes, inits))
        records.append(
            {
                "node": node.name,
                "kind": spec.kind,
                "strategy": strategy,
                "spec": spec.key(),
                "rejected": [],
                "scope": "",
                "activation": spec.activation,
                "note": note,
            }
        )
        report.fired[rule] += 1
    if not rewrites:
        return model, records
    out = apply_rewrites(model, g, rewrites)
    if any(n.domain == MS_DOMAIN for n in out.graph.node) and not any(o.domain == MS_DOMAIN for o in out.opset_import):
        out.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
    return out, records


def _skip_layer_norm(
    g: GraphView, node: onnx.NodeProto, spec: NormSpec, report: Any, claimed: set[int]
) -> tuple[Rewrite | None, dict[str, Any]]:
    """The rewrite of Add → normonnx LayerNorm into SkipLayerNormalization, or (None, {}) if not taken."""
    rule = "cuda.skip_layer_norm"
    if spec.residual:  # the residual Add already fused into the node (normonnx/optimize/fuse_residual.py)
        return _fused_skip_layer_norm(g, node, spec, report)
    add = g.op(node.input[0], "Add")
    if add is None or add.domain not in ("", "ai.onnx"):  # not a residual LayerNorm: the core lowers it
        return None, {}
    if id(add) in claimed:
        report.refuse(
            rule, node, Verdict.fail("its residual Add is already fused into another LayerNorm", add.output[0])
        )
        return None, {}
    params = norm_node_params(node)
    verdict = check_skip(g, spec, (add.input[0], add.input[1]), add, params)
    if not verdict:
        report.refuse(rule, node, verdict)
        return None, {}
    gamma, inits = _skip_gamma(g, spec, params)
    s = add.output[0]
    residual_read = s in g.graph_outputs or any(u is not node for u in g.users(s))
    outputs = [node.output[0], "", "", s] if residual_read else [node.output[0]]
    inputs = [add.input[0], add.input[1], gamma] + ([params["bias"]] if params.get("bias") else [])
    new = helper.make_node(
        "SkipLayerNormalization",
        inputs,
        outputs,
        name=g.fresh(node.name or "skip_layer_norm"),
        domain=MS_DOMAIN,
        epsilon=spec.eps,
    )
    strategy = f"contrib:{MS_DOMAIN}.SkipLayerNormalization"
    new.metadata_props.extend(node.metadata_props)
    new.metadata_props.add(key="normonnx.norm", value=node.name)
    new.metadata_props.add(key="normonnx.strategy", value=strategy)
    report.fired[rule] += 1
    claimed.add(id(add))
    record = {
        "node": node.name,
        "kind": "layer",
        "strategy": strategy,
        "spec": spec.key(),
        "rejected": [],
        "scope": "",
        "activation": "",
        "note": "residual Add fused; σ² from Σx, Σx² in one pass"
        + ("; the sum kept as output 3" if residual_read else ""),
    }
    # at the Add: readers of the sum between the Add and the LayerNorm still see it produced first
    return Rewrite([add, node], [new], inits, at=add), record


def _skip_gamma(g: GraphView, spec: NormSpec, params: dict[str, str]) -> tuple[str, list[onnx.TensorProto]]:
    """SkipLayerNormalization's γ input: the norm's weight, or ones when it has none (γ is required)."""
    if params.get("weight"):
        return params["weight"], []
    t = tensor(
        g, "cuda_skip_ln_gamma", np.ones(spec.normalized_shape, helper.tensor_dtype_to_np_dtype(spec.onnx_dtype))
    )
    return t.name, [t]


def _fused_skip_layer_norm(
    g: GraphView, node: onnx.NodeProto, spec: NormSpec, report: Any
) -> tuple[Rewrite | None, dict[str, Any]]:
    """A LayerNorm with a fused residual input → SkipLayerNormalization (its sum output, when the
    node has one, as output 3), a fused modulation spelled out after it; (None, {}) if not taken
    (the core then lowers the node, e.g. as Add + LayerNormalization)."""
    rule = "cuda.skip_layer_norm"
    params = norm_node_params(node)
    verdict = check_skip(g, spec, (node.input[0], params["residual"]), node, params)
    if not verdict:
        report.refuse(rule, node, verdict)
        return None, {}
    gamma, inits = _skip_gamma(g, spec, params)
    b = Builder(g.opset, prefix=g.fresh(node.name or "skip_layer_norm"))
    sum_out = node.output[1] if len(node.output) > 1 else ""
    y = node.output[0] if not spec.modulation else b.fresh("skip_ln")
    b.nodes.append(
        helper.make_node(
            "SkipLayerNormalization",
            [node.input[0], params["residual"], gamma] + ([params["bias"]] if params.get("bias") else []),
            [y, "", "", sum_out] if sum_out else [y],
            name=b.fresh("SkipLayerNormalization"),
            domain=MS_DOMAIN,
            epsilon=spec.eps,
        )
    )
    if spec.modulation:
        from ..lowering.fused import modulate

        modulate(b, spec, y, params)
        b.nodes[-1].output[0] = node.output[0]  # the modulation's last Add computes the node's output
    strategy = f"contrib:{MS_DOMAIN}.SkipLayerNormalization"
    for n in b.nodes:
        n.metadata_props.extend(node.metadata_props)
        n.metadata_props.add(key="normonnx.norm", value=node.name)
        n.metadata_props.add(key="normonnx.strategy", value=strategy)
    report.fired[rule] += 1
    record = {
        "node": node.name,
        "kind": "layer",
        "strategy": strategy,
        "spec": spec.key(),
        "rejected": [],
        "scope": "",
        "activation": "",
        "note": "residual input fused; σ² from Σx, Σx² in one pass"
        + ("; the sum kept as output 3" if sum_out else "")
        + ("; modulation as Mul/Add after it" if spec.modulation else ""),
    }
    return Rewrite([node], b.nodes, inits), record


def cpu_equivalent(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model with each ``com.microsoft.GroupNorm`` replaced by its reference semantics in
    standard ops (NHWC in and out), so a CUDA-targeted graph can be run and checked on CPU."""
    g = GraphView(model)
    rewrites = []
    for node in g.nodes:
        if node.domain != MS_DOMAIN or node.op_type != "GroupNorm":
            continue
        if not int(attr(node, "channels_last", 1)):
            raise ValueError("only channels_last=1 GroupNorm is emitted by normonnx")
        et = g.elem_type(node.input[0]) or TensorProto.FLOAT
        gamma = g.const(node.input[1])
        c = int(gamma.shape[0]) if gamma is not None else int((g.shape(node.input[1]) or (0,))[0])  # type: ignore[arg-type]
        spec = NormSpec(
            "group",
            eps=float(attr(node, "epsilon", 1e-5)),
            channels=c,
            groups=int(attr(node, "groups")),
            activation="silu" if int(attr(node, "activation", 0)) else "",
            dtype={TensorProto.FLOAT: "float32", TensorProto.FLOAT16: "float16"}[et],
            rank=4,
        )
        b = Builder(g.opset, prefix=g.fresh(node.name or "gn"))
        gb = [node.input[1], node.input[2]] if et == TensorProto.FLOAT else [b.cast(v, et) for v in node.input[1:3]]
        xt = b.op("Transpose", [node.input[0]], perm=[0, 3, 1, 2])
        y = build_decomposed(b, spec, xt, {"weight": gb[0], "bias": gb[1]})
        b.nodes.append(
            helper.make_node("Transpose", [y], [node.output[0]], name=b.fresh("Transpose"), perm=[0, 2, 3, 1])
        )
        rewrites.append(Rewrite([node], b.nodes))
    if not rewrites:
        return model
    out = apply_rewrites(model, g, rewrites)
    ops = [o for o in out.opset_import if o.domain != MS_DOMAIN]
    del out.opset_import[:]
    out.opset_import.extend(ops)
    return out
