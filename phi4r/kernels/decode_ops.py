"""Loader of the fused decode ops (decode_ops.cpp): compiled on first use, checked, or None.

`ops()` returns the built module, or None (torch path) while it builds or where it cannot be used:
PHI4R_DECODE_OPS_KERNEL=0 (asked for), a CPU without AVX-512F/BW and AVX512-BF16, a failed compile, or
a probe that disagrees with the torch formulas (one logged warning says which, see build.py). Its
functions, for fp32 or bf16 CPU tensors:

- `rms_norm(x, residual, weight, eps) -> (h, y)`: h = x + residual (residual None: h is x), y = phi4r's
  RMSNorm of h (model.RMSNorm: bf16 rounds the normalised value, then the product with the weight);
- `rope_(x, cos, sin) -> x`: model.Rotary's rotation of x [B, T, heads, D] in place (cos and signed sin
  [B, T, 1, R]);
- `swiglu(gate_up) -> up * silu(gate)` of the MLP's fused projection [..., gate | up];
- `rope_kv_(qkv, cos, sin, heads, k_pool, v_pool, rows)`: rope_ of the query and key heads of a
  projection qkv [B, T, heads + 2 KV, D] in place, then its key and value heads copied to rows
  [B, T, KV] of the cache pools (model.CacheStep's write, `reference_rope_kv`);
- `argmax(logits) -> (ids, finite)`: the first index of each row's largest logit (torch.argmax) as a
  list, and False if any logit is NaN or +inf (greedy sampling's one pass, sampling.py).

h, rope_, rope_kv_ and argmax are bit-identical to the torch formulas; y and swiglu differ by fp32 rounding of the norm's
statistics and of exp (at most one bf16 rounding step). `phi4r.model` uses them in inference (no
autograd, no autocast, not inside torch.compile, which fuses these ops itself) and calls `ops()`, which
starts the build in the background the first time (see build.py) and is a dict lookup afterwards.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from . import build

SOURCE = Path(__file__).with_name("decode_ops.cpp")
REQUIRED_FLAGS = ("avx512f", "avx512bw", "avx512_bf16")
FALLBACK = "using torch's element-wise ops"
DTYPES = (torch.float32, torch.bfloat16)


def reference_rms_norm(x, residual, weight, eps):
    """(h, y) by the torch ops model.RMSNorm uses."""
    h = x if residual is None else x + residual
    if h.dtype == torch.float32:
        return h, F.rms_norm(h, (h.shape[-1],), weight, eps)
    return h, weight * F.rms_norm(h, (h.shape[-1],), eps=eps)


def reference_rope(x, cos, sin):
    """model.Rotary's rotation: x [B, T, heads, D], cos/signed sin [B, T, 1, R] (a new tensor)."""
    R = cos.shape[-1]
    rot = x[..., :R]
    out = rot * cos + rot.roll(R // 2, -1) * sin
    return out if R == x.shape[-1] else torch.cat((out, x[..., R:]), -1)


def reference_swiglu(gate_up):
    gate, up = gate_up.chunk(2, dim=-1)
    return up * F.silu(gate)


def reference_rope_kv(qkv, cos, sin, heads, k_pool, v_pool, rows):
    """rope_kv_ by torch ops (qkv rotated in place; the pools viewed as rows of head_dim values)."""
    KV, D = (qkv.shape[2] - heads) // 2, qkv.shape[-1]
    qkv[:, :, :heads + KV] = reference_rope(qkv[:, :, :heads + KV], cos, sin)
    k_pool.view(-1, D).index_put_((rows,), qkv[:, :, heads:heads + KV])
    v_pool.view(-1, D).index_put_((rows,), qkv[:, :, heads + KV:])


def reference_argmax(logits):
    return logits.argmax(-1).tolist(), bool(logits.amax() < float("inf"))


def _probe(fn) -> str | None:
    """Compare with the torch formulas: odd sizes (vector tails), partial rotary, strided q/k views."""
    try:
        mod = fn()
    except Exception as e:  # noqa: BLE001
        return f"the probe raised {e}"
    gen = torch.Generator().manual_seed(0)
    for dtype in DTYPES:
        one_step = 2 ** -7 if dtype == torch.bfloat16 else 1e-5  # one rounding of the result, relative
        for shape in ((1, 1, 45), (3, 2, 96)):
            x, r = (torch.randn(shape, generator=gen) * 3).to(dtype), torch.randn(shape, generator=gen).to(dtype)
            w = torch.randn(shape[-1], generator=gen).to(dtype)
            for res in (None, r):
                try:
                    h, y = mod.rms_norm(x, res, w, 1e-5)
                except Exception as e:  # noqa: BLE001
                    return f"the probe raised {e}"
                hr, yr = reference_rms_norm(x, res, w, 1e-5)
                if not torch.equal(h, hr) or y.dtype != dtype or ((y.float() - yr.float()).abs()
                                                                  > one_step * yr.float().abs() + 1e-6).any():
                    return f"rms_norm disagrees with the reference ({shape}, {dtype})"
            gu = (torch.randn(*shape[:-1], 2 * shape[-1], generator=gen) * 4).to(dtype)
            ref = reference_swiglu(gu)
            if ((mod.swiglu(gu).float() - ref.float()).abs() > one_step * ref.float().abs() + 1e-6).any():
                return f"swiglu disagrees with the reference ({shape}, {dtype})"
        for heads, D, R in ((3, 64, 64), (2, 48, 24), (5, 128, 96)):
            qkv = torch.randn(2, 3, heads + 2, D, generator=gen).to(dtype)
            cos, sin = (torch.randn(2, 3, 1, R, generator=gen).to(dtype) for _ in range(2))
            x = qkv[:, :, :heads]
            ref = reference_rope(x, cos, sin)
            rest = qkv[:, :, heads:].clone()
            if mod.rope_(x, cos, sin) is not x or not torch.equal(x, ref) or not torch.equal(qkv[:, :, heads:], rest):
                return f"rope_ disagrees with the reference (D={D}, R={R}, {dtype})"
            qkv = torch.randn(2, 3, heads + 3, D, generator=gen).to(dtype)[:, :, 1:]  # strided
            pools = [torch.randn(7, 1, 4, D, generator=gen).to(dtype) for _ in range(2)]
            pools += [p.clone() for p in pools]
            rows = torch.randperm(28, generator=gen)[:6].view(2, 3, 1)
            ref = qkv.clone()
            try:
                mod.rope_kv_(qkv, cos, sin, heads, pools[0], pools[1], rows)
            except Exception as e:  # noqa: BLE001
                return f"the probe raised {e}"
            reference_rope_kv(ref, cos, sin, heads, pools[2], pools[3], rows)
            if not (torch.equal(qkv, ref) and torch.equal(pools[0], pools[2]) and torch.equal(pools[1], pools[3])):
                return f"rope_kv_ disagrees with the reference (D={D}, R={R}, {dtype})"
        # Ties (the first index wins), a row of -inf, a tail shorter than a vector, NaN and +inf.
        logits = torch.randn(4, 1000 + 7, generator=gen).to(dtype)
        logits[0, 5] = logits[0, 900] = logits[0, 1003] = 40
        logits[1] = float("-inf")
        logits[2, 1006] = 50
        for rows in (logits, logits[:1], logits[1:2]):
            if mod.argmax(rows) != reference_argmax(rows):
                return f"argmax disagrees with the reference ({dtype})"
        for bad in (float("nan"), float("inf")):
            odd = logits.clone()
            odd[3, 1005] = bad
            if mod.argmax(odd)[1] is not False:
                return f"argmax missed {bad} ({dtype})"
    return None


loader = build.Loader("phi4r.kernels.decode_ops", "phi4r_decode_ops", SOURCE, REQUIRED_FLAGS, "decode ops kernel",
                      FALLBACK, "PHI4R_DECODE_OPS_KERNEL", "ops", _probe, None)
prepare, ready = loader.prepare, loader.ready
_module: list = []  # the loaded module, once


def ops():
    """The kernel module, or None (torch path): prepares the build on first call; never waits."""
    if _module:
        return _module[0]
    if not loader.state:
        loader.prepare()
    fn = loader.ready()
    if fn is None:
        return None
    _module.append(fn())
    return _module[0]


def get():
    """`ops()`, waiting (bounded) for the build: for tests and `python -m phi4r.kernels.decode_ops`."""
    loader.get()
    return ops()


if __name__ == "__main__":
    raise SystemExit(0 if get() is not None else 1)
