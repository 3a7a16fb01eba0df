#!/usr/bin/env python
"""Error of every strategy vs float64, as a ratio to torch fp32's own error, on stress inputs.

Prints one table (kind × strategy × stress input); the numbers quoted in the core issue note.
"""

from __future__ import annotations

import math

from normonnx.lowering import STRATEGIES, check, select
from normonnx.spec import NormSpec
from normonnx.verify.stress import large_shape, large_spec, measure

CASES = {
    "batch(stats)": (NormSpec("batch", channels=8, running_stats=False, rank=4), (4, 8, 32, 32)),
    "layer": (NormSpec("layer", normalized_shape=(768,), rank=3), (4, 64, 768)),
    "layer_cf": (NormSpec("layer", normalized_shape=(32,), channels_first=True, rank=4), (2, 32, 16, 16)),
    "instance": (NormSpec("instance", channels=8, rank=4), (2, 8, 64, 64)),
    "group": (NormSpec("group", channels=32, groups=8, rank=4), (2, 32, 32, 32)),
    "rms": (NormSpec("rms", normalized_shape=(1024,), has_bias=False, rank=3), (2, 32, 1024)),
}


def main() -> None:
    rows = []
    for label, (spec, shape) in CASES.items():
        rows.append((label, spec, shape, ("normal", "offset", "tiny_scale")))
    for kind in ("batch", "layer", "instance", "group", "rms"):
        spec = large_spec(kind)
        rows.append((f"{kind}(1M)", spec, large_shape(spec), ("normal", "offset")))
    print(
        f"{'case':14s} {'strategy':13s} {'default':7s} "
        + "  ".join(f"{s:>26s}" for s in ("normal", "offset", "tiny_scale"))
    )
    for label, spec, shape, stresses in rows:
        default = select(spec, 23).strategy
        for name in STRATEGIES:
            if not check(spec, name, 23, allow_unstable=True):
                continue
            cells = []
            for st in ("normal", "offset", "tiny_scale"):
                if st not in stresses:
                    cells.append(f"{'-':>26s}")
                    continue
                err, terr, _, _ = measure(spec, shape, st, name)
                ratio = err / max(terr, 1e-12)
                cells.append(f"{err:9.2e}/{terr:8.2e}={ratio if math.isfinite(ratio) else float('inf'):6.2f}x")
            print(f"{label:14s} {name:13s} {'*' if name == default else '':7s} " + "  ".join(cells))
    print(
        "\ncells: ours / torch-fp32 = ratio (both max |error| vs float64 reference); * = selector's default at opset 23"
    )


if __name__ == "__main__":
    main()
