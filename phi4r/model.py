"""The Phi-3 / Phi-4 decoder (Hugging Face `Phi3ForCausalLM`), readable top to bottom.

Parameter names match Hugging Face's exactly, so a checkpoint's state dict loads as it is.
One forward serves training (plain causal attention over the whole sequence) and the engine
(incremental decoding into a paged or per-sequence KV cache, many sequences at different positions).
"""
from __future__ import annotations

import time
import weakref

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules import module as _nn_module
from torch.utils.checkpoint import checkpoint

from .config import Phi3Config
from .kernels import attention as attention_kernel
from .kernels import decode_ops

_FUSED_DTYPES = (torch.float32, torch.bfloat16)


def _fused_ops(x: torch.Tensor, *same_dtype: torch.Tensor):
    """The fused decode ops (kernels.decode_ops) when they may replace the torch ops here, else None:
    in inference only (no autograd: they have no backward; no autocast, which picks dtypes per op;
    not inside torch.compile, whose graph cannot call them and fuses these ops itself), on CPU, for
    fp32/bf16 tensors all of x's dtype."""
    if torch.is_grad_enabled() or torch.compiler.is_compiling() or x.dtype not in _FUSED_DTYPES or not x.is_cpu:
        return None
    for t in same_dtype:
        if t.dtype != x.dtype:
            return None
    return None if torch.is_autocast_enabled("cpu") else decode_ops.ops()


def _submodules(module: nn.Module, *names: str) -> list[nn.Module]:
    """module.<name> for each name, read from the module's dict of submodules: each attribute lookup of a
    submodule, parameter or buffer goes through nn.Module.__getattr__ (~0.5 us), and a decode step made
    ~150 of them, a tenth of its time outside the linear kernels."""
    modules = module._modules
    return [modules[name] for name in names]


# Rows up to which every projection's decode_kernel applies (quant.KERNEL_MAX_ROWS, the smallest of them).
NATIVE_MAX_ROWS = 64
# How often a layer that could run in C++ but does not yet looks again (its kernels are built in the
# background while the engine already decodes; a cheap check, so not every step).
RETRY_SECONDS = 1.0
# Per decoder layer, its _NativeLayer (weakly: a dropped model takes its entries along).
_NATIVE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


class _NativeLayer:
    """A decoder layer's decode step as one C++ call (`layer`: the fused ops' DecodeLayer, or None): what
    DecoderLayer.fused_decode computes, op for op, when its four projections have kernels
    (`decode_kernel()`: int4, int8, w8a8) and none has hooks. The Python between the kernels costs ~20 us
    a layer, a tenth of an int4 decode step of a 258M model.

    Made from the projection modules, their buffers and the norms' weights; `valid` is False once any of
    them is replaced or a projection gains hooks (in-place changes of their values need nothing), and,
    while a layer that could run in C++ does not (a kernel still building, hooks), every RETRY_SECONDS."""

    def __init__(self, layer: nn.Module, ops):
        attn, mlp = layer._modules["self_attn"], layer._modules["mlp"]
        owners = ((attn, "qkv_proj"), (attn, "o_proj"), (mlp, "gate_up_proj"), (mlp, "down_proj"))
        norms = (layer._modules["input_layernorm"], layer._modules["post_attention_layernorm"])
        self.mods = tuple(owner._modules[name] for owner, name in owners)
        # (dict, key, object): what `valid` checks is still there.
        self.sources = [(owner._modules, name, m) for (owner, name), m in zip(owners, self.mods)]
        self.sources += [(n._parameters, "weight", n._parameters["weight"]) for n in norms]
        self.layer_idx, self.scale, self.layer = attn.layer_idx, attn.head_dim ** -0.5, None
        self.retry_at = None  # when to look again, while this layer might yet run in C++
        if not hasattr(ops, "DecodeLayer") or not all(hasattr(m, "decode_kernel") for m in self.mods):
            return
        if self._hooked():
            self.retry_at = time.monotonic() + RETRY_SECONDS
            return
        kernels = []
        for m in self.mods:
            spec = m.decode_kernel()
            if spec is None:  # e.g. its kernel's build not finished yet (or zero points: looked at again anyway)
                self.retry_at = time.monotonic() + RETRY_SECONDS
                return
            kind, names, extra = spec
            tensors = [m._buffers[n] for n in names]
            self.sources += [(m._buffers, n, t) for n, t in zip(names, tensors)]
            group, a8 = extra if kind == "int4" else (0, False)  # (the int4 kernel's group size and activations)
            kernels.append((kind, tensors, group, a8))
        self.layer = ops.DecodeLayer(norms[0]._parameters["weight"], norms[0].eps, norms[1]._parameters["weight"],
                                     norms[1].eps, kernels, attn.n_heads, attn.n_kv, attn.head_dim)

    def __call__(self, delta, x, cos, sin, step: CacheStep):
        """fused_decode(delta, x, ...) of the layer (`layer` must not be None)."""
        j = self.layer_idx
        return self.layer.forward(delta, x, cos, sin, step.ks[j], step.vs[j], step.index, step.lengths, self.scale,
                                  step.tables)

    def _hooked(self) -> bool:
        return any(m._forward_hooks or m._forward_pre_hooks for m in self.mods)

    def valid(self) -> bool:
        for owner, key, obj in self.sources:
            if owner[key] is not obj:
                return False
        if self.layer is None:
            return self.retry_at is None or time.monotonic() < self.retry_at
        return not self._hooked()


