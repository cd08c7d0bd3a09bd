"""Microbenchmark of the int4 linear kernel (phi4r/kernels/int4_linear.cpp) against the int8 kernel:
int4 with the activations as they are (bf16) and with int8 activations (`int8_activations`, the default
of Int4Linear), interleaved.

    python benchmarks/bench_int4_kernel.py --threads 1 [--rows 1,4,16] [--group 128]

Per layer shape of the 258M anchor checkpoint (hidden 768, 12 layers, 12/4 heads, intermediate 3072 by
default, vocab 100352: qkv 1280x768, o 768x768, gate_up 6144x768, down 768x3072, lm_head 100352x768),
at batch 1: the GB/s of weights read by the int4 kernel (packed nibbles + bf16 group scales) and by
the int8 kernel (int8 + per-channel scales), and int4's speed-up. Then one decode step's linears
(all layers + lm_head) per row count: int4 kernel, int8 kernel, int4 dequantize + F.linear (what
Int4Linear runs beyond KERNEL_MAX_ROWS). Every call reads a different copy of the weights (at least
--copies-mb of each kind in all), so they come from memory, as in decoding. The two kernels alternate (3
rounds, best of each) so that a busy machine hurts both alike. On a shared machine pin it:
`taskset -c 1 nice python benchmarks/bench_int4_kernel.py --threads 1`.
"""
from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from timing import (
    median_time,  # benchmarks/timing.py: run as scripts, this folder is on sys.path
)

HIDDEN, INTER, LAYERS, VOCAB, HEADS, KV = 768, 3072, 12, 100352, 12, 4
HEAD_DIM = HIDDEN // HEADS
SHAPES = {"qkv": ((HEADS + 2 * KV) * HEAD_DIM, HIDDEN), "o": (HIDDEN, HIDDEN), "gate_up": (2 * INTER, HIDDEN),
          "down": (HIDDEN, INTER), "lm_head": (VOCAB, HIDDEN)}


def main() -> None:
    from phi4r.kernels import int4, int8

    p = argparse.ArgumentParser()
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rows", default="1,4,16,64")
    p.add_argument("--group", type=int, default=128)
    p.add_argument("--copies-mb", type=int, default=256, help="weights of each kind per shape, MB (beyond the caches)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    k4, k8 = int4.linear(), int8.linear()
    assert k4 is not None and k8 is not None, "the int4 and int8 kernels are not both available here"
    g = args.group
    big = torch.ones(128 * 2**20)  # the same measure as bench_engine's roofline: sum of 512 MB
    read = min(median_time(big.sum, [()], 1) for _ in range(5))
    print(f"torch threads {torch.get_num_threads()}; memory read bandwidth {big.nbytes / read / 1e9:.1f} GB/s; group {g}")
    del big

    def copies(n, k, kind, total=args.copies_mb * 2**20):
        per = n * k // 2 if kind == 4 else n * k
        out = []
        for _ in range(max(2, -(-total // per))):
            if kind == 4:
                out.append((int4.pack(torch.randint(-8, 8, (n, k), dtype=torch.int8)),
                            (torch.rand(n, -(-k // g)) / 100).to(torch.bfloat16)))
            else:
                out.append((torch.randint(-127, 128, (n, k), dtype=torch.int8), (torch.rand(n) / 100).to(torch.bfloat16)))
        return out

    def nbytes(w):
        return sum(t.nbytes for t in w)

    # kind "a8": the int4 kernel and weights with int8 activations
    calls = {4: lambda x, p, s: k4(x, p, s, g), "a8": lambda x, p, s: k4(x, p, s, g, True), 8: k8}
    kinds = (4, "a8", 8)
    weights = {name: {kind: copies(n, k, kind) for kind in (4, 8)} for name, (n, k) in SHAPES.items()}
    for w in weights.values():
        w["a8"] = w[4]
    print("\nbatch 1, bf16 x, GB/s of weights and scales read (best of 3 rounds of the median of 100 calls)")
    print("| shape | N x K | int4 GB/s | int4 a8 GB/s | int8 GB/s | int4 us | int4 a8 us | int8 us | int4 a8 / int4 |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, (n, k) in SHAPES.items():
        x = torch.randn(1, k).to(torch.bfloat16)
        t = dict.fromkeys(kinds, float("inf"))
        for _ in range(3):
            for kind in kinds:
                t[kind] = min(t[kind], median_time(calls[kind], [(x, *w) for w in weights[name][kind]], 100))
        gb = {kind: nbytes(weights[name][kind][0]) / t[kind] / 1e9 for kind in kinds}
        print(f"| {name} | {n}x{k} | {gb[4]:.1f} | {gb['a8']:.1f} | {gb[8]:.1f} | {t[4] * 1e6:.0f} | {t['a8'] * 1e6:.0f} "
              f"| {t[8] * 1e6:.0f} | {t[4] / t['a8']:.2f} |")

    step = {kind: [weights[name][kind][i % len(weights[name][kind])] for i in range(LAYERS)
                   for name in ("qkv", "o", "gate_up", "down")] + [weights["lm_head"][kind][0]] for kind in kinds}
    total = {kind: sum(nbytes(w) for w in step[kind]) for kind in kinds}
    print(f"\none decode step's linears ({total[4] / 1e6:.0f} MB int4, {total[8] / 1e6:.0f} MB int8), ms "
          "(best of 3 rounds of the median of 5 steps)")
    print("| rows | int4 kernel | int4 a8 | int8 kernel | int4 a8 / int4 | int4 a8 / int8 | int4 a8 GB/s | int4 dequantize + F.linear |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for rows in [int(r) for r in args.rows.split(",")]:
        xs = {k: torch.randn(rows, k).to(torch.bfloat16) for k in (HIDDEN, INTER)}

        def run(kind, xs=xs):
            def one():
                for p_, s in step[kind]:
                    calls[kind](xs[p_.shape[1] * (1 if kind == 8 else 8)], p_, s)
            one()
            return median_time(one, [()], 5) * 1e3

        def dequant(xs=xs):
            for p_, s in step[4]:
                F.linear(xs[p_.shape[1] * 8], int4.dequantize(p_, s, p_.shape[1] * 8, g, dtype=torch.bfloat16))
        t = dict.fromkeys(kinds, float("inf"))
        for _ in range(3):
            for kind in kinds:
                t[kind] = min(t[kind], run(kind))
        d = median_time(dequant, [()], 1) * 1e3
        print(f"| {rows} | {t[4]:.1f} | {t['a8']:.1f} | {t[8]:.1f} | {t[4] / t['a8']:.2f} | {t[8] / t['a8']:.2f} "
              f"| {total['a8'] / t['a8'] / 1e6:.1f} | {d:.1f} |")


if __name__ == "__main__":
    main()
