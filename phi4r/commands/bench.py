"""`phi4r bench`: the engine benchmark (phi4r/bench.py) from the command line.

    phi4r bench                                   # full grid: fp32/bf16/int8/w8a8 x batch 1,4,16,64, vs transformers
    phi4r bench --batches 1,16 --dtypes fp32,int8 --new-tokens 32 --out results.json
    phi4r bench scale --dir /data/phi4-scale      # Phi-4-reasoning's size: load time, peak memory (phi4r/bench_scale.py)
"""
from __future__ import annotations

import argparse
from pathlib import Path

from ._options import add_model_args, int_list, positive_int


def register(subparsers) -> None:
    from phi4r import bench

    p = subparsers.add_parser("bench", help="benchmark the engine: prefill/decode tokens/s and memory vs transformers "
                                            "and the roofline", description=bench.__doc__.split("\n")[0],
                              epilog="See phi4r/bench.py and docs/BENCHMARKS.md.")
    add_model_args(p, precision=False, default=bench.BENCH_MODEL,
                   help=f"'{bench.BENCH_MODEL}' (a Phi-4-shaped 250M random checkpoint, made in "
                        f"{bench.DEFAULT_CHECKPOINT} on first use), 'nano' or a checkpoint directory [{bench.BENCH_MODEL}]")
    p.add_argument("--checkpoint", dest="model", help=argparse.SUPPRESS)  # the flag's former name
    p.add_argument("--batches", type=int_list, default=[1, 4, 16, 64], help="batch sizes [1,4,16,64]")
    p.add_argument("--dtypes", type=_dtypes, default=list(bench.DTYPES),
                   help=f"{','.join(bench.DTYPES)}: weights and activations of each row (int8: weight-only int8, "
                        "w8a8: int8 weights and activations) [all]")
    p.add_argument("--prompt-len", type=positive_int, default=128, help="prompt tokens per sequence [128]")
    p.add_argument("--new-tokens", type=positive_int, default=64, help="decode steps timed per sequence [64]")
    p.add_argument("--repeats", type=positive_int, default=1, help="timed runs per measurement; the best counts [1]")
    p.add_argument("--no-transformers", dest="transformers", action="store_false", help="phi4r only")
    p.add_argument("--out", type=Path, help="also write every number to this JSON file")
    p.set_defaults(func=_run)
    scenarios = p.add_subparsers(title="scenarios", metavar="{scale}", required=False)
    from phi4r import bench_scale

    scale = scenarios.add_parser("scale", help="a full-size random checkpoint (Phi-4-reasoning's config): load time, "
                                               "peak memory and decode per quantization",
                                 description=bench_scale.__doc__.split("\n")[0])
    bench_scale.add_arguments(scale)
    scale.set_defaults(func=bench_scale.run)


def _dtypes(text: str) -> list[str]:
    from phi4r.bench import DTYPES

    names = [x.strip() for x in text.split(",") if x.strip()]
    unknown = [n for n in names if n not in DTYPES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown dtype {(unknown or [text])[0]!r}; choose from {','.join(DTYPES)}")
    return names


def _run(args) -> int:
    from phi4r.bench import run

    return run(args)
