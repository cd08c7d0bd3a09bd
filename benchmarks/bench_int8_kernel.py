"""Microbenchmark of the int8 linear kernel (phi4r/kernels) on the benchmark checkpoint's shapes.

    python benchmarks/bench_int8_kernel.py --threads 1 [--rows 1,16] [--baseline OLD.cpp]

Per layer shape (hidden 1024: qkv 1536x1024, o 1024x1024, gate_up 7168x1024, down 1024x3584,
lm_head 32000x1024), the GB/s of int8 weights read by the kernel, and by torch's int8 path
(`aten._weight_int8pack_mm`) at batch 1. Then the time of one decode step's linears (14 layers +
lm_head) per rows: the kernel, `_weight_int8pack_mm`, and dequantize to bf16 + F.linear. Every
call reads a different copy of the weights (at least 256 MB in all), so they come from memory, not
from the caches, as in decoding.

--baseline OLD.cpp builds another version of int8_linear.cpp (e.g. `git show HEAD:phi4r/kernels/int8_linear.cpp
> /tmp/old.cpp`) as a second extension and adds its step times to the table, measured in the same run
(alternating with the current kernel), with GFLOP/s and the step time at each row count relative to one
row (16 rows / 1 row is what the aggregate-decode target at batch 16 compares). On a shared machine pin
it: `taskset -c 1 python benchmarks/bench_int8_kernel.py --threads 1 --rows 1,16 --baseline /tmp/old.cpp`.
"""
from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from timing import median_time  # benchmarks/timing.py: run as scripts, this folder is on sys.path

SHAPES = {"qkv": (1536, 1024), "o": (1024, 1024), "gate_up": (7168, 1024), "down": (1024, 3584), "lm_head": (32000, 1024)}
LAYERS = 14


def _copies(n: int, k: int, total: int = 256 * 2**20) -> list[tuple[torch.Tensor, torch.Tensor]]:
    count = max(2, -(-total // (n * k)))
    return [(torch.randint(-127, 128, (n, k), dtype=torch.int8), torch.rand(n).to(torch.bfloat16) / 100)
            for _ in range(count)]




def load_baseline(path: str):
    """The int8_linear function of another version of the kernel's source, built under its own name
    (its dispatcher-op registration removed: the namespace phi4r is already taken by the current build)."""
    import hashlib
    import re
    import tempfile
    from pathlib import Path

    from torch.utils import cpp_extension

    src = re.sub(r"TORCH_LIBRARY(_IMPL)?\([^)]*\) \{.*?\n\}\n", "", Path(path).read_text(), flags=re.S)
    name = "phi4r_int8_baseline_" + hashlib.sha256(src.encode()).hexdigest()[:12]
    out = Path(tempfile.gettempdir()) / f"{name}.cpp"
    out.write_text(src)
    return cpp_extension.load(name=name, sources=[str(out)], extra_cflags=["-O3", "-march=native", "-std=c++17", "-fopenmp"],
                              extra_include_paths=[str(Path(__file__).resolve().parents[1] / "phi4r" / "kernels")],  # simd.h
                              extra_ldflags=["-fopenmp"], verbose=False).int8_linear


def dequant(x, q, s):
    return F.linear(x, q.to(torch.bfloat16)) * s


def main() -> None:
    from phi4r.kernels import int8

    p = argparse.ArgumentParser()
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rows", default="1,2,4,8,16,32,64,128")
    p.add_argument("--baseline", help="another int8_linear.cpp to compare with, in the same run")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    kernel = int8.linear()
    assert kernel is not None, "the int8 kernel is not available here"
    baseline = load_baseline(args.baseline) if args.baseline else None
    pack_mm = torch.ops.aten._weight_int8pack_mm
    rows_list = [int(r) for r in args.rows.split(",")]
    big = torch.ones(128 * 2**20)  # the same measure as bench_engine's roofline: sum of 512 MB
    read = min(median_time(big.sum, [()], 1) for _ in range(5))
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
            sec = median_time(fn, [(x, q, s) for q, s in weights[name]], 200)
            res.append(n * k / sec / 1e9)
        print(f"| {name} | {n}x{k} | {res[0]:.1f} | {res[1]:.1f} | {res[2]:.1f} |")

    # One decode step's linears: each layer's weights are distinct (14 copies), lm_head once.
    step_weights = [(weights[name][i % len(weights[name])]) for i in range(LAYERS) for name in ("qkv", "o", "gate_up", "down")]
    step_weights.append(weights["lm_head"][0])
    total_bytes = sum(q.numel() for q, _ in step_weights)
    flops = 2 * total_bytes  # per row
    print(f"\none decode step's linears ({total_bytes / 1e6:.0f} MB of int8), ms (median of 5 steps)")
    if baseline is None:
        print("| rows | kernel | _weight_int8pack_mm | dequantize + F.linear | kernel GB/s | kernel GFLOP/s |")
        print("|---:|---:|---:|---:|---:|---:|")
    else:
        print("| rows | kernel | baseline | _weight_int8pack_mm | dequantize + F.linear | kernel GFLOP/s | baseline GFLOP/s"
              " | kernel / its 1 row | baseline / its 1 row |")
        print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    first: dict = {}
    for rows in rows_list:
        xs = {k: torch.randn(rows, k).to(torch.bfloat16) for k in (1024, 3584)}

        def step_time(fn):
            if fn is pack_mm and rows > 32:
                return float("nan")

            def step():
                for q, s in step_weights:
                    fn(xs[q.shape[1]], q, s)
            step()
            return min(median_time(step, [()], 5), 1e9) * 1e3
        if baseline is None:
            t = [step_time(fn) for fn in (kernel, pack_mm, dequant)]
            print(f"| {rows} | {t[0]:.1f} | {t[1]:.1f} | {t[2]:.1f} | {total_bytes / t[0] / 1e6:.1f}"
                  f" | {rows * flops / t[0] / 1e6:.1f} |")
            continue
        # The two kernels alternate (3 rounds, best of each) so that a busy machine hurts both alike.
        new, old = float("inf"), float("inf")
        for _ in range(3):
            new, old = min(new, step_time(kernel)), min(old, step_time(baseline))
        first.setdefault("new", new)
        first.setdefault("old", old)
        t = [step_time(fn) for fn in (pack_mm, dequant)]
        print(f"| {rows} | {new:.1f} | {old:.1f} | {t[0]:.1f} | {t[1]:.1f} | {rows * flops / new / 1e6:.1f}"
              f" | {rows * flops / old / 1e6:.1f} | {new / first['new']:.2f} | {old / first['old']:.2f} |")


if __name__ == "__main__":
    main()