def _native(layer: nn.Module, ops) -> _NativeLayer:
    """The layer's _NativeLayer, made or remade as needed."""
    native = _NATIVE.get(layer)
    if native is None or not native.valid():
        native = _NATIVE[layer] = _NativeLayer(layer, ops)
    return native


def _global_hooks() -> bool:
    """Whether any forward hook is registered for all modules (torch.nn.modules.module.register_module_*)."""
    return bool(_nn_module._global_forward_hooks or _nn_module._global_forward_pre_hooks)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None):
        """RMSNorm(x), or with `residual`: (h, RMSNorm(h)) for h = x + residual, in one fused op at decode."""
        weight = self._parameters["weight"]  # (see _submodules)
        ops = _fused_ops(x, weight)
        if ops is not None:
            h, y = ops.rms_norm(x.contiguous(), None if residual is None else residual.contiguous(), weight, self.eps)
            return y if residual is None else (h, y)
        if residual is None:
            return self._norm(x)
        h = x + residual
        return h, self._norm(h)

    def _norm(self, x: torch.Tensor) -> torch.Tensor:
        # Normalise in fp32 as the reference does (bf16 variance loses too much precision): F.rms_norm
        # upcasts bf16 itself and rounds x * rsqrt(mean(x^2) + eps) back to x's dtype once, bit-identical
        # to .float() ... .to(x.dtype) without the two copies. The weight multiplies after the rounding,
        # as in Hugging Face; for fp32 that is the same product, so the op takes the weight itself.
        if x.dtype == torch.float32 and self.weight.dtype == torch.float32:
            return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)
        return self.weight * F.rms_norm(x, (x.shape[-1],), eps=self.eps)


