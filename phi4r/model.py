"""The Phi-3 / Phi-4 decoder (Hugging Face `Phi3ForCausalLM`), readable top to bottom.

Parameter names match Hugging Face's exactly, so a checkpoint's state dict loads as it is.
One forward serves training (plain causal attention over the whole sequence) and the engine
(incremental decoding into a preallocated `KVCache`, many sequences at different positions).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .config import Phi3Config
from .kernels import attention as attention_kernel


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
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

    def apply(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """x: [B, T, heads, head_dim]; cos/signed sin: [B, T, 1, rotary_dim]. Bit-identical to
        x * cos + cat(-x2, x1) * sin (negation is exact)."""
        if self.dim == x.shape[-1]:
            return x * cos + x.roll(self.dim // 2, -1) * sin
        rot, rest = x[..., : self.dim], x[..., self.dim :]
        return torch.cat((rot * cos + rot.roll(self.dim // 2, -1) * sin, rest), dim=-1)


class KVCache:
    """Preallocated keys/values, one row ("slot") per running sequence.

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

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.k + self.v)


class CacheStep:
    """One forward's view of the cache, worked out once for all layers: where each new key goes,
    which keys each query may see, and how to read a batch's cache rows."""

    def __init__(self, cache: KVCache, positions: torch.Tensor, slots: torch.Tensor):
        B, T = positions.shape
        self.cache = cache
        # One host sync for the whole forward (not one per .item() per question below).
        pos, rows = positions.tolist(), slots.tolist()
        high, low = max(max(p) for p in pos), min(min(p) for p in pos)
        self.span = high + 1
        # Sequences in consecutive slots are read through a view; others need a gathered copy.
        self.select = slice(rows[0], rows[0] + B) if rows == list(range(rows[0], rows[0] + B)) else slots
        # Each query sees keys of its own sequence at positions up to its own. When every key in the
        # span is visible (one decode position for the whole batch) no mask is needed.
        if T == 1 and low == high:
            self.mask = None
        else:
            self.mask = _visible(self.span, positions)
        self.lengths = positions[:, -1] + 1 if T == 1 else None  # keys each query sees (decode only)
        self.index = _cache_rows(cache.k[0], slots, positions)

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write k/v [B, T, kv_heads, head_dim]; return the keys/values [B, kv_heads, span, head_dim] to attend to."""
        ck, cv = _write_kv(self.cache.k[layer], self.cache.v[layer], self.index, k, v)
        return ck[self.select, :, :self.span], cv[self.select, :, :self.span]

    def attention(self, q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        return _decode_attention(q, keys, values, self.mask, self.lengths)


class DecodeStep:
    """The cache view of a decode step (one new token per sequence) with no host syncs, for a
    compiled step (`Phi3ForCausalLM.decode`): the batch's sequences own slots 0..B-1 (the engine
    compacts them there), and each query attends over the first `span` positions of the cache with
    a mask (positions past its own). `span` is a plain int: torch.compile makes it a dynamic size
    after the first value that differs, so a growing span does not recompile."""

    def __init__(self, ks: list[torch.Tensor], vs: list[torch.Tensor], positions: torch.Tensor, span: int):
        self.ks, self.vs, self.B, self.span = ks, vs, positions.shape[0], span
        self.mask = _visible(span, positions)
        self.lengths = positions[:, 0] + 1
        self.index = _cache_rows(ks[0], torch.arange(self.B, device=positions.device), positions)

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ck, cv = _write_kv(self.ks[layer], self.vs[layer], self.index, k, v)
        return ck[:self.B, :, :self.span], cv[:self.B, :, :self.span]

    def attention(self, q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """The C++ kernel as an op in the graph where it applies (`_kernel_attention`). Otherwise
        `_decode_attention` written as broadcast products and sums, which inductor fuses with the
        fp32 conversion of the cache (no fp32 copy of K/V, no bmm calls), and the softmax's division
        applied to the [heads, head_dim] result instead of every weight. fp32 like the eager path;
        only the rounding order differs."""
        out = _kernel_attention(q, keys, values, self.lengths)
        if out is not None:
            return out
        B, _, H, D = q.shape
        KV, L = keys.shape[1], keys.shape[2]
        qf = q.float().reshape(B, KV, H // KV, 1, D)
        scores = (qf * keys[:, :, None].float()).sum(-1) * D ** -0.5  # [B, KV, H // KV, L]
        scores = scores.masked_fill(~self.mask.reshape(B, 1, 1, L), float("-inf"))
        e = (scores - scores.amax(-1, keepdim=True)).exp()
        out = (e[..., None] * values[:, :, None].float()).sum(-2) / e.sum(-1)[..., None]  # [B, KV, H // KV, D]
        return out.to(q.dtype).reshape(B, H, 1, D)


def _visible(span: int, positions: torch.Tensor) -> torch.Tensor:
    """[B, 1, T, span]: True where a query at `positions` [B, T] may see the key at that position."""
    return (torch.arange(span, device=positions.device) <= positions[:, :, None])[:, None]


def _cache_rows(cache_layer: torch.Tensor, slots: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Row of every new key in a layer's cache [slots, kv_heads, max_len, D] seen as [slots * kv_heads *
    max_len, D]: index [B, T, kv_heads] (like k's first dims), so one index_put_ writes them all."""
    _, kv_heads, max_len, _ = cache_layer.shape
    heads = torch.arange(kv_heads, device=positions.device)
    return (slots[:, None, None] * kv_heads + heads) * max_len + positions[:, :, None]


