"""A tiny graph builder shared by every lowering strategy.

Strategies describe their subgraph as calls ``b.op("ReduceMean", [x, axes], keepdims=1)``;
the builder turns them into ``NodeProto``s with unique value names. Constants become
``Constant`` nodes (not initializers) so that the same code builds a function body, a model
subgraph, or a replacement inside an existing graph.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper


class Builder:
    """Collects nodes for one subgraph built at ``opset`` (of the default domain)."""

    def __init__(self, opset: int, prefix: str = "n") -> None:
        self.opset = opset
        self.prefix = prefix
        self.nodes: list[onnx.NodeProto] = []
        self._ids = itertools.count()
        self._consts: dict[tuple[Any, ...], str] = {}
        #: values the subgraph exposes besides its result, by role ("sum": a residual norm's X + R)
        self.named: dict[str, str] = {}

    def fresh(self, hint: str) -> str:
        return f"{self.prefix}/{hint}_{next(self._ids)}"

    def op(
        self,
        op_type: str,
        inputs: Sequence[str | None],
        *,
        domain: str = "",
        outputs: int = 1,
        overload: str = "",
        **attrs: Any,
    ) -> str:
        """Add a node and return its (first) output name; ``None`` inputs become ``""``."""
        outs = [self.fresh(op_type.lower()) for _ in range(outputs)]
        node = helper.make_node(
            op_type,
            [i or "" for i in inputs],
            outs,
            name=self.fresh(op_type),
            domain=domain or None,
            **{k: v for k, v in attrs.items() if v is not None},
        )
        if overload:
            node.overload = overload
        self.nodes.append(node)
        return outs[0]

    def const(self, value: Any, dtype: Any = np.float32) -> str:
        """A ``Constant`` node holding ``value`` (deduplicated within this builder)."""
        arr = np.asarray(value, dtype=dtype)
        key = (arr.dtype.str, arr.shape, arr.tobytes())
        if key not in self._consts:
            out = self.fresh("const")
            tensor = numpy_helper.from_array(arr, name=out)
            self.nodes.append(helper.make_node("Constant", [], [out], name=self.fresh("Constant"), value=tensor))
            self._consts[key] = out
        return self._consts[key]

    def ints(self, values: Sequence[int]) -> str:
        return self.const(np.asarray(list(values), dtype=np.int64), np.int64)

    # -- opset-dependent spellings -----------------------------------------------------------------
    def reduce(self, op_type: str, x: str, axes: Sequence[int], keepdims: int = 1) -> str:
        """ReduceMean/ReduceSum/...: axes became an input in opset 18 (13 for ReduceSum)."""
        axes_as_input = self.opset >= (13 if op_type == "ReduceSum" else 18)
        if axes_as_input:
            return self.op(op_type, [x, self.ints(axes)], keepdims=keepdims)
        return self.op(op_type, [x], axes=list(axes), keepdims=keepdims)

    def cast(self, x: str, to: int) -> str:
        return self.op("Cast", [x], to=to)
