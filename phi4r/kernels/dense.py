"""Loader of the dense linear kernel (dense_linear.cpp), built, checked and loaded as build.py says.

`linear()` (waiting, bounded, for its build) or `ready()` (never waiting) returns the kernel's function
`dense_linear(x, weight)` (x [..., K] fp32 or bf16 contiguous, weight [N, K] of x's dtype, contiguous;
returns x @ weight.T, [..., N], in x's dtype, summed in fp32), or None where it cannot be used
(PHI4R_DENSE_KERNEL=0, a CPU without AVX-512F/BW/VL and AVX512-BF16, a failed compile, a probe that
disagrees with the float reference). phi4r.fastlinear's prepacked linears call it for few rows (decode)
and `prepack` calls `prepare()`: until the build is there, oneDNN's packed path.
"""
from __future__ import annotations

from pathlib import Path

import torch

from . import build

SOURCE = Path(__file__).with_name("dense_linear.cpp")
REQUIRED_FLAGS = ("avx512f", "avx512bw", "avx512vl", "avx512_bf16")
FALLBACK = "using oneDNN's prepacked linear"


def _probe(fn) -> str | None:
    """Compare with the float reference on shapes that reach every tile shape and K tail."""
    gen = torch.Generator().manual_seed(0)
    # N 45: not a multiple of the tiles (8/4/2 channels); K 83 and 200: not multiples of 16 nor 32 k values
    for n, k in ((45, 83), (21, 200)):
        for rows in (1, 3, 6, 11):
            for dtype in (torch.bfloat16, torch.float32):
                w = torch.randn(n, k, generator=gen).to(dtype)
                x = torch.randn(rows, k, generator=gen).to(dtype)
                ref = x.float() @ w.float().T
                # bf16 output: one rounding of the result (2^-8 relative) plus fp32 summation order.
                tol = (2 ** -7 if dtype == torch.bfloat16 else 1e-5) * ref.abs().max().item()
                if problem := build.mismatch(fn, (x, w), ref, tol, dtype, f"{rows} rows, {n}x{k}, {dtype}"):
                    return problem
    return None


# No dispatcher op: compiled graphs reach the kernel inside fastlinear's phi4r::packed_linear op.
loader = build.Loader("phi4r.kernels.dense", "phi4r_dense_linear", SOURCE, REQUIRED_FLAGS, "dense linear kernel",
                      FALLBACK, "PHI4R_DENSE_KERNEL", "dense_linear", _probe, None)
linear, prepare, ready = loader.get, loader.prepare, loader.ready

if __name__ == "__main__":  # build it now
    raise SystemExit(0 if linear() is not None else 1)
