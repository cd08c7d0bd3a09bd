"""The OpenAI-compatible server, driven through the official `openai` client against a real uvicorn
server on 127.0.0.1 (in a background thread, so the tests can also look at the engine itself).

The model is a tiny random checkpoint: its text is gibberish, so tests compare the server with
itself (seeds, streamed vs whole) and with the tokenizer's counts, never with expected words.
"""
from __future__ import annotations

import json
import re

import httpx
import openai
import pytest

from phi4r.api import LLM
from phi4r.server.app import create_app, serve_in_thread
from phi4r.tiny import make_checkpoint

KEY = "test-key"
CONTEXT = 1024
USER = [{"role": "user", "content": "What is 12 + 7?"}]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    path = make_checkpoint(tmp_path_factory.mktemp("tiny"), max_position_embeddings=CONTEXT,
                           system_prompt="You are Phi.")
    llm = LLM(str(path), max_num_seqs=4)
    app = create_app(llm, model_name="tiny", api_key=KEY, max_body_bytes=64 * 1024)
    with serve_in_thread(app, graceful_timeout=2) as url:
        yield url, llm


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server[0] + "/v1", api_key=KEY, max_retries=0, timeout=60)


def chat(client, **kw):
    kw.setdefault("max_tokens", 16)
    return client.chat.completions.create(model="tiny", messages=kw.pop("messages", USER), **kw)


def stream_chat(client, **kw):
    """(reasoning per choice, content per choice, finish reasons, chunks) of a streamed chat."""
    kw.setdefault("max_tokens", 16)
    chunks = list(client.chat.completions.create(model="tiny", messages=kw.pop("messages", USER), stream=True, **kw))
    reasoning, content, finish = {}, {}, {}
    for chunk in chunks:
        for c in chunk.choices:
            reasoning[c.index] = reasoning.get(c.index, "") + (getattr(c.delta, "reasoning_content", None) or "")
            content[c.index] = content.get(c.index, "") + (c.delta.content or "")
            if c.finish_reason:
                finish[c.index] = c.finish_reason
    return reasoning, content, finish, chunks


def metric(url: str, name: str) -> float:
    total = 0.0
    for line in httpx.get(url + "/metrics").text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


# ---- answers
def test_chat_message_fields_and_usage(server, client):
    url, llm = server
    r = chat(client, max_tokens=24, seed=3, extra_body={"thinking_token_budget": 6, "ignore_eos": True})
    [choice] = r.choices
    message = choice.message.model_dump()
    assert r.object == "chat.completion" and r.model == "tiny" and choice.finish_reason == "length"
    assert message["role"] == "assistant"
    assert message["reasoning_content"] == message["reasoning"] and message["reasoning_content"]
    assert isinstance(message["content"], str) and message["content"]
    # The prompt is the tokenizer's chat encoding; completion = reasoning + content tokens.
    assert r.usage.prompt_tokens == len(llm.tokenizer.encode_chat(USER))
    assert r.usage.completion_tokens == 24 and r.usage.total_tokens == r.usage.prompt_tokens + 24
    # The budget forces </think> after 6 tokens: 6 reasoning tokens plus the </think> itself.
    assert r.usage.completion_tokens_details.reasoning_tokens == 7


def test_without_budget_all_is_reasoning_and_content_is_null(client):
    r = chat(client, max_tokens=12, seed=3, extra_body={"ignore_eos": True})
    message = r.choices[0].message
    assert "</think>" not in message.reasoning_content  # (the seed is one whose sample has none)
    assert message.content is None and r.usage.completion_tokens_details.reasoning_tokens == 12


def test_unset_sampling_fields_take_generation_config(server, client):
    """generation_config.json says temperature 0.8: an unseeded request is sampled, not greedy, so two
    unseeded answers differ, while temperature 0 answers agree."""
    texts = {chat(client, max_tokens=12).choices[0].message.reasoning_content for _ in range(2)}
    greedy = {chat(client, max_tokens=12, temperature=0).choices[0].message.reasoning_content for _ in range(2)}
    assert len(texts) == 2 and len(greedy) == 1
    assert server[1].generation_config["temperature"] == 0.8


def test_seed_reproducible_and_different_seeds_differ(client):
    a, b, c = (chat(client, temperature=1.0, seed=s, max_tokens=20).choices[0].message for s in (11, 11, 12))
    assert (a.reasoning_content, a.content) == (b.reasoning_content, b.content)
    assert (a.reasoning_content, a.content) != (c.reasoning_content, c.content)


def test_max_completion_tokens(client):
    r = chat(client, max_tokens=None, max_completion_tokens=5, extra_body={"ignore_eos": True})
    assert r.usage.completion_tokens == 5 and r.choices[0].finish_reason == "length"


