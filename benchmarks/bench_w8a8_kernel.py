"""Microbenchmark of the W8A8 kernel (phi4r/kernels/w8a8_linear.cpp) against the weight-only int8 kernel.

    taskset -c 0 python benchmarks/bench_w8a8_kernel.py --threads 1 [--rows 1,4,16,64] [--no-accuracy | --no-timing]

The benchmark checkpoint's linear shapes (bench_int8_kernel.py: hidden 1024, 14 layers of qkv 1536x1024,
o 1024x1024, gate_up 7168x1024, down 1024x3584, plus lm_head 32000x1024). For each row count, the time
of one decode step's linears with bf16 activations (the engine's int8/w8a8 dtype) for int8_linear
(weight-only: int8 -> bf16, vdpbf16ps) and w8a8_linear (activations quantized per row, vpdpbusd), and
GOP/s (2 * rows * weights / time). Every call reads a different copy of the weights (at least 256 MB per
shape), so they come from memory, not from the caches, as in decoding. The two kernels alternate (3
rounds, best of each) so that a busy machine hurts both alike.

Then the accuracy on the same shapes: relative error (||y - y_fp32|| / ||y_fp32|| per output row: max
and mean over the rows) of weight-only int8 and of W8A8 (bf16 outputs) against the fp32 linear with
the unquantized weights (Gaussian, std 1 / sqrt(in)), for Gaussian activations and for activations
with a few outlier features (x20 in 1% of the features, as LLM hidden states have), which per-token
activation quantization feels most. --no-timing: only that.
"""
from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from timing import median_time  # benchmarks/timing.py: run as scripts, this folder is on sys.path

SHAPES = {"qkv": (1536, 1024), "o": (1024, 1024), "gate_up": (7168, 1024), "down": (1024, 3584), "lm_head": (32000, 1024)}
LAYERS = 14


def _copies(n: int, k: int, total: int = 256 * 2**20):
    from phi4r.kernels import w8a8

    count = max(2, -(-total // (n * k)))
    out = []
    for _ in range(count):
        q = torch.randint(-127, 128, (n, k), dtype=torch.int8)
        s = torch.rand(n).to(torch.bfloat16) / 100
        packed, comp = w8a8.pack(q)
        out.append((q, s, packed, comp))
    return out


def accuracy(outliers: bool) -> None:
    from phi4r.quant import Int8Linear, W8A8Linear

    gen = torch.Generator().manual_seed(0)
    label = "activations with 1% outlier features (x20)" if outliers else "Gaussian activations"
    print(f"\naccuracy vs the fp32 linear, {label}, 16 rows bf16: relative L2 error per row (max, mean)")
    print("| shape | int8 weight-only max | mean | w8a8 max | mean |")
    print("|---|---:|---:|---:|---:|")
    for name, (n, k) in SHAPES.items():
        lin = torch.nn.Linear(k, n, bias=False)
        with torch.no_grad():
            lin.weight.normal_(0, k ** -0.5, generator=gen)
        x = torch.randn(16, k, generator=gen)
        if outliers:
            x[:, torch.randperm(k, generator=gen)[: max(1, k // 100)]] *= 20
        x = x.to(torch.bfloat16)
        with torch.no_grad():
            ref = F.linear(x.float(), lin.weight)
            res = []
            for mod in (Int8Linear(lin.weight, kernel=True), W8A8Linear(lin.weight, kernel=True)):
                err = (mod(x).float() - ref).norm(dim=1) / ref.norm(dim=1)
                res += [err.max().item(), err.mean().item()]
        print(f"| {name} | {res[0]:.2e} | {res[1]:.2e} | {res[2]:.2e} | {res[3]:.2e} |")


def main() -> None:
    from phi4r.kernels import int8, w8a8

    p = argparse.ArgumentParser()
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rows", default="1,4,16,64")
    p.add_argument("--no-accuracy", action="store_true")
    p.add_argument("--no-timing", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    i8, wa = int8.linear(), w8a8.linear()
    assert i8 is not None and wa is not None, "the int8 and W8A8 kernels must both be available here"
    print(f"torch threads {torch.get_num_threads()}")

    if args.no_timing:
        accuracy(False)
        accuracy(True)
        return
    weights = {name: _copies(n, k) for name, (n, k) in SHAPES.items()}
    step_weights = [weights[name][i % len(weights[name])] for i in range(LAYERS) for name in ("qkv", "o", "gate_up", "down")]
    step_weights.append(weights["lm_head"][0])
    total = sum(c[0].numel() for c in step_weights)
    print(f"\none decode step's linears ({total / 1e6:.0f} MB of int8), bf16 activations, ms (best of 3 rounds,"
          " median of 5 steps each)")
    print("| rows | int8_linear ms | w8a8_linear ms | speedup | int8_linear GOP/s | w8a8_linear GOP/s"
          " | int8 / its 1 row | w8a8 / its 1 row |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    first = {}
    for rows in [int(r) for r in args.rows.split(",")]:
        xs = {k: torch.randn(rows, k).to(torch.bfloat16) for k in (1024, 3584)}

        def step_i8():
            for q, s, _, _ in step_weights:
                i8(xs[q.shape[1]], q, s)

        def step_wa():
            for q, s, packed, comp in step_weights:
                wa(xs[q.shape[1]], packed, comp, s)

        a, b = float("inf"), float("inf")
        for _ in range(3):
            a = min(a, median_time(step_i8, [()], 5) * 1e3)
            b = min(b, median_time(step_wa, [()], 5) * 1e3)
        first.setdefault("a", a)
        first.setdefault("b", b)
        ops = 2 * rows * total
        print(f"| {rows} | {a:.1f} | {b:.1f} | {a / b:.2f}x | {ops / a / 1e6:.0f} | {ops / b / 1e6:.0f}"
              f" | {a / first['a']:.2f} | {b / first['b']:.2f} |")
    weights.clear()  # free the copies before the accuracy runs
    step_weights.clear()
    if not args.no_accuracy:
        accuracy(False)
        accuracy(True)


if __name__ == "__main__":
    main()
