"""The offline API: LLM.generate / chat / stream on a tiny random checkpoint."""
import pytest
import torch

from phi4r.api import LLM
from phi4r.chat import render_chat
from phi4r.checkpoint import load
from phi4r.engine import ContextLengthError
from phi4r.quant import Int8Linear
from phi4r.sampling import SamplingParams
from phi4r.tiny import make_checkpoint

CONVERSATION = [{"role": "user", "content": "What is 12 + 7?"}]


@pytest.fixture(scope="module")
def path(tmp_path_factory):
    return str(make_checkpoint(tmp_path_factory.mktemp("ck"), seed=2))


@pytest.fixture(scope="module")
def llm(path):
    return LLM(path, max_num_seqs=4, seed=0)


def test_generate_accepts_text_lists_and_token_ids(llm):
    p = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)
    [one] = llm.generate("abc", p, use_tqdm=False)
    ids = llm.tokenizer.encode("abc")
    assert one.prompt == "abc" and one.prompt_token_ids == ids and one.num_prompt_tokens == len(ids)
    [by_ids] = llm.generate(ids, p, use_tqdm=False)
    assert by_ids.prompt is None and by_ids.outputs[0].token_ids == one.outputs[0].token_ids
    many = llm.generate(["abc", "def", [5, 6, 7]], [p, p, SamplingParams(max_tokens=3)], use_tqdm=False)
    assert [len(r.outputs[0].token_ids) for r in many] == [8, 8, 3] and many[0].outputs == one.outputs
    m = many[0].metrics
    assert m.arrival_time <= m.first_token_time <= m.finished_time and m.latency >= m.time_to_first_token


def test_chat_uses_the_chat_format_and_default_system_prompt(llm):
    p = SamplingParams(temperature=0, max_tokens=6)
    [out] = llm.chat(CONVERSATION, p, use_tqdm=False)
    assert out.prompt_token_ids == llm.tokenizer.encode_chat(CONVERSATION)
    assert out.prompt == render_chat(CONVERSATION, system_prompt=llm.tokenizer.system_prompt)
    [bare] = llm.chat(CONVERSATION, p, system_prompt="", use_tqdm=False)
    assert bare.prompt_token_ids == llm.tokenizer.encode_chat(CONVERSATION, system_prompt="")
    two = llm.chat([CONVERSATION, CONVERSATION + [{"role": "assistant", "content": "19"},
                                                  {"role": "user", "content": "Why?"}]], p, use_tqdm=False)
    assert two[0].outputs[0].token_ids == out.outputs[0].token_ids and len(two) == 2
    o = out.outputs[0]
    assert o.finish_reason in ("stop", "length") and o.reasoning is not None


def test_stream_matches_chat(llm):
    p = SamplingParams(n=2, seed=5, max_tokens=30, thinking_budget=4)
    [whole] = llm.chat(CONVERSATION, p, use_tqdm=False)
    deltas = list(llm.stream(CONVERSATION, p))
    assert deltas[-1].request is not None and deltas[-1].request.finished
    for o in whole.outputs:
        mine = [d for d in deltas if d.index == o.index]
        assert "".join(d.text for d in mine) == o.text
        assert "".join(d.reasoning for d in mine) == o.reasoning
        assert "".join(d.content for d in mine) == (o.content or "")
        assert mine[-1].output.token_ids == o.token_ids


def test_abandoned_stream_is_aborted(llm):
    stream = llm.stream("abc", SamplingParams(max_tokens=100, ignore_eos=True))
    next(stream)
    stream.close()
    assert llm.engine.has_unfinished()  # the abort is pending until the next step ...
    llm.generate("x", SamplingParams(max_tokens=2), use_tqdm=False)
    assert not llm.engine.has_unfinished() and llm.engine.cache.num_free() == llm.engine.cache.num_blocks  # ... which frees the blocks


def test_refused_prompt_leaves_no_work_behind(path):
    llm = LLM(path, max_model_len=16)
    with pytest.raises(ContextLengthError):
        llm.generate(["ok", "a much longer prompt that cannot fit in sixteen tokens of context at all"],
                     use_tqdm=False)
    [out] = llm.generate("ok", SamplingParams(max_tokens=2), use_tqdm=False)
    assert len(out.outputs[0].token_ids) <= 2


def test_from_model_and_int8(path):
    model, tokenizer = load(path)
    llm = LLM.from_model(model, tokenizer, generation_config={"temperature": 0.0})
    [greedy] = llm.generate("abc", SamplingParams(max_tokens=10, ignore_eos=True), use_tqdm=False)
    q = LLM(path, quantization="int8")
    assert q.model.dtype == torch.bfloat16 and isinstance(q.model.lm_head, Int8Linear)
    [out] = q.generate("abc", SamplingParams(temperature=0, max_tokens=10, ignore_eos=True), use_tqdm=False)
    assert len(out.outputs[0].token_ids) == 10
    # bf16 activations: a random model's flat logits soon diverge; precision is tested in test_engine.
    assert out.outputs[0].token_ids[0] == greedy.outputs[0].token_ids[0]
    with pytest.raises(ValueError, match="quantization"):
        LLM(path, quantization="int2")
