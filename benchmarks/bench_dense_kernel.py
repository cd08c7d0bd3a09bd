"""Microbenchmark of the dense fp32/bf16 linear kernel (phi4r/kernels/dense_linear.cpp) on the anchor's shapes.

    python benchmarks/bench_dense_kernel.py --threads 2 [--dtypes fp32,bf16] [--rows 1,2,4,8] [--baseline OLD.cpp ...]

The 258M anchor checkpoint's linears (hidden 768, 12 layers, 12/4 heads of 64, intermediate 3072, vocab
100352, untied lm_head): qkv 1280x768, o 768x768, gate_up 6144x768, down 768x3072, lm_head 100352x768.
Per dtype, distinct copies of each shape's weights, at least --copies-mb of them and the 12 layers of
a decode step (724 MB in fp32 with the lm_head), so they come from memory, not from the caches, as in
decoding. Three ways to compute x @ W^T: the kernel; oneDNN's prepacked GEMM as phi4r.fastlinear runs
it (fp32 packed for each of --batch-hints rows, the engine's max_num_seqs: 16 by default in `LLM`, 1 in
profile_decode.py); F.linear. They take turns (each round times every one of them once) so a busy
machine hurts all alike, and the median over rounds is reported.

- per shape at batch 1: GB/s of weights read (bytes of the weight / median call time);
- per row count: one decode step's linears (48 + lm_head), ms, and the kernel's GB/s.

--baseline OLD.cpp (repeatable) builds another version of dense_linear.cpp (e.g. `git show
HEAD:phi4r/kernels/dense_linear.cpp > /tmp/old.cpp`) as an extension of its own and adds it to both
tables (a column named after the file), measured in the same rounds.
Run it under the shared lock on a shared machine (flock /tmp/heavy.lock ...).
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

SHAPES = {"qkv": (1280, 768), "o": (768, 768), "gate_up": (6144, 768), "down": (768, 3072), "lm_head": (100352, 768)}
LAYERS = 12
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def load_baseline(path: str):
    """The dense_linear function of another version of the kernel's source, built under its own name."""
    import hashlib
    from pathlib import Path

    from torch.utils import cpp_extension

    src = Path(path).read_text()
    name = "phi4r_dense_baseline_" + hashlib.sha256(src.encode()).hexdigest()[:12]
    return cpp_extension.load(name=name, sources=[path], extra_cflags=["-O3", "-march=native", "-std=c++17", "-fopenmp"],
                              extra_include_paths=[str(Path(__file__).resolve().parents[1] / "phi4r" / "kernels")],
                              extra_ldflags=["-fopenmp"], verbose=False).dense_linear


