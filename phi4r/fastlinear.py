"""Inference-only linear layers with their weights prepacked for oneDNN (CPU).

`F.linear` reorders a weight into oneDNN's blocked layout on every call; prepacking does it once
(what inductor's weight freezing does on CPU). For bf16 that reorder is a large part of a decode
step's linear time, and the packed result is bit-identical to F.linear. An fp32 weight is packed
for a number of rows (`batch_hint`) and gains most near it; its results differ from F.linear by
rounding only. `phi4r bench` with PHI4R_PREPACK=0 measures the difference on a given machine.

`prepack(model, batch_hint)` turns every bias-free nn.Linear of a model into a `PackedLinear` in
place: the same module (same class hierarchy, same `weight` Parameter, so state_dict, tied weights
and `.weight` stay as they are) that also holds a packed copy of its weight (not in the state dict;
it costs one more copy of the linear weights in memory). The packed copy is used only when it is
still the weight's value: in eval mode, without autograd, on CPU, for the weight's dtype, and while
the weight has not been modified in place since packing (`Tensor._version`). Anything else takes
plain `F.linear`, so a module that is trained after packing stays correct (just not faster).
`LLM(path)` packs on CPU; `LLM.from_model` (a training loop's policy) does not.

For up to DENSE_MAX_ROWS rows (decode) the same fast path runs phi4r's dense kernel instead
(phi4r/kernels/dense.py: AVX-512, streams the plain weight once at the memory bandwidth, where oneDNN's
packed GEMM reaches only part of it at one row). It sums in fp32 as F.linear does, so its results differ
from F.linear's by summation order only (for bf16 too, where the packed path is bit-identical). It is
used once its build is ready (`prepack` prepares it); PHI4R_DENSE_KERNEL=0 turns it off (oneDNN's
packed path at every row count).

Set PHI4R_PREPACK=0 to turn it off (for comparisons). If this torch build lacks the oneDNN ops or
they fail, packing is skipped and logged.
"""
from __future__ import annotations

import itertools
import logging
import os
import weakref

import torch
import torch.nn.functional as F
from torch import nn

from .kernels import dense as dense_kernel

log = logging.getLogger(__name__)

_DTYPES = (torch.float32, torch.bfloat16)
# Rows up to which the dense kernel beats oneDNN's packed GEMM on the anchor checkpoint's linears
# (benchmarks/bench_dense_kernel.py, 2 threads: a step's linears at 1 / 4 / 8 rows 0.90 / 1.03 / 1.20 of
# oneDNN's time in fp32, 0.86 / 0.90 / 1.00 in bf16).
DENSE_MAX_ROWS = 4


def available() -> bool:
    ops = getattr(torch.ops, "mkldnn", None)
    return (torch.backends.mkldnn.is_available() and hasattr(ops, "_reorder_linear_weight")
            and hasattr(ops, "_linear_pointwise"))


def _pack(weight: torch.Tensor, batch_hint: int) -> torch.Tensor:
    w = weight.detach()
    # bf16 packs without a hint; fp32's layout depends on the number of rows it expects.
    if w.dtype == torch.float32:
        return torch.ops.mkldnn._reorder_linear_weight(w, batch_hint)
    return torch.ops.mkldnn._reorder_linear_weight(w)


def _fast(x: torch.Tensor, w: torch.Tensor, packed: torch.Tensor) -> torch.Tensor:
    """x @ w.T for a packed linear whose checks passed: the dense kernel for up to DENSE_MAX_ROWS rows
    (once its build is ready), else oneDNN's GEMM on the packed copy."""
    if x.numel() <= DENSE_MAX_ROWS * w.shape[1] and w.is_contiguous() and (dense := dense_kernel.ready()) is not None:
        return dense(x.contiguous(), w)
    return torch.ops.mkldnn._linear_pointwise(x, packed, None, "none", [], "")


class PackedLinear(nn.Linear):
    """An nn.Linear (no bias) whose forward uses a oneDNN-prepacked copy of its weight when valid."""

    _packed: torch.Tensor | None = None
    _packed_version: int = -1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        if torch.compiler.is_compiling():
            # torch.compile (the engine's decode step) cannot trace the checks below nor lower a packed
            # weight it does not own: one opaque op does them at run time.
            if self._packed is not None and not self.training and x.dtype == w.dtype and x.is_cpu:
                return torch.ops.phi4r.packed_linear(x, w, self._handle)
            return F.linear(x, w, self.bias)
        if (self._packed is not None and not self.training and _version(w) == self._packed_version
                and x.dtype == w.dtype and x.is_cpu
                and not (torch.is_grad_enabled() and (w.requires_grad or x.requires_grad))):
            return _fast(x, w, self._packed)
        return F.linear(x, w, self.bias)


