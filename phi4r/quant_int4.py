"""int4 weight-only, group-wise quantization for CPU decoding (W4A16: compressed-tensors' "pack-quantized").

Each nn.Linear (lm_head included unless `exclude`d; embeddings stay as they are) becomes an `Int4Linear`:
w ~= (q - zero) * scale per group of `group_size` (32-128, default 128) consecutive input features,
q in [-8, 7]; symmetric by default (zero = 0; the scale maps the group's extreme value to -8 or 7, the
full range), or with zero points (asymmetric, compressed-tensors' formula). Decoding reads ~an eighth of
the fp32 bytes (plus a bf16 scale per group).

Buffers are compressed-tensors' own tensors, so saving and loading are copies (`to_compressed`,
`Int4Linear.from_compressed`): `weight_packed` int32 [out, ceil(in / 8)] (8 values per int32, value i at
bits 4i, stored q + 8; phi4r.kernels.int4.pack), `weight_scale` bf16 [out, ceil(in / group)] (fp32 when
a checkpoint's are fp16), `weight_zero_point` int8 [out, groups] or None.

The matmul, for CPU activations in bf16 or fp32 and up to KERNEL_MAX_ROWS rows (decode), is phi4r's
AVX-512 kernel (phi4r/kernels/int4.py), which reads that packed layout directly; zero points add one
small product of per-group sums of x. The kernel first quantizes the activations to int8 per row and
block of 128 inputs (INT8_ACTIVATIONS, as llama.cpp multiplies Q4_0 weights with Q8_0 activations:
integer dot products, ~0.5% relative error per output against ~5% from the int4 weights themselves);
PHI4R_INT4_INT8_ACTIVATIONS=0 keeps them in bf16/fp32. Otherwise (no kernel, more rows, autograd, another device or
group size) the weights are dequantized to the activation dtype (bf16 for bf16/fp16) for one F.linear.
"""
from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn

from .kernels import int4 as int4_kernel

# Rows up to which the kernel is used: on a 6144 x 768 layer, one thread, ms: rows 64: 13.8 vs 22.6 for
# dequantize + F.linear, 128: 28.5 vs 30.5, 256: 57.0 vs 41.9.
KERNEL_MAX_ROWS = 128
_KERNEL_DTYPES = (torch.bfloat16, torch.float32)
# The kernel's int8 activations (see above): the process's choice, read once.
INT8_ACTIVATIONS = os.environ.get("PHI4R_INT4_INT8_ACTIVATIONS", "1") != "0"
_CHUNK = 2 ** 22  # weights quantized at a time: bounds the fp32 temporaries of a large matrix (~16 MB each)


