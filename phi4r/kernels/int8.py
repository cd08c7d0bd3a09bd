"""Loader of the int8 linear kernel (int8_linear.cpp), built, checked and loaded as build.py says.

`linear()` (waiting, bounded, for its build) or `ready()` (never waiting) returns the kernel's function
`int8_linear(x, weight, scales)` (x [..., K] bf16 or fp32 contiguous, weight [N, K] int8, scales [N];
returns x.float() @ (weight.float() * scales).T, [..., N], in x's dtype), or None where it cannot be
used (PHI4R_INT8_KERNEL=0, a CPU without AVX-512F/BW/VL/VBMI and AVX512-BF16, a failed compile, a
probe that disagrees with the float reference). `op()` is `torch.ops.phi4r.int8_linear` for
torch.compile's graphs. `quantize_int8` calls `prepare()`: until the build is there, the torch path.
"""
from __future__ import annotations

from pathlib import Path

import torch

from . import build

SOURCE = Path(__file__).with_name("int8_linear.cpp")
REQUIRED_FLAGS = ("avx512f", "avx512bw", "avx512vl", "avx512vbmi", "avx512_bf16")  # vbmi: vpermt2b
FALLBACK = "using the slower torch int8 path"

def _fake(x, weight, scales):
    return x.new_empty((*x.shape[:-1], weight.shape[0]))


def _probe(fn) -> str | None:
    """Compare with the float reference on shapes that reach every tile shape and tail."""
    # N 45, K 83: not multiples of the tiles (8/4/2 channels) nor of 16/32 k values
    for rows, dtype, x, q, scales in build.linear_cases(45, 83, (-127, 128), 100):
        ref = x.float() @ (q.float() * scales.float()[:, None]).T
        # bf16 output: one rounding of the result (2^-8 relative) plus fp32 summation order.
        tol = (2 ** -7 if dtype == torch.bfloat16 else 1e-5) * ref.abs().max().item()
        if problem := build.mismatch(fn, (x, q, scales), ref, tol, dtype, f"{rows} rows, {dtype}"):
            return problem
    return None


loader = build.Loader("phi4r.kernels.int8", "phi4r_int8_linear", SOURCE, REQUIRED_FLAGS, "int8 kernel", FALLBACK,
                      "PHI4R_INT8_KERNEL", "int8_linear", _probe, _fake)
linear, prepare, ready, op = loader.get, loader.prepare, loader.ready, loader.op

if __name__ == "__main__":  # build it now
    raise SystemExit(0 if linear() is not None else 1)
