"""`phi4r bench`: the engine benchmark (benchmarks/bench_engine.py) from the command line.

    phi4r bench                                   # full grid: fp32/bf16/int8 x batch 1,4,16,64, vs transformers
    phi4r bench --batches 1,16 --dtypes fp32,int8 --new-tokens 32 --out results.json
"""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

# The benchmark lives in the source tree, next to the other benchmarks, not in the installed package.
SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_engine.py"


def _load_script():
    spec = importlib.util.spec_from_file_location("bench_engine", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # cheap: the script imports torch only when it runs
    return module


def register(subparsers) -> None:
    help_text = "benchmark the engine: prefill/decode tokens/s and memory vs transformers and the roofline"
    if not SCRIPT.is_file():
        p = subparsers.add_parser("bench", help=help_text, description=__doc__.split("\n")[0])
        p.set_defaults(func=_missing)
        return
    script = _load_script()
    p = subparsers.add_parser("bench", help=help_text, description=script.__doc__.split("\n")[0],
                              epilog="See benchmarks/bench_engine.py and docs/BENCHMARKS.md.")
    script.add_arguments(p)
    p.set_defaults(func=script.run)


def _missing(args) -> int:
    print(f"phi4r bench: {SCRIPT} not found; the benchmark runs from a source checkout of phi4r", file=sys.stderr)
    return 1
