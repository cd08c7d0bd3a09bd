"""Weight-only int8 quantization for CPU decoding (gpt-fast's scheme).

Each nn.Linear (lm_head included; embeddings stay as they are: a lookup reads one row) becomes an
`Int8Linear`: int8 weights plus one scale per output channel, w ~= q * scale, q in [-127, 127].
Decoding reads a quarter of the fp32 bytes. The matmul is PyTorch's own CPU kernel
`aten._weight_int8pack_mm`, which is fast for bf16 activations and few rows (decode at small
batch); for more rows (prefill, larger decode batches) dequantizing to bf16 and running one GEMM is
faster. Either way the product is computed in bf16 and returned in the activation dtype.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# Rows (tokens in the batch) up to which the int8 kernel beats dequantize + GEMM on this CPU. Measured on
# the benchmark checkpoint's linears, one thread, ms per step: rows 1: 29.9 vs 81.9, 4: 39.1 vs 84.8,
# 8: 73.8 vs 89.4, 16: 142.5 vs 115.2, 64: 482.5 vs 208.6 (the int8 kernel scales badly with rows).
PACKED_MAX_ROWS = 8
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
        rows = x.reshape(-1, self.in_features).to(torch.bfloat16)
        if _KERNEL is not None and rows.shape[0] <= PACKED_MAX_ROWS:
            y = _KERNEL(rows, self.weight, self.scales)
        else:
            y = F.linear(rows, self.weight.to(torch.bfloat16)) * self.scales
        return y.to(x.dtype).reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8"


def quantize_int8(model: nn.Module) -> nn.Module:
    """Replace every nn.Linear of `model` in place by an Int8Linear; returns the model."""
    for name, child in list(model.named_children()):
        if isinstance(child, nn.Linear) and child.bias is None:
            setattr(model, name, Int8Linear(child.weight))
        else:
            quantize_int8(child)
    return model
