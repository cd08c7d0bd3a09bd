"""Loader of the int8 linear kernel (int8_linear.cpp): compiled on first use, checked, or None.

`linear()` returns the kernel's function `int8_linear(x, weight, scales)` (x [..., K] bf16 or fp32
contiguous, weight [N, K] int8, scales [N]; returns x.float() @ (weight.float() * scales).T, [..., N], in x's
dtype), or None when it cannot be used here, with one logged warning saying why:

- PHI4R_INT8_KERNEL=0 in the environment (no warning: asked for);
- not a Linux x86 CPU with AVX-512F/BW/VL/VBMI and AVX512-BF16 (read from /proc/cpuinfo);
- compiling fails (torch.utils.cpp_extension with ninja and a C++17 compiler);
- a numerical probe against the float reference disagrees.

The build also registers the kernel as the dispatcher op `torch.ops.phi4r.int8_linear` (`op()`), with
a shape function, so a torch.compile graph (the engine's compiled decode step) calls it without a
graph break.

The first call compiles with -O3 -march=native (about a minute) into torch's extensions directory
(~/.cache/torch_extensions, or $TORCH_EXTENSIONS_DIR); later processes load the cached build. The
build's name includes a hash of the CPU model and flags, so a home directory shared by different
machines never loads a build made for another CPU.
"""
from __future__ import annotations

import hashlib
import logging
import os
import platform
import threading
from pathlib import Path

import torch

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("int8_linear.cpp")
REQUIRED_FLAGS = ("avx512f", "avx512bw", "avx512vl", "avx512vbmi", "avx512_bf16")  # vbmi: vpermt2b

_lock = threading.Lock()
_state: dict = {}  # "fn": the kernel or None once decided


def linear():
    """The checked kernel function, or None (decided once per process)."""
    if "fn" not in _state:
        with _lock:
            if "fn" not in _state:
                fn = _load()
                _state["op"] = _register_fake() if fn is not None else None
                _state["fn"] = fn
    return _state["fn"]


def op():
    """The same kernel as the dispatcher op `torch.ops.phi4r.int8_linear` (for torch.compile's graphs,
    which cannot call a pybind function), or None; valid after `linear()` returned the kernel."""
    return _state.get("op")


def _register_fake():
    """The op's shape function (fake tensors: y has x's dims with the last one N, x's dtype)."""
    try:
        target = torch.ops.phi4r.int8_linear.default
        if "phi4r::int8_linear" not in _FAKES:
            @torch.library.register_fake("phi4r::int8_linear")
            def _(x, weight, scales):
                return x.new_empty((*x.shape[:-1], weight.shape[0]))
            _FAKES.add("phi4r::int8_linear")
        return target
    except Exception as e:  # noqa: BLE001 - an older build without the op: eager still has the kernel
        log.warning("phi4r int8 kernel: no dispatcher op (%s); torch.compile will not use the kernel", e)
        return None


_FAKES: set[str] = set()


def _cpu() -> tuple[str, set[str]]:
    """CPU model name and flags from /proc/cpuinfo (empty when unreadable)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "", set()
    model, flags = "", set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and not model:
            model = value.strip()
        elif key.strip() == "flags" and not flags:
            flags = set(value.split())
    return model, flags


def _load():
    if os.environ.get("PHI4R_INT8_KERNEL", "1") == "0":
        return None
    model, flags = _cpu()
    missing = [f for f in REQUIRED_FLAGS if f not in flags]
    if platform.machine() not in ("x86_64", "AMD64") or missing:
        log.warning("phi4r int8 kernel: this CPU lacks %s; using the slower torch int8 path",
                    ", ".join(missing) or "x86-64")
        return None
    try:
        from torch.utils import cpp_extension

        tag = hashlib.sha256((model + " ".join(sorted(flags))).encode()).hexdigest()[:12]
        module = cpp_extension.load(name=f"phi4r_int8_linear_{tag}", sources=[str(SOURCE)],
                                    extra_cflags=["-O3", "-march=native", "-std=c++17", "-fopenmp"],
                                    # Without OpenMP, ATen's inline at::parallel_for runs on one thread.
                                    extra_ldflags=["-fopenmp"], verbose=False)
        fn = module.int8_linear
    except Exception as e:  # noqa: BLE001 - no compiler, no ninja, a compile error: keep the torch path
        log.warning("phi4r int8 kernel: building it failed (%s); using the slower torch int8 path",
                    str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__)
        return None
    problem = _probe(fn)
    if problem:
        log.warning("phi4r int8 kernel: %s; using the slower torch int8 path", problem)
        return None
    return fn


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