# Packed modules by handle, for the op below (weakly: unpacking or dropping a model frees them).
_MODULES: weakref.WeakValueDictionary[int, PackedLinear] = weakref.WeakValueDictionary()
_handles = itertools.count()


@torch.library.custom_op("phi4r::packed_linear", mutates_args=())
def _packed_linear(x: torch.Tensor, weight: torch.Tensor, handle: int) -> torch.Tensor:
    """PackedLinear's forward as one op (x, its plain weight, its handle), for compiled graphs."""
    module = _MODULES.get(handle)
    if (module is not None and module._packed is not None and _version(weight) == module._packed_version
            and not torch.is_grad_enabled()):
        return _fast(x, weight, module._packed)
    return F.linear(x, weight)


@_packed_linear.register_fake
def _(x, weight, handle):
    return x.new_empty((*x.shape[:-1], weight.shape[0]))


def _version(t: torch.Tensor) -> int:
    # Inference tensors keep no version counter (and cannot be changed outside inference mode).
    return 0 if t.is_inference() else t._version


def _check(weight: torch.Tensor, packed: torch.Tensor) -> bool:
    """The packed kernel reproduces F.linear (bf16: exactly; fp32: within 1e-5) on a probe."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, weight.shape[1], generator=gen).to(weight.dtype)
    with torch.no_grad():
        ref = F.linear(x, weight).float()
        got = torch.ops.mkldnn._linear_pointwise(x, packed, None, "none", [], "").float()
    tol = 0.0 if weight.dtype == torch.bfloat16 else 1e-5 * max(1.0, ref.abs().max().item())
    return got.shape == ref.shape and (got - ref).abs().max().item() <= tol


def packed_bytes(model: nn.Module) -> int:
    """Bytes a prepack would add: one more copy of every float linear weight."""
    return sum(m.weight.numel() * m.weight.element_size() for m in model.modules()
               if type(m) is nn.Linear and m.weight.dtype in _DTYPES)


def fits(model: nn.Module, fraction: float = 0.25) -> bool:
    """Whether the packed copy fits in `fraction` of physical memory (a 14B model's 29 GB does not)."""
    return packed_bytes(model) < fraction * os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def prepack(model: nn.Module, batch_hint: int = 1) -> int:
    """Prepack every bias-free CPU nn.Linear of `model` (fp32 or bf16) in place; returns how many.

    batch_hint: the rows the fp32 layout is packed for (the engine's decode batch); bf16 ignores it.
    Never raises for a kernel problem: it logs and leaves the remaining layers on F.linear.
    """
    if os.environ.get("PHI4R_PREPACK", "1") == "0":
        return 0
    if not available():
        log.info("phi4r.fastlinear: oneDNN linear ops not in this torch build; using F.linear")
        return 0
    count, checked = 0, set()
    for module in list(model.modules()):
        if type(module) is not nn.Linear or module.bias is not None:
            continue
        w = module.weight
        if w.device.type != "cpu" or w.dtype not in _DTYPES:
            continue
        try:
            packed = _pack(w, max(1, batch_hint))
            if w.dtype not in checked:  # one probe per dtype: the kernel either matches or it does not
                if not _check(w, packed):
                    log.warning("phi4r.fastlinear: prepacked %s linear differs from F.linear; using F.linear", w.dtype)
                    return count
                checked.add(w.dtype)
        except Exception as e:  # noqa: BLE001 - any kernel failure means: keep F.linear
            log.warning("phi4r.fastlinear: prepacking failed (%s); using F.linear", e)
            return count
        module.__class__ = PackedLinear
        module._packed, module._packed_version = packed, _version(w)
        module._handle = next(_handles)
        _MODULES[module._handle] = module
        if not count:
            dense_kernel.prepare()  # loads its build, or starts it (oneDNN's path until it is ready)
        count += 1
    return count


def unpack(model: nn.Module) -> None:
    """Undo `prepack`: plain nn.Linear modules again, packed copies freed."""
    for module in model.modules():
        if isinstance(module, PackedLinear):
            _MODULES.pop(getattr(module, "_handle", -1), None)
            del module._packed, module._packed_version, module._handle
            module.__class__ = nn.Linear
