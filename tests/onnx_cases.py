"""ONNX's own backend node test cases for the five norm ops, mapped to normonnx specs.

The ``onnx`` project tests its operators with cases written in ``onnx.backend.test.case.node``
(``groupnormalization.py``, ``layernormalization.py``, ...): each case is a one-node model, its
inputs and the outputs ONNX's NumPy reference computed. The repository stores them generated as
``onnx/backend/test/data/node/test_<name>/model.onnx`` + ``test_data_set_0/{input,output}_*.pb``.

Where the cases come from (first that exists):

1. ``$NORMONNX_ONNX_NODE_DATA`` or an explicit ``root``: a ``data/node`` directory, e.g. of an onnx
   source checkout;
2. ``<onnx package>/backend/test/data/node``: present in some onnx installs, **not** in the
   1.23 wheels (they ship ``data/{light,pytorch-converted,pytorch-operator,real,simple}`` only);
3. generated in-process from the case modules of the installed onnx. This is how onnx itself
   writes the data directory (``onnx/backend/test/cmd_tools.py generate-data``): the class
   creation of each case module reseeds ``np.random.seed(0)`` and calls its ``export*``
   functions, which call ``expect(node, inputs, outputs, name)``. Same seed, same code, same
   bytes as the data directory of that onnx version.

Which cases are used, and why the others are not (``OnnxCase.excluded`` holds the reason):

- ``*_expanded``/``*_expanded_verN``: the op's ONNX function body expanded into primitive ops,
  fed the *same* inputs and outputs as the op's case (checked by a test); they test ONNX's
  function body, not a different normalisation.
- BatchNormalization with ``training_mode=1``: normonnx lowers inference graphs; training mode
  also outputs the updated running statistics.
- GroupNormalization before opset 21 (the deprecated opset-18 op): scale and bias are per
  *group*; normonnx's group norm is per *channel* (torch's, GroupNormalization-21's) and never
  emits the opset-18 op. (onnx 1.23 has no such case any more; older data directories do.)

Mapping node → :class:`~normonnx.spec.NormSpec`: LayerNormalization/RMSNormalization ``axis`` →
``normalized_shape = X.shape[axis:]``; BatchNormalization (eval) → ``kind="batch",
running_stats=True``; InstanceNormalization → ``"instance"``; GroupNormalization-21 → ``"group"``.
Scale/bias inputs are always passed as weight/bias, even when all ones/zeros. An attribute the
mapping does not know raises, so a new ONNX attribute cannot be silently ignored.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from normonnx.spec import DTYPES, NormSpec

#: ONNX op type → normonnx kind
OPS: dict[str, str] = {
    "BatchNormalization": "batch",
    "LayerNormalization": "layer",
    "InstanceNormalization": "instance",
    "GroupNormalization": "group",
    "RMSNormalization": "rms",
}
#: case-name prefix per kind (the names ONNX gives the cases of each op)
PREFIXES: dict[str, str] = {
    "group": "test_group_normalization_",
    "layer": "test_layer_normalization_",
    "instance": "test_instancenorm_",
    "batch": "test_batchnorm_",
    "rms": "test_rms_normalization_",
}
#: the case modules under ``onnx.backend.test.case.node`` that define them
CASE_MODULES = (
    "batch_normalization",
    "groupnormalization",
    "instance_normalization",
    "layernormalization",
    "rmsnormalization",
)
#: per op: node input position → normonnx parameter slot (position 0 is X)
SLOTS: dict[str, tuple[str, ...]] = {
    "BatchNormalization": ("weight", "bias", "mean", "var"),
    "LayerNormalization": ("weight", "bias"),
    "InstanceNormalization": ("weight", "bias"),
    "GroupNormalization": ("weight", "bias"),
    "RMSNormalization": ("weight",),
}
#: attributes the mapping understands, per op (anything else raises :class:`UnmappedCase`)
KNOWN_ATTRIBUTES: dict[str, frozenset[str]] = {
    "BatchNormalization": frozenset({"epsilon", "momentum", "training_mode"}),
    "LayerNormalization": frozenset({"axis", "epsilon", "stash_type"}),
    "InstanceNormalization": frozenset({"epsilon"}),
    "GroupNormalization": frozenset({"epsilon", "num_groups", "stash_type"}),
    "RMSNormalization": frozenset({"axis", "epsilon", "stash_type"}),
}
ENV_VAR = "NORMONNX_ONNX_NODE_DATA"
_DTYPE_NAMES = {v: k for k, v in DTYPES.items()}


class UnmappedCase(ValueError):
    """An ONNX case whose node this module cannot map to a NormSpec (new attribute, dtype...)."""


@dataclasses.dataclass
class OnnxCase:
    """One ONNX node test case (its first data set) and, unless excluded, its normonnx view."""

    name: str
    kind: str
    source: str  # "data:<dir>" or "generated:onnx <version>"
    model: onnx.ModelProto
    inputs: dict[str, np.ndarray]  # by graph input name
    outputs: dict[str, np.ndarray]  # by graph output name
    excluded: str = ""  # why this case is not tested ("" = tested)
    spec: NormSpec | None = None
    x: np.ndarray | None = None
    params: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    expected: np.ndarray | None = None  # the Y output (LayerNormalization's Mean/InvStdDev are not ours)

    @property
    def opset(self) -> int:
        return next(o.version for o in self.model.opset_import if o.domain in ("", "ai.onnx"))

    @property
    def norm_node(self) -> onnx.NodeProto | None:
        """The case's norm op node (None for the ``_expanded`` cases, made of primitives)."""
        nodes = [n for n in self.model.graph.node if n.op_type in OPS and n.domain in ("", "ai.onnx")]
        return nodes[0] if len(nodes) == 1 else None


