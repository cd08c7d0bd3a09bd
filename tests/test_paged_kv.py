"""The paged KV cache (phi4r/kv_cache.py), its budget (phi4r/kv_budget.py) and the engine's admission
and preemption over it: block units, greedy output against transformers, the n samples of a request
sharing their prompt's blocks, preemption under a tiny budget, and the kernel against the reference
through block tables."""
import logging

import pytest
import torch

from phi4r import kv_budget
from phi4r.checkpoint import load, read_generation_config
from phi4r.config import Phi3Config
from phi4r.engine import ContextLengthError, Engine
from phi4r.kernels import attention
from phi4r.kv_cache import BlockAllocator, PagedKVCache
from phi4r.sampling import SamplingParams
from phi4r.tiny import make_checkpoint

from engine_runs import run  # tests/engine_runs.py

KERNEL = (attention, attention.kernel, "attention")
PROMPTS = ["What is 12 + 7?", "The quick brown fox jumps over the lazy dog.", "abc",
           "def add(a, b):\n    return a + b\n", "Path 0->1->2->0, TotalDistance 17.", "Über café naïve 東京",
           "Monday 09:00-10:30", "12 * 5 = ?", "north east", "x"]
CONFIG = Phi3Config(vocab_size=50, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                    num_key_value_heads=2, max_position_embeddings=256)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("ck"), seed=3, max_position_embeddings=1024)


def make_engine(path, **kw):
    model, tokenizer = load(path)
    return Engine(model, tokenizer, generation_config=read_generation_config(path), **kw)


def greedy(**kw):
    return SamplingParams(temperature=0, **kw)


def block_bytes(engine_or_config, dtype=torch.float32):
    config = getattr(engine_or_config, "config", engine_or_config)
    return kv_budget.bytes_per_token(config, dtype) * 16


# ---- blocks
def test_allocator_hands_out_the_lowest_free_block_and_counts_references():
    a = BlockAllocator(4)
    assert [a.allocate() for _ in range(3)] == [0, 1, 2] and a.num_free() == 1
    a.share(1)
    a.release(1)
    assert a.num_free() == 1  # still held once
    a.release(1)
    a.release(0)
    assert a.num_free() == 3 and a.allocate() == 0 and a.allocate() == 1  # lowest first again
    assert a.peak_used == 3 and a.high_water == 3
    with pytest.raises(ValueError, match="already free"):
        a.release(3)
    with pytest.raises(ValueError, match="not in use"):
        a.share(3)
    assert a.allocate() == 3
    with pytest.raises(MemoryError):
        a.allocate()


def test_tables_grow_on_demand_fork_shares_and_a_write_copies_a_shared_block():
    cache = PagedKVCache(CONFIG, num_blocks=8)
    assert all(t.abs().sum() == 0 for t in cache.k + cache.v)  # never-written rows read as zeros
    table: list[int] = []
    cache.reserve(table, 20)  # positions 0..20: two blocks
    assert table == [0, 1] and cache.num_free() == 6
    for t in cache.k + cache.v:
        t[table] = torch.randn(2, *t.shape[1:])
    before = [t[1].clone() for t in cache.k + cache.v]
    other = cache.fork(table)
    assert other == table and cache.num_free() == 6 and cache.allocator.refs[1] == 2
    assert cache.needed(other, 21) == 1 and cache.needed(other, 32) == 1 and cache.needed(table, 5) == 1
    cache.reserve(other, 21)  # into the shared, partly filled block: copy on write
    assert other[0] == table[0] and other[1] not in table and cache.num_free() == 5
    assert cache.allocator.refs[table[1]] == 1 and cache.needed(table, 21) == 0  # the original owns it alone now
    assert all(torch.equal(t[other[1]], b) and torch.equal(t[table[1]], b) for t, b in zip(cache.k + cache.v, before))
    cache.reserve(other, 40)  # a new block at position 32
    assert len(other) == 3 and cache.num_free() == 4
    with pytest.raises(MemoryError, match="free blocks"):
        cache.reserve(other, 200)
    cache.free(other)
    assert other == [] and cache.num_free() == 6 and cache.allocator.refs[table[0]] == 1
    cache.free(table)
    assert cache.num_free() == 8


