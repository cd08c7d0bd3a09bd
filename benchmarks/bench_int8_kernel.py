"""Microbenchmark of the int8 linear kernel (phi4r/kernels) on the benchmark checkpoint's shapes.

    python benchmarks/bench_int8_kernel.py --threads 1 [--rows 1,16]

Per layer shape (hidden 1024: qkv 1536x1024, o 1024x1024, gate_up 7168x1024, down 1024x3584,
lm_head 32000x1024), the GB/s of int8 weights read by the kernel, and by torch's int8 path
(`aten._weight_int8pack_mm`) at batch 1. Then the time of one decode step's linears (14 layers +
lm_head) per rows: the kernel, `_weight_int8pack_mm`, and dequantize to bf16 + F.linear. Every
call reads a different copy of the weights (at least 256 MB in all), so they come from memory, not
from the caches, as in decoding.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

SHAPES = {"qkv": (1536, 1024), "o": (1024, 1024), "gate_up": (7168, 1024), "down": (1024, 3584), "lm_head": (32000, 1024)}
LAYERS = 14


def _copies(n: int, k: int, total: int = 256 * 2**20) -> list[tuple[torch.Tensor, torch.Tensor]]:
    count = max(2, -(-total // (n * k)))
    return [(torch.randint(-127, 128, (n, k), dtype=torch.int8), torch.rand(n).to(torch.bfloat16) / 100)
            for _ in range(count)]


def _time(fn, args_list, reps: int) -> float:
    """Median seconds of one call, cycling through args_list."""
    for a in args_list[:2]:
        fn(*a)
    times = []
    for i in range(reps):
        a = args_list[i % len(args_list)]
        start = time.perf_counter()
        fn(*a)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def dequant(x, q, s):
    return F.linear(x, q.to(torch.bfloat16)) * s


def main() -> None:
    from phi4r.kernels import int8

    p = argparse.ArgumentParser()
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rows", default="1,2,4,8,16,32,64,128")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    kernel = int8.linear()
    assert kernel is not None, "the int8 kernel is not available here"
    pack_mm = torch.ops.aten._weight_int8pack_mm
    rows_list = [int(r) for r in args.rows.split(",")]
    big = torch.ones(128 * 2**20)  # the same measure as bench_engine's roofline: sum of 512 MB
    read = min(_time(big.sum, [()], 1) for _ in range(5))
    print(f"torch threads {torch.get_num_threads()}; memory read bandwidth {big.nbytes / read / 1e9:.1f} GB/s")
    del big

    weights = {name: _copies(n, k) for name, (n, k) in SHAPES.items()}
    print("\nbatch 1, GB/s of int8 weights read (median of 200 calls)")
    print("| shape | N x K | kernel bf16 | kernel fp32 | _weight_int8pack_mm |")
    print("|---|---|---:|---:|---:|")
    for name, (n, k) in SHAPES.items():
        res = []
        for fn, dtype in ((kernel, torch.bfloat16), (kernel, torch.float32), (pack_mm, torch.bfloat16)):
            x = torch.randn(1, k).to(dtype)
            sec = _time(fn, [(x, q, s) for q, s in weights[name]], 200)
            res.append(n * k / sec / 1e9)
        print(f"| {name} | {n}x{k} | {res[0]:.1f} | {res[1]:.1f} | {res[2]:.1f} |")

    # One decode step's linears: each layer's weights are distinct (14 copies), lm_head once.
    step_weights = [(weights[name][i % len(weights[name])]) for i in range(LAYERS) for name in ("qkv", "o", "gate_up", "down")]
    step_weights.append(weights["lm_head"][0])
    total_bytes = sum(q.numel() for q, _ in step_weights)
    print(f"\none decode step's linears ({total_bytes / 1e6:.0f} MB of int8), ms (median of 5 steps)")
    print("| rows | kernel | _weight_int8pack_mm | dequantize + F.linear | kernel GB/s |")
    print("|---:|---:|---:|---:|---:|")
    for rows in rows_list:
        out = []
        for fn in (kernel, pack_mm, dequant):
            if fn is pack_mm and rows > 32:
                out.append(float("nan"))
                continue
            xs = {k: torch.randn(rows, k).to(torch.bfloat16) for k in (1024, 3584)}

            def step():
                for q, s in step_weights:
                    fn(xs[q.shape[1]], q, s)
            step()
            out.append(min(_time(step, [()], 5), 1e9) * 1e3)
        print(f"| {rows} | {out[0]:.1f} | {out[1]:.1f} | {out[2]:.1f} | {total_bytes / out[0] / 1e6:.1f} |")


if __name__ == "__main__":
    main()