def rounds(fns: dict, calls, reps: int) -> dict[str, float]:
    """Median seconds of `calls(fn, i)` per fn over `reps` rounds, every fn once per round (after one
    warm-up); i counts the calls, so that each call can take a copy of the weights the previous one did
    not read (which would still be in the caches)."""
    times = {name: [] for name in fns}
    for rep in range(reps + 1):
        for j, (name, fn) in enumerate(fns.items()):
            start = time.perf_counter()
            calls(fn, rep * len(fns) + j)
            if rep:
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def main() -> None:
    from phi4r.kernels import dense

    p = argparse.ArgumentParser()
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--dtypes", default="fp32,bf16")
    p.add_argument("--rows", default="1,2,3,4,6,8")
    p.add_argument("--batch-hints", default="16,1", help="rows oneDNN's fp32 layout is packed for (each a column)")
    p.add_argument("--reps", type=int, default=60, help="rounds per shape (the step table: a fifth of them)")
    p.add_argument("--copies-mb", type=int, default=128, help="weights per shape, MB (beyond the caches)")
    p.add_argument("--baseline", action="append", default=[],
                   help="another dense_linear.cpp to compare with, in the same rounds (repeatable)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    kernel = dense.linear()
    assert kernel is not None, "the dense kernel is not available here"
    from pathlib import Path

    baselines = {Path(path).stem: load_baseline(path) for path in args.baseline}
    big = torch.ones(128 * 2**20)  # the same measure as bench_engine's roofline: sum of 512 MB
    read = min(rounds({"sum": big.sum}, lambda fn, rep: fn(), 5)["sum"] for _ in range(3))
    hints = [int(h) for h in args.batch_hints.split(",")]
    print(f"torch threads {torch.get_num_threads()}; memory read bandwidth {big.nbytes / read / 1e9:.1f} GB/s")
    del big

    for dname in args.dtypes.split(","):
        dtype = DTYPES[dname]
        gen = torch.Generator().manual_seed(0)
        elem = torch.empty(0, dtype=dtype).element_size()
        copies = {name: max(1 if name == "lm_head" else LAYERS, -(-args.copies_mb * 2**20 // (n * k * elem)))
                  for name, (n, k) in SHAPES.items()}
        weights = {name: [torch.randn(n, k, generator=gen).to(dtype) for _ in range(copies[name])]
                   for name, (n, k) in SHAPES.items()}
        # bf16 packs without a hint (one layout for every row count), fp32 for a number of rows.
        packs = {f"oneDNN packed/{h}": [h] for h in hints} if dtype == torch.float32 else {"oneDNN packed": []}
        packed = {col: {name: [torch.ops.mkldnn._reorder_linear_weight(w, *hint) for w in ws]
                        for name, ws in weights.items()} for col, hint in packs.items()}

        def onednn(table):
            return lambda x, i, name: torch.ops.mkldnn._linear_pointwise(x, table[name][i], None, "none", [], "")

        fns = {"kernel": lambda x, i, name: kernel(x, weights[name][i]),
               **{stem: (lambda fn: lambda x, i, name: fn(x, weights[name][i]))(fn) for stem, fn in baselines.items()},
               **{col: onednn(table) for col, table in packed.items()},
               "F.linear": lambda x, i, name: F.linear(x, weights[name][i])}
        first_pack = next(iter(packed))

        print(f"\n{dname}: batch 1, GB/s of weights read (median of {args.reps} calls)")
        print("| shape | N x K | " + " | ".join(fns) + " |")
        print("|---|---|" + "---:|" * len(fns))
        for name, (n, k) in SHAPES.items():
            x = torch.randn(1, k, generator=gen).to(dtype)
            count = len(weights[name])
            sec = rounds(fns, lambda fn, rep: fn(x, rep % count, name), args.reps)
            print(f"| {name} | {n}x{k} | " + " | ".join(f"{n * k * elem / sec[f] / 1e9:.1f}" for f in fns) + " |", flush=True)

        step = [(name, i) for i in range(LAYERS) for name in ("qkv", "o", "gate_up", "down")] + [("lm_head", 0)]
        total = sum(weights[name][i].nbytes for name, i in step)
        print(f"\n{dname}: one decode step's linears ({total / 1e6:.0f} MB), ms (median of {max(3, args.reps // 5)} steps)")
        print("| rows | " + " | ".join(fns) + f" | kernel GB/s | kernel / {first_pack} |")
        print("|---:|" + "---:|" * (len(fns) + 2))
        for rows in (int(r) for r in args.rows.split(",")):
            xs = {k: torch.randn(rows, k, generator=gen).to(dtype) for k in (768, 3072)}

            def calls(fn, rep):
                for name, i in step:
                    fn(xs[SHAPES[name][1]], i, name)
            ms = {f: 1e3 * s for f, s in rounds(fns, calls, max(3, args.reps // 5)).items()}
            print(f"| {rows} | " + " | ".join(f"{ms[f]:.2f}" for f in fns)
                  + f" | {total / ms['kernel'] / 1e6:.1f} | {ms['kernel'] / ms[first_pack]:.2f} |", flush=True)
        del weights, packed


if __name__ == "__main__":
    main()