def test_n_choices(client):
    r = chat(client, n=3, seed=5, max_tokens=10, extra_body={"ignore_eos": True})
    assert [c.index for c in r.choices] == [0, 1, 2]
    assert len({c.message.reasoning_content for c in r.choices}) == 3
    assert r.usage.completion_tokens == 30


def test_stream_concatenates_to_the_whole_answer(client):
    kw = dict(n=2, seed=9, max_tokens=30, extra_body={"thinking_token_budget": 10, "ignore_eos": True})
    whole = chat(client, **kw)
    reasoning, content, finish, chunks = stream_chat(client, **kw)
    for c in whole.choices:
        assert reasoning[c.index] == c.message.reasoning_content
        assert content[c.index] == (c.message.content or "")
        assert finish[c.index] == c.finish_reason == "length"
    assert all(chunk.object == "chat.completion.chunk" and chunk.id == chunks[0].id for chunk in chunks)
    first = {c.index: c.delta.role for chunk in chunks[:2] for c in chunk.choices}
    assert first == {0: "assistant", 1: "assistant"}


def test_stream_reasoning_comes_before_content(client):
    _, _, _, chunks = stream_chat(client, seed=4, max_tokens=20,
                                  extra_body={"thinking_token_budget": 5, "ignore_eos": True})
    kinds = [("r" if getattr(c.delta, "reasoning_content", None) else "") + ("c" if c.delta.content else "")
             for chunk in chunks for c in chunk.choices]
    kinds = "".join(kinds)
    assert "r" in kinds and "c" in kinds and kinds.rindex("r") <= kinds.index("c")
    delta = next(c.delta for chunk in chunks for c in chunk.choices if getattr(c.delta, "reasoning_content", None))
    assert delta.model_dump()["reasoning"] == delta.reasoning_content


def test_stream_usage_chunk_and_done(server):
    url, llm = server
    body = {"model": "tiny", "messages": USER, "max_tokens": 8, "stream": True, "stream_options": {"include_usage": True}}
    with httpx.stream("POST", url + "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {KEY}"}) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        events = [line[len("data: "):] for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    *deltas, last = chunks
    assert all(c["usage"] is None for c in deltas)
    assert last["choices"] == [] and last["usage"]["prompt_tokens"] == len(llm.tokenizer.encode_chat(USER))
    assert 1 <= last["usage"]["completion_tokens"] <= 8
    assert sum(1 for c in deltas if c["choices"][0]["finish_reason"]) == 1


def test_stop_strings(client):
    full = client.completions.create(model="tiny", prompt="The quick brown fox", max_tokens=30, seed=2,
                                     extra_body={"ignore_eos": True}).choices[0].text
    stop = full[12:15]
    r = client.completions.create(model="tiny", prompt="The quick brown fox", max_tokens=30, seed=2, stop=[stop],
                                  extra_body={"ignore_eos": True})
    assert r.choices[0].text == full[:full.index(stop)]
    assert r.choices[0].finish_reason == "stop"


def test_completions_prompt_is_plain_text(server, client):
    _, llm = server
    prompt = "a<|im_end|>b"
    r = client.completions.create(model="tiny", prompt=prompt, max_tokens=4)
    assert r.usage.prompt_tokens == len(llm.tokenizer.encode(prompt))
    assert llm.tokenizer.token_id("<|im_end|>") not in llm.tokenizer.encode(prompt)
    ids = client.completions.create(model="tiny", prompt=[5, 6, 7], max_tokens=4)
    assert ids.usage.prompt_tokens == 3 and ids.object == "text_completion"


def test_streamed_completion_matches_whole(client):
    kw = dict(model="tiny", prompt="The quick brown fox", max_tokens=20, seed=8, n=2, extra_body={"ignore_eos": True})
    whole = client.completions.create(**kw)
    chunks = list(client.completions.create(stream=True, stream_options={"include_usage": True}, **kw))
    for c in whole.choices:
        assert "".join(ch.choices[0].text for ch in chunks if ch.choices and ch.choices[0].index == c.index) == c.text
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens == 40


def test_content_as_text_parts(server, client):
    _, llm = server
    parts = [{"role": "user", "content": [{"type": "text", "text": "What is "}, {"type": "text", "text": "12 + 7?"}]}]
    assert chat(client, messages=parts, max_tokens=2).usage.prompt_tokens == len(llm.tokenizer.encode_chat(USER))
    # An earlier answer sent back whole: its reasoning is left out, as the chat template does.
    history = USER + [{"role": "assistant", "content": "19", "reasoning_content": "12 + 7 = 19"}] + USER
    expected = USER + [{"role": "assistant", "content": "19"}] + USER
    assert chat(client, messages=history, max_tokens=2).usage.prompt_tokens == len(llm.tokenizer.encode_chat(expected))
    with pytest.raises(openai.BadRequestError, match="image_url"):
        chat(client, messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}])


