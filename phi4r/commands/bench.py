"""`phi4r bench`: the engine benchmark (phi4r/bench.py) from the command line.

    phi4r bench                                   # full grid: fp32/bf16/int8/w8a8 x batch 1,4,16,64, vs transformers
    phi4r bench --batches 1,16 --dtypes fp32,int8 --new-tokens 32 --out results.json
    phi4r bench scale --dir /data/phi4-scale      # Phi-4-reasoning's size: load time, peak memory (phi4r/bench_scale.py)
    phi4r bench --against llama.cpp [--quick]     # phi4r vs llama.cpp on the anchor checkpoint (phi4r/bench_llamacpp.py)
"""
from __future__ import annotations

import argparse
from pathlib import Path

from ._options import add_model_args, int_list, names_from, positive_int


def register(subparsers) -> None:
    from phi4r import bench, bench_llamacpp

    p = subparsers.add_parser("bench", help="benchmark the engine: prefill/decode tokens/s and memory vs transformers "
                                            "and the roofline", description=bench.__doc__.split("\n")[0],
                              epilog="See phi4r/bench.py and docs/BENCHMARKS.md.")
    add_model_args(p, precision=False, default=None,
                   help=f"'{bench.BENCH_MODEL}' (a Phi-4-shaped 250M random checkpoint, made in "
                        f"{bench.DEFAULT_CHECKPOINT} on first use), '{bench.ANCHOR_MODEL}' (258M, Phi-4's vocabulary), "
                        f"'nano' or a checkpoint directory [{bench.BENCH_MODEL}; {bench.ANCHOR_MODEL} with --against]")
    p.add_argument("--checkpoint", dest="model", help=argparse.SUPPRESS)  # the flag's former name
    p.add_argument("--batches", type=int_list, default=[1, 4, 16, 64], help="batch sizes [1,4,16,64]")
    p.add_argument("--dtypes", type=names_from(bench.DTYPES, "dtype"), default=list(bench.DTYPES),
                   help=f"{','.join(bench.DTYPES)}: weights and activations of each row (int8: weight-only int8, "
                        "w8a8: int8 weights and activations, int4: group-wise 4-bit weights) [all]")
    p.add_argument("--prompt-len", type=positive_int, default=128, help="prompt tokens per sequence [128]")
    p.add_argument("--new-tokens", type=positive_int, default=64, help="decode steps timed per sequence [64]")
    p.add_argument("--repeats", type=positive_int, default=1, help="timed runs per measurement; the best counts [1]")
    p.add_argument("--no-transformers", dest="transformers", action="store_false", help="phi4r only")
    p.add_argument("--out", type=Path, help="also write every number to this JSON file")
    g = p.add_argument_group("against llama.cpp (llama-cpp-python: pip install 'phi4r[bench]')")
    g.add_argument("--against", choices=["llama.cpp"], help="measure phi4r against llama.cpp on the same checkpoint, "
                   "exported by phi4r to GGUF, at each precision pair, interleaved (--threads defaults to 2)")
    g.add_argument("--precisions", type=names_from(bench_llamacpp.PAIRS, "precision"),
                   default=list(bench_llamacpp.PAIRS),
                   help="phi4r side of the pairs fp32/f32, bf16/bf16, int8/q8_0, int4/q4_0 [all]")
    g.add_argument("--quick", action="store_true", help="short and 1K positions only, 16 decode steps, one round")
    g.add_argument("--rounds", type=positive_int, help="interleaved rounds; the best counts [2; 1 with --quick]")
    g.add_argument("--gguf-dir", type=Path, help="where the exported GGUF files are kept [a temporary directory]")
    p.set_defaults(func=_run)
    scenarios = p.add_subparsers(title="scenarios", metavar="{scale}", required=False)
    from phi4r import bench_scale

    scale = scenarios.add_parser("scale", help="a full-size random checkpoint (Phi-4-reasoning's config): load time, "
                                               "peak memory and decode per quantization",
                                 description=bench_scale.__doc__.split("\n")[0])
    bench_scale.add_arguments(scale)
    scale.set_defaults(func=bench_scale.run)


def _run(args) -> int:
    if args.against == "llama.cpp":
        from phi4r.bench_llamacpp import run as run_against
        return run_against(args)
    from phi4r.bench import run

    return run(args)
