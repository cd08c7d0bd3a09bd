"""torch.compile of the decode step (Engine(compile=True)):
greedy tokens equal the eager engine's for fp32, bf16 and int8 under continuous batching, a bounded
number of compiles, the eager fallback, the switch. Small 2-layer random models keep compiling short."""
import logging

import pytest
import torch

from phi4r import engine as engine_mod
from phi4r import fastlinear
from phi4r.checkpoint import load, read_generation_config
from phi4r.engine import Engine
from phi4r.kernels import int8
from phi4r.model import CacheStep
from phi4r.quant import quantize_int8
from phi4r.tiny import make_checkpoint

from engine_runs import greedy_tokens

PROMPTS = ["What is 12 + 7?", "The quick brown fox jumps over the lazy dog.", "abc",
           "def add(a, b):\n    return a + b\n", "Path 0->1->2->0, TotalDistance 17."]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("ck"), seed=3, num_hidden_layers=2)


def make_engine(path, dtype, compile):
    model, tokenizer = load(path, dtype=torch.float32 if dtype == "fp32" else torch.bfloat16)
    if dtype == "int8":
        quantize_int8(model)
    model.eval()
    if dtype == "bf16-prepacked":  # as LLM(path) does: the compiled graph calls them as one op each
        assert fastlinear.prepack(model) > 0
    # max_num_seqs 3 < 5 prompts: requests wait, join and leave, so the batch size changes (3, 2, 1).
    return Engine(model, tokenizer, max_num_seqs=3, generation_config=read_generation_config(path), compile=compile)


def run(engine, max_tokens):
    # Requests end at different steps and waiting ones take their slots: batch sizes 3, then 2, then 1.
    lengths = [max_tokens, max_tokens * 3 // 10, max_tokens // 2, max_tokens * 3 // 10, max_tokens * 3 // 10]
    return greedy_tokens(engine, PROMPTS, lengths)


def compiles():
    return torch._dynamo.utils.counters["stats"]["unique_graphs"]


@pytest.mark.parametrize("dtype", ["fp32", "bf16", "int8", "bf16-prepacked"])
def test_compiled_decode_greedy_equals_eager(ckpt, dtype, caplog):
    if dtype == "int8" and int8.linear() is None:
        pytest.skip("the int8 kernel is not available on this CPU (the compiled path calls it as an op)")
    if dtype == "bf16-prepacked" and not fastlinear.available():
        pytest.skip("this torch build lacks the oneDNN prepacked linear ops")
    eager = run(make_engine(ckpt, dtype, compile=False), 40)
    engine = make_engine(ckpt, dtype, compile=True)
    calls = []
    compiled = engine._compiled
    engine._compiled = lambda *a: calls.append(a[0].shape[0]) or compiled(*a)
    before = compiles()
    with caplog.at_level(logging.WARNING, logger="phi4r.engine"):
        got = run(engine, 40)
    assert not [r for r in caplog.records if "compiled decode step failed" in r.getMessage()]
    assert engine._compiled is not None and set(calls) == {1, 2, 3}  # every decode step ran compiled
    # static first, then span, batch dynamic: a handful of graphs, not one per step or per batch size
    assert 1 <= compiles() - before <= 5, compiles() - before
    assert got == eager


def test_a_compiled_step_sees_what_an_eager_step_sees():
    torch.manual_seed(0)
    B, KV, D, L = 3, 2, 16, 20
    positions, k, v = torch.tensor([[10], [4], [7]]), torch.randn(B, 1, KV, D), torch.randn(B, 1, KV, D)
    ks, vs = [torch.randn(B + 1, KV, L, D)], [torch.randn(B + 1, KV, L, D)]
    eager = CacheStep([ks[0].clone()], [vs[0].clone()], positions, torch.arange(B))  # span read from positions
    step = CacheStep(ks, vs, positions, span=11)  # no host syncs: slots 0..B-1 and span given
    keys, values = step.update(0, k, v)
    assert keys.shape == (B, KV, 11, D) and torch.equal(keys[1, :, 4], k[1, 0]) and torch.equal(values[2, :, 7], v[2, 0])
    assert [torch.equal(a, b) for a, b in zip(eager.update(0, k, v), (keys, values))] == [True, True]
    assert eager.span == step.span and step.lengths.tolist() == eager.lengths.tolist() == [11, 5, 8]


def test_a_failing_compiled_step_falls_back_to_eager_with_one_warning(ckpt, caplog):
    eager = run(make_engine(ckpt, "fp32", compile=False), 12)
    engine = make_engine(ckpt, "fp32", compile=True)

    def broken(*args):
        raise RuntimeError("inductor exploded")
    engine._compiled = broken
    with caplog.at_level(logging.WARNING, logger="phi4r.engine"):
        got = run(engine, 12)
    assert got == eager and engine._compiled is None
    assert len([r for r in caplog.records if "compiled decode step failed" in r.getMessage()]) == 1


def test_switch_default_off_and_env(ckpt, monkeypatch):
    monkeypatch.delenv("PHI4R_COMPILE", raising=False)
    model, tokenizer = load(ckpt)
    assert Engine(model, tokenizer)._compiled is None
    monkeypatch.setenv("PHI4R_COMPILE", "1")
    assert Engine(model, tokenizer)._compiled is not None
    assert Engine(model, tokenizer, compile=False)._compiled is None
    monkeypatch.setattr(engine_mod.torch, "compile", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("no")))
    assert Engine(model, tokenizer, compile=True)._compiled is None  # unavailable: eager, logged
