"""Small inline models and fault planting for the localization tests.

Each ``plant_*`` edits an exported ONNX model the way a real conversion bug would, keeping the
node metadata a lowering or fusion would leave, and returns the edited copy.
"""

from __future__ import annotations

import numpy as np
import onnx
import torch
import torch.nn as nn
from onnx import helper, numpy_helper


class Net(nn.Module):
    """conv → bn → relu → gn → conv → instance norm → tokens → layer norm → linear."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.act = nn.ReLU(inplace=True)
        self.gn = nn.GroupNorm(4, 8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.inorm = nn.InstanceNorm2d(8, affine=True)
        self.ln = nn.LayerNorm(8)
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act(self.bn(self.conv(x)))
        y = self.gn(y)
        y = self.inorm(self.conv2(y))
        y = y.flatten(2).transpose(1, 2)  # [N, HW, C] tokens
        return self.fc(self.ln(y))


def make_net(seed: int = 0) -> Net:
    """A Net with non-trivial norm parameters and running statistics (eval mode)."""
    torch.manual_seed(seed)
    m = Net().eval()
    with torch.no_grad():
        for mod in (m.bn, m.gn, m.inorm, m.ln):
            mod.weight.uniform_(0.5, 1.5)
            mod.bias.normal_(0.0, 0.5)
        m.bn.running_mean.normal_(0.0, 0.5)
        m.bn.running_var.uniform_(0.5, 2.0)
    return m


def example(seed: int = 1) -> torch.Tensor:
    return torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(seed))


def _meta(node: onnx.NodeProto) -> dict[str, str]:
    return {p.key: p.value for p in node.metadata_props}


def norm_nodes_of(model: onnx.ModelProto, kind_substring: str) -> list[int]:
    """Indices of the nodes of the lowered norm whose normonnx.norm name contains ``kind_substring``."""
    return [i for i, n in enumerate(model.graph.node) if kind_substring in _meta(n).get("normonnx.norm", "")]


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    m = onnx.ModelProto()
    m.CopyFrom(model)
    return m


def plant_wrong_eps(model: onnx.ModelProto, norm: str, eps: float) -> tuple[onnx.ModelProto, float]:
    """Set the epsilon of norm ``norm``: the native op's attribute, or the decomposition's Add-ε constant.

    Returns (model, old epsilon)."""
    m = _copy(model)
    idx = norm_nodes_of(m, norm)
    assert idx, f"no lowered norm named like {norm!r}"
    consts = {n.output[0]: n for i, n in enumerate(m.graph.node) if i in idx and n.op_type == "Constant"}
    inits = {t.name: t for t in m.graph.initializer}
    for i in idx:
        n = m.graph.node[i]
        for a in n.attribute:
            if a.name == "epsilon":
                old = a.f
                a.f = eps
                return m, old
        if n.op_type == "Add":  # var + ε in the decomposition: a scalar Constant or initializer
            for k, v in enumerate(n.input):
                c = consts.get(v)
                if c is not None:
                    arr = numpy_helper.to_array(c.attribute[0].t)
                    if arr.ndim == 0 and 0 < float(arr) < 1e-2:
                        c.attribute[0].t.CopyFrom(numpy_helper.from_array(np.asarray(eps, arr.dtype), name=v))
                        return m, float(arr)
                t = inits.get(v)
                if t is not None:
                    arr = numpy_helper.to_array(t)
                    if arr.ndim == 0 and 0 < float(arr) < 1e-2:
                        # a private copy: the constant may be shared with another norm's decomposition
                        name = f"planted_eps/{n.name}"
                        m.graph.initializer.append(numpy_helper.from_array(np.asarray(eps, arr.dtype), name))
                        n.input[k] = name
                        return m, float(arr)
    raise AssertionError(f"no epsilon found in norm {norm!r}")


def plant_gn18_per_group(model: onnx.ModelProto, net: Net) -> onnx.ModelProto:
    """Replace the GroupNorm subgraph by the deprecated GroupNormalization-18 whose scale and bias
    are per *group*: a converter that averaged γ, β over each group's channels (shape [G])."""
    m = _copy(model)
    idx = norm_nodes_of(m, "group_norm")
    nodes = [m.graph.node[i] for i in idx]
    members = set(idx)
    produced = {v for n in nodes for v in n.output}
    x = next(
        v for n in nodes for v in n.input if v and v not in produced and v not in {t.name for t in m.graph.initializer}
    )
    consumers_out = {v for i, n in enumerate(m.graph.node) if i not in members for v in n.input}
    y = next(v for n in nodes for v in n.output if v in consumers_out or v in {o.name for o in m.graph.output})
    g = net.gn.num_groups
    gamma = net.gn.weight.detach().numpy().reshape(g, -1).mean(1).astype(np.float32)
    beta = net.gn.bias.detach().numpy().reshape(g, -1).mean(1).astype(np.float32)
    m.graph.initializer.extend(
        [numpy_helper.from_array(gamma, "gn18_scale"), numpy_helper.from_array(beta, "gn18_bias")]
    )
    new = helper.make_node(
        "GroupNormalization", [x, "gn18_scale", "gn18_bias"], [y], name="gn18", num_groups=g, epsilon=net.gn.eps
    )
    new.metadata_props.extend(n for n in nodes[0].metadata_props if n.key not in ("normonnx.strategy",))
    new.metadata_props.add(key="normonnx.strategy", value="native")
    first = min(idx)
    kept = [n for i, n in enumerate(m.graph.node) if i not in members]
    kept.insert(first, new)
    del m.graph.node[:]
    m.graph.node.extend(kept)
    return m


def plant_layernorm_axis(model: onnx.ModelProto, axis: int = -2) -> onnx.ModelProto:
    """Normalise the native LayerNormalization over the wrong axes (tokens × channels)."""
    m = _copy(model)
    for i in norm_nodes_of(m, "layer_norm"):
        n = m.graph.node[i]
        if n.op_type == "LayerNormalization":
            for a in n.attribute:
                if a.name == "axis":
                    a.i = axis
                    return m
    raise AssertionError("no native LayerNormalization")


def plant_bn_fold_sign(model: onnx.ModelProto, net: Net) -> onnx.ModelProto:
    """The export folds bn into the conv before it (W' = W·s, b' = β + (b − μ)·s, s = γ/√(σ²+ε));
    replace the folded bias by a fold with a sign error: b' = β − (b − μ)·s."""
    m = _copy(model)
    conv = next(n for n in m.graph.node if n.op_type == "Conv" and n.input[2].endswith("/bn_folded_bias"))
    s = (net.bn.weight / torch.sqrt(net.bn.running_var + net.bn.eps)).detach().numpy()
    b = net.bn.bias.detach().numpy() - (net.conv.bias.detach().numpy() - net.bn.running_mean.numpy()) * s
    t = next(t for t in m.graph.initializer if t.name == conv.input[2])
    t.CopyFrom(numpy_helper.from_array(b.astype(np.float32), t.name))
    return m


def strip_scope_metadata(model: onnx.ModelProto) -> onnx.ModelProto:
    """Drop the exporter's module-scope metadata (keep normonnx's), as opset conversion does."""
    m = _copy(model)
    for n in m.graph.node:
        keep = [p for p in n.metadata_props if p.key.startswith("normonnx.")]
        del n.metadata_props[:]
        n.metadata_props.extend(keep)
    return m


def net_and_inputs() -> tuple[Net, tuple[torch.Tensor]]:
    """MODEL factory for the CLI tests: ``tests/verify/_faults.py:net_and_inputs``."""
    return make_net(), (example(),)
