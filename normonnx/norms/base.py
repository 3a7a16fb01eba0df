"""What every norm kind provides: recognition in torch, a spec, a float64 reference, ONNX facts.

A kind is a singleton object; the registry in :mod:`normonnx.norms` maps its name to it. Adding
a kind means adding one file that subclasses :class:`NormKind` and registering it there
(``register(KIND)``). The kind *declares*; the machinery asks it:

- the lowering strategies ask for its native op (:class:`NativeOp`: op, opset, dtypes, stability)
  and :meth:`NormKind.build_native`, and for its stable decomposition (:meth:`NormKind.decompose`,
  also the function strategy's body); the kernel strategy asks the compiled library which ops it
  registers, never the kind;
- the exporter asks for torch recognition (``aten_ops``, :meth:`NormKind.torch_ops`);
- stress, bench, doctor and the test tables ask for :meth:`NormKind.examples`,
  :meth:`NormKind.large_spec` / :meth:`NormKind.large_shape`, ``bench_shapes`` /
  :meth:`NormKind.bench_spec` and :meth:`NormKind.example_specs`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import numpy as np

from ..errors import SpecError
from ..spec import NormSpec

Params = dict[str, np.ndarray]
Shape = tuple[int, ...]
#: one conformance case: (id, spec with its rank, input shape)
Example = tuple[str, NormSpec, Shape]

#: benchmark shapes shared by several kinds: diffusion UNet / SD GroupNorms (N,C,H,W) and
#: ViT / LLM LayerNorms (trailing features); ``--quick`` ones are tiny smoke shapes
NCHW_BENCH_SHAPES: tuple[Shape, ...] = ((1, 320, 64, 64), (2, 256, 64, 64), (8, 64, 32, 32), (1, 1280, 8, 8))
TRAILING_BENCH_SHAPES: tuple[Shape, ...] = ((8, 197, 384), (1, 4096, 1024), (32, 128, 768))
NCHW_QUICK_SHAPES: tuple[Shape, ...] = ((1, 64, 8, 8),)
TRAILING_QUICK_SHAPES: tuple[Shape, ...] = ((4, 16, 64),)


@dataclasses.dataclass(frozen=True)
class NativeOp:
    """A kind's standard ONNX op, as the ``native`` strategy lowers it.

    op:           the op type in the default domain.
    since:        the opset that introduced the semantics normonnx relies on (the strategy
                  needs ``max(since, MIN_OPSET)``).
    dtypes:       per provider, the element types onnxruntime runs it in (kernels or casts).
    stable:       within 2× torch-fp32's error vs float64 on the stress inputs (measured by
                  ``tests/test_stress.py``); ``stable_up_to``: only up to that many elements per
                  normalised group (onnxruntime kernels that accumulate in fp32).
    low_precision_since: float16/bfloat16 inputs need this opset (None: no extra bound).
    note:         the fact behind the entry, printed in the capability table.
    """

    op: str
    since: int
    dtypes: Mapping[str, frozenset[str]]
    stable: bool = True
    note: str = ""
    stable_up_to: int | None = None
    low_precision_since: int | None = None


#: how a torch custom op (``torch.ops.<ns>.<op>.default``) becomes a spec and parameters:
#: ``spec(args, x_shape, dtype)`` with ``args`` after the input tensor, ``params(args)`` by slot name
TorchOp = tuple[Callable[[Sequence[Any], Sequence[Any], str], NormSpec], Callable[[Sequence[Any]], dict[str, Any]]]


class NormKind:
    """Base class of the kinds. Subclasses fill the class attributes and the methods."""

    #: registry key
    name: ClassVar[str]
    #: op type in the ``normonnx`` domain (the portable op that lowering starts from)
    normonnx_op: ClassVar[str]
    #: the standard ONNX op (None: the kind has none), see :class:`NativeOp`
    native: ClassVar[NativeOp | None] = None
    #: aten overloads (``torch.ops.aten.<name>.default``) whose calls this kind lowers
    aten_ops: ClassVar[tuple[str, ...]] = ()
    #: input ranks accepted (inclusive)
    min_rank: ClassVar[int] = 2
    max_rank: ClassVar[int] = 8
    #: input slots of the normonnx op after X, in position order (an absent optional one is "")
    input_slots: ClassVar[tuple[str, ...]] = ("weight", "bias", "mean", "var")
    #: the affine parameters among them (γ, β)
    affine_slots: ClassVar[tuple[str, ...]] = ("weight", "bias")

    #: ``decompose(builder, spec, x, params, compute_dtype) -> output``: the stable decomposition
    #: in primitive ONNX ops (``x`` and params already in the compute dtype, the result in it
    #: too; a fused activation and the cast back are added around it). The decomposed and
    #: function strategies lower every kind that has one; None: the kind has none.
    decompose: ClassVar[Any] = None

    #: fused forms this kind has (``NormSpec.residual`` / ``NormSpec.modulation``)
    fused_forms: ClassVar[frozenset[str]] = frozenset()
    #: fused activations this kind has (``NormSpec.activation``)
    activations: ClassVar[frozenset[str]] = frozenset()

    #: benchmark shapes (``normonnx bench``; empty: not benchmarked) and ``--quick`` ones
    bench_shapes: ClassVar[tuple[Shape, ...]] = ()
    quick_bench_shapes: ClassVar[tuple[Shape, ...]] = ()

    @property
    def native_op(self) -> str | None:
        return self.native.op if self.native else None

    @property
    def native_since(self) -> int | None:
        return self.native.since if self.native else None

    # -- spec ------------------------------------------------------------------------------------
    def validate(self, spec: NormSpec) -> None:
        """Raise :class:`SpecError` naming the problem if ``spec`` is not a valid spec of this kind."""
        if spec.kind != self.name:
            raise SpecError(f"spec of kind {spec.kind!r} given to the {self.name!r} kind")
        if spec.rank is not None and not (self.min_rank <= spec.rank <= self.max_rank):
            raise SpecError(
                f"{self.name} norm does not accept rank-{spec.rank} inputs",
                note=f"valid ranks: {self.min_rank}..{self.max_rank}",
            )
        if spec.activation and spec.activation not in ACTIVATIONS:
            raise SpecError(
                f"unknown fused activation {spec.activation!r}",
                note=f"valid: '' or {', '.join(map(repr, ACTIVATIONS))}",
            )
        if spec.activation and spec.activation not in self.activations:
            raise SpecError(
                f"{self.name} norm does not fuse activation {spec.activation!r}",
                note=f"{self.name} norm fuses: {', '.join(sorted(self.activations)) or 'no activation'}",
            )
        if spec.gated and not spec.residual:
            raise SpecError("a gate multiplies the residual input: gated=True needs residual=True")
        for form in ("residual", "modulation"):
            if getattr(spec, form) and form not in self.fused_forms:
                raise SpecError(
                    f"a fused {form} is not supported on {self.name} norm",
                    note=f"{self.name} norm fuses: {', '.join(sorted(self.fused_forms)) or 'nothing'}",
                )
        if spec.sample_operands:
            if not (spec.modulation or spec.gated):
                raise SpecError("sample_operands=1 describes scale/shift/gate: it needs modulation=1 or has_gate=1")
            ns = spec.normalized_shape or ()
            if spec.rank is None or spec.rank < len(ns) + 1:
                raise SpecError(
                    f"sample_operands=1 aligns [N, *normalized_shape] operands to axis 0 of the input: it needs a "
                    f"known input rank > {len(ns)}, got {spec.rank}"
                )

    def param_names(self, spec: NormSpec) -> list[str]:
        """Names of the parameter inputs this spec needs, in the normonnx op's input order."""
        names = []
        if spec.has_weight:
            names.append("weight")
        if spec.has_bias:
            names.append("bias")
        if spec.running_stats:
            names += ["mean", "var"]
        return names

    def op_inputs(self, spec: NormSpec) -> list[str]:
        """Input slots of the normonnx op after X; an absent optional one is ``""``."""
        has = {"weight": spec.has_weight, "bias": spec.has_bias}
        slots = [s if has[s] else "" for s in self.affine_slots]
        if spec.running_stats:
            slots += ["mean", "var"]
        return slots

    def random_params(self, spec: NormSpec, rng: np.random.Generator) -> Params:
        """Non-trivial parameters for tests: γ≈1, β≈0 but not exactly, positive variances."""
        shape = spec.affine_shape
        p: Params = {}
        if spec.has_weight:
            p["weight"] = 1.0 + 0.25 * rng.standard_normal(shape)
        if spec.has_bias:
            p["bias"] = 0.25 * rng.standard_normal(shape)
        if spec.running_stats:
            p["mean"] = 0.5 * rng.standard_normal(shape)
            p["var"] = rng.uniform(0.5, 2.0, shape)
        return p

    # -- reference -------------------------------------------------------------------------------
    def reference(self, spec: NormSpec, x: np.ndarray, params: Mapping[str, np.ndarray]) -> np.ndarray:
        """Float64 NumPy reference of the forward pass in eval semantics; returns float64."""
        raise NotImplementedError

    # -- ONNX ------------------------------------------------------------------------------------
    def native_for(self, spec: NormSpec) -> NativeOp | None:
        """The native op entry that governs ``spec`` (a kind may emit another kind's op)."""
        return self.native

    def native_check(self, spec: NormSpec, opset: int, provider: str) -> str:
        """Why the native op cannot express ``spec`` ("" when it can), beyond :class:`NativeOp`."""
        return ""

    def build_native(self, b: Any, spec: NormSpec, x: str, params: Mapping[str, str]) -> str:
        """Append the native op for ``spec`` to builder ``b``; return its output value name."""
        raise NotImplementedError(f"{self.name} norm has no native ONNX op")

    # -- example, stress and benchmark cases -----------------------------------------------------
    def examples(self) -> list[Example]:
        """Conformance cases: (id, spec, input shape), covering ranks, C=1, affine or not...
        The first is the kind's plain case (the native op, if any, lowers it)."""
        return []

    def example_specs(self) -> list[NormSpec]:
        """Representative specs at realistic sizes (``normonnx doctor`` shows what each gets)."""
        return [self.examples()[0][1]] if self.examples() else []

    def large_spec(self) -> NormSpec:
        """A spec whose :meth:`large_shape` has ≥1M elements per set of statistics in ~8 MB."""
        raise NotImplementedError(f"{self.name} norm declares no large stress case")

    def large_shape(self, spec: NormSpec, elements: int = 1 << 20) -> Shape:
        """An input shape with at least ``elements`` per set of statistics (default: per-channel
        statistics over N,C,H,W: H = 1024 rows of ``elements / 1024``)."""
        side = 1024
        return (1, spec.channels or 2, side, -(-elements // side))

    def bench_spec(self, shape: Sequence[int]) -> NormSpec:
        """The benchmarked spec at ``shape`` (affine, default epsilon, float32)."""
        raise NotImplementedError(f"{self.name} norm declares no benchmark spec")

    def torch_ops(self) -> dict[Any, TorchOp]:
        """torch custom op overloads (not aten) whose calls the exporter turns into this kind's op."""
        return {}

    # -- torch -----------------------------------------------------------------------------------
    def torch_modules(self) -> tuple[type, ...]:
        """torch.nn module classes that are norms of this kind."""
        return ()

    def from_module(self, module: Any, rank: int | None = None) -> tuple[NormSpec, Params]:
        """Spec and float64 parameters of a torch module of this kind."""
        raise NotImplementedError

    def torch_forward(self, spec: NormSpec, x: Any, params: Mapping[str, Any]) -> Any:
        """The torch functional call that this spec describes (eval semantics)."""
        raise NotImplementedError

    def from_aten(self, op: str, args: Sequence[Any], x_shape: Sequence[Any], dtype: str) -> NormSpec:
        """Spec of an aten call (the exporter's view: ``args`` after the input tensor)."""
        raise NotImplementedError

    def aten_params(self, op: str, args: Sequence[Any]) -> dict[str, Any]:
        """The parameter tensors of an aten call by slot name ("weight", "bias", "mean", "var")."""
        raise NotImplementedError

    def aten_outputs(self, op: str) -> int:
        """How many outputs the aten overload has (extra ones are statistics nobody reads in eval)."""
        return 1

    # -- normonnx op attributes ------------------------------------------------------------------
    def attributes(self, spec: NormSpec) -> dict[str, Any]:
        """Attributes of the ``normonnx.<Op>`` node that, with its inputs, determine ``spec``."""
        attrs: dict[str, Any] = {"epsilon": float(spec.eps)}
        if spec.channels is not None:
            attrs["channels"] = int(spec.channels)
        if spec.normalized_shape is not None:
            attrs["normalized_shape"] = list(spec.normalized_shape)
        if spec.running_stats:
            attrs["running_stats"] = 1
        if spec.activation:
            attrs["activation"] = spec.activation
        if spec.residual:
            attrs["has_residual"] = 1
        if spec.modulation:
            attrs["modulation"] = 1
        if spec.gated:
            attrs["has_gate"] = 1
        if spec.sample_operands:
            attrs["sample_operands"] = 1
        return attrs

    def spec_from_attributes(
        self, attrs: Mapping[str, Any], present: Sequence[bool], dtype: str, rank: int | None
    ) -> NormSpec:
        """Inverse of :meth:`attributes`; ``present`` says which optional inputs are given."""
        ns = attrs.get("normalized_shape")
        spec = NormSpec(
            kind=self.name,
            eps=float(attrs.get("epsilon", 1e-5)),
            channels=int(attrs["channels"]) if "channels" in attrs else None,
            normalized_shape=tuple(ns) if ns is not None else None,
            groups=int(attrs["num_groups"]) if "num_groups" in attrs else None,
            channels_first=bool(attrs.get("channels_first", 0)),
            has_weight=bool(present[0]) if len(present) > 0 else False,
            has_bias=bool(present[1]) if len(present) > 1 else False,
            running_stats=bool(attrs.get("running_stats", 0)),
            activation=str(attrs.get("activation", "")),
            residual=bool(attrs.get("has_residual", 0)),
            modulation=bool(attrs.get("modulation", 0)),
            gated=bool(attrs.get("has_gate", 0)),
            sample_operands=bool(attrs.get("sample_operands", 0)),
            dtype=dtype,
            rank=rank,
        )
        self.validate(spec)
        return spec

    @staticmethod
    def _affine_params(module: Any) -> Params:
        """A torch norm module's γ / β (those it has) as float64 arrays, by slot name."""
        return {
            k: t.detach().double().numpy()
            for k, t in (("weight", module.weight), ("bias", module.bias))
            if t is not None
        }

    def _module_spec(self, module: Any, rank: int | None, **fields: Any) -> tuple[NormSpec, Params]:
        """Spec and float64 parameters of a torch norm module with ``eps``, ``weight`` and ``bias``
        (the kind's own spec ``fields`` given): its γ / β and, for a ``running_stats`` spec, its
        running mean / var."""
        spec = NormSpec(
            kind=self.name,
            eps=float(module.eps),
            has_weight=module.weight is not None,
            has_bias=module.bias is not None,
            rank=rank,
            **fields,
        )
        params = self._affine_params(module)
        if spec.running_stats:
            params["mean"] = module.running_mean.detach().double().numpy()
            params["var"] = module.running_var.detach().double().numpy()
        return spec, params

    def _aten_spec(
        self, x_shape: Sequence[Any], dtype: str, weight: Any, bias: Any, eps: Any, **fields: Any
    ) -> NormSpec:
        """The validated spec of an aten call whose optional γ / β are ``weight`` / ``bias`` and
        whose ``eps`` None is torch's default 1e-5 (the kind's own spec ``fields`` given)."""
        spec = NormSpec(
            kind=self.name,
            eps=float(eps if eps is not None else 1e-5),
            has_weight=weight is not None,
            has_bias=bias is not None,
            dtype=dtype,
            rank=len(x_shape),
            **fields,
        )
        self.validate(spec)
        return spec

    def _check_channels(self, spec: NormSpec) -> None:
        """The spec of a kind whose parameters live on axis 1 has a positive channel count."""
        if spec.channels is None or spec.channels < 1:
            raise SpecError(f"{self.name} norm needs a positive number of channels (axis 1)")

    # -- shared math helpers ---------------------------------------------------------------------
    @staticmethod
    def _channel_view(a: np.ndarray, rank: int) -> np.ndarray:
        """Reshape a per-channel vector to broadcast against an N,C,... tensor of ``rank``."""
        return a.reshape((1, -1) + (1,) * (rank - 2))

    @staticmethod
    def _moments(x: np.ndarray, axes: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
        """Mean and *biased* variance (mean of squared deviations) over ``axes``, keepdims."""
        mean = x.mean(axis=axes, keepdims=True)
        var = ((x - mean) ** 2).mean(axis=axes, keepdims=True)
        return mean, var

    @staticmethod
    def _check_shape(spec: NormSpec, x: np.ndarray, what: str) -> None:
        if spec.channels is not None and (x.ndim < 2 or x.shape[1] != spec.channels):
            raise SpecError(f"{what}: input of shape {x.shape} does not have {spec.channels} channels on axis 1")

    def _channel_affine(self, spec: NormSpec, y: np.ndarray, params: Mapping[str, np.ndarray]) -> np.ndarray:
        """``y·γ_c + β_c`` with γ, β per channel on axis 1 (those the spec has)."""
        cv = lambda a: self._channel_view(np.asarray(a, np.float64), y.ndim)
        if spec.has_weight:
            y = y * cv(params["weight"])
        if spec.has_bias:
            y = y + cv(params["bias"])
        return y

    def _channelwise_reference(
        self, spec: NormSpec, x: np.ndarray, params: Mapping[str, np.ndarray], axes: tuple[int, ...]
    ) -> np.ndarray:
        """The float64 twin of :func:`onnx_blocks.channelwise`: normalise ``x`` with the moments
        over ``axes`` or, for a ``running_stats`` spec, the stored per-channel mean / var; then
        γ, β per channel and the spec's fused activation."""
        self._check_shape(spec, x, f"{self.name} norm")
        x = np.asarray(x, dtype=np.float64)
        if spec.running_stats:
            mean = self._channel_view(np.asarray(params["mean"], np.float64), x.ndim)
            var = self._channel_view(np.asarray(params["var"], np.float64), x.ndim)
        else:
            mean, var = self._moments(x, axes)
        return activate_reference(spec, self._channel_affine(spec, (x - mean) / np.sqrt(var + spec.eps), params))

    @staticmethod
    def _plus_residual(spec: NormSpec, x: np.ndarray, params: Mapping[str, np.ndarray]) -> np.ndarray:
        """``x`` in float64, plus the (gated) residual of a fused-residual spec: ``x + r`` or
        ``x + gate·r``, the sum the fused node normalises."""
        x = np.asarray(x, dtype=np.float64)
        if not spec.residual:
            return x
        r = np.asarray(params["residual"], np.float64)
        return x + (NormKind._row_operand(spec, params["gate"], x.ndim) * r if spec.gated else r)

    @staticmethod
    def _row_operand(spec: NormSpec, a: np.ndarray, rank: int) -> np.ndarray:
        """A scale / shift / gate in float64, broadcastable against the rank-``rank`` input: a
        ``sample_operands`` spec's ``[N or 1, *ns]`` gets the axes between as 1s (as the function
        body's Unsqueeze does); the ``[N or 1, 1, …, 1, *ns]`` form is already right-aligned."""
        a = np.asarray(a, np.float64)
        if not spec.sample_operands:
            return a
        k = len(spec.normalized_shape or ())
        return a.reshape((a.shape[0], *([1] * (rank - 1 - k)), *a.shape[1:]))

    def _check_normalized(self, spec: NormSpec, x: np.ndarray, axes: tuple[int, ...]) -> None:
        """``x``'s sizes on the reduced ``axes`` are the spec's ``normalized_shape``."""
        if tuple(x.shape[a] for a in axes) != spec.normalized_shape:
            raise SpecError(
                f"{self.name} norm over {spec.normalized_shape}: input shape {x.shape} does not end with it"
            )


def silu(y: np.ndarray) -> np.ndarray:
    return y / (1.0 + np.exp(-y))


def relu(y: np.ndarray) -> np.ndarray:
    return np.where(y < 0, np.zeros((), y.dtype), y)  # NaN stays NaN, as onnx Relu and torch relu


@dataclasses.dataclass(frozen=True)
class Activation:
    """An activation fused after a norm's affine (``NormSpec.activation``): its float64 reference,
    its torch function's name in ``torch.nn.functional``, and its ONNX ops (``onnx(builder, y)``)."""

    name: str
    reference: Callable[[np.ndarray], np.ndarray]
    torch_fn: str
    onnx: Callable[[Any, str], str]


#: the fused activations, one table for every strategy, the kernels (by name) and the rules
ACTIVATIONS: dict[str, Activation] = {
    "silu": Activation("silu", silu, "silu", lambda b, y: b.op("Mul", [y, b.op("Sigmoid", [y])])),
    "relu": Activation("relu", relu, "relu", lambda b, y: b.op("Relu", [y])),
}


def activate_reference(spec: NormSpec, y: np.ndarray) -> np.ndarray:
    return ACTIVATIONS[spec.activation].reference(y) if spec.activation else y


def activate_onnx(b: Any, spec: NormSpec, y: str) -> str:
    return ACTIVATIONS[spec.activation].onnx(b, y) if spec.activation else y


def activate_torch(spec: NormSpec, y: Any) -> Any:
    import torch.nn.functional as F

    return getattr(F, ACTIVATIONS[spec.activation].torch_fn)(y) if spec.activation else y
