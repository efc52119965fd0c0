"""Data-path benchmark: ``python benchmarks/bench_data.py [options]`` is ``segmodels bench-data [options]``.

Generates and packs the demo-sized dataset (timing both), then compares samples/s of the packed, batched
training path with a plain torchvision per-sample pipeline on the same data. ``--help`` lists the options.
"""

from __future__ import annotations

import sys

from segmodels.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench-data", *sys.argv[1:]]))
