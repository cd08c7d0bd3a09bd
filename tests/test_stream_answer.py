"""The answer streams as it is written: content right after `</think>`, a correction chunk when a
later `</think>` turns streamed content into reasoning, and "hold" for today's exact streams.

Driven through the official `openai` client against a real server. The model is a tiny random
checkpoint whose forward can be scripted (a forward hook forcing chosen tokens at chosen positions),
so a test can make it close its thinking twice; the nano model checks the default server.
"""
from __future__ import annotations

import io
import random

import openai
import pytest
from rich.console import Console

from phi4r.api import LLM
from phi4r.commands._chat_view import ChatView
from phi4r.engine import Delta, Engine
from phi4r.reasoning import THINK_END, ReasoningStream, StreamedSplit, split_reasoning
from phi4r.sampling import SamplingParams
from phi4r.server.app import create_app, serve_in_thread
from phi4r.tiny import make_checkpoint

USER = [{"role": "user", "content": "What is 12 + 7?"}]
SCRIPT: dict[int, int] = {}  # generated token index -> token the model is made to write there


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return str(make_checkpoint(tmp_path_factory.mktemp("tiny"), system_prompt="You are Phi."))


def scripted_llm(checkpoint):
    """An LLM whose model writes SCRIPT's tokens at SCRIPT's places (and samples the rest)."""
    llm = LLM(checkpoint, max_num_seqs=2)
    prompt_len = len(llm.tokenizer.encode_chat(USER))

    def force(module, args, kwargs, logits):
        # The logits at position p choose generated token number p + 1 - prompt_len.
        for row, p in enumerate(kwargs["positions"][:, -1].tolist()):
            token = SCRIPT.get(p + 1 - prompt_len)
            if token is not None:
                logits[row, -1] = float("-inf")
                logits[row, -1, token] = 0.0
        return logits

    llm.model.register_forward_hook(force, with_kwargs=True)
    return llm


@pytest.fixture(scope="module")
def served(checkpoint):
    """(client, llm): a server on its own scripted LLM (a served engine is driven by the server only)."""
    llm = scripted_llm(checkpoint)
    with serve_in_thread(create_app(llm, model_name="tiny"), graceful_timeout=2) as url:
        yield openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=60), llm


@pytest.fixture(scope="module")
def client(served):
    return served[0]


@pytest.fixture(scope="module")
def llm(served):
    return served[1]


@pytest.fixture
def script(llm):
    yield SCRIPT
    SCRIPT.clear()


def stream(client, **kw):
    return list(client.chat.completions.create(model="tiny", messages=USER, stream=True, seed=5,
                                               temperature=1.0, **kw))


def pieces(chunks):
    """[(kind, text or correction)] in arrival order, for the one choice."""
    out = []
    for chunk in chunks:
        for c in chunk.choices:
            extra = c.delta.model_extra or {}
            if "phi4r_reclassify" in extra:
                out.append(("fix", extra["phi4r_reclassify"]))
            if getattr(c.delta, "reasoning_content", None):
                out.append(("r", c.delta.reasoning_content))
            if c.delta.content:
                out.append(("c", c.delta.content))
    return out


def assemble(pieces_):
    split = StreamedSplit()
    for kind, x in pieces_:
        if kind == "fix":
            assert x["joiner"] == THINK_END
            split.add(reclassified=x["content_chars"])
        else:
            split.add(**{"reasoning" if kind == "r" else "content": x})
    return split.reasoning, split.content


def test_content_streams_right_after_the_think_end(client, script):
    """A budget closes the thinking after 6 tokens, then 60 answer tokens: each arrives in its own
    chunk, the first one step after `</think>` (continuous usage stats count the tokens per chunk)."""
    chunks = stream(client, max_tokens=66, extra_body={"thinking_token_budget": 6, "ignore_eos": True},
                    stream_options={"include_usage": True, "continuous_usage_stats": True})
    content = [ch for ch in chunks if ch.choices and ch.choices[0].delta.content]
    assert len(content) >= 40
    # Token 7 is the forced </think> (it has no text, so no chunk of its own).
    assert chunks[-1].usage.completion_tokens_details.reasoning_tokens == 7
    assert content[0].usage.completion_tokens <= 7 + 2
    assert content[-1].usage.completion_tokens == 66 == chunks[-1].usage.completion_tokens


