"""The engine benchmark from a source checkout: the same as `phi4r bench` (phi4r/bench.py).

    python benchmarks/bench_engine.py --threads 1 --batches 1,16
"""
import sys

from phi4r.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
