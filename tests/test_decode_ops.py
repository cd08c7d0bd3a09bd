"""The fused decode ops (phi4r/kernels/decode_ops.cpp) against the torch formulas they replace, and a
model's logits with and without them."""
import os
import sys

import pytest
import torch

from phi4r.config import Phi3Config
from phi4r.kernels import decode_ops
from phi4r.model import KVCache, Phi3ForCausalLM

KERNEL = (decode_ops, decode_ops.get, "decode ops")  # the `kernel` fixture (conftest.py) builds and probes it
DTYPES = [torch.float32, torch.bfloat16]


def ulps_apart(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """How many representable values of their dtype lie between a and b (same signs assumed near 0)."""
    bits = {torch.float32: torch.int32, torch.bfloat16: torch.int16}[a.dtype]
    return (a.view(bits).long() - b.view(bits).long()).abs()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 1, 768), (1, 1, 45), (2, 3, 130), (100, 1, 768)])  # tails; 100 rows: threaded
def test_add_rms_norm(kernel, dtype, shape):
    gen = torch.Generator().manual_seed(shape[-1])
    x, r = (torch.randn(shape, generator=gen) * 5).to(dtype), torch.randn(shape, generator=gen).to(dtype)
    w = torch.randn(shape[-1], generator=gen).to(dtype)
    for residual in (None, r):
        h, y = kernel.rms_norm(x, residual, w, 1e-5)
        ref_h, ref_y = decode_ops.reference_rms_norm(x, residual, w, 1e-5)
        assert torch.equal(h, ref_h)  # the residual add rounds as torch's add
        assert y.dtype == dtype and y.shape == x.shape
        # Only the fp32 statistics' summation order differs: at most one step of the output's rounding,
        # and for almost every element none.
        apart = ulps_apart(y, ref_y)
        assert apart.max() <= (1 if dtype == torch.bfloat16 else 4)
        assert (apart == 0).float().mean() >= (0.98 if dtype == torch.bfloat16 else 0.5)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("heads,kv,D,R", [(12, 4, 64, 64), (8, 2, 128, 128), (4, 2, 96, 48), (3, 1, 40, 20)])
def test_rope_in_place_bit_identical(kernel, dtype, heads, kv, D, R):
    gen = torch.Generator().manual_seed(D + R)
    B, T = 3, 2
    qkv = torch.randn(B, T, heads + 2 * kv, D, generator=gen).to(dtype)
    cos, sin = (torch.randn(B, T, 1, R, generator=gen).to(dtype) for _ in range(2))
    qk = qkv[:, :, :heads + kv]  # the strided view the attention rotates
    ref = decode_ops.reference_rope(qk, cos, sin)
    v = qkv[:, :, heads + kv:].clone()
    assert kernel.rope_(qk, cos, sin) is qk
    assert torch.equal(qk, ref)
    assert torch.equal(qkv[:, :, heads + kv:], v)  # values untouched


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 1, 3072), (2, 5, 45), (64, 1, 3072)])
def test_swiglu(kernel, dtype, shape):
    gen = torch.Generator().manual_seed(shape[-1])
    gu = (torch.randn(*shape[:-1], 2 * shape[-1], generator=gen) * 4).to(dtype)
    got, ref = kernel.swiglu(gu), decode_ops.reference_swiglu(gu)
    assert got.dtype == dtype and got.shape == ref.shape
    apart = ulps_apart(got, ref)
    # silu's exp is a polynomial here, libm-grade in torch: a rounding step apart at most
    assert apart.max() <= (1 if dtype == torch.bfloat16 else 8)
    assert (apart == 0).float().mean() >= (0.95 if dtype == torch.bfloat16 else 0.3)


def test_swiglu_extremes(kernel):
    gate = torch.tensor([-200.0, -100.0, -88.0, -20.0, 0.0, 20.0, 88.0, 100.0, 1e30, float("inf"), float("-inf")])
    gu = torch.cat((gate, torch.full_like(gate, 2.0)))
    got, ref = kernel.swiglu(gu), decode_ops.reference_swiglu(gu)
    assert torch.allclose(got, ref, rtol=1e-6, atol=0, equal_nan=True), (got, ref)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("heads,kv,D,R", [(12, 4, 64, 64), (8, 2, 128, 128), (4, 2, 96, 48), (3, 1, 40, 20)])