def test_the_model_writes_and_reads_through_block_tables():
    torch.manual_seed(0)
    from phi4r.model import Phi3ForCausalLM

    model = Phi3ForCausalLM(CONFIG).eval()
    ids = torch.randint(0, 50, (1, 40))
    cache = PagedKVCache(CONFIG, num_blocks=10)
    table = []
    cache.reserve(table, 39)
    table.reverse()  # blocks in any order
    with torch.no_grad():
        ref = model(ids)[0]
        pre = model(ids[:, :30], positions=torch.arange(30)[None], cache=cache,
                    tables=cache.tables_tensor([table]))[0]
        steps = [model(ids[:, t:t + 1], positions=torch.tensor([[t]]), cache=cache,
                       tables=cache.tables_tensor([table]))[0, -1] for t in range(30, 40)]
    assert torch.allclose(pre, ref[:30], atol=1e-5) and torch.allclose(torch.stack(steps), ref[30:], atol=1e-5)


# ---- the budget
@pytest.mark.parametrize("text,want", [("8GiB", 8 * 2**30), ("512 MiB", 512 * 2**20), ("2e9", 2 * 10**9),
                                       ("4GB", 4 * 10**9), ("0.4", 0.4), ("1", 1.0), (123456, 123456), (0.25, 0.25)])
def test_parse_memory(text, want):
    assert kv_budget.parse_memory(text) == want


@pytest.mark.parametrize("bad", ["", "lots", "8 parsecs", "-1GiB", "0", 0, True])
def test_parse_memory_refuses_what_is_neither_a_size_nor_a_fraction(bad):
    with pytest.raises(ValueError, match="kv_cache_memory"):
        kv_budget.parse_memory(bad)


def test_the_plan_fits_max_model_len_to_the_budget(caplog):
    per_block = block_bytes(CONFIG)
    args = dict(config=CONFIG, dtype=torch.float32, device=torch.device("cpu"), block_size=16, max_num_seqs=4,
                available=2000 * per_block)
    default = kv_budget.plan(**args, max_model_len=256, explicit_max_len=False)
    assert default.num_blocks == 4 * 2048 // 16 and default.max_model_len == 256  # max(256, 4 x 2048) tokens
    assert kv_budget.plan(**args, max_model_len=256, explicit_max_len=False, kv_cache_memory=0.5).num_blocks == 1000
    assert kv_budget.plan(**{**args, "available": 100 * per_block}, max_model_len=256,
                          explicit_max_len=False).num_blocks == 50  # at most half the available memory
    # A max_model_len past the default's tokens and between two blocks gets its last block (and no error).
    odd = kv_budget.plan(**args, max_model_len=4 * 2048 + 56, explicit_max_len=True)
    assert odd.num_blocks == 4 * 2048 // 16 + 4 and odd.max_model_len == 4 * 2048 + 56
    with caplog.at_level(logging.WARNING, logger="phi4r.kv_budget"):
        small = kv_budget.plan(**args, max_model_len=256, explicit_max_len=False, kv_cache_memory=10 * per_block + 5)
    assert small.num_blocks == 10 and small.max_model_len == 160 and "max_model_len lowered to 160" in caplog.text
    with pytest.raises(ValueError, match="max_model_len=256 needs .* raise --kv-cache-memory"):
        kv_budget.plan(**args, max_model_len=256, explicit_max_len=True, kv_cache_memory=10 * per_block)
    with pytest.raises(ValueError, match="holds no 16-token block"):
        kv_budget.plan(**args, max_model_len=256, explicit_max_len=False, kv_cache_memory=per_block - 1)


def test_the_flag_and_llm_take_the_budget(ckpt):
    import argparse

    from phi4r.api import LLM
    from phi4r.commands._options import add_model_args, model_kwargs

    p = argparse.ArgumentParser()
    add_model_args(p)
    assert model_kwargs(p.parse_args(["--kv-cache-memory", "2MiB"]))["kv_cache_memory"] == "2MiB"
    with pytest.raises(SystemExit):
        p.parse_args(["--kv-cache-memory", "much"])
    llm = LLM(str(ckpt), kv_cache_memory="1MiB", max_num_seqs=2)
    assert llm.engine.cache.nbytes() == 2**20 // block_bytes(llm.model) * block_bytes(llm.model)


