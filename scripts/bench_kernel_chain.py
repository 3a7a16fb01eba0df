"""In-graph cost of one norm kernel node: a chain of L identical nodes (each reading the previous one's
output, as in a model) in default onnxruntime sessions, against the same chain of ``Neg`` (one cheap
element-wise pass: the floor of any kernel), or against the same chain run with another build of the
kernel library (``--old``), paired rounds of 0.03 s (``measure_isolated``).

A one-node file is timed mostly in ``session.run`` itself (~10 µs here); in a chain of 40 the per-node
figure is what a model pays. ``--old`` takes a kernel library built from another revision, e.g.
``git worktree add /tmp/old REV && (cd /tmp/old && python setup.py build_ext --inplace)`` and
``--old /tmp/old/normonnx/kernels/_normonnx_kernels.so``; the chain then runs with the old library,
the installed one, and the old one again (A/A).

    python scripts/bench_kernel_chain.py layer:1,16,16,32 layer_cf:1,32,16,16 rms:2,65,64 [--old LIB] [--threads 2]

A case is ``KIND:SHAPE``: a kind of ``normonnx.norms`` at the benchmarked spec of
``normonnx.bench.ops.spec_for`` (affine), or ``layer_cf`` (channels-first LayerNorm over axis 1).
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import numpy as np
import onnx
from onnx import TensorProto, helper

from normonnx.bench import ops
from normonnx.bench.timing import default_visit, measure_isolated, paired_ratio
from normonnx.lowering import build_model
from normonnx.norms import KINDS
from normonnx.spec import NormSpec


def chain(one: onnx.ModelProto, shape: list[int], length: int) -> onnx.ModelProto:
    """``length`` copies of ``one``'s single node in a chain X → … → Y (its initializers shared)."""
    node = one.graph.node[0]
    nodes, prev = [], "X"
    for i in range(length):
        n = onnx.NodeProto()
        n.CopyFrom(node)
        n.input[0] = prev
        del n.output[1:]
        n.output[0] = prev = f"t{i}" if i < length - 1 else "Y"
        n.name = f"n{i}"
        nodes.append(n)
    vi = [helper.make_tensor_value_info(v, TensorProto.FLOAT, shape) for v in ("X", "Y")]
    g = helper.make_graph(nodes, "chain", [vi[0]], [vi[1]], initializer=list(one.graph.initializer))
    m = helper.make_model(g, opset_imports=list(one.opset_import), ir_version=one.ir_version)
    m.functions.extend(one.functions)
    return m


def neg_one(shape: list[int]) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("X", TensorProto.FLOAT, shape)
    g = helper.make_graph([helper.make_node("Neg", ["X"], ["Y"])], "neg", [x], [x])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])


def kernel_one(case: str) -> tuple[onnx.ModelProto, list[int], np.ndarray]:
    kind, _, dims = case.partition(":")
    shape = [int(v) for v in dims.split(",")]
    opset, spec, _, params, x = ops._problem("layer" if kind == "layer_cf" else kind, shape, 2, None, 0)
    if kind == "layer_cf":
        spec = NormSpec("layer", normalized_shape=(shape[1],), channels_first=True, rank=len(shape))
        params = KINDS["layer"].random_params(spec, np.random.default_rng(0))
    return build_model(spec, params, opset, "native_kernel"), shape, x


def old_library_visit(model: onnx.ModelProto, feed: dict, threads: int, lib: str):
    """A visit like :func:`default_visit`, with the kernel library ``lib`` registered instead."""
    import onnxruntime as ort

    src = model.SerializeToString()

    def build():
        so = ort.SessionOptions()
        so.log_severity_level = 3
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.register_custom_ops_library(lib)
        s = ort.InferenceSession(src, so, providers=["CPUExecutionProvider"])
        return lambda: s.run(None, feed)

    return build


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("cases", nargs="+", help="KIND:SHAPE, e.g. layer:1,16,16,32")
    p.add_argument("--old", help="a kernel library of another build: old vs installed, instead of vs Neg")
    p.add_argument("--length", type=int, default=40)
    p.add_argument("--rounds", type=int, default=60)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    if args.old and not os.path.isfile(args.old):
        p.error(f"--old: no such file {args.old}")
    for case in args.cases:
        one, shape, x = kernel_one(case)
        feed = {"X": x}
        m = chain(one, shape, args.length)
        if args.old:
            cands = {
                "old": old_library_visit(m, feed, args.threads, args.old),
                "new": default_visit(m, feed, args.threads),
                "old2": old_library_visit(m, feed, args.threads, args.old),
            }
        else:
            cands = {"kernel": default_visit(m, feed, args.threads)}
            cands["neg"] = default_visit(chain(neg_one(shape), shape, args.length), feed, args.threads)
        t = measure_isolated(cands, rounds=args.rounds, block_s=0.03, seed=0)
        per = {k: 1e3 * v.median_ms / args.length for k, v in t.items()}
        if args.old:
            print(
                f"{case:24s} per node: old {per['old']:6.2f} µs  new {per['new']:6.2f} µs  "
                f"speed-up {paired_ratio(t['old'], t['new']):.3f}  A/A {paired_ratio(t['old'], t['old2']):.3f}",
                flush=True,
            )
        else:
            print(
                f"{case:24s} per node: kernel {per['kernel']:6.2f} µs  Neg {per['neg']:6.2f} µs  "
                f"kernel/Neg {paired_ratio(t['kernel'], t['neg']):.3f}",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