def test_a_later_think_end_is_corrected_and_the_stream_equals_the_final_split(client, llm, script):
    end = llm.tokenizer.think_end_id
    script.update({4: end, 12: end, 30: end})  # three closes, each followed by content
    kw = {"max_tokens": 40, "extra_body": {"ignore_eos": True}}
    whole = client.chat.completions.create(model="tiny", messages=USER, seed=5, temperature=1.0, **kw).choices[0].message
    got = pieces(stream(client, **kw))
    fixes = [x for kind, x in got if kind == "fix"]
    assert len(fixes) == 2 and all(x["content_chars"] > 0 for x in fixes)
    assert assemble(got) == (whole.reasoning_content, whole.content)
    # A client that ignores the extension gets every character of the text once, the tags aside.
    text = "".join(x for kind, x in got if kind != "fix")
    assert text == (whole.reasoning_content + THINK_END + whole.content).replace(THINK_END, "")
    # Content was shown at once after each close, before the next close corrected it.
    kinds = "".join(kind[0] for kind, _ in got)
    assert kinds.count("cf") == 2 and kinds.startswith("r")


def test_hold_keeps_content_until_it_is_certain(client, llm, script):
    end = llm.tokenizer.think_end_id
    script.update({4: end, 12: end})
    kw = {"max_tokens": 30, "extra_body": {"ignore_eos": True}}
    whole = client.chat.completions.create(model="tiny", messages=USER, seed=5, temperature=1.0, **kw).choices[0].message
    chunks = stream(client, max_tokens=30, extra_body={"ignore_eos": True, "reasoning_stream": "hold"})
    got = pieces(chunks)
    assert "fix" not in [kind for kind, _ in got]
    # Exactly today's stream: the deltas concatenate as they are, content in the final chunk only.
    assert "".join(x for kind, x in got if kind == "r") == whole.reasoning_content
    assert [ch.choices[0].finish_reason for ch in chunks if ch.choices[0].delta.content] == ["length"]
    assert "".join(x for kind, x in got if kind == "c") == whole.content


def test_server_default_hold_and_the_request_overriding_it(checkpoint, script):
    llm = scripted_llm(checkpoint)
    end = llm.tokenizer.think_end_id
    script.update({4: end, 12: end})
    with serve_in_thread(create_app(llm, model_name="tiny", reasoning_stream="hold"), graceful_timeout=2) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=60)
        held = pieces(stream(client, max_tokens=30, extra_body={"ignore_eos": True}))
        eager = pieces(stream(client, max_tokens=30, extra_body={"ignore_eos": True, "reasoning_stream": "eager"}))
    assert [kind for kind, _ in held].count("c") == 1 and "fix" not in [kind for kind, _ in held]
    assert [kind for kind, _ in eager].count("fix") == 1
    assert assemble(eager) == assemble(held)


def test_reasoning_stream_is_checked(client, llm):
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="tiny", messages=USER, stream=True,
                                       extra_body={"reasoning_stream": "later"})
    with pytest.raises(ValueError, match="reasoning_stream"):
        create_app(llm, reasoning_stream="later")