# -- sources -----------------------------------------------------------------------------------


def package_data_root() -> Path:
    """Where an onnx install keeps the generated node data (may not exist)."""
    return Path(os.path.dirname(onnx.__file__)) / "backend" / "test" / "data" / "node"


def data_root() -> Path | None:
    """The node data directory to read, or None when cases must be generated in-process."""
    env = os.environ.get(ENV_VAR)
    if env:
        p = Path(env)
        if not p.is_dir():
            raise FileNotFoundError(f"{ENV_VAR}={env!r} is not a directory (expected onnx's backend/test/data/node)")
        return p
    p = package_data_root()
    return p if p.is_dir() else None


def kind_of(name: str) -> str | None:
    for kind, prefix in PREFIXES.items():
        if name.startswith(prefix):
            return kind
    return None


def read_case_dir(path: Path, source: str) -> tuple[onnx.ModelProto, dict[str, np.ndarray], dict[str, np.ndarray]]:
    """``model.onnx`` and ``test_data_set_0/{input,output}_<j>.pb`` (j-th graph input/output)."""
    model = onnx.load(str(path / "model.onnx"))
    ds = path / "test_data_set_0"

    def read(prefix: str, values: Iterable[onnx.ValueInfoProto]) -> dict[str, np.ndarray]:
        out = {}
        for j, vi in enumerate(values):
            f = ds / f"{prefix}_{j}.pb"
            if not f.exists():
                raise FileNotFoundError(f"{source}: {f} missing for graph {prefix} {vi.name!r}")
            out[vi.name] = numpy_helper.to_array(onnx.load_tensor(str(f)))
        return out

    return model, read("input", model.graph.input), read("output", model.graph.output)


def write_case_dir(case: OnnxCase, root: Path) -> Path:
    """Write ``case`` in the layout of onnx's ``cmd_tools.py generate-data`` (used by tests)."""
    d = root / case.name
    ds = d / "test_data_set_0"
    ds.mkdir(parents=True, exist_ok=True)
    (d / "model.onnx").write_bytes(case.model.SerializeToString())
    for prefix, values, arrays in (
        ("input", case.model.graph.input, case.inputs),
        ("output", case.model.graph.output, case.outputs),
    ):
        for j, vi in enumerate(values):
            (ds / f"{prefix}_{j}.pb").write_bytes(numpy_helper.from_array(arrays[vi.name], vi.name).SerializeToString())
    return d


def _from_dir(root: Path) -> list[OnnxCase]:
    cases = []
    for d in sorted(root.iterdir()):
        kind = kind_of(d.name)
        if kind is None or not (d / "model.onnx").exists():
            continue
        model, ins, outs = read_case_dir(d, f"data:{root}")
        cases.append(OnnxCase(d.name, kind, f"data:{root}", model, ins, outs))
    return cases