def test_n_beyond_the_engine_is_400_not_429(client):
    with pytest.raises(openai.BadRequestError, match="max-num-seqs"):
        chat(client, n=5)


def test_completions_batch_numbering(client):
    r = client.completions.create(model="tiny", prompt=["one", "two"], n=2, max_tokens=3, seed=1)
    assert [c.index for c in r.choices] == [0, 1, 2, 3]


def test_models_health_and_page(server, client):
    url, _ = server
    assert [m.id for m in client.models.list()] == ["tiny"]
    assert httpx.get(url + "/health").json() == {"status": "ok"}
    page = httpx.get(url + "/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "/v1/chat/completions" in page.text
    assert not re.search(r"https?://|src=|<link", page.text)  # self-contained: no external resources


def test_metrics_count_requests_tokens_and_latency(server, client):
    url, _ = server
    before = metric(url, "phi4r_generation_tokens_total"), metric(url, "phi4r_request_latency_seconds_count")
    chat(client, max_tokens=5, extra_body={"ignore_eos": True})
    text = httpx.get(url + "/metrics").text
    assert 'phi4r_requests_total{endpoint="/v1/chat/completions",status="200"}' in text
    assert "phi4r_num_requests_running 0" in text and "phi4r_num_requests_waiting 0" in text
    assert metric(url, "phi4r_generation_tokens_total") == before[0] + 5
    assert metric(url, "phi4r_request_latency_seconds_count") == before[1] + 1


# ---- errors, each as the openai client's exception
def test_unauthorized(server):
    url, _ = server
    bad = openai.OpenAI(base_url=url + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as e:
        bad.models.list()
    assert e.value.body["type"] == "authentication_error"
    assert httpx.post(url + "/v1/chat/completions", json={}).status_code == 401
    assert httpx.get(url + "/health").status_code == 200  # outside /v1: open, as in vLLM


def test_unknown_model(client):
    with pytest.raises(openai.NotFoundError, match="gpt-4"):
        client.chat.completions.create(model="gpt-4", messages=USER)


@pytest.mark.parametrize("extra, name", [
    ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
    ({"logprobs": True, "top_logprobs": 2}, "logprobs"),
    ({"response_format": {"type": "json_object"}}, "response_format"),
    ({"presence_penalty": 0.5}, "presence_penalty"),
    ({"best_of_luck": 1}, "best_of_luck"),
])
def test_unsupported_parameters_are_refused_by_name(client, extra, name):
    with pytest.raises(openai.BadRequestError, match=name) as e:
        chat(client, extra_body=extra)
    assert e.value.body["param"] == name and e.value.body["type"] == "invalid_request_error"


def test_noop_values_of_unsupported_parameters_are_accepted(client):
    r = chat(client, max_tokens=2, extra_body={"tools": [], "logprobs": False, "presence_penalty": 0})
    assert r.choices[0].finish_reason in ("length", "stop")


def test_malformed_requests(server, client):
    url, _ = server
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    r = httpx.post(url + "/v1/chat/completions", content=b'{"model": "tiny", "messages": [', headers=headers)
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
    with pytest.raises(openai.BadRequestError, match="temperature"):
        chat(client, temperature="hot")
    with pytest.raises(openai.BadRequestError, match=r"messages\[0\]\.role"):
        chat(client, messages=[{"role": "tool", "content": "x"}])
    with pytest.raises(openai.BadRequestError, match="name"):
        chat(client, messages=[{"role": "user", "content": "x", "name": "bob"}])
    with pytest.raises(openai.BadRequestError, match="stream_options"):
        chat(client, stream_options={"include_usage": True})


def test_body_too_large(server):
    url, _ = server
    big = {"model": "tiny", "messages": [{"role": "user", "content": "x" * 100_000}]}
    r = httpx.post(url + "/v1/chat/completions", json=big, headers={"Authorization": f"Bearer {KEY}"})
    assert r.status_code == 413 and "65536" in r.json()["error"]["message"]


def test_prompt_longer_than_context(server, client):
    _, llm = server
    messages = [{"role": "user", "content": "seven plus five " * 400}]
    length = len(llm.tokenizer.encode_chat(messages))
    assert length > CONTEXT
    with pytest.raises(openai.BadRequestError) as e:
        chat(client, messages=messages)
    assert str(length) in e.value.message and str(CONTEXT) in e.value.message
    assert e.value.code == "context_length_exceeded"


def test_max_tokens_past_the_context(server, client):
    _, llm = server
    prompt = len(llm.tokenizer.encode_chat(USER))
    with pytest.raises(openai.BadRequestError) as e:
        chat(client, max_tokens=CONTEXT)
    assert str(CONTEXT) in e.value.message and str(prompt + CONTEXT) in e.value.message