def test_llm_stream_eager_and_hold(checkpoint, script):
    llm = scripted_llm(checkpoint)
    end = llm.tokenizer.think_end_id
    script.update({3: end, 9: end})
    params = SamplingParams(max_tokens=20, seed=1, ignore_eos=True)
    eager = list(llm.stream(USER, params))
    hold = list(llm.stream(USER, params, reasoning_stream="hold"))
    out = eager[-1].output
    assert out.text == hold[-1].output.text and out.text.count(THINK_END) == 2
    split = StreamedSplit()
    for d in eager:
        split.add(d.reasoning, d.content, d.reclassified)
    assert (split.reasoning, split.content) == (out.reasoning, out.content) == split_reasoning(out.text)
    assert sum(d.reclassified > 0 for d in eager) == 1 and any(d.content for d in eager[4:9])  # shown, then corrected
    assert "".join(d.reasoning for d in hold) == out.reasoning and "".join(d.content for d in hold) == out.content
    assert not any(d.content for d in hold[:-1])
    # Each delta counts the tokens so far, split at the last </think> so far.
    assert [(d.reasoning_tokens, d.content_tokens) for d in eager[3:5] + eager[9:11]] == [(4, 0), (4, 1), (10, 0), (10, 1)]
    assert (eager[-1].reasoning_tokens, eager[-1].content_tokens) == (out.reasoning_tokens, out.content_tokens) == (10, 10)


def test_a_delta_gathering_several_splits_keeps_the_correction_exact():
    """A delta can hold several stream steps (a token's text, then the flush at the end)."""
    rng = random.Random(0)
    pieces_ = ["<think>", "</think>", "</th", "ink>", "a", " ", "b\n"]
    for _ in range(2000):
        text = "".join(rng.choice(pieces_) for _ in range(rng.randint(0, 12)))
        stream, reader, i = ReasoningStream(), StreamedSplit(), 0
        while i < len(text):
            delta = Delta("r", 0)
            for _ in range(rng.randint(1, 3)):  # steps gathered into this delta
                j = rng.randint(i, len(text))
                Engine._add_split(delta, stream.feed(text[i:j]))
                i = j
            reader.add(delta.reasoning, delta.content, delta.reclassified)
        reader.add(*stream.finish())
        r, c = split_reasoning(text)
        assert (reader.reasoning, reader.content) == (r, c or ""), text


def test_chat_view_marks_the_correction(checkpoint, script, capsys):
    llm = scripted_llm(checkpoint)
    end = llm.tokenizer.think_end_id
    script.update({3: end, 9: end})
    deltas = list(llm.stream(USER, SamplingParams(max_tokens=20, seed=1, ignore_eos=True)))
    out = deltas[-1].output
    terminal = io.StringIO()
    for console in (Console(file=io.StringIO()), Console(file=terminal, force_terminal=True, color_system=None, width=300)):
        view = ChatView(console=console, mode="show")
        view.begin()
        for d in deltas:
            view.feed(d)
        view.end(deltas[-1])
    # No terminal: stdout is the text with its tags as lines; the answer follows the last </think>.
    thinking, _, answer = capsys.readouterr().out.rpartition("\n</think>\n")
    assert answer == out.content.strip() + "\n" and thinking.count(THINK_END) == 1
    assert "".join(thinking.split()) == "".join(("<think>" + out.reasoning).split())
    # A terminal: a note, then the answer after the last rule.
    shown = terminal.getvalue()
    assert "the text above was thinking too" in shown
    assert shown.rpartition("─" * 20 + "\n")[2].split("\n[")[0].strip() == out.content.strip()


def test_nano_server_streams_its_answer_by_default():
    """The shipped model behind the default server: its answer after a forced `</think>` streams."""
    nano = LLM("nano", max_num_seqs=1)
    with serve_in_thread(create_app(nano), graceful_timeout=2) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=60)
        chunks = list(client.chat.completions.create(
            model="nano", messages=[{"role": "user", "content": "What is 37 + 45?"}], stream=True, temperature=0,
            max_tokens=200, extra_body={"thinking_token_budget": 10},
            stream_options={"include_usage": True, "continuous_usage_stats": True}))
    content = [ch for ch in chunks if ch.choices and ch.choices[0].delta.content]
    final = chunks[-1].usage
    assert final.completion_tokens_details.reasoning_tokens == 11 and final.completion_tokens >= 15
    assert len(content) >= 4 and content[0].usage.completion_tokens <= 11 + 2
    assert "".join(ch.choices[0].delta.content for ch in content).strip().startswith("Final Answer")