def _generated() -> list[OnnxCase]:
    # Importing a case module runs its exports (seed 0), which append to _NodeTestCases.
    from onnx.backend.test.case import node as case_node

    for m in CASE_MODULES:
        importlib.import_module(f"{case_node.__name__}.{m}")
    cases = []
    for tc in case_node._NodeTestCases:
        kind = kind_of(tc.name)
        if kind is None or tc.model is None or not tc.data_sets:
            continue
        inputs, outputs = tc.data_sets[0]
        g = tc.model.graph
        cases.append(
            OnnxCase(
                tc.name,
                kind,
                f"generated:onnx {onnx.__version__}",
                tc.model,
                {vi.name: np.asarray(a) for vi, a in zip(g.input, inputs)},
                {vi.name: np.asarray(a) for vi, a in zip(g.output, outputs)},
            )
        )
    return sorted(cases, key=lambda c: c.name)


# -- selection and mapping ---------------------------------------------------------------------


def exclusion(case: OnnxCase) -> str:
    """Why ``case`` is not tested ("" if it is)."""
    if "_expanded" in case.name:
        return "ONNX's function-body expansion of the op: same inputs/outputs as the op's own case"
    node = case.norm_node
    if node is None:
        return "no single norm node in the model"
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if node.op_type == "BatchNormalization" and attrs.get("training_mode", 0):
        return "BatchNormalization training_mode=1: normonnx lowers eval-mode (inference) batch norm only"
    if node.op_type == "GroupNormalization":
        c = case.inputs[node.input[0]].shape[1]
        scale = case.inputs.get(node.input[1]) if len(node.input) > 1 else None
        if case.opset < 21 or (scale is not None and scale.shape != (c,)):
            return (
                f"deprecated GroupNormalization-18 (opset {case.opset}, scale {None if scale is None else scale.shape}"
                f" for C={c}): per-group scale/bias; normonnx's group norm is per-channel (opset 21)"
            )
    return ""


def map_case(case: OnnxCase) -> None:
    """Fill ``case.spec``, ``x``, ``params`` and ``expected`` from its node; raise UnmappedCase."""
    node = case.norm_node
    assert node is not None
    op = node.op_type
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    unknown = set(attrs) - KNOWN_ATTRIBUTES[op]
    if unknown:
        raise UnmappedCase(f"{case.name}: {op} attributes {sorted(unknown)} are not mapped to a NormSpec")
    values = {**{t.name: numpy_helper.to_array(t) for t in case.model.graph.initializer}, **case.inputs}
    x = values[node.input[0]]
    dtype = _DTYPE_NAMES.get(helper.np_dtype_to_tensor_dtype(x.dtype))
    if dtype is None:
        raise UnmappedCase(f"{case.name}: input dtype {x.dtype} is not a normonnx dtype")
    params = {slot: values[name] for slot, name in zip(SLOTS[op], node.input[1:]) if name}
    kind = OPS[op]
    eps = float(attrs.get("epsilon", 1e-5))
    common = dict(kind=kind, eps=eps, dtype=dtype, rank=x.ndim)
    if kind in ("layer", "rms"):
        axis = int(attrs.get("axis", -1))
        spec = NormSpec(
            normalized_shape=x.shape[axis % x.ndim :],
            has_weight="weight" in params,
            has_bias="bias" in params,
            **common,
        )
    else:
        spec = NormSpec(
            channels=int(x.shape[1]),
            groups=int(attrs["num_groups"]) if kind == "group" else None,
            has_weight="weight" in params,
            has_bias="bias" in params,
            running_stats=kind == "batch",
            **common,
        )
    from normonnx.norms import KINDS

    KINDS[kind].validate(spec)
    case.spec, case.x, case.params = spec, x, params
    case.expected = case.outputs[node.output[0]]


def load_cases(root: Path | None = None) -> list[OnnxCase]:
    """Every norm case (excluded ones included, with their reason), mapped when selected."""
    root = root if root is not None else data_root()
    cases = _from_dir(root) if root is not None else _generated()
    for c in cases:
        c.excluded = exclusion(c)
        if not c.excluded:
            map_case(c)
    return cases


def counts(cases: Iterable[OnnxCase]) -> Mapping[str, int]:
    """Selected (not excluded) cases per kind, every kind present (0 when none)."""
    n = dict.fromkeys(PREFIXES, 0)
    for c in cases:
        if not c.excluded:
            n[c.kind] += 1
    return n
