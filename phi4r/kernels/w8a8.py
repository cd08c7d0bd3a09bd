"""Loader of the W8A8 int8 linear kernel (w8a8_linear.cpp), built, checked and loaded as build.py says.

`linear()` (waiting, bounded, for its build) or `ready()` (never waiting) returns the kernel's function
`w8a8_linear(x, packed, comp, scales)`, or None where it cannot be used (PHI4R_W8A8_KERNEL=0, a CPU
without AVX-512F/BW/VL and AVX512-VNNI, a failed compile, a probe that disagrees with the reference).
`op()` is `torch.ops.phi4r.w8a8_linear` for torch.compile's graphs. `quantize_w8a8` calls `prepare()`:
until the build is there, the torch path.

The kernel: x [..., K] bf16 or fp32 contiguous; `packed, comp = pack(q)` from int8 weights q [N, K] in
[-127, 127]; scales [N] (fp32 or bf16, per output channel). It quantizes each row of x to int8
(`quantize_rows`: symmetric, scale amax / 127), multiplies in int32 (vpdpbusd) and returns
(xq @ q^T) * row_scale * scales in x's dtype, [..., N].
"""
from __future__ import annotations

from pathlib import Path

import torch

from . import build

SOURCE = Path(__file__).with_name("w8a8_linear.cpp")
REQUIRED_FLAGS = ("avx512f", "avx512bw", "avx512vl", "avx512_vnni")
FALLBACK = "using the slower torch W8A8 path"
TILE = 64  # output channels per packed tile (the kernel's 4 x 16 int32 lanes)

def _fake(x, packed, comp, scales):
    return x.new_empty((*x.shape[:-1], scales.shape[0]))


# ---- the kernel's weight layout and the scheme's activation quantization (pure torch, any device)

def pack(q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """int8 weights q [N, K] -> (packed [Np / 64, ceil(K / 4), 64, 4] int8, comp [Np] int32), N padded
    to Np (a multiple of 64) and K to a multiple of 4 with zeros; comp[n] = 128 * sum_k q[n, k] (the
    kernel's activations are xq + 128, unsigned, for vpdpbusd)."""
    n, k = q.shape
    n_pad, k4 = -(-n // TILE) * TILE, -(-k // 4)
    w = torch.zeros(n_pad, 4 * k4, dtype=torch.int8, device=q.device)
    w[:n, :k] = q
    packed = w.view(n_pad // TILE, TILE, k4, 4).permute(0, 2, 1, 3).contiguous()
    return packed, 128 * w.sum(dim=1, dtype=torch.int32)


def unpack(packed: torch.Tensor, n: int, k: int) -> torch.Tensor:
    """`pack`'s inverse: the int8 weights [n, k]."""
    tiles, k4 = packed.shape[:2]
    return packed.permute(0, 2, 1, 3).reshape(tiles * TILE, 4 * k4)[:n, :k]


def quantize_rows(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows [M, K] -> (int8 [M, K], fp32 scales [M, 1]) as the kernel does: scale = amax(|row|) / 127,
    q = round_half_even(row * (127 / amax)) clamped to [-127, 127]; a zero row: scale 0, q 0. Both
    quotients are tensor / tensor (correctly rounded fp32 division, as in the C++; `127 / t` would be
    127 * reciprocal(t), another rounding)."""
    rows = rows.float()
    amax = rows.abs().amax(dim=1, keepdim=True)
    c127 = torch.full_like(amax, 127.0)
    inv = torch.where(amax > 0, c127 / amax, torch.zeros_like(amax))
    q = torch.round(rows * inv).clamp(-127, 127).to(torch.int8)
    return q, amax / c127


def _probe(fn) -> str | None:
    """Compare with a float64 reference of the same scheme on shapes with N and K tails, every row-pass
    size (1..6) and more than one pass."""
    # N 75: one full tile of 64 and a tail; K 83: not a multiple of 4 nor of 16
    for rows, dtype, x, q, scales in build.linear_cases(75, 83, (-127, 128), 100):
        xq, xs = quantize_rows(x)
        ref = (xq.double() @ q.double().T) * xs.double() * scales.double()
        # The int32 products are exact: only the fp32 scaling and the output rounding remain.
        tol = (2 ** -7 if dtype == torch.bfloat16 else 2 ** -20) * ref.abs().max().item()
        if problem := build.mismatch(fn, (x, *pack(q), scales), ref, tol, dtype, f"{rows} rows, {dtype}"):
            return problem
    return None


loader = build.Loader("phi4r.kernels.w8a8", "phi4r_w8a8_linear", SOURCE, REQUIRED_FLAGS, "W8A8 kernel", FALLBACK,
                      "PHI4R_W8A8_KERNEL", "w8a8_linear", _probe, _fake)
linear, prepare, ready, op = loader.get, loader.prepare, loader.ready, loader.op

if __name__ == "__main__":  # build it now
    raise SystemExit(0 if linear() is not None else 1)
