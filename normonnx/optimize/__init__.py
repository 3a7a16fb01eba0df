"""``normonnx optimize``: turn the norms of any ONNX file back into single, correct nodes, and prove it.

:func:`optimize_model` runs the pipeline ``normonnx export`` shares
(:mod:`normonnx.optimize.pipeline`; each step a pass returning ``(model, modified)``):

1. shape facts          — ``Shape`` of statically shaped values folded to constants (legacy exports);
2. ``fold_batchnorm``   — BatchNormalization folded into a neighbouring Conv/ConvTranspose/Gemm/MatMul,
                          ``W' = W·γ/√(σ²+ε)``, ``b' = (b − μ)·γ/√(σ²+ε) + β``, in float64;
3. ``fold_param_norms`` — norms applied to constant weights (weight standardization, weight_norm)
                          evaluated once in float64 and replaced by the constant;
4. cleanup              — onnxscript's constant folding, no-op/identity rewrites, dead nodes, CSE;
5. ``canonical``        — the statistics' equivalent spellings made one (sum/N → mean, keepdims
                          restored by Unsqueeze/Reshape, no-op Expand/Reshape), then cleanup;
6. ``fuse_group``, ``fuse_layer``, ``fuse_rms`` — decomposed and native norms become portable
                          ``normonnx.<Op>`` nodes (:func:`normonnx.lowering.graph.make_norm_node`);
                          ``modulated``, ``residual`` — AdaLN's ``·(1 + scale) + shift`` and a residual
                          ``Add`` fused into those nodes (``NormSpec.modulation`` / ``NormSpec.residual``);
7. lowering             — :func:`normonnx.lowering.graph.lower_model` picks the best strategy per node
                          for the target (``--target cuda`` first tries onnxruntime's contrib ops,
                          :mod:`normonnx.optimize.lower_cuda`);
8. cleanup again, then verification (:mod:`normonnx.optimize.verify`): original and optimized run in
   onnxruntime with its own graph optimizations disabled, on random and stress inputs.

Every rule is a :class:`Rule` with three separate parts: ``match`` (the pattern: structure only),
``check`` (the proof: constants, axes, keepdims, dtypes, shapes — a failure is a :class:`Verdict`
with the reason and the offending value, never a bare ``False``) and ``rewrite`` (the replacement
as data). Values computed inside a match may not be read outside it; that is checked for every
rule by the driver. Refused candidates are reported with their reason; ``debug=True`` also reports
why near-misses did not match at all.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, ClassVar

import onnx

from ..errors import OptimizeError
from ._graph import OK, GraphView, Rewrite, Verdict, apply_rewrites, interior_check

__all__ = [
    "OK",
    "Match",
    "NoMatch",
    "OptimizeResult",
    "Pass",
    "Refusal",
    "Report",
    "Rule",
    "RulePass",
    "Verdict",
    "cleanup",
    "optimize_model",
    "rule_names",
]

TARGETS = ("cpu", "cuda")


# -- rules ----------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Match:
    """A structural match: the nodes the rewrite removes, the value it recomputes, and facts."""

    anchor: onnx.NodeProto
    nodes: list[onnx.NodeProto]
    output: str
    facts: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class NoMatch:
    """Why the pattern does not apply at a node (reported only in debug mode)."""

    reason: str


@dataclasses.dataclass(frozen=True)
class Refusal:
    """A candidate that matched the pattern but failed the check."""

    rule: str
    node: str
    reason: str
    value: str

    def as_dict(self) -> dict[str, str]:
        return dataclasses.asdict(self)

    def __str__(self) -> str:
        return f"{self.rule} at {self.node!r}: {self.reason}" + (f" [{self.value}]" if self.value else "")


class Rule:
    """One rewrite: pattern (``match``), proof (``check``), replacement (``rewrite``)."""

    #: "<family-ish>.<form>", e.g. "layer_norm.decomposed"; the key of the fired counts
    name: ClassVar[str] = ""
    #: op types of the node the pattern is anchored at (the node producing the matched output)
    anchor_ops: ClassVar[tuple[str, ...]] = ()
    anchor_domain: ClassVar[str] = ""
    #: the driver checks that values computed inside the match are not read outside it
    check_interior: ClassVar[bool] = True
    #: skip nodes that a normonnx lowering produced (``normonnx.strategy`` metadata): re-fusing the
    #: core's own decomposition would only churn the graph
    skip_lowered: ClassVar[bool] = False

    def match(self, g: GraphView, node: onnx.NodeProto) -> Match | NoMatch:
        raise NotImplementedError

    def check(self, g: GraphView, m: Match) -> Verdict:
        return OK

    def rewrite(self, g: GraphView, m: Match) -> Rewrite:
        raise NotImplementedError

    def candidates(self, g: GraphView) -> Iterable[onnx.NodeProto]:
        dom = ("", "ai.onnx") if self.anchor_domain == "" else (self.anchor_domain,)
        return [n for n in g.nodes if n.op_type in self.anchor_ops and n.domain in dom]


@dataclasses.dataclass
class Report:
    """What the passes did: fired counts per rule, refusals with reasons, debug near-misses."""

    debug: bool = False
    fired: Counter[str] = dataclasses.field(default_factory=Counter)
    refused: list[Refusal] = dataclasses.field(default_factory=list)
    misses: list[Refusal] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)

    def refuse(self, rule: str, node: onnx.NodeProto, verdict: Verdict) -> None:
        r = Refusal(rule, node.name or node.output[0], verdict.reason, verdict.value)
        if r not in self.refused:
            self.refused.append(r)

    def miss(self, rule: str, node: onnx.NodeProto, reason: str) -> None:
        if self.debug:
            r = Refusal(rule, node.name or node.output[0], reason, "")
            if r not in self.misses:
                self.misses.append(r)


class Pass:
    """A graph transformation: ``run(model, report) -> (model, modified)``."""

    name: str = ""

    def run(self, model: onnx.ModelProto, report: Report | None = None) -> tuple[onnx.ModelProto, bool]:
        raise NotImplementedError

    __call__ = run


class RulePass(Pass):
    """Apply a family of rules until none fires (each round: one scan per rule, disjoint matches)."""

    def __init__(self, name: str, rules: Sequence[Rule], max_rounds: int = 16) -> None:
        self.name = name
        self.rules = list(rules)
        self.max_rounds = max_rounds

    def run(self, model: onnx.ModelProto, report: Report | None = None) -> tuple[onnx.ModelProto, bool]:
        report = report if report is not None else Report()
        modified = False
        for _ in range(self.max_rounds):
            fired = False
            for rule in self.rules:
                model, n = apply_rule(rule, model, report)
                fired |= n > 0
            modified |= fired
            if not fired:
                break
        return model, modified


def apply_rule(rule: Rule, model: onnx.ModelProto, report: Report) -> tuple[onnx.ModelProto, int]:
    """One scan of ``rule`` over the graph; every accepted match is rewritten. Returns (model, count)."""
    g = GraphView(model)
    claimed: set[int] = set()
    rewrites: list[Rewrite] = []
    for node in rule.candidates(g):
        if id(node) in claimed:
            continue
        if not any(o in g.graph_outputs or g.users(o) for o in node.output if o):
            continue  # dead (an earlier rewrite bypassed it): cleanup removes it, nothing to prove
        if rule.skip_lowered:
            lowered = next((p.value for p in node.metadata_props if p.key == "normonnx.strategy"), None)
            if lowered is not None:
                report.miss(rule.name, node, f"already a normonnx lowering (strategy {lowered})")
                continue
        m = rule.match(g, node)
        if isinstance(m, NoMatch):
            report.miss(rule.name, node, m.reason)
            continue
        if any(id(n) in claimed for n in m.nodes):
            continue  # overlaps a match of this round; seen again next round
        verdict = rule.check(g, m)
        if verdict and rule.check_interior:
            shared = interior_check(g, m.nodes, m.output)
            if shared is not None:
                verdict = Verdict.fail(*shared)
        if not verdict:
            report.refuse(rule.name, node, verdict)
            continue
        rewrites.append(rule.rewrite(g, m))
        claimed |= {id(n) for n in m.nodes}
    if not rewrites:
        return model, 0
    report.fired[rule.name] += len(rewrites)
    return apply_rewrites(model, g, rewrites), len(rewrites)


# -- families -----------------------------------------------------------------------------------------------
def family_rules() -> dict[str, list[Rule]]:
    from . import (
        canonical,
        fold_batchnorm,
        fold_param_norms,
        fuse_group,
        fuse_layer,
        fuse_modulated,
        fuse_residual,
        fuse_rms,
    )

    mods = {
        "fold_batchnorm": fold_batchnorm,
        "fold_param_norms": fold_param_norms,
        "canonical": canonical,
        "fuse_group": fuse_group,
        "fuse_layer": fuse_layer,
        "fuse_rms": fuse_rms,
        "modulated": fuse_modulated,
        "residual": fuse_residual,
    }
    return {name: list(mod.RULES) for name, mod in mods.items()}


def rule_names() -> dict[str, list[str]]:
    """Family → rule names (what ``rules=`` accepts)."""
    return {f: [r.name for r in rules] for f, rules in family_rules().items()}


def _select(rules: Iterable[str] | None) -> dict[str, list[Rule]]:
    fams = family_rules()
    if rules is None:
        return fams
    wanted = set(rules)
    known = set(fams) | {r.name for rs in fams.values() for r in rs}
    unknown = sorted(wanted - known)
    if unknown:
        raise OptimizeError(
            f"unknown rule or family: {', '.join(unknown)}",
            note="valid: " + "; ".join(f"{f} ({', '.join(r.name for r in rs)})" for f, rs in fams.items()),
        )
    return {f: [r for r in rs if f in wanted or r.name in wanted] for f, rs in fams.items()}


# -- cleanup (onnxscript's optimizer) -------------------------------------------------------------------
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


# -- result ---------------------------------------------------------------------------------------------
@dataclasses.dataclass
class OptimizeResult:
    """What :func:`optimize_model` did, with the evidence."""

    model: onnx.ModelProto
    target: str
    opset: int
    fired: dict[str, int]
    refused: list[Refusal]
    lowerings: list[dict[str, Any]]
    verification: Any  # verify.Verification | None
    nodes_before: int
    nodes_after: int
    ops_before: dict[str, int]
    ops_after: dict[str, int]
    seconds: float
    misses: list[Refusal] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)
    #: where ``model``'s external references resolve (the input's directory; None: all inline).
    #: Save it inside ``normonnx.external.reading(result.base_dir)``: io.save copies the data.
    base_dir: str | None = None

    @property
    def passed(self) -> bool:
        """True unless verification ran and found a mismatch."""
        return self.verification is None or bool(self.verification.passed)

    @property
    def rewrites(self) -> int:
        return sum(self.fired.values())

    def summary(self) -> str:
        parts = [f"{self.rewrites} rewrites", f"{self.nodes_before} → {self.nodes_after} nodes"]
        if self.verification is not None:
            parts.append(self.verification.summary())
        else:
            parts.append("not verified (--no-verify)")
        return ", ".join(parts)

    def as_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "opset": self.opset,
            "passed": self.passed,
            "fired": dict(self.fired),
            "refused": [r.as_dict() for r in self.refused],
            "lowerings": self.lowerings,
            "nodes_before": self.nodes_before,
            "nodes_after": self.nodes_after,
            "ops_before": self.ops_before,
            "ops_after": self.ops_after,
            "seconds": round(self.seconds, 3),
            "verification": self.verification.as_dict() if self.verification is not None else None,
            "debug_misses": [r.as_dict() for r in self.misses],
            "notes": self.notes,
        }


def _ops(model: onnx.ModelProto) -> dict[str, int]:
    c = Counter((f"{n.domain}." if n.domain not in ("", "ai.onnx") else "") + n.op_type for n in model.graph.node)
    return dict(sorted(c.items(), key=lambda kv: (-kv[1], kv[0])))


def _opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def _convert_opset(model: onnx.ModelProto, opset: int) -> onnx.ModelProto:
    from onnx import version_converter

    from ..lowering import MAX_OPSET, MIN_OPSET

    if not (MIN_OPSET <= opset <= MAX_OPSET):
        raise OptimizeError(f"--opset {opset} is not supported", note=f"normonnx emits opsets {MIN_OPSET}..{MAX_OPSET}")
    if _opset(model) == opset:
        return model
    try:
        return version_converter.convert_version(model, opset)
    except Exception as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise OptimizeError(
            f"cannot convert the model from opset {_opset(model)} to {opset}: {first}",
            note="omit --opset to keep the model's own opset",
        ) from None


# -- driver ---------------------------------------------------------------------------------------------
def optimize_model(
    model_or_path: onnx.ModelProto | str | os.PathLike[str],
    *,
    target: str = "cpu",
    opset: int | None = None,
    verify: bool = True,
    n_samples: int = 3,
    rules: Iterable[str] | None = None,
    debug: bool = False,
    inputs: Mapping[str, Sequence[int]] | None = None,
    seed: int = 0,
    prefer: Iterable[str] | None = None,
    allow_unstable: bool = False,
) -> OptimizeResult:
    """Fold, fuse, lower and clean up a model for ``target``; verify it against the original.

    target:    "cpu" or "cuda" (cuda may use onnxruntime contrib ops; verified here on CPU through
               their reference semantics, see :mod:`normonnx.optimize.lower_cuda`).
    opset:     convert the model to this default-domain opset first (None: keep its own).
    verify:    run original and optimized on ``n_samples`` random inputs plus two stress inputs
               (offset 1e3, scale 1e-3); ``result.passed`` is False on a mismatch.
    rules:     family or rule names to run (None: all; see :func:`rule_names`).
    debug:     also record why near-miss patterns did not match (``result.misses``).
    inputs:    shapes for inputs with symbolic dims, by input name.
    prefer:    lowering strategies to try, in order, for the fused norms (None: the selector's
               default order for ``target``; e.g. ``["native", "decomposed"]`` keeps standard ops
               only where the CPU default would use normonnx's compiled kernels).
    allow_unstable: also take lowerings marked numerically unstable (native GroupNormalization-21,
               ``--target cuda``'s contrib GroupNorm, ...).

    Raises :class:`~normonnx.errors.OptimizeError` (or ModelLoadError/LoweringError) for user errors.
    """
    from .. import io as nio

    t0 = time.perf_counter()
    if target not in TARGETS:
        raise OptimizeError(f"unknown target {target!r}", note=f"valid targets: {', '.join(TARGETS)}")
    from .. import external

    if isinstance(model_or_path, onnx.ModelProto):
        original = onnx.ModelProto()
        original.CopyFrom(model_or_path)
        base = external.base_dir() if external.has_external(original) else None
    else:
        # weights stay in their file (a data file, or a large inline .onnx itself): the passes see
        # references (read on use, memory-mapped), onnxruntime reads the file, io.save copies it in chunks
        original = nio.load_lazy(model_or_path)
        base = os.path.dirname(os.path.abspath(model_or_path)) if external.has_external(original) else None
    with external.reading(base):
        return _optimize(
            original, t0, target, opset, verify, n_samples, rules, debug, inputs, seed, prefer, allow_unstable, base
        )


def _optimize(
    original: onnx.ModelProto,
    t0: float,
    target: str,
    opset: int | None,
    verify: bool,
    n_samples: int,
    rules: Iterable[str] | None,
    debug: bool,
    inputs: Mapping[str, Sequence[int]] | None,
    seed: int,
    prefer: Iterable[str] | None,
    allow_unstable: bool,
    base: str | None,
) -> OptimizeResult:
    from ..lowering import MAX_OPSET, MIN_OPSET
    from .pipeline import lower, recognise

    selected = _select(rules)
    if inputs:
        names = [i.name for i in original.graph.input if i.name not in {t.name for t in original.graph.initializer}]
        unknown = sorted(set(inputs) - set(names))
        if unknown:
            raise OptimizeError(
                f"inputs= names {', '.join(map(repr, unknown))}, not an input of the model",
                note=f"the model's inputs: {', '.join(names)}",
            )
    report = Report(debug=debug)
    model = original
    if opset is not None:
        model = _convert_opset(model, opset)
    model_opset = _opset(model)
    nodes_before, ops_before = len(original.graph.node), _ops(original)

    can_lower = MIN_OPSET <= model_opset <= MAX_OPSET
    if not can_lower:
        report.notes.append(
            f"norm fusions skipped: the model's opset {model_opset} is outside {MIN_OPSET}..{MAX_OPSET}, "
            "where normonnx lowers norms (pass --opset to convert)"
        )
    model = recognise(model, report, selected, fuse=can_lower)
    model, records = lower(model, report, target=target, prefer=prefer, allow_unstable=allow_unstable)
    lowerings = [r if isinstance(r, dict) else r.as_dict() for r in records]
    verification = None
    if verify:
        from .verify import verify_models

        verification = verify_models(original, model, n_samples=n_samples, seed=seed, shapes=inputs, target=target)
    return OptimizeResult(
        model=model,
        target=target,
        opset=model_opset,
        fired=dict(report.fired),
        refused=list(report.refused),
        lowerings=lowerings,
        verification=verification,
        nodes_before=nodes_before,
        nodes_after=len(model.graph.node),
        ops_before=ops_before,
        ops_after=_ops(model),
        seconds=time.perf_counter() - t0,
        misses=list(report.misses),
        notes=list(report.notes),
        base_dir=base,
    )
