"""int8 quantization for CPU decoding: weight-only (gpt-fast's scheme) or W8A8 (vLLM's int8 scheme).

Each bias-free nn.Linear (lm_head included; embeddings stay as they are: a lookup reads one row) becomes
an `Int8Linear` (`quantize_int8`) or a `W8A8Linear` (`quantize_w8a8`). Both quantize the weights the
same way: int8 plus one scale per output channel, w ~= q * scale, q in [-127, 127], scales bf16 [out].
Decoding reads a quarter of the fp32 bytes.

Int8Linear (weight-only): buffers `weight` (int8, [out, in], row-major: no repacking) and `scales`;
activations are not quantized. For CPU activations in bf16 or fp32 and up to KERNEL_MAX_ROWS rows
(decode), a layer made with kernel=True runs phi4r's AVX-512 kernel (phi4r/kernels/int8.py), which
converts the int8 weights exactly, accumulates in fp32 and streams the weights at the memory bandwidth
at batch 1. Otherwise (no kernel on this CPU, more rows, autograd) it is PyTorch's
`aten._weight_int8pack_mm` for bf16 and few rows, or dequantize to bf16 + one GEMM; these compute in
bf16 and return the activation dtype.

W8A8Linear: the activations are quantized too, dynamically, per row (per token), symmetric: row scale
amax(|row|) / 127 (phi4r.kernels.w8a8.quantize_rows). The product of int8 activations and weights is
exact in int32, then y = acc * row_scale * channel_scale (fp32) in the activation dtype. Buffers:
`weight` (int8 in the kernel's layout, phi4r.kernels.w8a8.pack), `comp` (int32, 128 * each channel's
weight sum, which the kernel's unsigned activations need) and `scales`. A layer made with kernel=True
runs phi4r's AVX-512 VNNI kernel for CPU activations in bf16 or fp32 (int8 products at twice the bf16
rate, so batched decode, which is compute-bound, runs up to ~2x faster than Int8Linear); otherwise
`w8a8_reference` computes the same numbers in torch. The activation quantization costs accuracy that
weight-only int8 does not lose, most with outlier features.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .kernels import int4 as int4_kernel
from .kernels import int8 as int8_kernel
from .kernels import w8a8 as w8a8_kernel
from .quant_int4 import Int4Linear

# Rows (tokens in the batch) up to which torch's int8 kernel beats dequantize + GEMM: it scales badly with
# rows (on the benchmark checkpoint's linears, 2.7x faster at 1 row, 1.2x at 8, slower from 16).
PACKED_MAX_ROWS = 8
# Rows up to which phi4r's kernel beats dequantize + GEMM (the benchmark checkpoint's linears: 2x at 16
# rows, 1.06x at 64).
KERNEL_MAX_ROWS = 64
_KERNEL_DTYPES = (torch.bfloat16, torch.float32)
_KERNEL = getattr(torch.ops.aten, "_weight_int8pack_mm", None)


def per_channel_int8(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(q int8 [out, in] in [-127, 127], scales bf16 [out]) with weight ~= q * scales[:, None]."""
    w = weight.detach().float()
    scales = w.abs().amax(dim=1).clamp(min=1e-12) / 127
    return torch.round(w / scales[:, None]).clamp(-127, 127).to(torch.int8), scales.to(torch.bfloat16)


def _kernel_scales(scales: torch.Tensor) -> torch.Tensor:
    return scales if scales.dtype in _KERNEL_DTYPES else scales.float()  # after .half()


