"""Loader of the int8 linear kernel (int8_linear.cpp): compiled on first use, checked, or None.

`linear()` (waiting, bounded, for its build) or `ready()` (never waiting: None while it builds; see
build.py) returns the kernel's function `int8_linear(x, weight, scales)` (x [..., K] bf16 or fp32
contiguous, weight [N, K] int8, scales [N]; returns x.float() @ (weight.float() * scales).T, [..., N], in x's
dtype), or None when it cannot be used here, with one logged warning saying why:

- PHI4R_INT8_KERNEL=0 in the environment (no warning: asked for);
- not a Linux x86 CPU with AVX-512F/BW/VL/VBMI and AVX512-BF16 (read from /proc/cpuinfo);
- compiling fails (torch.utils.cpp_extension with ninja and a C++17 compiler);
- a numerical probe against the float reference disagrees.

The build also registers the kernel as the dispatcher op `torch.ops.phi4r.int8_linear` (`op()`), with
a shape function, so a torch.compile graph (the engine's compiled decode step) calls it without a
graph break.

`quantize_int8` calls `prepare()`: a build this machine has is loaded, else a child process compiles it
(about half a minute, once per CPU) while the int8 linears run the torch path (build.py).
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
    gen = torch.Generator().manual_seed(0)
    for rows in (1, 3, 6, 11):
        for dtype in (torch.bfloat16, torch.float32):
            n, k = 45, 83  # not multiples of the tiles (8/4/2 channels) nor of 16/32 k values
            q = torch.randint(-127, 128, (n, k), generator=gen, dtype=torch.int8)
            scales = (torch.rand(n, generator=gen) / 100).to(torch.bfloat16)
            x = torch.randn(rows, k, generator=gen).to(dtype)
            ref = x.float() @ (q.float() * scales.float()[:, None]).T
            try:
                got = fn(x, q, scales)
            except Exception as e:  # noqa: BLE001
                return f"the probe raised {e}"
            # bf16 output: one rounding of the result (2^-8 relative) plus fp32 summation order.
            tol = (2 ** -7 if dtype == torch.bfloat16 else 1e-5) * ref.abs().max().item()
            if got.dtype != dtype or got.shape != ref.shape or (got.float() - ref).abs().max().item() > tol:
                return f"the probe disagrees with the reference ({rows} rows, {dtype})"
    return None


loader = build.Loader("phi4r.kernels.int8", "phi4r_int8_linear", SOURCE, REQUIRED_FLAGS, "int8 kernel", FALLBACK,
                      "PHI4R_INT8_KERNEL", "int8_linear", _probe, _fake)
# get: waits (bounded) for the build; prepare, ready: never wait (see build.py); op: for torch.compile's graphs
linear, prepare, ready, op = loader.get, loader.prepare, loader.ready, loader.op

if __name__ == "__main__":  # build it now
    raise SystemExit(0 if linear() is not None else 1)