def _write_kv(ck: torch.Tensor, cv: torch.Tensor, index: torch.Tensor, k: torch.Tensor,
              v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Write k/v [B, T, kv_heads, D] into one layer's cache tensors at `index` (_cache_rows); returns them."""
    D = ck.shape[-1]
    ck.view(-1, D).index_put_((index,), k.to(ck.dtype))
    cv.view(-1, D).index_put_((index,), v.to(cv.dtype))
    return ck, cv


def _decode_attention(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
                      mask: torch.Tensor | None, lengths: torch.Tensor | None = None) -> torch.Tensor:
    """Attention of one query per sequence, with the softmax in fp32.

    q: [B, 1, H, D]; keys/values: [B, KV, span, D]; mask: None or [B, 1, 1, span] (True: visible);
    lengths: None or [B], the number of leading positions each query sees (the mask's True prefix).
    Returns [B, H, 1, D] like SDPA, in q's dtype. The same maths as SDPA with enable_gqa (query head
    h reads KV head h // (H / KV)), but SDPA's CPU kernel is slow for a single query (bf16 batch 16:
    4.4 ms per layer against 0.55 ms here). With lengths, the C++ kernel where it applies
    (`_kernel_attention`). Otherwise two grouped matmuls, all in fp32: bf16 bmm of these small shapes
    is 2x slower on CPU than converting q/K/V and multiplying in fp32 (one layer, batch 1, 160
    positions: 91 vs 42 us), and more accurate.
    """
    out = _kernel_attention(q, keys, values, lengths)
    if out is not None:
        return out
    B, _, H, D = q.shape
    KV, span = keys.shape[1], keys.shape[2]
    dtype = q.dtype
    q = q.reshape(B * KV, H // KV, D).float()
    # [B, KV] merge into one batch dim as a view, also for a slice of the cache's rows and positions.
    scores = torch.bmm(q, keys.float().reshape(B * KV, span, D).transpose(1, 2)).mul_(D ** -0.5)
    if mask is not None:
        scores.view(B, KV, -1, span).masked_fill_(~mask.reshape(B, 1, 1, span), float("-inf"))
    out = torch.bmm(scores.softmax(-1), values.float().reshape(B * KV, span, D))
    return out.to(dtype).view(B, H, 1, D)


def _kernel_attention(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
                      lengths: torch.Tensor | None) -> torch.Tensor | None:
    """`_decode_attention` by phi4r's AVX-512 kernel (phi4r/kernels/attention.py: fp32 sums and softmax;
    bf16 batch 16, 150 positions, one thread: 0.17 ms per layer against 0.56 ms for inductor's fusion of
    the Python path), or None where it does not apply: no lengths, CUDA, a head dim or dtype it lacks,
    autograd, or no kernel decided in this process (the engine decides: attention.prepare or .kernel)."""
    if (lengths is None or not attention_kernel.supports(q, keys, values)
            or (torch.is_grad_enabled() and (q.requires_grad or keys.requires_grad or values.requires_grad))):
        return None
    # torch.compile's graphs call it through the dispatcher (an opaque op in the graph).
    fn = attention_kernel.op() if torch.compiler.is_compiling() else attention_kernel.ready()
    if fn is None:
        return None
    D = q.shape[-1]
    return fn(q[:, 0], keys, values, lengths, D ** -0.5).unsqueeze(2)


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
        qkv = self.qkv_proj(x).view(B, T, H + 2 * KV, self.head_dim)
        # Queries and keys are rotated together, in [B, T, heads, head_dim] layout (one op chain).
        qk = rotary.apply(qkv[:, :, :H + KV], cos, sin)
        q, k, v = qk[:, :, :H], qk[:, :, H:], qkv[:, :, H + KV:]

        if step is None:
            out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                                 is_causal=T > 1, enable_gqa=KV != H)
        else:
            keys, values = step.update(self.layer_idx, k, v)
            if T == 1:
                out = step.attention(q, keys, values)
            else:
                out = F.scaled_dot_product_attention(q.transpose(1, 2), keys.to(q.dtype), values.to(q.dtype),
                                                     attn_mask=step.mask, enable_gqa=KV != H)
        return self.o_proj(out.transpose(1, 2).reshape(B, T, H * self.head_dim))


class MLP(nn.Module):
    def __init__(self, config: Phi3Config):
        super().__init__()
        # Fused SwiGLU: first half of the rows is the gate, second half "up".
        self.gate_up_proj = nn.Linear(config.hidden_size, 2 * config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x):
        gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        return self.down_proj(up * F.silu(gate))


class DecoderLayer(nn.Module):
    def __init__(self, config: Phi3Config, layer_idx: int):
        super().__init__()
        self.self_attn = Attention(config, layer_idx)
        self.mlp = MLP(config)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, x, rotary, cos, sin, step=None):
        x = x + self.self_attn(self.input_layernorm(x), rotary, cos, sin, step)
        return x + self.mlp(self.post_attention_layernorm(x))


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
               vs: list[torch.Tensor], span: int) -> torch.Tensor:
        """One decode step for torch.compile: logits [B, V] of `input_ids` [B, 1] at `positions` [B, 1],
        the sequences in cache slots 0..B-1 of the cache tensors `ks`/`vs` (KVCache.k/.v), `span` =
        max(positions) + 1. The same maths as forward(..., last_only=True) up to rounding order."""
        x = self.model.embed_tokens(input_ids)
        cos_t, sin_t = self.rotary.tables(x.device, x.dtype)
        cos, sin = cos_t[positions][:, :, None], sin_t[positions][:, :, None]
        step = DecodeStep(ks, vs, positions, span)
        for layer in self.model.layers:
            x = layer(x, self.rotary, cos, sin, step)
        return self.lm_head(self.model.norm(x))[:, -1]

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor | None = None,
                cache: KVCache | None = None, slots: torch.Tensor | None = None,
                last_only: bool = False, head=None) -> torch.Tensor:
        """Logits [B, T, V] (or [B, 1, V] with last_only), or `head(hidden, lm_head)` of the final normed
        hidden states when given: training's chunked losses run there, inside the forward, where FSDP
        has lm_head's weights gathered.

        Without a cache: a plain causal forward over `input_ids` (training, scoring).
        With a cache: `positions` [B, T] are the tokens' absolute positions, `slots` [B] the cache
        rows their sequences own; new keys/values are written there before attending.
        """
        B, T = input_ids.shape
        if positions is None:
            positions = torch.arange(T, device=input_ids.device).expand(B, T)
        if cache is not None and slots is None:
            slots = torch.arange(B, device=input_ids.device)
        x = self.model.embed_tokens(input_ids)
        cos_t, sin_t = self.rotary.tables(x.device, x.dtype)
        cos, sin = cos_t[positions][:, :, None], sin_t[positions][:, :, None]
        step = CacheStep(cache, positions, slots) if cache is not None else None
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