@pytest.mark.parametrize("B,T", [(1, 1), (3, 1), (2, 5)])
def test_rope_kv_bit_identical_to_rope_and_index_put(kernel, dtype, heads, kv, D, R, B, T):
    gen = torch.Generator().manual_seed(D + R + B + T)
    qkv = torch.randn(B, T, heads + 2 * kv, D, generator=gen).to(dtype)
    cos, sin = (torch.randn(B, T, 1, R, generator=gen).to(dtype) for _ in range(2))
    # paged pools [blocks, kv, block_size, D] with old contents, the new rows scattered (as model._cache_rows)
    k_pool, v_pool = (torch.randn(9, kv, 4, D, generator=gen).to(dtype) for _ in range(2))
    rows = torch.randperm(9 * kv * 4, generator=gen)[:B * T * kv].view(B, T, kv)
    ref_qkv, ref_k, ref_v = qkv.clone(), k_pool.clone(), v_pool.clone()
    decode_ops.reference_rope_kv(ref_qkv, cos, sin, heads, ref_k, ref_v, rows)
    assert kernel.rope_kv_(qkv, cos, sin, heads, k_pool, v_pool, rows) is None
    assert torch.equal(qkv, ref_qkv) and torch.equal(k_pool, ref_k) and torch.equal(v_pool, ref_v)


def test_rope_kv_refuses_bad_rows_and_pools(kernel):
    qkv, cos = torch.randn(1, 1, 4, 16), torch.randn(1, 1, 1, 16)
    pool = torch.zeros(2, 1, 4, 16)
    with pytest.raises(RuntimeError, match="out of range"):
        kernel.rope_kv_(qkv, cos, cos, 2, pool, pool.clone(), torch.tensor([[[8]]]))
    with pytest.raises(RuntimeError, match="out of range"):
        kernel.rope_kv_(qkv, cos, cos, 2, pool, pool.clone(), torch.tensor([[[-1]]]))
    with pytest.raises(RuntimeError, match="pools"):
        kernel.rope_kv_(qkv, cos, cos, 2, pool.bfloat16(), pool.clone(), torch.tensor([[[0]]]))
    with pytest.raises(RuntimeError, match="rows int64"):
        kernel.rope_kv_(qkv, cos, cos, 2, pool, pool.clone(), torch.tensor([[[0, 1]]]))
    before = qkv.clone()
    with pytest.raises(RuntimeError):
        kernel.rope_kv_(qkv, cos, cos, 2, pool, pool.clone(), torch.tensor([[[8]]]))
    assert torch.equal(qkv, before)  # checked before anything is written


@pytest.mark.parametrize("dtype", DTYPES)
def test_argmax_is_torch_argmax_and_flags_nan_and_inf(kernel, dtype):
    gen = torch.Generator().manual_seed(3)
    for V in (1, 5, 16, 17, 100, 100352):
        logits = torch.randn(3, V, generator=gen).to(dtype)
        assert kernel.argmax(logits) == (logits.argmax(-1).tolist(), True)
    # ties: the first index, also across vector lanes and in the tail
    logits = torch.zeros(5, 1000, dtype=dtype)
    logits[0, [3, 19, 999]] = 7
    logits[1, [998, 999]] = 7
    logits[2] = float("-inf")  # a fully masked row: 0, as torch
    logits[3, [40, 24]] = -1  # all others 0: the first 0 wins
    logits[4, [40, 64, 130]] = 7  # a later vector's lane 0 holds an equal value: still the first
    assert kernel.argmax(logits) == ([3, 998, 0, 0, 40], True)
    assert logits.argmax(-1).tolist() == [3, 998, 0, 0, 40]
    for bad in (float("nan"), float("inf")):
        for where in (0, 500, 999):
            odd = torch.randn(2, 1000, generator=gen).to(dtype)
            odd[1, where] = bad
            assert kernel.argmax(odd)[1] is False
    odd = torch.randn(1, 1000, generator=gen).to(dtype)
    odd[0, 7] = float("-inf")
    assert kernel.argmax(odd) == (odd.argmax(-1).tolist(), True)