class Int8Linear(nn.Module):
    """kernel: use phi4r's int8 kernel where it applies, once its build is ready (int8_kernel.prepare(), which
    quantize_int8 calls); False: always the torch path. A layer's choice is its own, whatever else runs."""

    def __init__(self, weight: torch.Tensor, kernel: bool = False):
        super().__init__()
        self.out_features, self.in_features, self.kernel = *weight.shape, kernel
        q, scales = per_channel_int8(weight)
        self.register_buffer("weight", q)
        self.register_buffer("scales", scales)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Decode's hot path: as few Python steps as possible (the kernel takes [..., K] as it is; the buffers
        # are read from their dict: nn.Module.__getattr__ costs ~0.5 us per buffer, ~50 calls a token).
        if (self.kernel and not x.requires_grad and x.dtype in _KERNEL_DTYPES and x.is_cpu  # no backward
                and x.numel() <= KERNEL_MAX_ROWS * self.in_features):
            # torch.compile's graphs call the kernel through the dispatcher (an opaque op in the graph).
            kernel = int8_kernel.op() if torch.compiler.is_compiling() else int8_kernel.ready()
            if kernel is not None:
                buffers = self._buffers
                return kernel(x.contiguous(), buffers["weight"], _kernel_scales(buffers["scales"]))
        rows = x.reshape(-1, self.in_features).to(torch.bfloat16)
        # (torch 2.13's _weight_int8pack_mm crashes (SIGSEGV) when in_features is not a multiple of 32.)
        if _KERNEL is not None and rows.shape[0] <= PACKED_MAX_ROWS and self.in_features % 32 == 0:
            y = _KERNEL(rows, self.weight, self.scales)
        else:
            y = F.linear(rows, self.weight.to(torch.bfloat16)) * self.scales
        return y.to(x.dtype).reshape(*x.shape[:-1], self.out_features)

    def decode_kernel(self):
        """(kind, buffer names, extra arguments) of the kernel's direct call (see Int4Linear.decode_kernel),
        or None without it."""
        kernel = int8_kernel.ready() if self.kernel else None
        if kernel is None or self._buffers["scales"].dtype not in _KERNEL_DTYPES:
            return None
        return "int8", ("weight", "scales"), ()

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8"


