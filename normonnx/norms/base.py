"""What every norm kind provides: recognition in torch, a spec, a float64 reference, ONNX facts.

A kind is a singleton object; the registry in :mod:`normonnx.norms` maps its name to it. Adding
a kind means adding one file that subclasses :class:`NormKind` and registering it there.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np

from ..errors import SpecError
from ..spec import NormSpec

Params = dict[str, np.ndarray]


class NormKind:
    """Base class of the five kinds. Subclasses fill the class attributes and the methods."""

    #: registry key
    name: ClassVar[str]
    #: op type in the ``normonnx`` domain (the portable op that lowering starts from)
    normonnx_op: ClassVar[str]
    #: the standard ONNX op and the opset that introduced the semantics normonnx relies on
    native_op: ClassVar[str | None]
    native_since: ClassVar[int | None]
    #: aten overloads (``torch.ops.aten.<name>.default``) whose calls this kind lowers
    aten_ops: ClassVar[tuple[str, ...]] = ()
    #: input ranks accepted (inclusive)
    min_rank: ClassVar[int] = 2
    max_rank: ClassVar[int] = 8
    #: normonnx's compiled kernel library (``normonnx/kernels``) registers this kind's op
    in_kernel_library: ClassVar[bool] = True

    #: a kind that writes its own stable decomposition defines
    #: ``decompose(builder, spec, x, params, compute_dtype) -> output`` (params and x already in
    #: the compute dtype); the decomposed and function strategies then lower it without a
    #: ``kind ==`` branch of their own. The five original kinds are still decomposed there.
    decompose: ClassVar[Any] = None

    #: fused forms this kind has (``NormSpec.residual`` / ``NormSpec.modulation``)
    fused_forms: ClassVar[frozenset[str]] = frozenset()

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
        if spec.activation not in ("", "silu"):
            raise SpecError(f"unknown fused activation {spec.activation!r}", note="valid: '' or 'silu'")
        if spec.activation and self.name != "group":
            raise SpecError(f"a fused activation is only supported on group norm, not {self.name}")
        if spec.gated and not spec.residual:
            raise SpecError("a gate multiplies the residual input: gated=True needs residual=True")
        for form in ("residual", "modulation"):
            if getattr(spec, form) and form not in self.fused_forms:
                raise SpecError(
                    f"a fused {form} is not supported on {self.name} norm",
                    note=f"{self.name} norm fuses: {', '.join(sorted(self.fused_forms)) or 'nothing'}",
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
        slots = ["weight" if spec.has_weight else "", "bias" if spec.has_bias else ""]
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
        if spec.residual:
            attrs["has_residual"] = 1
        if spec.modulation:
            attrs["modulation"] = 1
        if spec.gated:
            attrs["has_gate"] = 1
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
        if spec.channels is not None and spec.kind != "layer" and (x.ndim < 2 or x.shape[1] != spec.channels):
            raise SpecError(f"{what}: input of shape {x.shape} does not have {spec.channels} channels on axis 1")


def silu(y: np.ndarray) -> np.ndarray:
    return y / (1.0 + np.exp(-y))
