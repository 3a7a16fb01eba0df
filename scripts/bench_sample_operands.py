"""What absorbing the AdaLN Unsqueezes (``sample_operands.*``, normonnx/optimize/fuse_sample.py) gives:
the default ``torch.onnx.export`` of a model optimized by normonnx with every rule, against the same
file optimized without the ``sample_operands`` family (its ``[N, C] → [N, 1, C]`` Unsqueezes kept),
in default onnxruntime sessions (kernel library registered), paired rounds of 0.04 s
(``measure_isolated``), with a byte-identical copy of the second file as an A/A candidate of the
same rounds to show the resolution. The two files' outputs are checked bitwise equal first.

    python scripts/bench_sample_operands.py [MODEL ...] [--runs 2] [--rounds 150]     # default: dit_block
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import shutil
import sys
import tempfile
import warnings
from collections import Counter

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import numpy as np
import onnx
import torch

import models
from normonnx.bench.timing import default_session, default_visit, measure_isolated, paired_ratio
from normonnx.optimize import optimize_model, rule_names


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("models", nargs="*", default=["dit_block"])
    p.add_argument("--runs", type=int, default=2)
    p.add_argument("--rounds", type=int, default=150)
    args = p.parse_args(argv)
    without = [f for f in rule_names() if f != "sample_operands"]
    with tempfile.TemporaryDirectory() as d:
        for name in args.models:
            entry = models.get(name)
            model, inputs = entry.factory(), tuple(entry.example_inputs())
            with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
                warnings.simplefilter("ignore")
                proto = torch.onnx.export(model, inputs, dynamo=True).model_proto
            paths = {k: os.path.join(d, f"{name}.{k}.onnx") for k in ("absorbed", "unsqueezed", "copy")}
            onnx.save(optimize_model(proto, verify=False).model, paths["absorbed"])
            onnx.save(optimize_model(proto, verify=False, rules=without).model, paths["unsqueezed"])
            shutil.copyfile(paths["unsqueezed"], paths["copy"])
            counts = {k: Counter(n.op_type for n in onnx.load(paths[k]).graph.node) for k in ("absorbed", "unsqueezed")}
            sess = default_session(paths["absorbed"], 2)
            feed = {i.name: t.numpy() for i, t in zip(sess.get_inputs(), inputs)}
            if not all(
                np.array_equal(a, b)
                for a, b in zip(sess.run(None, feed), default_session(paths["unsqueezed"], 2).run(None, feed))
            ):
                print(f"{name}: the two files' outputs differ", file=sys.stderr)
                return 1
            del sess

            nodes = {k: sum(c.values()) for k, c in counts.items()}
            print(
                f"{name}: {counts['unsqueezed']['Unsqueeze']} -> {counts['absorbed']['Unsqueeze']} Unsqueeze, "
                f"{nodes['unsqueezed']} -> {nodes['absorbed']} nodes, outputs bitwise equal",
                flush=True,
            )
            for run in range(args.runs):
                t = measure_isolated(
                    {k: default_visit(v, feed, 2) for k, v in paths.items()}, rounds=args.rounds, block_s=0.04, seed=run
                )
                print(
                    f"{name} run {run}: speed-up {paired_ratio(t['unsqueezed'], t['absorbed']):.3f} "
                    f"({t['unsqueezed'].median_ms:.4f} -> {t['absorbed'].median_ms:.4f} ms), "
                    f"A/A {paired_ratio(t['unsqueezed'], t['copy']):.3f}",
                    flush=True,
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
