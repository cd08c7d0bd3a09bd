import random
import re

import pytest

from phi4r.reasoning import ReasoningStream, split_reasoning

CASES = [
    ("<think>plan</think>answer", ("plan", "answer")),
    ("  \n<think>plan</think>\n\nanswer", ("plan", "\n\nanswer")),  # content is not stripped (vLLM)
    ("plan without start tag</think>answer", ("plan without start tag", "answer")),
    ("<think>a</think>b</think>final", ("a</think>b", "final")),  # cut at the LAST </think>
    ("<think>cut off at max_tokens", ("cut off at max_tokens", None)),
    ("no tags at all", ("no tags at all", None)),
    ("<think></think>just the answer", ("", "just the answer")),
    ("</think>x", ("", "x")),
    ("<think>r</think>", ("r", None)),  # nothing after </think>: None, like vLLM
    ("<think>r</think></think>", ("r</think>", None)),
    ("x <think>y</think>z", ("x <think>y", "z")),  # only a leading <think> is a tag
    ("<think><think>a</think>b", ("<think>a", "b")),
    ("", ("", None)),
    ("  <thi", ("  <thi", None)),
]


@pytest.mark.parametrize("text, expected", CASES)
def test_split_reasoning(text, expected):
    assert split_reasoning(text) == expected


def _stream(chunks):
    stream, reasoning, content = ReasoningStream(), [], []
    for chunk in chunks:
        r, c = stream.feed(chunk)
        reasoning.append(r)
        content.append(c)
    r, c = stream.finish()
    return "".join(reasoning + [r]), "".join(content + [c])


def _expected(text):
    r, c = split_reasoning(text)
    return r, c or ""


@pytest.mark.parametrize("text", [t for t, _ in CASES])
def test_stream_one_character_at_a_time_equals_one_shot(text):
    assert _stream(list(text)) == _expected(text)


@pytest.mark.parametrize("text", [t for t, _ in CASES])
def test_stream_one_token_at_a_time_equals_one_shot(text):
    # word-like "tokens" with whole tags, as a tokenizer with <think>/</think> ids yields them
    tokens = re.findall(r"</?think>|\s+|[^\s<]+|<", text)
    assert "".join(tokens) == text
    assert _stream(tokens) == _expected(text)


def test_tags_split_across_deltas():
    assert _stream(["<th", "ink>plan</th", "ink>ans", "wer"]) == ("plan", "answer")
    assert _stream(["a</", "think>b<", "/think", ">c"]) == ("a</think>b", "c")


def test_random_chunkings_equal_one_shot():
    pieces = ["<think>", "</think>", "</th", "ink>", "<", "/", ">", " ", "\n", "a", "think", "<thi"]
    rng = random.Random(0)
    for _ in range(2000):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 10)))
        cuts = sorted(rng.sample(range(1, len(text)), min(len(text) - 1, rng.randint(0, 4)))) if len(text) > 1 else []
        chunks = [text[i:j] for i, j in zip([0] + cuts, cuts + [len(text)])]
        assert _stream(chunks) == _expected(text), (text, chunks)


def test_reasoning_streams_live_and_content_waits_for_finish():
    stream = ReasoningStream()
    assert stream.feed("  ") == ("", "")  # may still be followed by <think>
    assert stream.feed("<think>step one") == ("step one", "")
    assert stream.feed(" then </th") == (" then ", "")  # the partial tag waits
    assert stream.feed("ink>The answer") == ("", "")  # after </think>: held
    assert stream.feed(" is 4.</think>") == ("</think>The answer is 4.", "")  # another </think>: it was reasoning
    assert stream.feed("4") == ("", "")
    assert stream.finish() == ("", "4")


def test_finish_without_end_tag_flushes_partial_tag_as_reasoning():
    stream = ReasoningStream()
    assert stream.feed("<think>abc</thi") == ("abc", "")
    assert stream.finish() == ("</thi", "")


def test_stream_refuses_use_after_finish():
    stream = ReasoningStream()
    stream.finish()
    with pytest.raises(RuntimeError):
        stream.feed("x")
    with pytest.raises(RuntimeError):
        stream.finish()
