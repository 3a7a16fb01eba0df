"""LayerNorm fusions: every spelling of ``y = (x − μ)/√(σ² + ε)·γ + β`` becomes one ``normonnx.LayerNorm``.

Rules (run in this order until none fires):

- ``layer_norm.decomposed``: ReduceMean → Sub → (Pow 2 | Mul x·x) → ReduceMean → Add ε →
  (Sqrt → Div | Sqrt → Reciprocal → Mul | 1/Sqrt → Mul | Pow −0.5 → Mul), over the trailing axes
  (``nn.LayerNorm``, one or several axes) or over axis 1 of an N,C,… tensor (ConvNeXt's
  channels-first LayerNorm). Proven: same axes for μ and σ², keepdims=1 (or keepdims=0 restored by
  a Reshape), σ² divided by N — or by another constant such as an unbiased ``x.var()``'s N−1, rewritten
  exactly as ε' = ε/f and a scale f^(−1/2) on the output (:class:`~normonnx.optimize.patterns.Moments`),
  recorded in the node's ``normonnx.proof`` —, ε a non-negative constant, all
  in float32/float64 (float16 statistics without a Cast would be computed in float32 after fusion).
  onnxruntime's own LayerNorm fusion only catches the Pow/Div spelling.
- ``layer_norm.native``: LayerNormalization-17 lifted into the portable op, so the target's
  selector decides (native up to 4096 normalised elements, the float64 decomposition beyond).
- ``layer_norm.affine``: a following Mul by γ / Add of β (constants varying only along the
  normalised axes) absorbed as the op's weight / bias.
- ``layer_norm.channels_first``: Transpose(0,2,…,1) → LayerNorm(last axis) → Transpose(0,r−1,1,…)
  (timm's ``LayerNorm2d``, ConvNeXt's permute form) → channels-first LayerNorm on the untransposed x.
- ``layer_norm.cast_wrapper``: Cast(fp16→fp32) → LayerNorm → Cast(→fp16) becomes an fp16 LayerNorm,
  whose contract is exactly that (statistics in fp32), see :mod:`normonnx.optimize.fuse_rms`.
"""

from __future__ import annotations

import onnx

from ..rejection import OK, CheckResult, Rejection
from ._rules import CastWrapper, DecomposedNorm, NativeNorm, NormAffine
from .graph import FLOAT_TYPES, GraphView, attr, norm_node_params, spec_of_node
from .patterns import check_normalize, decomposed_spec
from .rewriter import Rewrite, norm_rewrite
from .rule import Match, Rule

DOMAIN = "normonnx"


def layer_layout(g: GraphView, x: str, axes: tuple[int, ...]) -> tuple[CheckResult, tuple[int, ...], bool]:
    """(verdict, normalized_shape, channels_first) of a norm over ``axes`` of ``x``."""
    shape = g.shape(x)
    assert shape is not None
    r = len(shape)
    if axes == tuple(range(r - len(axes), r)):
        dims = tuple(shape[a] for a in axes)
        if not all(isinstance(d, int) for d in dims):
            return Rejection(f"normalised dims {list(dims)} of {x!r} are not static", x), (), False
        return OK, tuple(int(d) for d in dims), False  # type: ignore[arg-type]
    if axes == (1,) and r >= 3:
        c = shape[1]
        if not isinstance(c, int):
            return Rejection(f"channel dim of {x!r} is not static", x), (), False
        return OK, (c,), True
    return (
        Rejection(f"reduces axes {list(axes)} of a rank-{r} input: neither the trailing axes nor the channel axis", x),
        (),
        False,
    )


class LayerNormDecomposed(DecomposedNorm):
    name = "layer_norm.decomposed"
    centered = True
    hint = "layer_norm"

    def check(self, g: GraphView, m: Match) -> CheckResult:
        nm = m.facts["nm"]
        v, mo = check_normalize(g, nm, want_centered=True)
        if not v:
            return v
        v, ns, cf = layer_layout(g, nm.x, mo.axes)
        if not v:
            return v
        return decomposed_spec(
            m,
            mo,
            "layer",
            ns,
            dtype=FLOAT_TYPES[g.elem_type(nm.x)],  # type: ignore[index]
            rank=g.rank(nm.x),
            normalized_shape=ns,
            channels_first=cf,
        )


class LayerNormNative(NativeNorm):
    name = "layer_norm.native"
    anchor_ops = ("LayerNormalization",)
    hint = "layer_norm"
    kind = "layer"


class LayerNormAffine(NormAffine):
    name = "layer_norm.affine"
    anchor_ops = ("LayerNorm",)
    op = "LayerNorm"


class LayerNormChannelsFirst(Rule):
    name = "layer_norm.channels_first"
    anchor_ops = ("Transpose",)
    skip_lowered = True

    def match(self, g: GraphView, node: onnx.NodeProto) -> Match | Rejection:
        ln = g.producer.get(node.input[0])
        if ln is None or ln.domain != DOMAIN or ln.op_type != "LayerNorm":
            return Rejection("input is not a normonnx LayerNorm")
        t1 = g.op(ln.input[0], "Transpose")
        if t1 is None:
            return Rejection("the LayerNorm's input is not a Transpose")
        return Match(node, [t1, ln, node], node.output[0], {"t1": t1, "ln": ln})

    def check(self, g: GraphView, m: Match) -> CheckResult:
        t1, ln, t2 = m.facts["t1"], m.facts["ln"], m.anchor
        x0 = t1.input[0]
        r = g.rank(x0)
        if r is None or r < 3:
            return Rejection(f"rank of {x0!r} is unknown or < 3", x0)
        to_last = [0, *range(2, r), 1]
        to_first = [0, r - 1, *range(1, r - 1)]
        p1, p2 = list(attr(t1, "perm", [])), list(attr(t2, "perm", []))
        if p1 != to_last or p2 != to_first:
            return Rejection(
                f"perms {p1} / {p2} are not channels-last {to_last} / channels-first {to_first}", t1.output[0]
            )
        spec = spec_of_node(g, ln)
        if spec is None or spec.channels_first or len(spec.normalized_shape or ()) != 1:
            return Rejection("the LayerNorm does not normalise exactly the last axis", ln.output[0])
        c = (g.shape(x0) or (None, None))[1]
        if c != spec.normalized_shape[0]:
            return Rejection(f"channel dim {c} of {x0!r} differs from normalized_shape {spec.normalized_shape}", x0)
        m.facts["spec"] = spec.replace(channels_first=True, rank=r)
        return OK

    def rewrite(self, g: GraphView, m: Match) -> Rewrite:
        ln = m.facts["ln"]
        return norm_rewrite(
            g, m.nodes, m.output, m.facts["spec"], m.facts["t1"].input[0], norm_node_params(ln), ln, "layer_norm_cf"
        )  # type: ignore[arg-type]


RULES: list[Rule] = [
    LayerNormDecomposed(),
    LayerNormNative(),
    LayerNormAffine(),
    LayerNormChannelsFirst(),
    CastWrapper("layer_norm.cast_wrapper", "LayerNorm"),
]
