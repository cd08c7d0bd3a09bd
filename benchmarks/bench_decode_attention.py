"""Microbenchmark of one layer's decode attention: the torch reference (phi4r.kernels.attention.reference)
eager, the same under torch.compile (what inductor makes of it), and phi4r's C++ kernel.

    taskset -c 1 python benchmarks/bench_decode_attention.py --threads 1 [--batches 1,16,64] [--contexts 150,2000]

Shapes of the benchmark checkpoint by default (8 query heads, 2 KV heads, head dim 128, bf16 cache).
Sequences sit at different positions (context - 1 down to context - 16), so every path masks. Each
call reads another copy of the cache (at least 256 MB in all), so K/V come from memory as in decoding.
Prints microseconds per layer, the kernel's speedup over the compiled path, and its GFLOP/s and K/V GB/s.
"""
from __future__ import annotations

import argparse

import torch
from timing import median_time  # benchmarks/timing.py: run as scripts, this folder is on sys.path

from phi4r.kernels import attention


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batches", default="1,16,64")
    ap.add_argument("--contexts", default="150,2000")
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--kv-heads", type=int, default=2)
    ap.add_argument("--head-dim", type=int, default=128)
    ap.add_argument("--dtype", choices=["bf16", "fp32"], default="bf16")
    ap.add_argument("--reps", type=int, default=50)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    H, KV, D = args.heads, args.kv_heads, args.head_dim
    kernel = attention.kernel()
    assert kernel is not None, "the attention kernel is not available here (see the log)"
    compiled = torch.compile(attention.reference, dynamic=False)

    print(f"{H} heads, {KV} KV heads, head dim {D}, {args.dtype}, {args.threads} thread(s); us per layer")
    print("| batch | context | python eager | python compiled | kernel | kernel vs compiled | kernel GFLOP/s | kernel K/V GB/s |")
    print("|---|---|---|---|---|---|---|---|")
    for ctx in (int(c) for c in args.contexts.split(",")):
        max_len = 1 << ctx.bit_length()  # the engine's cache grows by doubling
        for B in (int(b) for b in args.batches.split(",")):
            positions = torch.tensor([[ctx - 1 - b % 16] for b in range(B)])
            span = ctx
            lengths = positions[:, 0] + 1
            cache_bytes = 2 * B * KV * max_len * D * dtype.itemsize
            copies = max(2, -(-256 * 2**20 // cache_bytes))
            cases = [(torch.randn(B, H, D).to(dtype), torch.randn(B, KV, max_len, D).to(dtype),
                      torch.randn(B, KV, max_len, D).to(dtype)) for _ in range(copies)]
            with torch.no_grad():
                eager, comp, ours = (median_time(lambda q, ck, cv, f=f, s=span, n=lengths: f(q, ck[:, :, :s], cv[:, :, :s], n, D ** -0.5),
                                                 cases, args.reps) for f in (attention.reference, compiled, kernel))
            visible = lengths.sum().item()
            flops = 4 * H * D * visible
            kv_bytes = 2 * KV * D * dtype.itemsize * visible
            print(f"| {B} | {ctx} | {eager * 1e6:.0f} | {comp * 1e6:.0f} | {ours * 1e6:.0f} | {comp / ours:.1f}x "
                  f"| {flops / ours / 1e9:.0f} | {kv_bytes / ours / 1e9:.1f} |", flush=True)


if __name__ == "__main__":
    main()
