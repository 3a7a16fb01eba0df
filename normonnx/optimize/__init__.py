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
                          ``fuse_channel`` — InstanceNormalization and unfolded BatchNormalization lifted;
                          ``activation`` — a SiLU / ReLU after a Group/Instance/BatchNorm fused into it;
                          ``modulated``, ``residual`` — AdaLN's ``·(1 + scale) + shift`` and a residual
                          ``Add`` fused into those nodes (``NormSpec.modulation`` / ``NormSpec.residual``);
                          ``sample_operands`` — their ``Unsqueeze``d ``[N, C]`` rows read directly;
7. lowering             — :func:`normonnx.lowering.graph.lower_model` picks the best strategy per node
                          for the target (``--target cuda`` first tries onnxruntime's contrib ops,
                          the ``contrib`` strategy, :mod:`normonnx.lowering.contrib`);
8. cleanup again, then verification (:func:`normonnx.verify.bisect.verify_models`): original and optimized run in
   onnxruntime with its own graph optimizations disabled, on random and stress inputs.

Every rule is a :class:`Rule` with three separate parts: ``match`` (the pattern: structure only),
``check`` (the proof: constants, axes, keepdims, dtypes, shapes — a failure is a
:class:`~normonnx.rejection.Rejection` with the reason and the offending value, never a bare
``False``) and ``rewrite`` (the replacement as data). Values computed inside a match may not be
read outside it; that is checked for every rule by the driver. Refused candidates are reported
with their reason; ``debug=True`` also reports why near-misses did not match at all.

The package, by job (this module only re-exports):

=================== ==========================================================================
``rule``            the rule framework: :class:`Match`, :class:`Rule`, :class:`Pass`, :class:`RulePass`
``families``        the one list of rule families (:data:`~.families.FAMILIES`), ``rules=`` selection
``graph``           graph access: :class:`~.graph.GraphView`, node facts (attributes, reductions)
``rewriter``        :class:`~.rewriter.Rewrite` data, applying it, the interior check, norm nodes
``patterns``        the shared normalize sub-pattern (``match_normalize`` / ``check_normalize``,
                    :class:`~.patterns.Moments`) and affine parameters
``_rules``          rule classes several families instantiate (affine absorption, Cast wrapper)
``_shapes``         symbolic shape arithmetic the checks prove views with
``cleanup``         onnxscript's semantics-neutral passes, shape inference
``result``          :class:`Report` (what fired, what was refused) and :class:`OptimizeResult`
``pipeline``        the recognition-and-lowering pipeline ``export`` and ``optimize`` share
``driver``          :func:`optimize_model`
``fold_*``, ``canonical``, ``fuse_*``     one rule family per file
``diagnose``        why a model's norms were not fused (the optimized-vs-original check is
                    :func:`normonnx.verify.bisect.verify_models`)
=================== ==========================================================================
"""

from __future__ import annotations

from ..rejection import OK, CheckResult, Rejection
from .cleanup import cleanup, infer
from .driver import optimize_model
from .families import FAMILIES, family_rules, rule_names
from .result import OptimizeResult, Report
from .rule import Match, Pass, Rule, RulePass, apply_rule

__all__ = [
    "FAMILIES",
    "OK",
    "CheckResult",
    "Match",
    "OptimizeResult",
    "Pass",
    "Rejection",
    "Report",
    "Rule",
    "RulePass",
    "apply_rule",
    "cleanup",
    "family_rules",
    "infer",
    "optimize_model",
    "rule_names",
]