def test_clear_errors(kernel):
    x = torch.randn(1, 1, 16)
    with pytest.raises(RuntimeError, match="fp32 or bf16"):
        kernel.rms_norm(x.double(), None, torch.ones(16, dtype=torch.float64), 1e-5)
    with pytest.raises(RuntimeError, match="weight"):
        kernel.rms_norm(x, None, torch.ones(8), 1e-5)
    with pytest.raises(RuntimeError, match="even rotary dim"):
        kernel.rope_(torch.randn(1, 1, 2, 16), torch.randn(1, 1, 1, 18), torch.randn(1, 1, 1, 18))
    with pytest.raises(RuntimeError, match=r"\[\.\.\., 2I\]"):
        kernel.swiglu(torch.randn(3, 7))


def _model(dtype):
    config = Phi3Config(vocab_size=300, hidden_size=96, intermediate_size=200, num_hidden_layers=3,
                        num_attention_heads=6, num_key_value_heads=2, max_position_embeddings=64,
                        partial_rotary_factor=0.75)
    torch.manual_seed(0)
    model = Phi3ForCausalLM(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.2 if p.dim() > 1 else 1.0)
    return model.to(dtype)


def _decode_logits(model, dtype):
    """Prefill 7 tokens of 2 sequences, then 5 decode steps: every step's logits."""
    gen = torch.Generator().manual_seed(1)
    cache = KVCache(model.config, 2, 32, dtype=dtype)
    ids = torch.randint(0, 300, (2, 7), generator=gen)
    out = []
    with torch.inference_mode():
        logits = model(ids, cache=cache)[:, -1:]
        out.append(logits)
        for pos in range(7, 12):
            nxt = logits.float().argmax(-1)
            logits = model(nxt, positions=torch.full((2, 1), pos), cache=cache, last_only=True)
            out.append(logits)
    return torch.cat(out, 1).float()


class _Counting:
    """The kernel module, counting calls to its functions."""

    def __init__(self, module):
        self.module, self.calls = module, 0

    def __getattr__(self, name):
        fn = getattr(self.module, name)

        def counted(*args):
            self.calls += 1
            return fn(*args)
        return counted


@pytest.mark.parametrize("dtype", DTYPES)
def test_model_logits_with_and_without_the_kernel(kernel, monkeypatch, dtype):
    model = _model(dtype)
    counting = _Counting(kernel)
    monkeypatch.setattr(decode_ops, "ops", lambda: counting)
    fused = _decode_logits(model, dtype)
    assert counting.calls >= 6 * 3 * 4  # 2 norms, rope, swiglu per layer and forward (+ the final norm)
    monkeypatch.setattr(decode_ops, "ops", lambda: None)
    plain = _decode_logits(model, dtype)
    if dtype == torch.float32:
        assert torch.allclose(fused, plain, rtol=0, atol=1e-4 * plain.abs().max())
    else:  # bf16: an occasional rounding step apart in a norm or silu, carried through 3 layers
        assert (fused - plain).abs().max() <= 0.05 * plain.abs().max()
        assert (fused.argmax(-1) == plain.argmax(-1)).float().mean() >= 0.8


