"""Loader of the decode-attention kernel (decode_attention.cpp): compiled on first use, checked, or None.

`kernel()` returns `decode_attention(q, k, v, lengths, scale, block_table=None)`: q [B, H, D], k/v
[B, KV, S, D] (strided views of a cache are fine), lengths int64 [B]; sequence b's query heads attend
over its first lengths[b] positions of KV head h // (H / KV), fp32 softmax of scale * q.k; returns
[B, H, D] in q's dtype. With block_table [B, n] int64, k/v are a paged cache's pools [blocks, KV,
block_size, D] (kv_cache.py) and position j of sequence b is row j % block_size of block
block_table[b, j // block_size]; the kernel reads the rows where they are (no gathered copy). It needs `supports()`: CPU, q/k/v all fp32 or all bf16, D a multiple of 16. None when it
cannot be used here, with one logged warning saying why (see build.py), except for
PHI4R_ATTENTION_KERNEL=0 (asked for), or when a numerical probe against the float reference disagrees.
The op is also `torch.ops.phi4r.decode_attention` (`op()`) with a shape function, for torch.compile.

The model never picks it itself: `Phi3ForCausalLM.forward`/`decode` take the attention function as an
argument (default `reference`, the one torch implementation), and the engine, the one place that
chooses, passes `choose(...)`: the kernel once `prepare()`'s build is ready (see build.py: a child
process builds it, nothing waits for it), else `reference`. A compiled engine and the tests wait for
the build, bounded, with `kernel()`; `python -m phi4r.kernels.attention` builds it.
"""
from __future__ import annotations

from pathlib import Path

import torch

from . import build

NAME = "phi4r_decode_attention"
SOURCE = Path(__file__).with_name("decode_attention.cpp")
REQUIRED_FLAGS = ("avx512f", "avx512bw", "avx512_bf16")
FALLBACK = "using the slower torch attention"
DTYPES = (torch.float32, torch.bfloat16)


def _fake(q, k, v, lengths, scale, block_table=None):
    return q.new_empty(q.shape)


def supports(dtype: torch.dtype, head_dim: int, device: torch.device) -> bool:
    """Whether the kernel applies to a model's q/k/v (cache and activations in the model's dtype)."""
    return device.type == "cpu" and dtype in DTYPES and head_dim % 16 == 0


def reference(q, k, v, lengths, scale, block_table: torch.Tensor | None = None,
              hidden: torch.Tensor | bool | None = None):
    """The kernel's maths in torch, the model's attention wherever the kernel is not chosen (any device,
    dtype, head dim; autograd). Two grouped matmuls in fp32: on CPU, bf16 bmm of these small shapes is
    slower than converting q/K/V and multiplying in fp32, and less accurate; SDPA's CPU kernel is far
    slower for a single query. [B, KV] merge into one batch dim as a view, also for a cache slice.
    block_table: as the kernel's; the sequences' blocks are gathered into [B, KV, n * block_size, D].
    hidden: `hidden_keys(lengths, S)` if the caller has it (a model step computes it once for all layers),
    False if every key is visible, None: computed here."""
    if block_table is not None:
        from ..model import gather_blocks

        k, v = gather_blocks(k, block_table), gather_blocks(v, block_table)
    B, H, D = q.shape
    KV, S = k.shape[1], k.shape[2]
    scores = torch.bmm(q.float().reshape(B * KV, H // KV, D), k.float().reshape(B * KV, S, D).transpose(1, 2))
    scores.mul_(scale)
    if hidden is not False:
        hidden = hidden_keys(lengths, S) if hidden is None else hidden
        scores.view(B, KV, H // KV, S).masked_fill_(hidden, float("-inf"))
    return torch.bmm(scores.softmax(-1), v.float().reshape(B * KV, S, D)).to(q.dtype).view(B, H, D)


def hidden_keys(lengths: torch.Tensor, span: int) -> torch.Tensor:
    """[B, 1, 1, span]: True at the keys past each sequence's `lengths`."""
    return torch.arange(span, device=lengths.device) >= lengths.view(-1, 1, 1, 1)


def choose(dtype: torch.dtype, head_dim: int, device: torch.device, compiled: bool = False):
    """The kernel where it applies and is ready (as the dispatcher op for a torch.compile graph), else
    `reference`. Cheap (a dict lookup, a build that finished is loaded once): call it every step."""
    if supports(dtype, head_dim, device):
        fn = op() if compiled else ready()
        if fn is not None:
            return fn
    return reference


def _probe(fn) -> str | None:
    """Compare with the reference on shapes that reach every query-block size (1, 2, 4, 8 with padding
    and two blocks), a bf16 half step (D % 32 == 16), partial row blocks, strided cache views, and the
    same keys in a paged pool read through a block table."""
    gen = torch.Generator().manual_seed(0)
    for H, KV, D in ((2, 2, 16), (6, 2, 48), (8, 2, 128), (12, 1, 32), (5, 1, 64)):
        for dtype in DTYPES:
            cache = torch.randn(2, 4, KV, 40, D, generator=gen).to(dtype)
            k, v = cache[0, 1:], cache[1, 1:]  # [3, KV, 40, D], strided
            q = torch.randn(3, H + 1, D, generator=gen).to(dtype)[:, 1:]
            lengths = torch.tensor([1, 17, 40])
            # The same keys paged: 16-row blocks in a shuffled pool, read through a block table.
            order = torch.randperm(9, generator=gen)
            pk, pv = (torch.zeros(9, KV, 16, D, dtype=dtype) for _ in range(2))
            table = order[:9 // 3 * 3].view(3, 3)
            for b in range(3):
                for j in range(3):
                    rows = slice(16 * j, min(16 * j + 16, 40))
                    n = rows.stop - rows.start
                    pk[table[b, j], :, :n], pv[table[b, j], :, :n] = k[b, :, rows], v[b, :, rows]
            ref = reference(q.float(), k.float(), v.float(), lengths, D ** -0.5)
            for args in ((k, v, lengths, D ** -0.5), (pk, pv, lengths, D ** -0.5, table)):
                try:
                    got = fn(q, *args)
                except Exception as e:  # noqa: BLE001
                    return f"the probe raised {e}"
                # bf16 output: one rounding (2^-8 relative); fp32 sums in another order.
                tol = (2 ** -8 if dtype == torch.bfloat16 else 0) * ref.abs() + 1e-5 * v.float().abs().max()
                if got.dtype != dtype or got.shape != ref.shape or ((got.float() - ref).abs() > tol).any():
                    return f"the probe disagrees with the reference (H={H}, KV={KV}, D={D}, {dtype}, " \
                           f"{'paged' if len(args) > 4 else 'per sequence'})"
    return None


loader = build.Loader("phi4r.kernels.attention", NAME, SOURCE, REQUIRED_FLAGS, "attention kernel", FALLBACK,
                      "PHI4R_ATTENTION_KERNEL", "decode_attention", _probe, _fake)
# get: waits (bounded) for the build; prepare, ready: never wait (see build.py); op: for torch.compile's graphs
kernel, prepare, ready, op = loader.get, loader.prepare, loader.ready, loader.op

if __name__ == "__main__":
    raise SystemExit(0 if kernel() is not None else 1)