def quantize_weight(weight: torch.Tensor, group_size: int = 128, symmetric: bool = True):
    """(packed int32 [out, ceil(in / 8)], scales bf16 [out, groups], zero points int8 [out, groups] or None)
    of a weight [out, in], in row chunks (no whole-matrix fp32 copy)."""
    if weight.dim() != 2:
        raise ValueError(f"int4 quantization takes a 2-D weight, got shape {tuple(weight.shape)}")
    if group_size <= 0 or group_size % 8:
        raise ValueError(f"int4 group_size must be a positive multiple of 8, got {group_size}")
    out, k = weight.shape
    groups = -(-k // group_size)
    packed = torch.empty(out, -(-k // 8), dtype=torch.int32)
    scales = torch.empty(out, groups, dtype=torch.bfloat16)
    zeros = None if symmetric else torch.empty(out, groups, dtype=torch.int8)
    rows = max(1, _CHUNK // max(k, 1))
    width = groups * group_size
    for r in range(0, out, rows):
        # One fp32 copy of the chunk, quantized in place (the same operations as out of place, fewer passes).
        w = weight[r:r + rows].detach().to("cpu", torch.float32, copy=True)
        if width != k:
            w = F.pad(w, (0, width - k))
        w = w.view(w.shape[0], groups, group_size)
        if symmetric:
            # The extreme value maps to -8 when negative, to 7 when positive: the full range without a
            # negative scale (q4_0's trick, which ecosystem kernels may not expect).
            hi, lo = w.amax(-1), w.amin(-1)
            s = torch.where(-lo >= hi, -lo / 8, hi / 7).clamp(min=1e-30).to(torch.bfloat16)
            q = w.div_(s.float()[..., None]).round_().clamp_(-8, 7)
        else:  # compressed-tensors' asymmetric parameters: [min, max] (including 0) onto [-8, 7]
            lo, hi = w.amin(-1).clamp(max=0), w.amax(-1).clamp(min=0)
            s = ((hi - lo) / 15).clamp(min=1e-30).to(torch.bfloat16)
            z = torch.round(-8 - lo / s.float()).clamp(-8, 7)
            q = w.div_(s.float()[..., None]).round_().add_(z[..., None]).clamp_(-8, 7)
            zeros[r:r + rows] = z.to(torch.int8)
        scales[r:r + rows] = s
        packed[r:r + rows] = _pack_rows(q.view(w.shape[0], -1), k)
    return packed, scales, zeros


def _pack_rows(q: torch.Tensor, k: int) -> torch.Tensor:
    """int4_kernel.pack of the first k columns of q (float [R, C >= k], integer values in [-8, 7], C a
    multiple of 8), through bytes: value 2j in byte j's low nibble, 2j + 1 in its high one, four bytes a
    little-endian int32 word, which is pack's value i at bits 4i (a quarter of its int32 traffic)."""
    u = q.add_(8).to(torch.uint8)
    u[:, k:] = 0  # the padded tail stores 0, as pack's
    b = u[:, 0::2] | (u[:, 1::2] << 4)
    return b.view(torch.int32)[:, :-(-k // 8)]


class Int4Linear(nn.Module):
    def __init__(self, weight: torch.Tensor, group_size: int = 128, symmetric: bool = True):
        super().__init__()
        self._setup(*quantize_weight(weight, group_size, symmetric), weight.shape[1], group_size)

    def _setup(self, packed, scales, zeros, in_features: int, group_size: int) -> None:
        self.out_features, self.in_features, self.group_size = packed.shape[0], in_features, group_size
        self._kernel_rows = KERNEL_MAX_ROWS * in_features if int4_kernel.kernel_group(group_size) else -1
        self.register_buffer("weight_packed", packed)
        self.register_buffer("weight_scale", scales)
        self.register_buffer("weight_zero_point", zeros)

    @classmethod
    def from_compressed(cls, tensors: dict[str, torch.Tensor], group_size: int | None,
                        symmetric: bool = True) -> Int4Linear:
        """The layer from compressed-tensors' pack-quantized tensors of one linear (keys weight_packed,
        weight_scale, weight_shape and, asymmetric, weight_zero_point); group_size None: one group per
        row (the "channel" strategy). The exact inverse of `to_compressed`."""
        missing = {"weight_packed", "weight_scale", "weight_shape"} - tensors.keys()
        if missing:
            raise ValueError(f"int4 pack-quantized tensors lack {', '.join(sorted(missing))}")
        packed, scales = tensors["weight_packed"], tensors["weight_scale"]
        out, k = (int(v) for v in torch.as_tensor(tensors["weight_shape"]).tolist())
        group_size = group_size or k
        groups = -(-k // group_size)
        if scales.dim() == 1:
            scales = scales[:, None]
        if packed.dtype != torch.int32 or tuple(packed.shape) != (out, -(-k // 8)):
            raise ValueError(f"weight_packed must be int32 [{out}, {-(-k // 8)}] for weight_shape [{out}, {k}], "
                             f"got {packed.dtype} {list(packed.shape)}")
        if tuple(scales.shape) != (out, groups):
            raise ValueError(f"weight_scale must be [{out}, {groups}] for group size {group_size}, got {list(scales.shape)}")
        g_idx = tensors.get("weight_g_idx")  # GPTQ's activation order: only the trivial one (k // group)
        if g_idx is not None and not torch.equal(g_idx.long().cpu(), torch.arange(k) // group_size):
            raise ValueError("int4 tensors with an activation order (weight_g_idx) are not supported")
        zeros = tensors.get("weight_zero_point")
        if zeros is not None:
            zeros = int4_kernel.unpack(zeros, out, dim=0)
            if tuple(zeros.shape) != (out, groups):
                raise ValueError(f"weight_zero_point must unpack to [{out}, {groups}], got {list(zeros.shape)}")
            if symmetric:
                if zeros.any():
                    raise ValueError("symmetric int4 tensors with nonzero weight_zero_point")
                zeros = None
        elif not symmetric:
            raise ValueError("asymmetric int4 tensors lack weight_zero_point")
        if scales.dtype not in _KERNEL_DTYPES:
            scales = scales.float()  # fp16 scales: exact in fp32, which the kernel reads
        layer = cls.__new__(cls)
        nn.Module.__init__(layer)
        layer._setup(packed.contiguous(), scales.contiguous(), zeros, k, group_size)
        return layer

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The weights [out, in] as `dtype`."""
        return int4_kernel.dequantize(self.weight_packed.cpu(), self.weight_scale.cpu(), self.in_features,
                                      self.group_size, self.weight_zero_point, dtype).to(self.weight_packed.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Decode's hot path: as few Python steps as possible, ~50 calls a token. The group size is checked
        # once, at setup; the buffers are read from their dict (nn.Module.__getattr__, ~0.5 us per buffer,
        # was a sixth of this layer's time besides the kernel's).
        if not x.requires_grad and x.dtype in _KERNEL_DTYPES and x.is_cpu and x.numel() <= self._kernel_rows:
            kernel = int4_kernel.op() if torch.compiler.is_compiling() else int4_kernel.ready()
            if kernel is not None:
                buffers = self._buffers
                scales, zeros = buffers["weight_scale"], buffers["weight_zero_point"]
                if scales.dtype not in _KERNEL_DTYPES:
                    scales = scales.float()
                y = kernel(x.contiguous(), buffers["weight_packed"], scales, self.group_size, INT8_ACTIVATIONS)
                return y if zeros is None else (y.float() - self._zero_term(x)).to(x.dtype)
        dtype = x.dtype if x.dtype in (torch.float32, torch.float64) else torch.bfloat16
        return F.linear(x.to(dtype), self.dequantize(dtype)).to(x.dtype)

    def decode_kernel(self):
        """(kind, buffer names, extra arguments) such that the kind's kernel (torch.ops.phi4r.int4_linear)
        of (x, *buffers, *extra) is forward for a decode step's rows (contiguous bf16/fp32 CPU x of at most
        KERNEL_MAX_ROWS rows, in inference), or None where forward does more (zero points, no kernel
        built). See model._NativeLayer."""
        kernel = int4_kernel.ready()
        buffers = self._buffers
        if kernel is None or self._kernel_rows < 0 or buffers["weight_zero_point"] is not None \
                or buffers["weight_scale"].dtype not in _KERNEL_DTYPES:
            return None
        return "int4", ("weight_packed", "weight_scale"), (self.group_size, INT8_ACTIVATIONS)

    def _zero_term(self, x: torch.Tensor) -> torch.Tensor:
        """sum over groups of scale * zero * (x's group sum): what zero points take off the kernel's result."""
        g, k = self.group_size, self.in_features
        sums = F.pad(x.float(), (0, -k % g)).unflatten(-1, (-1, g)).sum(-1)
        return sums @ (self.weight_scale.float() * self.weight_zero_point.float()).T

    def extra_repr(self) -> str:
        zeros = "" if self.weight_zero_point is None else ", zero points"
        return f"in_features={self.in_features}, out_features={self.out_features}, int4, group {self.group_size}{zeros}"


def to_compressed(linear: nn.Module) -> dict[str, torch.Tensor]:
    """compressed-tensors' pack-quantized (W4A16) tensors of an Int4Linear (an nn.Linear is quantized
    first, symmetric, group 128): weight_packed, weight_scale, weight_shape and, asymmetric,
    weight_zero_point (packed along the output dimension, as compressed-tensors does)."""
    if isinstance(linear, nn.Linear):
        linear = Int4Linear(linear.weight)
    if not isinstance(linear, Int4Linear):
        raise TypeError(f"to_compressed takes an Int4Linear or nn.Linear, got {type(linear).__name__}")
    out = {"weight_packed": linear.weight_packed, "weight_scale": linear.weight_scale,
           "weight_shape": torch.tensor([linear.out_features, linear.in_features])}
    if linear.weight_zero_point is not None:
        out["weight_zero_point"] = int4_kernel.pack(linear.weight_zero_point, dim=0)
    return out


def quantize_int4(model: nn.Module, group_size: int = 128, symmetric: bool = True,
                  exclude: tuple[str, ...] = ()) -> nn.Module:
    """Replace every bias-free nn.Linear of `model` in place by an Int4Linear, except the modules named
    in `exclude` (qualified names, e.g. "lm_head"); returns the model."""
    from .quant import replace_linears  # (quant imports this module)

    return replace_linears(model, lambda w: Int4Linear(w, group_size, symmetric), exclude=exclude)