class W8A8Linear(nn.Module):
    """W8A8: int8 weights per output channel (as Int8Linear's) and int8 activations per row, int32 products.
    kernel: as Int8Linear's, for phi4r's W8A8 kernel (quantize_w8a8 prepares it)."""

    def __init__(self, weight: torch.Tensor, kernel: bool = False):
        super().__init__()
        self.out_features, self.in_features, self.kernel = *weight.shape, kernel
        q, scales = per_channel_int8(weight)
        packed, comp = w8a8_kernel.pack(q)
        self.register_buffer("weight", packed)  # the kernel's layout; int8_weight() is [out, in]
        self.register_buffer("comp", comp)
        self.register_buffer("scales", scales)

    def int8_weight(self) -> torch.Tensor:
        """The int8 weights [out, in] (a copy out of the packed layout)."""
        return w8a8_kernel.unpack(self.weight, self.out_features, self.in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # At any number of rows, prefills too: the kernel beats w8a8_reference (torch._int_mm, after
        # unpacking the weights) at every row count measured, 1 to 512.
        if self.kernel and not x.requires_grad and x.dtype in _KERNEL_DTYPES and x.is_cpu:  # no backward
            # torch.compile's graphs call the kernel through the dispatcher (an opaque op in the graph).
            kernel = w8a8_kernel.op() if torch.compiler.is_compiling() else w8a8_kernel.ready()
            if kernel is not None:
                return kernel(x.contiguous(), self.weight, self.comp, _kernel_scales(self.scales))
        return w8a8_reference(x, self.int8_weight(), self.scales)

    def decode_kernel(self):
        """(kind, buffer names, extra arguments) of the kernel's direct call (see Int4Linear.decode_kernel),
        or None without it."""
        kernel = w8a8_kernel.ready() if self.kernel else None
        if kernel is None or self._buffers["scales"].dtype not in _KERNEL_DTYPES:
            return None
        return "w8a8", ("weight", "comp", "scales"), ()

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, w8a8"


def w8a8_reference(x: torch.Tensor, q: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """The W8A8 kernel's numbers in torch: x [..., K] quantized per row (quantize_rows), times the int8
    weights q [N, K] exactly (int32), then (acc * row_scale) * scales in fp32, returned in x's dtype."""
    xq, xs = w8a8_kernel.quantize_rows(x.reshape(-1, q.shape[1]))
    acc = None
    if q.shape[1] > 1:  # (torch 2.13's _int_mm on CPU returns garbage for K = 1: q.T's strides are (1, 1))
        try:
            acc = torch._int_mm(xq, q.T)  # int32, exact (oneDNN on CPU: ~300 GOP/s at 64+ rows)
        except (AttributeError, RuntimeError, NotImplementedError):  # no such op, or a device/shape it lacks
            pass
    if acc is None:
        acc = xq.double() @ q.double().T  # exact too: |sums| < 2^53
    y = acc.float() * xs * scales.float()
    return y.to(x.dtype).reshape(*x.shape[:-1], q.shape[0])


def quantize_int8(model: nn.Module, kernel: bool = True) -> nn.Module:
    """Replace every bias-free nn.Linear of `model` in place by an Int8Linear(kernel=kernel); returns the model."""
    return replace_linears(model, lambda w: Int8Linear(w, kernel), prepare=kernel)


def quantize_w8a8(model: nn.Module, kernel: bool = True) -> nn.Module:
    """Replace every bias-free nn.Linear of `model` in place by a W8A8Linear(kernel=kernel); returns the model."""
    return replace_linears(model, lambda w: W8A8Linear(w, kernel), prepare=kernel)


def replace_linears(model: nn.Module, make, prepare: bool = True, exclude: tuple[str, ...] = ()) -> nn.Module:
    """Replace every bias-free nn.Linear of `model` in place by make(its weight), except the modules named
    in `exclude` (qualified names); then, if `prepare`, load the kernels of the new CPU layers, or build
    them in a child process (the torch path until they are ready). Returns the model."""
    for name, child in list(model.named_modules()):
        if isinstance(child, nn.Linear) and child.bias is None and name not in exclude:
            model.set_submodule(name, make(child.weight))
    if prepare:
        prepare_kernels(model)
    return model


# ---- building the quantized modules from int8 weights already made (quantize while loading, saved checkpoints)
def per_channel_int8_chunks(chunks, shape: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """per_channel_int8 of a weight given as consecutive row blocks (an iterable of [rows, in] tensors): the
    same numbers (each row's scale depends on that row alone) from one fp32 copy of one block at a time."""
    q, scales, row = torch.empty(shape, dtype=torch.int8), torch.empty(shape[0], dtype=torch.bfloat16), 0
    for block in chunks:
        # per_channel_int8's steps in place: one fp32 copy of the block is the only temporary.
        w = block.detach().float() if block.dtype != torch.float32 else block.detach().clone()
        s = torch.maximum(w.amax(dim=1), w.amin(dim=1).neg_()).clamp_(min=1e-12).div_(127)
        q[row:row + len(w)] = w.div_(s[:, None]).round_().clamp_(-127, 127)
        scales[row:row + len(w)] = s
        row += len(w)
    if row != shape[0]:
        raise ValueError(f"weight blocks gave {row} rows, expected {shape[0]}")
    return q, scales


def int8_module(cls: type[nn.Module], q: torch.Tensor, scales: torch.Tensor, kernel: bool = True) -> nn.Module:
    """An Int8Linear or W8A8Linear holding the int8 weights q [out, in] and per-channel scales [out] as they
    are (no float weight, no re-quantization): the buffers `cls.__init__` would have made from a float weight."""
    module = cls.__new__(cls)
    nn.Module.__init__(module)
    module.out_features, module.in_features = q.shape
    module.kernel = kernel  # as `cls(weight, kernel)` would set it
    scales = scales.reshape(-1).to(torch.bfloat16).expand(q.shape[0]).contiguous()
    if cls is W8A8Linear:
        packer = W8A8Packer(tuple(q.shape))
        for start in range(0, q.shape[0], _PACK_ROWS):
            packer.add(q[start:start + _PACK_ROWS])
        packed, comp = packer.finish()
        module.register_buffer("weight", packed)
        module.register_buffer("comp", comp)
    else:
        module.register_buffer("weight", q.contiguous())
    module.register_buffer("scales", scales)
    return module


def w8a8_from_chunks(chunks, shape: tuple[int, int], kernel: bool = True) -> nn.Module:
    """The W8A8Linear of a float weight given as consecutive row blocks: per_channel_int8 and the kernel's
    packing a block at a time, so the int8 weights exist once, in the packed layout (no [out, in] copy)."""
    packer, scales, row = W8A8Packer(shape), torch.empty(shape[0], dtype=torch.bfloat16), 0
    for block in chunks:
        q, s = per_channel_int8_chunks([block], tuple(block.shape))
        scales[row:row + len(q)] = s
        row += len(q)
        packer.add(q)
    packed, comp = packer.finish()
    module = W8A8Linear.__new__(W8A8Linear)
    nn.Module.__init__(module)
    module.out_features, module.in_features = shape
    module.kernel = kernel
    module.register_buffer("weight", packed)
    module.register_buffer("comp", comp)
    module.register_buffer("scales", scales)
    return module


# Rows of int8 weights packed at a time: whole tiles of the kernel's layout, a few MB of temporaries.
_PACK_ROWS = 16 * w8a8_kernel.TILE


class W8A8Packer:
    """w8a8_kernel.pack of an [out, in] int8 weight fed as consecutive row blocks of any sizes: the same
    (packed, comp), filled tile by tile (pack of whole tiles is pack of the whole restricted to them), so
    only a block's temporaries exist besides the result (pack of a whole matrix makes a padded copy and an
    int32 copy of it: 6x the int8 bytes for a moment)."""

    def __init__(self, shape: tuple[int, int]):
        self.n, self.k = shape
        tiles, k4 = -(-self.n // w8a8_kernel.TILE), -(-self.k // 4)
        self.packed = torch.empty(tiles, k4, w8a8_kernel.TILE, 4, dtype=torch.int8)
        self.comp = torch.empty(tiles * w8a8_kernel.TILE, dtype=torch.int32)
        self.row, self.pending = 0, []  # rows packed (whole tiles), rows waiting for a whole tile

    def add(self, q: torch.Tensor) -> None:
        self.pending.append(q)
        waiting = sum(len(p) for p in self.pending)
        whole = waiting // w8a8_kernel.TILE * w8a8_kernel.TILE
        if whole:
            rows = self.pending[0] if len(self.pending) == 1 else torch.cat(self.pending)
            self._pack(rows[:whole])
            self.pending = [rows[whole:]] if whole < waiting else []

    def _pack(self, rows: torch.Tensor) -> None:
        if self.row + len(rows) > self.n:
            raise ValueError(f"int8 weight blocks gave more than {self.n} rows")
        for start in range(0, len(rows), _PACK_ROWS):
            p, c = w8a8_kernel.pack(rows[start:start + _PACK_ROWS])
            tile = (self.row + start) // w8a8_kernel.TILE
            self.packed[tile:tile + len(p)] = p
            self.comp[self.row + start:self.row + start + len(c)] = c
        self.row += len(rows)

    def finish(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.pending:
            self._pack(torch.cat(self.pending))  # the last, partial tile (pack pads it with zeros)
            self.pending = []
        if self.row != self.n:
            raise ValueError(f"int8 weight blocks gave {self.row} rows, expected {self.n}")
        return self.packed, self.comp


def prepare_kernels(model: nn.Module) -> None:
    """Load (or start building) the CPU kernels the model's int8 and int4 modules use, as quantize_int8/_w8a8/_int4 do."""
    kinds = {type(m) for m in model.modules() if isinstance(m, (Int8Linear, W8A8Linear)) and m.weight.is_cpu}
    if Int8Linear in kinds:
        int8_kernel.prepare()
    if W8A8Linear in kinds:
        w8a8_kernel.prepare()
    if any(isinstance(m, Int4Linear) and m.weight_packed.is_cpu for m in model.modules()):
        int4_kernel.prepare()  # (a saved int4 checkpoint's layers come from from_compressed, which does not)
