"""Export a torch model to ONNX with every norm — torch's modules and the ones written by hand —
lowered by normonnx's selector.

Pipeline (each step returns a value; errors are :class:`~normonnx.errors.ExportError` or
:class:`~normonnx.errors.InputError`, never a raw torch traceback for user mistakes):

1. refuse a model in training mode (or switch to eval with ``force_eval=True`` and a warning
   naming the modules that changed);
2. run it once on the example inputs (a wrong shape fails here, readably; no tensor output is
   refused);
3. ``torch.export`` with the requested dynamic axes;
4. scan the aten norm calls → :class:`~normonnx.spec.NormSpec` s, and choose the opset that gives
   the best valid lowering for the target (not blindly the newest; on a tie, 23 for attention
   or rotary embeddings written out by hand, which the ``attention`` and ``rotary`` rules turn
   into the ``Attention`` and ``RotaryEmbedding`` ops);
5. capture: ``torch.onnx.export(..., dynamo=True, custom_translation_table=...)`` where each aten
   norm becomes a portable ``normonnx.<Op>`` node;
6. recognise: the passes ``normonnx optimize`` runs (:func:`normonnx.optimize.pipeline.recognise`:
   BatchNorm folded into its Conv, norms of weights folded in float64, every hand-written norm
   spelling fused into one ``normonnx.<Op>`` node, activations and modulations recorded); when
   that finds norms the aten scan did not, the opset is chosen again for all of them;
7. lower (:func:`normonnx.optimize.pipeline.lower`): every norm node by the selected strategy,
   strategy and reasons recorded in node and model metadata, what fired and what was refused in
   ``normonnx.optimize``;
8. check the model and write it atomically.

Steps 1–5 (the torch side) live in :mod:`normonnx.capture`; this module chooses the opset,
stages large weights and drives the rest.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import os
import sys
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import onnx
import onnx.numpy_helper

from . import io as nio
from .capture import (
    _check_inputs,
    _first_line,
    _name_dynamic_dims,
    _onnx_export,
    _tensors_in,
    _torch_export,
    input_names_of,
    normalize_dynamic,
    scan_attention,
    scan_rotary,
    scan_specs,
    training_modules,
)
from .errors import ExportError, InputError, NormOnnxError
from .lowering import MAX_OPSET, MIN_OPSET, check_opset, check_provider, preference, select
from .lowering.graph import LoweringRecord
from .opset_convert import TORCH_MIN_OPSET, convert_down
from .optimize import Report, family_rules, pipeline
from .optimize.fuse_attention import ATTENTION_OPSET
from .spec import NormSpec

#: torch's dynamo exporter emits opset 18+; lower opsets are reached with onnx's version converter
#: (:data:`normonnx.opset_convert.TORCH_MIN_OPSET`, :func:`~normonnx.opset_convert.convert_down`)
#: opsets considered when choosing a default: 18, 21, 23 each add a native norm op; 20 is torch's
#: own default. 17 (the first with LayerNormalization) is left out of the default choice: torch
#: emits 18+ and reaching 17 needs onnx's version converter, which lacks adapters for some ops
#: (Pad); 18 lowers the same norms.
CANDIDATE_OPSETS = (18, 20, 21, 23)
#: among opsets that lower the norms equally well, the one ``torch.onnx.export`` uses by default:
#: the rest of the model then gets torch's own ops. At 18, GELU is exported as Erf/Div/Mul/Add,
#: which onnxruntime 1.32 does not fuse back (measured on models/vit: 17 more nodes, ~15% slower
#: than the default export); from 20 it is the Gelu op.
PREFERRED_OPSET = 20


@dataclasses.dataclass
class ExportResult:
    """What :func:`export` did."""

    path: str
    opset: int
    target: str
    lowerings: list[LoweringRecord]
    specs: list[NormSpec]
    seconds: float
    input_names: list[str]
    output_names: list[str]
    dynamic: dict[str, dict[int, str]]
    opset_reason: str
    warnings: list[str]
    #: recognition rules that fired (e.g. ``{"group_norm.split": 2}``) and candidates refused, with reasons
    fired: dict[str, int] = dataclasses.field(default_factory=dict)
    refused: list[Any] = dataclasses.field(default_factory=list)
    #: this process's peak RSS when the export finished (it includes the model itself)
    peak_rss_bytes: int = 0

    @property
    def strategies(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for r in self.lowerings:
            key = f"{r.kind}:{r.strategy}"
            out[key] = out.get(key, 0) + 1
        return out


# ----------------------------------------------------------------------------------------------
# aten → normonnx translation


def choose_opset(
    specs: Sequence[NormSpec],
    target: str,
    *,
    max_opset: int | None = None,
    prefer: Iterable[str] | None = None,
    allow_unstable: bool = False,
    attention: int = 0,
    rotary: int = 0,
) -> tuple[int, str]:
    """The candidate opset with the best lowering of the norms for ``target``, with the reason.

    Ties go to :data:`ATTENTION_OPSET` when the model has ``attention`` blocks the ``attention``
    rules can fuse (the ``Attention`` op: one node instead of ~16 per block) or ``rotary``
    embeddings the ``rotary`` rules can (``RotaryEmbedding``: one node instead of six), else to
    :data:`PREFERRED_OPSET` (torch's default) if it is among them, else to the lowest.
    """
    hi = min(MAX_OPSET, max_opset or MAX_OPSET)
    cands = [o for o in CANDIDATE_OPSETS if o <= hi] or [hi]
    uses = [f"the Attention op ({attention} attention blocks)"] if attention else []
    uses += [f"the RotaryEmbedding op ({rotary} rotations)"] if rotary else []
    for_attention = f"opset {ATTENTION_OPSET} for " + " and ".join(uses)
    wants_23 = bool(attention or rotary)  # opset 23 has ops to offer
    if not specs:
        if wants_23 and ATTENTION_OPSET in cands:
            return ATTENTION_OPSET, f"no norms found; {for_attention}"
        return (PREFERRED_OPSET if PREFERRED_OPSET in cands else cands[-1]), "no norms found; torch's default opset"
    orders = [tuple(prefer) if prefer is not None else preference(target, s.kind) for s in specs]
    width = max(len(order) for order in orders)
    scored: list[tuple[tuple[int, ...], int, list[str]]] = []
    for o in cands:
        try:
            chosen = [
                select(s, o, target, prefer=order, allow_unstable=allow_unstable).strategy
                for s, order in zip(specs, orders)
            ]
        except NormOnnxError:
            continue
        # score: how many norms got their 1st, 2nd... preferred strategy (earlier = better)
        ranks = [order.index(c) for c, order in zip(chosen, orders)]
        scored.append((tuple(ranks.count(r) for r in range(width)), o, chosen))
    if not scored:
        raise ExportError(
            f"no candidate opset ({', '.join(map(str, cands))}) can lower every norm of this model for {target}"
        )
    top = max(s[0] for s in scored)
    ties = [s for s in scored if s[0] == top]
    best = next((s for s in ties if s[1] == PREFERRED_OPSET), ties[0])
    if wants_23:
        best = next((s for s in ties if s[1] == ATTENTION_OPSET), best)
    counts = ", ".join(f"{n}×{c}" for n, c in Counter(best[2]).items())
    why = (
        for_attention
        if wants_23 and best[1] == ATTENTION_OPSET
        else "torch's default opset"
        if best[1] == PREFERRED_OPSET
        else "lowest opset"
    )
    return best[1], f"{why} with the best lowering for {target} ({counts})"


# ----------------------------------------------------------------------------------------------


def export(
    model: Any,
    example_inputs: Any,
    path: str | os.PathLike[str],
    *,
    opset: int | None = None,
    target: str = "cpu",
    dynamic: Mapping[str, Mapping[int, str]] | Sequence[str] | str | None = None,
    input_names: Sequence[str] | None = None,
    output_names: Sequence[str] | None = None,
    prefer: Iterable[str] | None = None,
    allow_unstable: bool = False,
    force_eval: bool = False,
    external_data: bool | None = None,
) -> ExportResult:
    """Export ``model`` (an ``nn.Module`` or ``torch.export.ExportedProgram``) to ``path``.

    opset:          default-domain opset; None picks, of 18/20/21/23 (capped by the installed
                    onnxruntime), one that gives the best valid lowering for ``target``; on ties
                    23 when the model has attention or rotary embeddings written out by hand
                    (the ``Attention`` and ``RotaryEmbedding`` ops), else torch's default 20,
                    else the lowest.
    target:         "cpu" or "cuda": which execution provider the lowering is chosen for.
    dynamic:        ``{"x": {0: "batch", 2: "h", 3: "w"}}`` or ``"batch,h,w"``.
    prefer:         strategy order overriding the default (e.g. ``["function"]``).
    allow_unstable: accept strategies marked numerically unstable in the capability table.
    force_eval:     put a model found in training mode into eval mode (with a warning naming
                    the modules) instead of refusing it.

    ``path`` is checked before any work (:func:`normonnx.io.check_output_path`: not a directory,
    its directory writable, not the source file of the model's classes) and written atomically, so
    a failed export -- bad inputs, an unsupported opset, a full disk, Ctrl-C -- leaves whatever
    file was at ``path`` untouched.
    """
    from .errors import OutputError

    target_path = os.fspath(path)
    sources: set[str] = set()
    if callable(getattr(model, "modules", None)):  # an nn.Module: never overwrite its source files
        for cls in {type(m) for m in model.modules()}:
            with contextlib.suppress(TypeError, OSError):
                sources.add(inspect.getsourcefile(cls) or "")
    nio.check_output_path(target_path, inputs=sorted(sources - {""}))
    existed = os.path.exists(target_path)
    try:
        return _export(
            model,
            example_inputs,
            target_path,
            opset=opset,
            target=target,
            dynamic=dynamic,
            input_names=input_names,
            output_names=output_names,
            prefer=prefer,
            allow_unstable=allow_unstable,
            force_eval=force_eval,
            external_data=external_data,
        )
    except NormOnnxError as e:
        # the file at the target path is the previous one, untouched (nio.save renames the new
        # model in only when complete): say so, so that it is not mistaken for this export's result
        if existed and not isinstance(e, OutputError):  # OutputError already says it
            e.note = (e.note + "; " if e.note else "") + f"{target_path} still holds the previous model, unchanged"
            e.args = (f"{e.message}\nNote: {e.note}",)
        raise


def _export(
    model: Any,
    example_inputs: Any,
    path: str,
    *,
    opset: int | None,
    target: str,
    dynamic: Any,
    input_names: Sequence[str] | None,
    output_names: Sequence[str] | None,
    prefer: Iterable[str] | None,
    allow_unstable: bool,
    force_eval: bool,
    external_data: bool | None,
) -> ExportResult:
    import torch

    t0 = time.perf_counter()
    check_provider(target)
    if isinstance(opset, str) and opset.strip().isdigit():
        opset = int(opset)  # "20" from a config file or a CLI layer means 20
    if opset is not None and (isinstance(opset, bool) or not isinstance(opset, int)):
        raise ExportError(f"opset must be an integer, got {opset!r}", note=f"e.g. opset={PREFERRED_OPSET}")
    if opset is not None:
        check_opset(opset)
    notes: list[str] = []
    is_program = isinstance(model, torch.export.ExportedProgram)
    if not is_program and not isinstance(model, torch.nn.Module):
        raise ExportError(f"expected a torch.nn.Module or ExportedProgram, got {type(model).__name__}")
    args = _check_inputs(example_inputs)
    if not is_program:
        training = training_modules(model)
        if training:
            shown = ", ".join(training[:8]) + (f" and {len(training) - 8} more" if len(training) > 8 else "")
            if not force_eval:
                raise ExportError(
                    f"the model is in training mode ({len(training)} modules: {shown}); BatchNorm/InstanceNorm would "
                    "export batch statistics and dropout would stay active",
                    note="call model.eval() before exporting, or pass force_eval=True (CLI: --eval)",
                )
            model.eval()
            msg = f"model was in training mode; switched to eval: {shown}"
            warnings.warn(msg, stacklevel=2)
            notes.append(msg)
        with torch.no_grad():
            try:
                out = model(*args)
            except Exception as e:
                shapes = ", ".join(f"{list(a.shape)}:{str(a.dtype).removeprefix('torch.')}" for a in args)
                raise InputError(
                    f"the model rejected example inputs of shape {shapes}: {_first_line(e)}",
                    note="pass inputs of the shape the model expects (CLI: --input name:1x3x224x224)",
                ) from None
        if not _tensors_in(out):
            raise ExportError(
                f"the model returns no tensor outputs (forward returned {type(out).__name__})",
                note="return a tensor, or a tuple/list/dict of tensors, from forward",
            )
    names = list(input_names) if input_names else input_names_of(model if not is_program else model.module(), len(args))
    if len(names) != len(args):
        raise InputError(f"{len(names)} input names for {len(args)} inputs")
    dyn = normalize_dynamic(dynamic, names, [a.dim() for a in args])
    ep = model if is_program else _torch_export(model, args, names, dyn)
    aten_specs = scan_specs(ep)
    attention = scan_attention(ep)
    rotary = scan_rotary(ep)
    choose: Callable[[Sequence[NormSpec]], tuple[int, str]] | None = None
    if opset is None:
        max_opset = _max_opset(target)

        def choose_for(specs: Sequence[NormSpec]) -> tuple[int, str]:  # again after capture, if the norms differ
            return choose_opset(
                specs,
                target,
                max_opset=max_opset,
                prefer=prefer,
                allow_unstable=allow_unstable,
                attention=attention,
                rotary=rotary,
            )

        choose = choose_for
        opset, why = choose(aten_specs)
    else:
        why = "requested"
        if opset < MIN_OPSET:
            raise ExportError(f"opset {opset} is below {MIN_OPSET}")
    with _staging(ep, path, external_data) as stage:
        result = _capture_lower_save(
            ep, args, opset, choose, names, output_names, dyn, target, prefer, allow_unstable, why, path,
            external_data, stage, aten_specs, (attention, rotary),
        )  # fmt: skip
    lowered, out, records, specs, opset, why, report = result
    return ExportResult(
        out,
        opset,
        target,
        records,
        specs,
        time.perf_counter() - t0,
        names,
        [o.name for o in lowered.graph.output],
        dyn,
        why,
        notes,
        dict(report.fired),
        list(report.refused),
        peak_rss_bytes(),
    )


def peak_rss_bytes() -> int:
    """This process's peak resident set size so far (bytes; 0 where the OS does not say)."""
    try:
        import resource
    except ImportError:  # not on Windows
        return 0
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(kib) * (1 if sys.platform == "darwin" else 1024)  # macOS reports bytes, Linux KiB


#: weights above this size go to the output's data file right after torch's exporter even when the
#: file is written inline: below it the pipeline's proto copies cost less than a disk round trip
STAGE_MIN = 256 << 20


def _weights_of(ep: Any) -> int:
    import torch

    tensors = [*ep.state_dict.values(), *getattr(ep, "constants", {}).values()]
    return sum(t.numel() * t.element_size() for t in tensors if isinstance(t, torch.Tensor))


@contextlib.contextmanager
def _staging(ep: Any, path: str, external_data: bool | None) -> Any:
    """A :class:`normonnx.io.Stage` for a large model (or ``external_data=True``), with its
    references readable; None for a small one, whose weights stay inline as they always did.

    A model that will be one inline file (under 2 GiB, external data not asked for) is staged in
    memory: its weights reach the disk once, in the final write, not in the stage and again in
    the file (that round trip was a third of a 0.4 GiB export)."""
    weights = _weights_of(ep)
    if external_data is False or (not external_data and weights < STAGE_MIN):
        yield None
        return
    with nio.Stage(path, memory=not external_data and weights < nio.PROTO_LIMIT) as stage, stage.reading():
        yield stage


def _capture_lower_save(
    ep: Any,
    args: tuple[Any, ...],
    opset: int,
    choose: Callable[[Sequence[NormSpec]], tuple[int, str]] | None,
    names: Sequence[str],
    output_names: Sequence[str] | None,
    dyn: Mapping[str, Mapping[int, str]],
    target: str,
    prefer: Iterable[str] | None,
    allow_unstable: bool,
    why: str,
    path: str,
    external_data: bool | None,
    stage: Any,
    aten_specs: Sequence[NormSpec],
    scanned: tuple[int, int] = (0, 0),
) -> tuple[onnx.ModelProto, str, list[LoweringRecord], list[NormSpec], int, str, Report]:
    """Capture, recognise, lower, check and write (steps 5-7 of the module docstring). ``choose``
    picks the opset for a list of norms (None: it was requested); ``scanned`` is the attention
    blocks and rotations the aten scan counted."""
    report = Report()
    recognised = _capture_and_recognise(ep, args, opset, names, output_names, dyn, report, stage)
    specs = norm_specs(recognised)
    if choose is not None and sorted(s.key() for s in specs) != sorted(s.key() for s in aten_specs):
        # norms were recognised (or folded) after capture: choose the opset again for those that remain
        best, why = choose(specs)
        if best != opset:
            opset, report = best, Report()
            if stage is not None:
                stage.reset()  # the first capture's weights are not needed any more
            recognised = _capture_and_recognise(ep, args, opset, names, output_names, dyn, report, stage)
            specs = norm_specs(recognised)
    del ep  # the torch program's own tensors are the caller's; nothing here holds a copy
    why = _fused_note(why, recognised, *scanned)
    lowered, raw_records = pipeline.lower(
        recognised, report, target=target, prefer=prefer, allow_unstable=allow_unstable
    )
    del recognised
    records = [r if isinstance(r, LoweringRecord) else _record_of(r) for r in raw_records]
    import torch as _t

    for k, v in {
        "normonnx.version": _version(),
        "normonnx.target": target,
        "normonnx.opset_reason": why,
        "torch.version": _t.__version__,
    }.items():
        lowered.metadata_props.add(key=k, value=v)
    if stage is None:
        _check(lowered)
        out = nio.save(lowered, path, external_data=external_data)
    else:  # references only: onnx's checker reads them from a file beside the stage, not the weights
        stage.check(lowered, _check)
        out = nio.save(lowered, path, external_data=external_data, stage=stage)
    return lowered, out, records, specs, opset, why, report


def _fused_note(why: str, model: onnx.ModelProto, attention: int, rotary: int) -> str:
    """``why`` with what the opset-23 ops the scan counted came to, when the graph has fewer of
    them (the scan only counts; a table with unequal halves, say, is refused by its rule, with the
    reason). Counted as nodes: torch's exporter emits some of them itself at opset 23."""
    if f"opset {ATTENTION_OPSET} for the" not in why:
        return why
    ops = Counter(n.op_type for n in model.graph.node if n.domain in ("", "ai.onnx"))
    att, rot = ops["Attention"], ops["RotaryEmbedding"]
    if att >= attention and rot >= rotary:
        return why
    return f"{why}; the graph has {att} Attention and {rot} RotaryEmbedding nodes (the refusals say why not more)"


def _check(model: onnx.ModelProto | str) -> None:
    from .lowering.contrib import DEFAULT_DOMAIN_OPS, for_checker

    if isinstance(model, str):  # a staged file: its graph (weights stay in their data file)
        graph_only = onnx.load(model, load_external_data=False)
        if any(n.op_type in DEFAULT_DOMAIN_OPS for n in graph_only.graph.node):
            model = for_checker(graph_only)
    else:
        model = for_checker(model)
    try:
        onnx.checker.check_model(model, full_check=False)
    except Exception as e:  # a bug of ours, not the user's: report it as such
        raise RuntimeError(f"normonnx produced an invalid model (please report): {_first_line(e)}") from e


def _max_opset(target: str) -> int | None:
    if target != "cpu":
        return None
    from .runtime.probe import ort_max_opset

    return ort_max_opset()


def _capture_and_recognise(
    ep: Any,
    args: tuple[Any, ...],
    opset: int,
    names: Sequence[str],
    output_names: Sequence[str] | None,
    dyn: Mapping[str, Mapping[int, str]],
    report: Any,
    stage: Any = None,
) -> onnx.ModelProto:
    """torch's ONNX program at ``opset`` (aten norms as ``normonnx.<Op>`` nodes), then the same
    recognition passes ``normonnx optimize`` runs: BatchNorm and parameter-norm folding, every
    hand-written norm spelling fused into one norm node, activations fused. With a ``stage``, the
    program's large initializers are in its file and the model holds references to them."""
    proto = _onnx_export(ep, args, max(opset, TORCH_MIN_OPSET), names, output_names, stage)
    if opset < TORCH_MIN_OPSET:
        proto = convert_down(proto, opset)
    _name_dynamic_dims(proto, dyn)
    return pipeline.recognise(proto, report, family_rules())


def norm_specs(model: onnx.ModelProto) -> list[NormSpec]:
    """The specs of a model's ``normonnx`` norm nodes (after recognition, before lowering)."""
    from .lowering.graph import norm_nodes, spec_of, value_types

    types = value_types(model)
    return [spec_of(n, types) for n in norm_nodes(model)]


def _record_of(d: Mapping[str, Any]) -> LoweringRecord:
    """A LoweringRecord from the dict a CUDA contrib lowering reports."""
    fields = {f.name for f in dataclasses.fields(LoweringRecord)}
    return LoweringRecord(**{k: v for k, v in d.items() if k in fields})


def _version() -> str:
    from . import __version__

    return __version__