@pytest.mark.parametrize("dtype", DTYPES)
def test_cached_forward_bit_identical_to_the_layer_by_layer_path(kernel, monkeypatch, dtype):
    """The engine's forward (residual adds fused into the next norm, rope and the cache write in one op)
    against the same model run through DecoderLayer.forward with a separate rope and index_put_ write:
    the same bits, prefill and decode, per-sequence and paged caches."""
    from phi4r import model as model_module
    from phi4r.kv_cache import PagedKVCache

    model = _model(dtype)

    def layer_by_layer(self, x, cos, sin, step, last_only):
        monkeypatch.setattr(step, "rotate_and_write", lambda *args: False)
        for layer in self.model.layers:
            x = layer(x, self.rotary, cos, sin, step)
        return self.model.norm(x[:, -1:] if last_only else x)

    def run(paged):
        gen = torch.Generator().manual_seed(1)
        ids = torch.randint(0, 300, (2, 7), generator=gen)
        out = []
        with torch.inference_mode():
            if paged:
                cache = PagedKVCache(model.config, 8, 4, dtype=dtype)
                tables = torch.tensor([[5, 1, 7, 2], [0, 3, 6, 4]])
                out.append(model(ids, cache=cache, tables=tables))
            else:
                cache, tables = KVCache(model.config, 3, 32, dtype=dtype), None
                out.append(model(ids, cache=cache, slots=torch.tensor([2, 0])))
            for pos in range(7, 12):
                nxt = out[-1][:, -1:].float().argmax(-1)
                kw = {"tables": tables} if paged else {"slots": torch.tensor([2, 0])}
                out.append(model(nxt, positions=torch.tensor([[pos], [pos - 2]]), cache=cache, last_only=True, **kw))
        return torch.cat(out, 1), cache

    fused_layer, calls = model_module.DecoderLayer.fused_decode, []
    monkeypatch.setattr(model_module.DecoderLayer, "fused_decode", lambda *args: calls.append(1) or fused_layer(*args))
    for paged in (False, True):
        calls.clear()
        fused, fused_cache = run(paged)
        assert len(calls) == 5 * 3  # every decode step's layers took the fused path
        with monkeypatch.context() as m:
            m.setattr(model_module.Phi3ForCausalLM, "_cached_layers", layer_by_layer)
            plain, plain_cache = run(paged)
        with monkeypatch.context() as m:  # the fused layer's fallback when rope_kv_ does not apply
            m.setattr(model_module.CacheStep, "rotate_and_write", lambda *args: False)
            fallback, _ = run(paged)
        assert torch.equal(fused, plain) and torch.equal(fallback, plain)
        assert all(torch.equal(a, b) for a, b in zip(fused_cache.k + fused_cache.v, plain_cache.k + plain_cache.v))


def test_not_used_with_autograd(kernel, monkeypatch):
    model = _model(torch.float32)
    counting = _Counting(kernel)
    monkeypatch.setattr(decode_ops, "ops", lambda: counting)
    loss = model(torch.randint(0, 300, (2, 9))).logsumexp(-1).mean()
    loss.backward()
    assert counting.calls == 0
    assert model.model.layers[0].post_attention_layernorm.weight.grad.abs().sum() > 0
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        model(torch.randint(0, 300, (1, 4)))
    assert counting.calls == 0


