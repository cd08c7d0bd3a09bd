"""Loader of the int4 linear kernel (int4_linear.cpp), built, checked and loaded as build.py says; and
the packed int4 layout it reads, which is compressed-tensors' "pack-quantized" one.

`linear()` (waiting, bounded, for its build) or `ready()` (never waiting) returns the kernel's function
`int4_linear(x, packed, scales, group_size, int8_activations=False)` (x [..., K] bf16 or fp32
contiguous; packed = `pack(q)` int32 [N, ceil(K / 8)] of q in [-8, 7]; scales [N, ceil(K / G)] bf16 or
fp32; G 32, 64 or a multiple of 128 (`kernel_group`); returns x.float() @ dequantize(...).T, [..., N],
in x's dtype, or with int8_activations `a8_reference`'s numbers: x quantized to int8 per row and
block of 128 k first, as llama.cpp's Q4_0 x Q8_0 dot products do, for half the multiply work per
weight), or None where it cannot be used (PHI4R_INT4_KERNEL=0, a CPU without AVX-512F/BW/VL/VBMI/VNNI
and AVX512-BF16, a failed compile, a probe that disagrees with the references). `op()` is `torch.ops.phi4r.int4_linear` for
torch.compile's graphs. `quantize_int4` calls `prepare()`: until the build is there, the torch path.
"""
from __future__ import annotations

from pathlib import Path

import torch

from . import build

SOURCE = Path(__file__).with_name("int4_linear.cpp")
REQUIRED_FLAGS = ("avx512f", "avx512bw", "avx512vl", "avx512vbmi", "avx512_vnni", "avx512_bf16")
FALLBACK = "using the slower torch int4 path"


def kernel_group(group_size: int) -> bool:
    """Whether the kernel takes this group size (a block of 128 k holds whole groups, or one group)."""
    return group_size in (32, 64) or (group_size > 0 and group_size % 128 == 0)


# ---- the packed layout (pure torch): compressed-tensors' pack_to_int32 for 4 bits


def pack(q: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """int8 q [R, C] in [-8, 7] -> int32 packed along `dim` (1: [R, ceil(C / 8)]; 0: [ceil(R / 8), C]):
    value i of each run of 8 at bits 4 * i, stored as q + 8; a padded tail stores 0."""
    u = (q.to(torch.int32) + 8).T if dim == 0 else q.to(torch.int32) + 8
    rows, cols = u.shape
    u = torch.nn.functional.pad(u, (0, -cols % 8)).reshape(rows, -1, 8)
    out = torch.zeros(u.shape[:2], dtype=torch.int32)
    for i in range(8):  # (int32 shifts wrap the top nibble into the sign bit, as pack_to_int32's sum does)
        out |= u[..., i] << (4 * i)
    return out.T.contiguous() if dim == 0 else out


def unpack(packed: torch.Tensor, size: int, dim: int = 1) -> torch.Tensor:
    """The int8 values of `pack` (`size`: the packed dimension's length before packing)."""
    p = (packed.T if dim == 0 else packed).contiguous().view(torch.uint8)  # little-endian: value 2j in byte j's low nibble
    q = torch.stack([p & 15, p >> 4], dim=-1).view(p.shape[0], -1)[:, :size].view(torch.int8) - 8
    return q.T.contiguous() if dim == 0 else q


def dequantize(packed: torch.Tensor, scales: torch.Tensor, k: int, group_size: int,
               zeros: torch.Tensor | None = None, dtype=torch.float32) -> torch.Tensor:
    """The weights [N, k] in `dtype`: (q - zeros) * scales, per group of `group_size` along k."""
    q = torch.nn.functional.pad(unpack(packed, k), (0, -k % group_size)).unflatten(1, (-1, group_size)).to(dtype)
    if zeros is not None:
        q -= zeros.to(dtype)[..., None]
    return (q * scales.to(dtype)[..., None]).flatten(1)[:, :k]


ACTIVATION_BLOCK = 128  # k values per activation scale with int8_activations


def quantize_activations(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x [..., K] -> (xq int8 [..., K], scales fp32 [..., ceil(K / 128)]): per block of 128 k, symmetric,
    scale = amax / 127 and xq = round_half_even(x * (127 / amax)) clamped to [-127, 127] (a zero block:
    scale 0, xq 0), each an fp32 operation as the kernel does it."""
    k = x.shape[-1]
    blocks = torch.nn.functional.pad(x.float(), (0, -k % ACTIVATION_BLOCK)).unflatten(-1, (-1, ACTIVATION_BLOCK))
    amax = blocks.abs().amax(-1, keepdim=True)
    inv = torch.where(amax > 0, torch.tensor(127.0) / amax, torch.zeros_like(amax))
    xq = torch.round(blocks * inv).clamp(-127, 127).to(torch.int8).flatten(-2)[..., :k]
    return xq, (amax / 127).squeeze(-1)


def a8_reference(x: torch.Tensor, packed: torch.Tensor, scales: torch.Tensor, k: int, group_size: int) -> torch.Tensor:
    """What the kernel computes with int8_activations, in float64: sum over k of xq * q * (its group's
    weight scale * its block's activation scale), [..., N]."""
    xq, xs = quantize_activations(x)
    q = unpack(packed, k).double()
    w_scale = scales.double().repeat_interleave(group_size, 1)[:, :k]  # [N, k]
    x_scale = xs.double().repeat_interleave(ACTIVATION_BLOCK, -1)[..., :k]  # [..., k]
    return (xq.double() * x_scale) @ (q * w_scale).T


def _fake(x, packed, scales, group_size, int8_activations=False):
    return x.new_empty((*x.shape[:-1], packed.shape[0]))


def _probe(fn) -> str | None:
    """Compare with the float reference on shapes reaching every tile shape, group kind and tail."""
    for group, k in ((32, 200), (64, 136), (128, 328)):  # K: a partial block, a ragged last group
        # N 45: not a multiple of the tiles (8/2 channels)
        for rows, dtype, x, q, scales in build.linear_cases(45, k, (-8, 8), 10, -(-k // group), rows=(1, 3, 6)):
            ref = x.float() @ dequantize(pack(q), scales, k, group).T
            # bf16 output: one rounding of the result plus fp32 summation order.
            tol = (2 ** -7 if dtype == torch.bfloat16 else 1e-5) * ref.abs().max().item()
            case = f"{rows} rows, {dtype}, group {group}"
            if problem := build.mismatch(fn, (x, pack(q), scales, group), ref, tol, dtype, case):
                return problem
            ref = a8_reference(x, pack(q), scales, k, group)  # the kernel's sums: fp32, per 16 lanes
            tol = (2 ** -7 if dtype == torch.bfloat16 else 1e-5) * ref.abs().max().item()
            if problem := build.mismatch(fn, (x, pack(q), scales, group, True), ref, tol, dtype, case + ", int8 x"):
                return problem
    return None


loader = build.Loader("phi4r.kernels.int4", "phi4r_int4_linear", SOURCE, REQUIRED_FLAGS, "int4 kernel", FALLBACK,
                      "PHI4R_INT4_KERNEL", "int4_linear", _probe, _fake)
linear, prepare, ready, op = loader.get, loader.prepare, loader.ready, loader.op

if __name__ == "__main__":  # build it now
    raise SystemExit(0 if linear() is not None else 1)
