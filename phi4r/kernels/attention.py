"""Loader of the decode-attention kernel (decode_attention.cpp): compiled on first use, checked, or None.

`kernel()` returns `decode_attention(q, k, v, lengths, scale)`: q [B, H, D], k/v [B, KV, S, D] (strided
views of a cache are fine), lengths int64 [B]; sequence b's query heads attend over its first
lengths[b] positions of KV head h // (H / KV), fp32 softmax of scale * q.k; returns [B, H, D] in q's
dtype. It needs `supports()`: CPU, q/k/v all fp32 or all bf16, D a multiple of 16. None when it
cannot be used here, with one logged warning saying why (see build.py), except for
PHI4R_ATTENTION_KERNEL=0 (asked for), or when a numerical probe against the float reference disagrees.
The op is also `torch.ops.phi4r.decode_attention` (`op()`) with a shape function, for torch.compile.

Any model gets faster with it, so the engine uses it without being asked; but the first build takes
half a minute, which a first `phi4r chat` must not wait for. So `prepare()` (the engine's call) loads
a build this machine already has and otherwise starts building it in a detached, niced process for the
next run, and this process decodes with the torch path. `kernel()` builds in the foreground (torch.compile's
users, who wait for compiling anyway, and the tests); `python -m phi4r.kernels.attention` builds it.
"""
from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
from pathlib import Path

import torch

from . import build

log = logging.getLogger(__name__)

NAME = "phi4r_decode_attention"
SOURCE = Path(__file__).with_name("decode_attention.cpp")
REQUIRED_FLAGS = ("avx512f", "avx512bw", "avx512_bf16")
FALLBACK = "using the slower torch attention"
DTYPES = (torch.float32, torch.bfloat16)

_lock = threading.Lock()
_state: dict = {}  # "fn": the kernel or None once decided


def kernel():
    """The checked kernel function, or None (decided once per process)."""
    return build.decide(_state, _lock, _load, "decode_attention", _fake, "attention kernel")


def ready():
    """The kernel if this process has decided on it already, else None (never builds)."""
    return _state.get("fn")


def prepare() -> None:
    """Load the kernel when this machine has a build of it; else build it in a background process for
    the processes after this one (this one keeps the torch path: `ready()` stays None)."""
    if "fn" in _state or "building" in _state or os.environ.get("PHI4R_ATTENTION_KERNEL", "1") == "0":
        return
    if build.is_built(NAME, SOURCE):
        kernel()
        return
    with _lock:
        if "fn" not in _state and "building" not in _state:
            _state["building"] = True  # elsewhere; a kernel() call still builds here (and waits for that one)
            try:
                subprocess.Popen([sys.executable, "-m", __name__], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL, start_new_session=True)  # outlives this process
            except OSError as e:
                log.warning("phi4r attention kernel: cannot start its build (%s); %s", e, FALLBACK)


def op():
    """The same kernel as the dispatcher op (for torch.compile's graphs), or None; valid after
    `kernel()` was called."""
    return _state.get("op")


def supports(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> bool:
    return q.is_cpu and q.dtype in DTYPES and k.dtype == v.dtype == q.dtype and q.shape[-1] % 16 == 0


def _fake(q, k, v, lengths, scale):
    return q.new_empty(q.shape)


def _load():
    return build.load_checked(
        "PHI4R_ATTENTION_KERNEL", NAME, SOURCE, REQUIRED_FLAGS, "attention kernel", FALLBACK, "decode_attention", _probe)


def reference(q, k, v, lengths, scale):
    """The kernel's maths in torch (fp32)."""
    B, H, D = q.shape
    KV, S = k.shape[1], k.shape[2]
    scores = torch.einsum("bkgd,bksd->bkgs", q.float().view(B, KV, H // KV, D), k.float()) * scale
    visible = torch.arange(S) < lengths[:, None, None, None]
    weights = scores.masked_fill(~visible, float("-inf")).softmax(-1)
    return torch.einsum("bkgs,bksd->bkgd", weights, v.float()).reshape(B, H, D)


def _probe(fn) -> str | None:
    """Compare with the reference on shapes that reach every query-block size (1, 2, 4, 8 with padding
    and two blocks), a bf16 half step (D % 32 == 16), partial row blocks and strided cache views."""
    gen = torch.Generator().manual_seed(0)
    for H, KV, D in ((2, 2, 16), (6, 2, 48), (8, 2, 128), (12, 1, 32), (5, 1, 64)):
        for dtype in DTYPES:
            cache = torch.randn(2, 4, KV, 40, D, generator=gen).to(dtype)
            k, v = cache[0, 1:], cache[1, 1:]  # [3, KV, 40, D], strided
            q = torch.randn(3, H + 1, D, generator=gen).to(dtype)[:, 1:]
            lengths = torch.tensor([1, 17, 40])
            ref = reference(q, k, v, lengths, D ** -0.5)
            try:
                got = fn(q, k, v, lengths, D ** -0.5)
            except Exception as e:  # noqa: BLE001
                return f"the probe raised {e}"
            # bf16 output: one rounding (2^-8 relative); fp32 sums in another order.
            tol = (2 ** -8 if dtype == torch.bfloat16 else 0) * ref.abs() + 1e-5 * v.float().abs().max()
            if got.dtype != dtype or got.shape != ref.shape or ((got.float() - ref).abs() > tol).any():
                return f"the probe disagrees with the reference (H={H}, KV={KV}, D={D}, {dtype})"
    return None


if __name__ == "__main__":  # prepare()'s background build: niced, so that it never slows a decode
    os.nice(10)
    kernel()
