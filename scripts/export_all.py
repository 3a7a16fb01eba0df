#!/usr/bin/env python
"""Export, run and verify every model in models/ (same as `normonnx zoo`)."""

import sys

from normonnx.cli import main

if __name__ == "__main__":
    sys.exit(main(["zoo", *sys.argv[1:]]))