# ---- the engine
def test_greedy_equals_transformers_for_many_short_requests_and_a_long_one(ckpt):
    transformers = pytest.importorskip("transformers")
    engine = make_engine(ckpt, max_num_seqs=16)
    tok = engine.tokenizer
    long = tok.encode(" ".join(PROMPTS) * 10)[:700]
    prompts = [long] + [tok.encode(p) for p in PROMPTS]
    outs, _ = run(engine, prompts, greedy(max_tokens=24, ignore_eos=True))
    # The long request's blocks, not 11 x its length: the cache follows the tokens in use.
    assert engine.cache.allocator.peak_used <= sum(-(-(len(p) + 24) // 16) for p in prompts)
    assert engine.cache.num_free() == engine.cache.num_blocks
    ref = transformers.AutoModelForCausalLM.from_pretrained(ckpt, dtype=torch.float32).eval()
    for ids, out in zip(prompts, outs):
        expected = ref.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                do_sample=False, max_new_tokens=24)[0, len(ids):].tolist()
        assert out.outputs[0].token_ids == expected


@pytest.mark.parametrize("length", [40, 48], ids=["partial-last-block", "whole-blocks"])
def test_n_samples_store_the_prompt_once(ckpt, length):
    engine = make_engine(ckpt, max_num_seqs=8)
    prompt = engine.tokenizer.encode(" ".join(PROMPTS) * 3)[:length]
    engine.add_request("r", prompt, greedy(n=8, max_tokens=30, ignore_eos=True))
    engine.step()  # the prefill, the first token, and the first decode step (each sample writes its own block)
    tables = [s.blocks for s in engine.running]
    shared = length // 16
    assert len(tables) == 8 and all(t[:shared] == tables[0][:shared] for t in tables)
    # The prompt's full blocks once, then one block per sample (a copy of the partial last one, or new).
    assert engine.cache.allocator.num_used() == shared + 8
    assert len({t[shared] for t in tables}) == 8
    while engine.has_unfinished():
        engine.step()
    assert engine.cache.num_free() == engine.cache.num_blocks
    many, _ = run(engine, [prompt], greedy(n=8, max_tokens=30, ignore_eos=True))
    one, _ = run(engine, [prompt], greedy(max_tokens=30, ignore_eos=True))
    assert [o.token_ids for o in many[0].outputs] == [one[0].outputs[0].token_ids] * 8  # copy on write kept them exact


def test_preemption_under_a_tiny_budget_gives_the_ample_budget_outputs(ckpt, caplog):
    tok = make_engine(ckpt).tokenizer
    prompts = [tok.encode(p) for p in PROMPTS[:6]]
    params = [greedy(max_tokens=40, ignore_eos=True)] * 5 + [greedy(n=3, max_tokens=40, ignore_eos=True)]
    ample, _ = run(make_engine(ckpt, max_num_seqs=8), prompts, params)
    with caplog.at_level(logging.WARNING, logger="phi4r.kv_budget"):
        engine = make_engine(ckpt, max_num_seqs=8, kv_cache_memory=12 * block_bytes(make_engine(ckpt)))
    assert engine.cache.num_blocks == 12 and engine.max_model_len == 192 and "lowered to 192" in caplog.text
    tight, _ = run(engine, prompts, params)
    assert engine.num_preemptions > 0 and engine.cache.allocator.peak_used <= 12
    assert [[o.token_ids for o in r.outputs] for r in tight] == [[o.token_ids for o in r.outputs] for r in ample]
    assert all(o.finish_reason == "length" for r in tight for o in r.outputs)
    assert engine.cache.num_free() == 12 and not engine.preempted and not engine.running


def test_aborting_a_preempted_request_frees_it(ckpt):
    engine = make_engine(ckpt, max_num_seqs=4, kv_cache_memory=8 * block_bytes(make_engine(ckpt)))
    tok = engine.tokenizer
    for i, p in enumerate(PROMPTS[:3]):
        engine.add_request(str(i), tok.encode(p), greedy(max_tokens=60, ignore_eos=True))
    while not engine.preempted:
        engine.step()
    victim = engine.preempted[0].request.id
    engine.abort(victim)
    finished = {}
    while engine.has_unfinished():
        for d in engine.step():
            if d.request is not None:
                finished[d.request_id] = d.request
    assert finished[victim].outputs[0].finish_reason == "abort"
    assert all(finished[r].outputs[0].finish_reason == "length" for r in finished if r != victim)
    assert engine.cache.num_free() == engine.cache.num_blocks and not engine.preempted


def test_a_request_that_can_never_fit_is_refused_and_max_model_len_is_kept_when_asked(ckpt):
    per_block = block_bytes(make_engine(ckpt))
    engine = make_engine(ckpt, max_num_seqs=8, kv_cache_memory=12 * per_block)
    prompt = engine.tokenizer.encode(" ".join(PROMPTS) * 5)[:150]  # 10 blocks, + 4 samples' blocks > 12
    with pytest.raises(ContextLengthError, match="needs 14 KV cache blocks .* holds 12"):
        engine.add_request(None, prompt, greedy(n=4, max_tokens=5))
    engine.add_request(None, prompt, greedy(n=2, max_tokens=5))  # 12 blocks: fits alone
    with pytest.raises(ValueError, match="max_model_len=1024 needs"):
        make_engine(ckpt, max_model_len=1024, kv_cache_memory=12 * per_block)


# ---- the kernel reads through the block table
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("H,KV,D", [(8, 2, 64), (4, 4, 16), (12, 1, 128)])
def test_paged_kernel_matches_the_paged_reference(kernel, dtype, H, KV, D):
    gen = torch.Generator().manual_seed(H + D)
    lengths = torch.tensor([1, 16, 17, 70, 33])
    blocks = 30
    pool_k = torch.randn(blocks, KV, 16, D, generator=gen).to(dtype)
    pool_v = torch.randn(blocks, KV, 16, D, generator=gen).to(dtype)
    order = torch.randperm(blocks, generator=gen)
    table = order[:25].view(5, 5).clone()
    table[4, :2] = table[3, :2]  # two sequences sharing their first blocks, as n samples do
    q = torch.randn(5, H, D, generator=gen).to(dtype)
    ref = attention.reference(q.float(), pool_k.float(), pool_v.float(), lengths, D ** -0.5, table)
    got = kernel(q, pool_k, pool_v, lengths, D ** -0.5, table)
    assert got.dtype == dtype and torch.equal(attention.reference(q, pool_k, pool_v, lengths, D ** -0.5, table),
                                              attention.reference(q, pool_k, pool_v, lengths, D ** -0.5,
                                                                  block_table=table))
    tol = (2 ** -8 if dtype == torch.bfloat16 else 0) * ref.abs() + 2e-6 * pool_v.float().abs().max()
    assert ((got.float() - ref).abs() <= tol).all()
    # the reference through the table is the reference over the gathered keys
    keys = pool_k[table].transpose(1, 2).reshape(5, KV, 80, D)
    values = pool_v[table].transpose(1, 2).reshape(5, KV, 80, D)
    assert torch.allclose(attention.reference(q.float(), keys.float(), values.float(), lengths, D ** -0.5), ref)
    with pytest.raises(RuntimeError, match="block ids"):
        kernel(q, pool_k, pool_v, lengths, D ** -0.5, table + blocks)
    with pytest.raises(RuntimeError, match="lengths must be in"):
        kernel(q, pool_k, pool_v, lengths + 80, D ** -0.5, table)


def test_the_engine_decodes_the_same_through_the_kernel_and_the_reference(kernel, ckpt, monkeypatch):
    prompts = [p for p in PROMPTS[:5]]
    engine = make_engine(ckpt, max_num_seqs=4)
    tok = engine.tokenizer
    ids = [tok.encode(p) for p in prompts]
    calls = []
    real = attention.choose
    monkeypatch.setattr(attention, "choose", lambda *a, **k: calls.append(real(*a, **k)) or calls[-1])
    with_kernel, _ = run(engine, ids, greedy(max_tokens=30, ignore_eos=True))
    assert kernel in calls
    monkeypatch.setattr(attention, "choose", lambda *a, **k: attention.reference)
    with_reference, _ = run(make_engine(ckpt, max_num_seqs=4), ids, greedy(max_tokens=30, ignore_eos=True))
    assert [r.outputs[0].token_ids for r in with_kernel] == [r.outputs[0].token_ids for r in with_reference]
