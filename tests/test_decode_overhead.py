"""The decode hot path's cheaper formulations against the plain formulas they stand for: same bits
where the maths is the same, close where only rounding changed."""
import pytest
import torch
import torch.nn.functional as F

from phi4r.config import Phi3Config
from phi4r.kernels.attention import reference
from phi4r.model import CacheStep, KVCache, Phi3ForCausalLM, RMSNorm, Rotary


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rms_norm_bit_identical_to_the_reference_formula(dtype):
    torch.manual_seed(0)
    norm = RMSNorm(300, 1e-5).to(dtype)
    torch.nn.init.normal_(norm.weight)
    x = (torch.randn(3, 5, 300) * 7).to(dtype)
    xf = x.float()
    ref = norm.weight * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + 1e-5)).to(dtype)  # Hugging Face's
    assert torch.equal(norm(x), ref)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("partial", [1.0, 0.5])
def test_rope_bit_identical_to_rotate_half(dtype, partial):
    config = Phi3Config(hidden_size=64, num_attention_heads=2, num_key_value_heads=1, partial_rotary_factor=partial,
                        max_position_embeddings=64, rope_theta=10000.0)
    rotary, dim = Rotary(config), config.rotary_dim
    cos, signed_sin = rotary.tables(torch.device("cpu"), dtype)
    inv = 1.0 / (10000.0 ** (torch.arange(0, dim, 2).float() / dim))
    emb = torch.outer(torch.arange(64).float(), inv).repeat(1, 2)
    sin = emb.sin().to(dtype)
    assert torch.equal(cos, emb.cos().to(dtype))
    pos = torch.tensor([[3, 17, 63]])
    x = torch.randn(1, 3, 4, config.head_dim).to(dtype)
    rot, rest = x[..., :dim], x[..., dim:]
    half = torch.cat((-rot[..., dim // 2:], rot[..., :dim // 2]), -1)
    ref = torch.cat((rot * cos[pos][:, :, None] + half * sin[pos][:, :, None], rest), -1)
    assert torch.equal(rotary.apply(x, cos[pos][:, :, None], signed_sin[pos][:, :, None]), ref)


def test_cache_write_lands_where_advanced_indexing_puts_it():
    config = Phi3Config(hidden_size=32, num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=1,
                        max_position_embeddings=64)
    for slots, positions in (([3, 0, 5], [[7], [2], [11]]), ([1], [[4, 5, 6, 7]])):
        slots, positions = torch.tensor(slots), torch.tensor(positions)
        cache, ref = KVCache(config, 6, 16), torch.zeros(6, 2, 16, config.head_dim)
        k = torch.randn(*positions.shape, 2, config.head_dim)
        step = CacheStep(cache.k, cache.v, positions, slots)
        keys, _ = step.update(0, k, k)
        ref[slots[:, None].expand_as(positions), :, positions] = k
        assert torch.equal(cache.k[0], ref) and torch.equal(cache.v[0], ref)
        assert keys.shape == (len(slots), 2, int(positions.max()) + 1, config.head_dim)
        assert (step.mask is None) == (positions.shape[1] == 1)  # decode attends over `lengths` keys


def test_cache_rows_from_python_ints_equal_the_torch_formula():
    from phi4r.model import _cache_rows, _cache_rows_of

    gen = torch.Generator().manual_seed(0)
    for blocks, kv, bs, width in ((40, 4, 16, 5), (7, 1, 64, 1), (30, 2, 4, 7)):
        pool = torch.empty(blocks, kv, bs, 8)
        tables = torch.stack([torch.randperm(blocks, generator=gen)[:width] for _ in range(3)])
        positions = torch.randint(0, width * bs, (3, 1), generator=gen)
        assert torch.equal(_cache_rows_of(pool, tables.tolist(), positions.tolist(), positions.device),
                           _cache_rows(pool, tables, positions))


def test_rotary_rows_equal_advanced_indexing():
    config = Phi3Config(hidden_size=64, num_attention_heads=2, num_key_value_heads=1, partial_rotary_factor=0.5,
                        max_position_embeddings=64)
    rotary = Rotary(config)
    cos_t, sin_t = rotary.tables(torch.device("cpu"), torch.bfloat16)
    positions = torch.tensor([[3, 4, 5], [63, 0, 1]])
    for pos in (positions, positions[:, :1], torch.tensor([[9, 1]])[:, 1:]):  # the engine's strided column
        cos, sin = rotary.at(pos, torch.device("cpu"), torch.bfloat16)
        assert torch.equal(cos, cos_t[pos][:, :, None]) and torch.equal(sin, sin_t[pos][:, :, None])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_decode_attention_in_fp32_matches_sdpa(dtype):
    torch.manual_seed(0)
    B, H, KV, D, S = 3, 8, 2, 16, 11
    q, k, v = (t.to(dtype) for t in (torch.randn(B, H, D), torch.randn(B, KV, S, D), torch.randn(B, KV, S, D)))
    # keys as a slice of a bigger cache (rows and positions), as the engine passes them
    big_k, big_v = torch.zeros(B + 2, KV, S + 5, D, dtype=dtype), torch.zeros(B + 2, KV, S + 5, D, dtype=dtype)
    big_k[1:B + 1, :, :S], big_v[1:B + 1, :, :S] = k, v
    for lengths in (torch.tensor([11, 5, 8]), torch.tensor([S] * B)):
        mask = (torch.arange(S) < lengths[:, None, None])[:, None]
        ref = F.scaled_dot_product_attention(q[:, :, None].float(), k.float(), v.float(), attn_mask=mask,
                                             enable_gqa=True)[:, :, 0]
        got = reference(q, big_k[1:B + 1, :, :S], big_v[1:B + 1, :, :S], lengths, D ** -0.5)
        assert got.dtype == dtype and got.shape == (B, H, D)
        assert (got.float() - ref).abs().max() <= (1e-5 if dtype == torch.float32 else 2 ** -7)


def test_training_forward_still_has_gradients():
    config = Phi3Config(vocab_size=50, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                        num_key_value_heads=2, max_position_embeddings=32, partial_rotary_factor=0.5)
    model = Phi3ForCausalLM(config)
    ids = torch.randint(0, 50, (2, 9))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = F.cross_entropy(model(ids)[:, :-1].flatten(0, 1).float(), ids[:, 1:].flatten())
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
    assert grads["model.layers.0.input_layernorm.weight"].abs().sum() > 0


def test_int8_kernel_takes_leading_dims():
    from phi4r.kernels import int8

    kernel = int8.linear()
    if kernel is None:
        pytest.skip("no int8 kernel on this machine")
    torch.manual_seed(0)
    q = torch.randint(-127, 128, (45, 83), dtype=torch.int8)
    scales = (torch.rand(45) / 100).to(torch.bfloat16)
    for dtype in (torch.bfloat16, torch.float32):
        x = torch.randn(2, 3, 83).to(dtype)
        assert torch.equal(kernel(x, q, scales), kernel(x.reshape(6, 83), q, scales).reshape(2, 3, 45))
        assert kernel(x[0, 0], q, scales).shape == (45,)