def test_env_var_turns_it_off(processes):
    code = "from phi4r.kernels import decode_ops; print(decode_ops.ops() is None, decode_ops.get() is None)"
    env = dict(os.environ, PHI4R_DECODE_OPS_KERNEL="0", PYTHONPATH=os.pathsep.join(sys.path))
    out = processes.run([sys.executable, "-c", code], 120, env=env)
    assert out.stdout.split() == ["True", "True"], out.stderr


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("method", ["int4", "int8", "w8a8"])
def test_native_layer_bit_identical_to_fused_decode(kernel, monkeypatch, method, dtype):
    """The engine's decode step (paged cache, attention kernel) runs each layer of int4/int8/w8a8
    projections as one C++ call (model._NativeLayer): the same bits as DecoderLayer.fused_decode, which
    it replaces; a projection's forward hook or replacement, or a replaced norm weight, still takes effect."""
    from torch import nn

    from phi4r import model as model_module
    from phi4r.kernels import attention, int4, int8, w8a8
    from phi4r.kv_cache import PagedKVCache
    from phi4r.quant import quantize_int8, quantize_w8a8
    from phi4r.quant_int4 import quantize_int4

    loader, quantize = {"int4": (int4.linear, quantize_int4), "int8": (int8.linear, quantize_int8),
                        "w8a8": (w8a8.linear, quantize_w8a8)}[method]
    if loader() is None or attention.kernel() is None:
        pytest.skip(f"no {method} or attention kernel on this machine")
    model = quantize(_model(dtype))
    config = model.config

    def run():
        gen = torch.Generator().manual_seed(1)
        cache, tables = PagedKVCache(config, 4, 16, dtype=dtype), torch.tensor([[3, 1], [0, 2]])
        step = {"cache": cache, "tables": tables, "attention": attention.ready()}
        with torch.inference_mode():
            out = [model(torch.randint(0, 300, (2, 7), generator=gen), **step)[:, -1:]]
            for pos in range(7, 12):
                nxt = out[-1].float().argmax(-1)
                out.append(model(nxt, positions=torch.tensor([[pos], [pos - 2]]), last_only=True, **step))
        return torch.cat(out, 1), cache

    fused_layer, fused_calls = model_module.DecoderLayer.fused_decode, []
    monkeypatch.setattr(model_module.DecoderLayer, "fused_decode",
                        lambda *args: fused_calls.append(1) or fused_layer(*args))
    native, native_cache = run()
    assert fused_calls == []  # every decode step's layers ran in C++
    with monkeypatch.context() as m:
        m.setattr(model_module, "NATIVE_MAX_ROWS", 0)
        fused, fused_cache = run()
    assert len(fused_calls) == 5 * config.num_hidden_layers
    assert torch.equal(native, fused)
    assert all(torch.equal(a, b) for a, b in zip(native_cache.k + native_cache.v, fused_cache.k + fused_cache.v))

    layer = model.model.layers[1]
    seen = []
    handle = layer.self_attn.o_proj.register_forward_hook(lambda mod, args, out: seen.append(args[0].shape) or out * 0)
    hooked, _ = run()
    handle.remove()
    assert seen.count((2, 1, 96)) == 5 and not torch.equal(hooked[:, 1:], native[:, 1:])  # every decode step
    layer.self_attn.o_proj = nn.Linear(96, 96, bias=False).to(dtype)
    nn.init.zeros_(layer.self_attn.o_proj.weight)
    assert torch.equal(run()[0], hooked)  # zero output both ways (the layer runs in Python now)
    layer.self_attn.o_proj = quantize(nn.Sequential(nn.Linear(96, 96, bias=False).to(dtype)))[0]
    nn.init.zeros_(layer.input_layernorm.weight)  # in place: the native layer reads the same tensor
    fused_calls.clear()
    zeroed = run()[0]
    assert fused_calls == [] and not torch.equal(zeroed, native)
    layer.input_layernorm.weight = nn.Parameter(torch.ones(96, dtype=dtype))  # replaced: made again
    assert not torch.equal(run()[0], zeroed) and fused_calls == []


def test_native_layer_takes_over_once_the_kernels_are_built(kernel, monkeypatch):
    """The engine decodes while the kernels build in the background: a layer first made without its
    projections' kernels runs in Python, and in C++ once they are ready (looked at again every
    RETRY_SECONDS)."""
    from phi4r import model as model_module
    from phi4r.kernels import attention, int4
    from phi4r.kv_cache import PagedKVCache
    from phi4r.quant_int4 import quantize_int4

    if int4.linear() is None or attention.kernel() is None:
        pytest.skip("no int4 or attention kernel on this machine")
    model = quantize_int4(_model(torch.bfloat16))
    cache, tables = PagedKVCache(model.config, 4, 16, dtype=torch.bfloat16), torch.tensor([[3, 1], [0, 2]])
    step = {"cache": cache, "tables": tables, "attention": attention.ready()}
    fused_layer, fused_calls = model_module.DecoderLayer.fused_decode, []
    monkeypatch.setattr(model_module.DecoderLayer, "fused_decode",
                        lambda *args: fused_calls.append(1) or fused_layer(*args))

    def decode(pos):
        with torch.inference_mode():
            return model(torch.tensor([[5], [9]]), positions=torch.tensor([[pos], [pos]]), last_only=True, **step)

    built = int4.ready()
    monkeypatch.setattr(int4, "ready", lambda: None)  # the build still running
    decode(0)
    assert len(fused_calls) == model.config.num_hidden_layers
    monkeypatch.setattr(int4, "ready", lambda: built)
    decode(1)  # within RETRY_SECONDS: still the layers made before
    assert len(fused_calls) == 2 * model.config.num_hidden_layers
    monkeypatch.setattr(model_module, "RETRY_SECONDS", 0.0)
    for native in model_module._NATIVE.values():
        native.retry_at = 0.0
    ready = decode(0)  # position 0 again: the same inputs as the first step
    assert len(fused_calls) == 2 * model.config.num_hidden_layers  # every layer in C++ now
    monkeypatch.setattr(model_module, "NATIVE_MAX_ROWS", 0)
    assert torch.equal(ready, decode(0))  # what fused_decode computes with the kernels
