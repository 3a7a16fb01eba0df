"""The canonical description of one normalization, independent of torch and of ONNX.

Every norm kind reduces to: which axes the statistics are taken over, how the input is grouped,
which per-channel (or per-feature) affine parameters follow, and the epsilon. Layout and compute
dtype are *fields* here, not class names: a channels-first LayerNorm is ``kind="layer",
channels_first=True``; an fp16 GroupNorm is ``dtype="float16"``.
"""

from __future__ import annotations

import dataclasses

from .dtypes import FLOATS
from .errors import SpecError

#: a norm kind's name: a key of ``normonnx.norms.KINDS`` (the registry, not a fixed list)
Kind = str

#: dtypes normonnx understands, as numpy-style names, mapped to ONNX TensorProto element types.
DTYPES: dict[str, int] = FLOATS  # the one dtype table: normonnx.dtypes
#: dtypes whose statistics are computed ("stashed") in float32, as torch and ONNX's stash_type do.
LOW_PRECISION = frozenset({"float16", "bfloat16"})


@dataclasses.dataclass(frozen=True)
class NormSpec:
    """One normalization, canonically.

    Fields that do not apply to a kind are left at their defaults and rejected by the kind's
    ``validate`` if set.

    kind:             registry key of ``normonnx.norms.KINDS`` ("batch", "layer", "group", ...).
    eps:              epsilon added to the variance (or mean square) before the square root.
    channels:         C, the size of axis 1 (batch / instance / group / channels-first layer).
    normalized_shape: trailing shape normalised by layer / rms (``(C,)`` for channels-first).
    groups:           G for group norm; C/G channels share statistics.
    channels_first:   layer norm over axis 1 of an N,C,... tensor (ConvNeXt) instead of trailing.
    has_weight/has_bias: whether the affine scale γ / shift β exist.
    running_stats:    statistics are the stored running mean/var, not the input's (batch in eval,
                      instance with ``track_running_stats=True`` in eval).
    activation:       "", "silu" or "relu": an activation fused after the affine (the channel
                      norms: group, instance, batch; the table is ``normonnx.norms.base.ACTIVATIONS``).
    residual:         the norm's input is ``X + R`` (a residual input R of X's shape, no
                      broadcasting): ``y = N(X + R)``, the sum available as a second output for the
                      residual stream (trailing layer / rms norm only).
    gated:            with ``residual``: the input is ``X + gate·R`` (the product rounded, then the
                      sum, as the Mul and Add it replaces) with a run-time gate of shape
                      ``[N or 1, 1, ..., 1, *normalized_shape]`` (AdaLN-Zero's gated residual).
    modulation:       ``y = N(x)·(1 + scale) + shift`` with run-time scale and shift of shape
                      ``[N or 1, 1, ..., 1, *normalized_shape]`` (AdaLN of diffusion transformers;
                      trailing layer norm without γ/β only).
    sample_operands:  with ``modulation`` or ``gated``: scale, shift and gate are ``[N or 1,
                      *normalized_shape]`` instead, aligned to the input's axis 0 and broadcast over
                      the axes between (the un-unsqueezed ``Split`` outputs of a DiT's AdaLN
                      projection); the same numbers as their ``[N or 1, 1, ..., 1, *ns]`` unsqueeze.
                      Needs ``rank`` (the axes between depend on it, so it is part of :meth:`key`).
    dtype:            element type of input and output; fp16/bf16 compute statistics in fp32.
    rank:             input rank if known (None: any rank the kind accepts).
    """

    kind: str
    eps: float = 1e-5
    channels: int | None = None
    normalized_shape: tuple[int, ...] | None = None
    groups: int | None = None
    channels_first: bool = False
    has_weight: bool = True
    has_bias: bool = True
    running_stats: bool = False
    activation: str = ""
    residual: bool = False
    modulation: bool = False
    gated: bool = False
    sample_operands: bool = False
    dtype: str = "float32"
    rank: int | None = None

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise SpecError(
                f"unsupported dtype {self.dtype!r} for a {self.kind} norm",
                note=f"valid dtypes: {', '.join(DTYPES)}",
            )
        if not (self.eps >= 0.0):
            raise SpecError(f"epsilon must be a non-negative number, got {self.eps!r}")
        if self.normalized_shape is not None:
            object.__setattr__(self, "normalized_shape", tuple(int(d) for d in self.normalized_shape))

    @property
    def onnx_dtype(self) -> int:
        return DTYPES[self.dtype]

    @property
    def stash_fp32(self) -> bool:
        """True when statistics must be computed in float32 (fp16/bf16 inputs)."""
        return self.dtype in LOW_PRECISION

    @property
    def affine_shape(self) -> tuple[int, ...]:
        """Shape of γ and β as the user provides them: the normalised features of a spec that
        has ``normalized_shape`` (layer, rms; ``(C,)`` for channels-first), else per channel."""
        if self.normalized_shape is not None:
            return self.normalized_shape
        assert self.channels is not None
        return (self.channels,)

    @property
    def reduction_size(self) -> int | None:
        """Elements per set of statistics when static: those of ``normalized_shape`` (layer / rms;
        C for channels-first), else None (the statistics span spatial dims)."""
        if not self.normalized_shape:
            return None
        if self.channels_first and self.channels is not None:
            return self.channels
        n = 1
        for d in self.normalized_shape:
            n *= d
        return n

    def key(self) -> str:
        """A short stable identifier, used e.g. as the ONNX function overload name."""
        parts = [self.kind]
        if self.channels is not None:
            parts.append(f"c{self.channels}")
        if self.normalized_shape is not None:
            parts.append("n" + "x".join(map(str, self.normalized_shape)))
        if self.groups is not None:
            parts.append(f"g{self.groups}")
        if self.channels_first:
            parts.append("cf")
        parts.append(("w" if self.has_weight else "") + ("b" if self.has_bias else "") or "na")
        if self.running_stats:
            parts.append("rs")
        if self.activation:
            parts.append(self.activation)
        if self.residual:
            parts.append("res")
        if self.gated:
            parts.append("gate")
        if self.modulation:
            parts.append("mod")
        if self.sample_operands:  # the function body's Unsqueeze axes depend on the rank
            parts.append(f"so{self.rank}")
        parts.append(f"e{self.eps:.3g}")
        parts.append(self.dtype)
        return "_".join(parts).replace("+", "").replace("-", "m").replace(".", "p")

    def replace(self, **changes: object) -> NormSpec:
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]
