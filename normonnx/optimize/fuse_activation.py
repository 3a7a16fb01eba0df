"""The activation right after a channel norm, fused into it: ``act(N(x))`` → one node with
``activation="silu"`` or ``"relu"`` (the table is :data:`normonnx.norms.base.ACTIVATIONS`).

Rules, for each channel norm ``N`` of normonnx — ``GroupNorm`` (diffusion UNets' GroupNorm+SiLU,
ResNet-GN's GroupNorm+ReLU), ``InstanceNorm`` (fast style transfer, CycleGAN/pix2pix generators:
InstanceNorm+ReLU), ``BatchNorm`` (pre-activation ResNets and DenseNets: BatchNorm+ReLU with no
conv before it to fold into):

- ``<kind>_norm.silu``: ``Mul(y, Sigmoid(y))`` (either operand order) becomes ``activation="silu"``;
- ``<kind>_norm.relu``: ``Relu(y)`` becomes ``activation="relu"``.

Proof: the norm's output ``y`` is read by the activation's nodes only and is no graph output, so
its value exists nowhere else; the fused node computes ``act(N(x))`` in the norm's dtype,
element by element, exactly as the nodes did. Look-alikes (LeakyRelu, a Mul by another value's
sigmoid) and a norm output with other readers are refused with their reason. A norm that
already carries an activation is left alone.

These run after the families that create the norm nodes (:mod:`.fuse_group`), so a GroupNorm's
affine Mul/Add has been absorbed before its activation is; at export, the captured norm nodes
are already there. A BatchNorm with an activation is no longer an affine map:
:mod:`.fold_batchnorm` refuses it.
"""

from __future__ import annotations

import onnx

from ..rejection import OK, CheckResult, Rejection
from .graph import GraphView, norm_node_params, spec_of_node
from .rewriter import Rewrite, norm_rewrite
from .rule import Match, Rule

DOMAIN = "normonnx"
#: the normonnx channel-norm ops and the prefix of their rules' names
CHANNEL_NORMS = (("GroupNorm", "group_norm"), ("InstanceNorm", "instance_norm"), ("BatchNorm", "batch_norm"))


def _plain(n: onnx.NodeProto, op: str) -> bool:
    return n.op_type == op and n.domain in ("", "ai.onnx")


class _NormActivation(Rule):
    """The activation right after a channel norm becomes its ``activation`` (see the module)."""

    anchor_domain = DOMAIN
    activation = ""
    prefix = ""

    @staticmethod
    def readers(g: GraphView, node: onnx.NodeProto, count: int, what: str) -> list[onnx.NodeProto] | Rejection:
        """The nodes reading the norm's output, if there are exactly ``count`` and it is no graph output."""
        y = node.output[0]
        users = g.users(y)
        if y in g.graph_outputs or len(users) != count:
            return Rejection(f"output is not read by exactly {what}")
        return users

    def check(self, g: GraphView, m: Match) -> CheckResult:
        spec = spec_of_node(g, m.anchor)
        if spec is None:
            return Rejection("the norm's input type is unknown", m.anchor.input[0])
        if spec.activation:
            return Rejection(f"already has activation {spec.activation!r}", m.anchor.output[0])
        m.facts["spec"] = spec.replace(activation=self.activation)
        return OK

    def rewrite(self, g: GraphView, m: Match) -> Rewrite:
        return norm_rewrite(
            g,
            m.nodes,
            m.output,
            m.facts["spec"],
            m.anchor.input[0],
            norm_node_params(m.anchor),
            m.anchor,
            f"{self.prefix}_{self.activation}",
        )


class NormSiLU(_NormActivation):
    activation = "silu"

    def match(self, g: GraphView, node: onnx.NodeProto) -> Match | Rejection:
        y, users = node.output[0], self.readers(g, node, 2, "Sigmoid and Mul")
        if isinstance(users, Rejection):
            return users
        sig = next((u for u in users if _plain(u, "Sigmoid")), None)
        mul = next((u for u in users if _plain(u, "Mul")), None)
        if sig is None or mul is None or sorted(mul.input) != sorted([y, sig.output[0]]):
            return Rejection("not y·sigmoid(y)")
        return Match(node, [node, sig, mul], mul.output[0])


class NormReLU(_NormActivation):
    activation = "relu"

    def match(self, g: GraphView, node: onnx.NodeProto) -> Match | Rejection:
        users = self.readers(g, node, 1, "one Relu")
        if isinstance(users, Rejection):
            return users
        relu = users[0]
        if not _plain(relu, "Relu"):
            return Rejection(f"read by {relu.op_type}, not Relu")
        return Match(node, [node, relu], relu.output[0])


def _rule(base: type[_NormActivation], op: str, prefix: str) -> Rule:
    cls = type(
        f"{op}{base.activation.upper()}",
        (base,),
        {"name": f"{prefix}.{base.activation}", "anchor_ops": (op,), "prefix": prefix, "__doc__": base.__doc__},
    )
    return cls()


RULES: list[Rule] = [_rule(base, op, prefix) for op, prefix in CHANNEL_NORMS for base in (NormSiLU, NormReLU)]
