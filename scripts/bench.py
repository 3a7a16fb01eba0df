#!/usr/bin/env python
"""Run the benchmarks (same as `normonnx bench`); with no arguments, the full run that writes the
repository's BENCHMARKS.md and benchmarks.json:

    python scripts/bench.py                       # = normonnx bench all --markdown BENCHMARKS.md --json benchmarks.json
    python scripts/bench.py ops --quick           # any `normonnx bench` arguments
    python scripts/bench.py --compare benchmarks.json --json new.json
"""

import sys

from normonnx.cli import main

if __name__ == "__main__":
    args = sys.argv[1:] or ["all", "--markdown", "BENCHMARKS.md", "--json", "benchmarks.json"]
    sys.exit(main(["bench", *args]))