class Rotary:
    """cos/sin tables for the "rotate half" RoPE on the first `rotary_dim` dims of each head."""

    def __init__(self, config: Phi3Config):
        self.dim = config.rotary_dim
        self.theta = config.rope_theta
        self.max_len = config.max_position_embeddings
        self._tables: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    def tables(self, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and a signed sin [max_len, rotary_dim]: sin's first half is negated, so that
        rotate_half(x) * sin == x.roll(half) * signed_sin (one op fewer than negating x's half)."""
        key = (device, dtype)
        if key not in self._tables:
            # Built in fp32 on first use per device (never on the meta device).
            inv = 1.0 / (self.theta ** (torch.arange(0, self.dim, 2, dtype=torch.int64, device=device).float() / self.dim))
            t = torch.arange(self.max_len, device=device, dtype=torch.float32)
            freqs = torch.outer(t, inv)
            emb = torch.cat((freqs, freqs), dim=-1)
            sin = emb.sin()
            sin[:, : self.dim // 2].neg_()
            self._tables[key] = (emb.cos().to(dtype), sin.to(dtype))
        return self._tables[key]

    def at(self, positions: torch.Tensor, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and signed sin [B, T, 1, rotary_dim] of `positions` [B, T] (rows of `tables`; index_select
        is a fraction of advanced indexing's cost, a decode step's per-call overhead)."""
        cos_t, sin_t = self.tables(device, dtype)
        rows, shape = positions.reshape(-1), (*positions.shape, 1, cos_t.shape[-1])
        return cos_t.index_select(0, rows).view(shape), sin_t.index_select(0, rows).view(shape)

    def apply(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """x: [B, T, heads, head_dim]; cos/signed sin: [B, T, 1, rotary_dim]. Bit-identical to
        x * cos + cat(-x2, x1) * sin (negation is exact). In inference the fused op rotates x in place
        and returns it (callers pass a fresh projection's view, which nothing else reads unrotated)."""
        ops = _fused_ops(x, cos, sin)
        if ops is not None and x.stride(-1) == 1 and cos.stride(-1) == 1 and sin.stride(-1) == 1:
            return ops.rope_(x, cos, sin)
        if self.dim == x.shape[-1]:
            return x * cos + x.roll(self.dim // 2, -1) * sin
        rot, rest = x[..., : self.dim], x[..., self.dim :]
        return torch.cat((rot * cos + rot.roll(self.dim // 2, -1) * sin, rest), dim=-1)


class KVCache:
    """Preallocated keys/values, one row ("slot") per sequence, for using the model directly (tests,
    scoring); the engine's cache is the paged one (kv_cache.py), of which this is the special case of
    one block of max_len positions per sequence.

    Shape per layer: [num_slots, kv_heads, max_len, head_dim]. A sequence's keys live in its slot at
    their absolute positions; attention masks positions beyond the query, so a slot handed to a new
    sequence needs no clearing.
    """

    def __init__(self, config: Phi3Config, num_slots: int, max_len: int,
                 dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu"):
        shape = (num_slots, config.num_key_value_heads, max_len, config.head_dim)
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(config.num_hidden_layers)]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(config.num_hidden_layers)]
        self.num_slots, self.max_len = num_slots, max_len

    def copy_slot(self, src: int, dst: int, length: int) -> None:
        """Share a prefill: copy the first `length` positions of slot `src` into slot `dst`."""
        for k, v in zip(self.k, self.v):
            k[dst, :, :length] = k[src, :, :length]
            v[dst, :, :length] = v[src, :, :length]


class CacheStep:
    """One forward's view of the cache, worked out once for all layers: where each new key goes, which keys
    each query may see, how to read a batch's keys, and the decode attention to use.

    ks/vs: the cache tensors, [blocks, kv_heads, block_size, head_dim] per layer (PagedKVCache.k/.v; a
    KVCache is the same with one block of max_len positions per slot). Which blocks a sequence owns:
    tables [B, blocks] (paged: position p is row p % block_size of block tables[b, p // block_size]),
    or slots [B] (a KVCache: one block each; None: 0..B-1). span: max(positions) + 1, or None to read it
    from `positions` (one host sync). A compiled step passes span (a plain int: torch.compile makes it a
    dynamic size after the first value that differs, so a growing span does not recompile) and no slots,
    so it has no host syncs.
    attention(q [B, H, D], k, v, lengths [B], scale[, block_table]) -> [B, H, D]: a query's attention
    over the first lengths[b] keys of k/v [B, KV, span, D], or with a block table over the pools
    (kernels.attention.reference, or its kernel).
    """

    def __init__(self, ks: list[torch.Tensor], vs: list[torch.Tensor], positions: torch.Tensor,
                 slots: torch.Tensor | None = None, span: int | None = None, attention=attention_kernel.reference,
                 tables: torch.Tensor | None = None):
        B, T = positions.shape
        self.ks, self.vs, self.attention = ks, vs, attention
        self.paged = tables is not None
        self.select, pos = slice(0, B), None
        if span is None:
            pos = positions.tolist()  # one host sync for the whole forward
            span = max(max(p) for p in pos) + 1
            if slots is not None:
                rows = slots.tolist()
                # Sequences in consecutive slots are read through a view; others need a gathered copy.
                self.select = slice(rows[0], rows[0] + B) if rows == list(range(rows[0], rows[0] + B)) else slots
        self.span = span
        if tables is None:
            tables = (torch.arange(B, device=positions.device) if slots is None else slots)[:, None]
        self.tables = tables
        # Each query sees keys of its own sequence at positions up to its own: a mask for several new
        # tokens per sequence (SDPA), the number of leading keys for one.
        self.mask = _visible(span, positions) if T > 1 else None
        if T == 1 and pos is not None and tables.numel() <= 4096:
            # A decode step with its positions read already: the lengths and cache rows from Python ints,
            # one tensor each (the torch formulas below take ~8 small ops, each costing more than its work;
            # reading a large batch's long block tables into Python would cost more than those).
            self.lengths = torch.tensor([p[0] + 1 for p in pos], device=positions.device)
            self.index = _cache_rows_of(ks[0], tables.tolist(), pos, positions.device)
        else:
            self.lengths = positions[:, 0] + 1 if T == 1 else None
            self.index = _cache_rows(ks[0], tables, positions)
        self.ops = _fused_ops(ks[0])  # decided once for all layers (see rotate_and_write)
        # The caches make all layers' pools alike, so the first layer's decide (rope_kv_ checks every
        # pool it writes, and refuses one of another dtype or layout).
        dtype = ks[0].dtype
        self.fused_dtype = dtype if self.ops is not None and vs[0].dtype == dtype and ks[0].is_contiguous() \
            and vs[0].is_contiguous() else None
        # Decode reads a paged cache through its block table: the keys it may see span the table's blocks.
        keys = tables.shape[1] * ks[0].shape[2] if self.paged else span
        # The reference's mask, once for all layers (none when every sequence sees every key).
        self.extra = {}
        if T == 1 and attention is attention_kernel.reference:
            full = not self.paged and pos is not None and all(p[0] == span - 1 for p in pos)
            self.extra = {"hidden": False if full else attention_kernel.hidden_keys(self.lengths, keys)}

    def attend(self, q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, scale: float) -> torch.Tensor:
        """Decode attention of q [B, H, D] over the keys/values `update` returned: [B, H, D]."""
        if self.paged:
            return self.attention(q, keys, values, self.lengths, scale, self.tables, **self.extra)
        return self.attention(q, keys, values, self.lengths, scale, **self.extra)

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write k/v [B, T, kv_heads, head_dim]; return what to attend to (`read`)."""
        ck, cv = self.ks[layer], self.vs[layer]
        D = ck.shape[-1]
        ck.view(-1, D).index_put_((self.index,), k.to(ck.dtype))
        cv.view(-1, D).index_put_((self.index,), v.to(cv.dtype))
        return self.read(layer)

    def rotate_and_write(self, layer: int, qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                         heads: int) -> bool:
        """In inference, the fused op (kernels.decode_ops.rope_kv_) for Rotary.apply of the query and key
        heads of qkv [B, T, heads + 2 kv_heads, head_dim] in place plus `update`'s write of its keys and
        values: one call per layer. False (nothing done) where it does not apply; then the caller does both."""
        dtype = self.fused_dtype  # the pools' (checked once for all layers), None: not applicable
        if (dtype is None or qkv.dtype != dtype or cos.dtype != dtype or sin.dtype != dtype or qkv.stride(-1) != 1
                or cos.stride(-1) != 1 or sin.stride(-1) != 1):
            return False
        self.ops.rope_kv_(qkv, cos, sin, heads, self.ks[layer], self.vs[layer], self.index)
        return True

    def read(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """What to attend to after a write: the keys/values [B, kv_heads, span, head_dim], or for a decode
        step in a paged cache the pools themselves (read through the table)."""
        ck, cv = self.ks[layer], self.vs[layer]
        if self.paged:
            if self.lengths is not None:
                return ck, cv
            return gather_blocks(ck, self.tables, self.span), gather_blocks(cv, self.tables, self.span)
        return ck[self.select, :, :self.span], cv[self.select, :, :self.span]


def gather_blocks(pool: torch.Tensor, tables: torch.Tensor, span: int | None = None) -> torch.Tensor:
    """The first `span` positions of each sequence's keys from a pool [blocks, KV, block_size, D] through
    its block table [B, n]: [B, KV, span, D] (a copy)."""
    B, n = tables.shape
    _, KV, bs, D = pool.shape
    keys = pool[tables].transpose(1, 2).reshape(B, KV, n * bs, D)
    return keys if span is None else keys[:, :, :span]


def _visible(span: int, positions: torch.Tensor) -> torch.Tensor:
    """[B, 1, T, span]: True where a query at `positions` [B, T] may see the key at that position."""
    return (torch.arange(span, device=positions.device) <= positions[:, :, None])[:, None]


def _cache_rows(cache_layer: torch.Tensor, tables: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Row of every new key in a layer's cache [blocks, kv_heads, block_size, D] seen as [blocks * kv_heads *
    block_size, D]: index [B, T, kv_heads] (like k's first dims), so one index_put_ writes them all."""
    _, kv_heads, block_size, _ = cache_layer.shape
    heads = torch.arange(kv_heads, device=positions.device)
    if tables.shape[1] == 1:  # one block per sequence (a KVCache): no division
        blocks, offsets = tables.expand_as(positions), positions
    else:
        blocks, offsets = tables.gather(1, positions // block_size), positions % block_size
    return (blocks[:, :, None] * kv_heads + heads) * block_size + offsets[:, :, None]


def _cache_rows_of(cache_layer: torch.Tensor, tables: list[list[int]], positions: list[list[int]],
                   device: torch.device) -> torch.Tensor:
    """_cache_rows from Python lists of the tables and positions (for a few new tokens)."""
    _, kv_heads, block_size, _ = cache_layer.shape
    rows = [[[(table[p // block_size] * kv_heads + h) * block_size + p % block_size for h in range(kv_heads)]
             for p in ps] for table, ps in zip(tables, positions)]
    return torch.tensor(rows, dtype=torch.int64, device=device)


class Attention(nn.Module):
    def __init__(self, config: Phi3Config, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.n_heads, self.n_kv, self.head_dim = config.num_attention_heads, config.num_key_value_heads, config.head_dim
        # Fused projection: rows are Q, then K, then V (Hugging Face Phi-3 layout).
        self.qkv_proj = nn.Linear(config.hidden_size, (self.n_heads + 2 * self.n_kv) * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.n_heads * self.head_dim, config.hidden_size, bias=False)

    def forward(self, x, rotary, cos, sin, step: CacheStep | None = None):
        B, T, _ = x.shape
        H, KV = self.n_heads, self.n_kv
        qkv_proj, o_proj = _submodules(self, "qkv_proj", "o_proj")
        qkv = qkv_proj(x).view(B, T, H + 2 * KV, self.head_dim)
        if step is not None and step.rotate_and_write(self.layer_idx, qkv, cos, sin, H):
            q, keys, values = qkv[:, :, :H], *step.read(self.layer_idx)
        else:
            # Queries and keys are rotated together, in [B, T, heads, head_dim] layout (one op chain).
            qk = rotary.apply(qkv[:, :, :H + KV], cos, sin)
            q, k, v = qk[:, :, :H], qk[:, :, H:], qkv[:, :, H + KV:]
            if step is not None:
                keys, values = step.update(self.layer_idx, k, v)

        if step is None:
            out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                                 is_causal=T > 1, enable_gqa=KV != H).transpose(1, 2)
        else:
            if T == 1:  # decode: SDPA's CPU kernel is slow for a single query
                out = step.attend(q[:, 0], keys, values, self.head_dim ** -0.5)
            else:
                out = F.scaled_dot_product_attention(q.transpose(1, 2), keys.to(q.dtype), values.to(q.dtype),
                                                     attn_mask=step.mask, enable_gqa=KV != H).transpose(1, 2)
        return o_proj(out.reshape(B, T, H * self.head_dim))


class MLP(nn.Module):
    def __init__(self, config: Phi3Config):
        super().__init__()
        # Fused SwiGLU: first half of the rows is the gate, second half "up".
        self.gate_up_proj = nn.Linear(config.hidden_size, 2 * config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x):
        gate_up_proj, down_proj = _submodules(self, "gate_up_proj", "down_proj")
        gate_up = gate_up_proj(x)
        ops = _fused_ops(gate_up)
        if ops is not None:
            return down_proj(ops.swiglu(gate_up.contiguous()))
        gate, up = gate_up.chunk(2, dim=-1)
        return down_proj(up * F.silu(gate))


class DecoderLayer(nn.Module):
    def __init__(self, config: Phi3Config, layer_idx: int):
        super().__init__()
        self.self_attn = Attention(config, layer_idx)
        self.mlp = MLP(config)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, x, rotary, cos, sin, step=None):
        # The attention's residual add and the second norm are one op (fused at decode).
        x, normed = self.post_attention_layernorm(x, self.self_attn(self.input_layernorm(x), rotary, cos, sin, step))
        return x + self.mlp(normed)

    def forward_split(self, delta, x, rotary, cos, sin, step=None):
        """forward(x + delta) as (its MLP output, x + delta + its attention output): the layer's input and
        output both split in two, so that every residual add is fused into the norm after it (the next
        layer's input norm, or the final one). delta None: the input is x. The same values as forward."""
        attn, mlp, norm1, norm2 = _submodules(self, "self_attn", "mlp", "input_layernorm", "post_attention_layernorm")
        x, normed = (x, norm1(x)) if delta is None else norm1(delta, x)
        x, normed = norm2(attn(normed, rotary, cos, sin, step), x)
        return mlp(normed), x

    def fused_decode(self, delta, x, rotary, cos, sin, step: CacheStep):
        """forward_split for a decode step (one new token per sequence) in inference whose step has the
        fused ops (`step.ops`) and pools of x's dtype (`step.fused_dtype`), calling the ops directly: exactly
        what RMSNorm, Attention and MLP do there, without their module calls and per-op checks, which were
        a tenth of a decode step outside the linear kernels. (Hooks on those three modules are not run
        here; the linear layers are called as modules.)"""
        modules = self._modules  # (see _submodules)
        attn, mlp, norm1, norm2 = (modules["self_attn"], modules["mlp"], modules["input_layernorm"],
                                   modules["post_attention_layernorm"])
        w1, w2 = norm1._parameters["weight"], norm2._parameters["weight"]
        if w1.dtype != x.dtype or w2.dtype != x.dtype:
            return self.forward_split(delta, x, rotary, cos, sin, step)
        ops, linears, mlp_linears = step.ops, attn._modules, mlp._modules
        B, H, KV, D = x.shape[0], attn.n_heads, attn.n_kv, attn.head_dim
        x, normed = ops.rms_norm(x.contiguous(), None, w1, norm1.eps) if delta is None else \
            ops.rms_norm(delta.contiguous(), x.contiguous(), w1, norm1.eps)
        qkv = linears["qkv_proj"](normed).view(B, 1, H + 2 * KV, D)
        layer = attn.layer_idx
        if step.rotate_and_write(layer, qkv, cos, sin, H):
            q, keys, values = qkv[:, 0, :H], *step.read(layer)
        else:  # e.g. a projection of another dtype: as Attention.forward
            qk = rotary.apply(qkv[:, :, :H + KV], cos, sin)
            q, (keys, values) = qk[:, 0, :H], step.update(layer, qk[:, :, H:], qkv[:, :, H + KV:])
        out = step.attend(q, keys, values, D ** -0.5)
        x, normed = ops.rms_norm(linears["o_proj"](out.reshape(B, 1, H * D)).contiguous(), x, w2, norm2.eps)
        return mlp_linears["down_proj"](ops.swiglu(mlp_linears["gate_up_proj"](normed).contiguous())), x


class Phi3Model(nn.Module):
    def __init__(self, config: Phi3Config):
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)


class Phi3ForCausalLM(nn.Module):
    def __init__(self, config: Phi3Config):
        super().__init__()
        self.config = config
        self.model = Phi3Model(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.tie_weights()
        self.rotary = Rotary(config)
        # Training switch: recompute each decoder layer in backward instead of keeping its activations.
        self.gradient_checkpointing = False

    def tie_weights(self) -> None:
        self.lm_head.weight = self.model.embed_tokens.weight

    @property
    def device(self) -> torch.device:
        return self.model.embed_tokens.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.embed_tokens.weight.dtype

    def num_parameters(self) -> int:
        return sum(p.numel() for p in {id(p): p for p in self.parameters()}.values())

    def decode(self, input_ids: torch.Tensor, positions: torch.Tensor, ks: list[torch.Tensor],
               vs: list[torch.Tensor], span: int, attention=attention_kernel.reference,
               tables: torch.Tensor | None = None) -> torch.Tensor:
        """One decode step for torch.compile: logits [B, V] of `input_ids` [B, 1] at `positions` [B, 1],
        the sequences' cache blocks given by `tables` [B, blocks] in the pools `ks`/`vs` (PagedKVCache.k/.v),
        or without tables slots 0..B-1 of a KVCache's tensors; `span` = max(positions) + 1, `attention`
        as in forward. The same maths as forward(..., last_only=True)."""
        x = self.model.embed_tokens(input_ids)
        cos, sin = self.rotary.at(positions, x.device, x.dtype)
        step = CacheStep(ks, vs, positions, span=span, attention=attention, tables=tables)
        return self.lm_head(self._cached_layers(x, cos, sin, step, False))[:, -1]

    def _cached_layers(self, x, cos, sin, step: CacheStep, last_only: bool) -> torch.Tensor:
        """The layers and the final norm in inference with a cache, residual adds fused into the norms
        (DecoderLayer.forward_split, or fused_decode)."""
        delta = None
        # A decode step with the fused ops and pools of the activations' dtype: DecoderLayer.fused_decode.
        fused = step.lengths is not None and step.fused_dtype is not None and x.dtype == step.fused_dtype \
            and cos.dtype == x.dtype and sin.dtype == x.dtype
        # A layer in C++ (_NativeLayer) where it computes what fused_decode would: a paged cache read by the
        # attention kernel (the engine's decode step), at most NATIVE_MAX_ROWS rows, no global hooks.
        native = fused and x.shape[0] <= NATIVE_MAX_ROWS and step.paged and not step.extra \
            and step.attention is attention_kernel.ready() and cos.stride(-1) == 1 and sin.stride(-1) == 1 \
            and not _global_hooks()
        for layer in self.model.layers:
            in_cpp = _native(layer, step.ops) if native else None
            if in_cpp is not None and in_cpp.layer is not None:
                delta, x = in_cpp(delta, x, cos, sin, step)
            elif fused:
                delta, x = layer.fused_decode(delta, x, self.rotary, cos, sin, step)
            else:
                delta, x = layer.forward_split(delta, x, self.rotary, cos, sin, step)
        if last_only:
            x = x[:, -1:]
        if delta is None:  # no layers
            return self.model.norm(x)
        return self.model.norm(delta[:, -1:] if last_only else delta, x)[1]

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor | None = None,
                cache=None, slots: torch.Tensor | None = None,
                last_only: bool = False, attention=attention_kernel.reference,
                head=None, tables: torch.Tensor | None = None) -> torch.Tensor:
        """Logits [B, T, V] (or [B, 1, V] with last_only), or `head(hidden, lm_head)` of the final normed
        hidden states when given: training's chunked losses run there, inside the forward, where FSDP
        has lm_head's weights gathered.

        Without a cache: a plain causal forward over `input_ids` (training, scoring).
        With a cache: `positions` [B, T] are the tokens' absolute positions; their sequences own the cache
        blocks `tables` [B, blocks] of a PagedKVCache (kv_cache.py), or the rows `slots` [B] of a KVCache;
        new keys/values are written there before attending. A decode step
        (T = 1) attends with `attention` (see CacheStep): the torch reference unless the caller (the
        engine) passes the kernel; nothing else in the process changes which one runs.
        """
        B, T = input_ids.shape
        if positions is None:
            positions = torch.arange(T, device=input_ids.device).expand(B, T)
        if cache is not None and slots is None and tables is None:
            slots = torch.arange(B, device=input_ids.device)
        x = self.model.embed_tokens(input_ids)
        cos, sin = self.rotary.at(positions, x.device, x.dtype)
        step = (CacheStep(cache.k, cache.v, positions, slots, attention=attention, tables=tables)
                if cache is not None else None)
        if step is not None and not torch.is_grad_enabled():
            x = self._cached_layers(x, cos, sin, step, last_only)
            return head(x, self.lm_head) if head is not None else self.lm_head(x)
        recompute = self.gradient_checkpointing and step is None and torch.is_grad_enabled()
        for layer in self.model.layers:
            if recompute:
                x = checkpoint(layer, x, self.rotary, cos, sin, use_reentrant=False)
            else:
                x = layer(x, self.rotary, cos, sin, step)
        if last_only:
            x = x[:, -1:]
        x = self.model.norm(x)
        return head(x, self.lm_head) if head is not None else self.lm_head(x)
