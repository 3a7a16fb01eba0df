"""What fusing a channel norm's ReLU (GroupNorm, InstanceNorm, BatchNorm) into the kernel gives, per
model: ``normonnx export``'s file against the same file with each fused ReLU taken back out into
its own Relu node (same kernels otherwise), in default onnxruntime sessions, 150 paired rounds of 0.04 s (``measure_isolated``). The two files'
outputs are checked bitwise equal first.

    python scripts/bench_relu_fusion.py [MODEL ...] [--runs 2]   # default: resnet_gn resnet_ws style_transfer
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import numpy as np
import onnx
from onnx import helper

import models
from normonnx.bench.timing import default_session, default_visit, measure_isolated, paired_ratio
from normonnx.exporter import export


def relu_apart(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """``model`` with every kernel channel norm's fused ReLU as a Relu node after it (timing only: the
    node keeps its overload, whose function body still has the ReLU, so it runs with the library)."""
    out, nodes, n_apart = onnx.ModelProto(), [], 0
    out.CopyFrom(model)
    for n in out.graph.node:
        act = [a for a in n.attribute if a.name == "activation" and a.s == b"relu"]
        if n.op_type in ("GroupNorm", "InstanceNorm", "BatchNorm") and act:
            n.attribute.remove(act[0])
            y = n.output[0]
            n.output[0] = f"{y}/pre_relu"
            nodes += [n, helper.make_node("Relu", [n.output[0]], [y], name=f"{n.name}/relu")]
            n_apart += 1
        else:
            nodes.append(n)
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    return out, n_apart


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("models", nargs="*", default=["resnet_gn", "resnet_ws", "style_transfer"])
    p.add_argument("--runs", type=int, default=2)
    p.add_argument("--rounds", type=int, default=150)
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as d:
        for name in args.models:
            entry = models.get(name)
            model, inputs = entry.factory(), tuple(entry.example_inputs())
            fused, apart = os.path.join(d, f"{name}.fused.onnx"), os.path.join(d, f"{name}.apart.onnx")
            export(model, inputs, fused)
            m, n_apart = relu_apart(onnx.load(fused))
            onnx.save(m, apart)
            sess = default_session(fused, 2)
            feed = {i.name: t.numpy() for i, t in zip(sess.get_inputs(), inputs)}
            if not np.array_equal(sess.run(None, feed)[0], default_session(apart, 2).run(None, feed)[0]):
                print(f"{name}: the two files' outputs differ", file=sys.stderr)
                return 1
            del sess

            for run in range(args.runs):
                t = measure_isolated(
                    {"fused": default_visit(fused, feed, 2), "apart": default_visit(apart, feed, 2)},
                    rounds=args.rounds,
                    block_s=0.04,
                    seed=run,
                )
                print(
                    f"{name}: {n_apart} ReLUs fused, speed-up {paired_ratio(t['apart'], t['fused']):.3f} "
                    f"({t['apart'].median_ms:.3f} -> {t['fused'].median_ms:.3f} ms), outputs bitwise equal",
                    flush=True,
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
