"""Weight-only int8 quantization for CPU decoding (gpt-fast's scheme).

Each nn.Linear (lm_head included; embeddings stay as they are: a lookup reads one row) becomes an
`Int8Linear`: int8 weights plus one scale per output channel, w ~= q * scale, q in [-127, 127]. The
buffers are `weight` (int8, [out, in], row-major as before: no repacking) and `scales` (bf16, [out]).
Decoding reads a quarter of the fp32 bytes. Activations are not quantized.

The matmul, for CPU activations in bf16 or fp32 and up to KERNEL_MAX_ROWS rows (decode), is
phi4r's own AVX-512 kernel (phi4r/kernels: compiled on first use, ~30 s once per machine; checked
against the float reference; PHI4R_INT8_KERNEL=0 turns it off). It converts the int8 weights
exactly and accumulates in fp32 (bf16 activations: vdpbf16ps; fp32: FMA), returns x's dtype, and
streams the weights at the memory bandwidth at batch 1 (~3x `_weight_int8pack_mm`). Otherwise
(no kernel on this CPU, more rows, autograd) it is PyTorch's `aten._weight_int8pack_mm` for bf16 and
few rows, or dequantize to bf16 + one GEMM; these compute in bf16 and return the activation dtype.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .kernels import int8 as int8_kernel

# Rows (tokens in the batch) up to which torch's int8 kernel beats dequantize + GEMM on this CPU. Measured on
# the benchmark checkpoint's linears, one thread, ms per step: rows 1: 29.9 vs 81.9, 4: 39.1 vs 84.8,
# 8: 73.8 vs 89.4, 16: 142.5 vs 115.2, 64: 482.5 vs 208.6 (the int8 kernel scales badly with rows).
PACKED_MAX_ROWS = 8
# Rows up to which phi4r's kernel is used: one decode step's linears of the benchmark checkpoint,
# one thread, ms: rows 16: 55 vs 111 for dequantize + GEMM, 32: 103 vs 145, 64: 207 vs 220.
KERNEL_MAX_ROWS = 64
_KERNEL_DTYPES = (torch.bfloat16, torch.float32)
_KERNEL = getattr(torch.ops.aten, "_weight_int8pack_mm", None)


class Int8Linear(nn.Module):
    def __init__(self, weight: torch.Tensor):
        super().__init__()
        w = weight.detach().float()
        scales = w.abs().amax(dim=1).clamp(min=1e-12) / 127
        self.out_features, self.in_features = w.shape
        self.register_buffer("weight", torch.round(w / scales[:, None]).clamp(-127, 127).to(torch.int8))
        self.register_buffer("scales", scales.to(torch.bfloat16))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Decode's hot path: as few Python steps as possible (the kernel takes [..., K] as it is).
        if (not x.requires_grad and x.dtype in _KERNEL_DTYPES and x.is_cpu  # the kernel has no backward
                and x.numel() <= KERNEL_MAX_ROWS * self.in_features):
            # torch.compile's graphs call the kernel through the dispatcher (an opaque op in the graph).
            kernel = int8_kernel.op() if torch.compiler.is_compiling() else int8_kernel.linear()
            if kernel is not None:
                scales = self.scales
                if scales.dtype not in _KERNEL_DTYPES:  # after .half()
                    scales = scales.float()
                return kernel(x.contiguous(), self.weight, scales)
        rows = x.reshape(-1, self.in_features).to(torch.bfloat16)
        # (torch 2.13's _weight_int8pack_mm crashes (SIGSEGV) when in_features is not a multiple of 32.)
        if _KERNEL is not None and rows.shape[0] <= PACKED_MAX_ROWS and self.in_features % 32 == 0:
            y = _KERNEL(rows, self.weight, self.scales)
        else:
            y = F.linear(rows, self.weight.to(torch.bfloat16)) * self.scales
        return y.to(x.dtype).reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8"


def quantize_int8(model: nn.Module) -> nn.Module:
    """Replace every nn.Linear of `model` in place by an Int8Linear; returns the model."""
    _replace(model)
    if any(isinstance(m, Int8Linear) and m.weight.device.type == "cpu" for m in model.modules()):
        int8_kernel.linear()  # compile (first time on this machine) and check the kernel now, not mid-request
    return model


def _replace(model: nn.Module) -> None:
    for name, child in list(model.named_children()):
        if isinstance(child, nn.Linear) and child.bias is None:
            setattr(model, name, Int8Linear(child.weight))
        else:
            _replace(child)
