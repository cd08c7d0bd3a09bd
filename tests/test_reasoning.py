import random
import re

import pytest

from phi4r.reasoning import ReasoningStream, StreamedSplit, split_reasoning

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


def _stream(chunks, eager=False):
    """The split a reader assembles from the stream's steps (corrections applied)."""
    stream, reader = ReasoningStream(eager=eager), StreamedSplit()
    for chunk in chunks:
        step = stream.feed(chunk)
        assert eager or not step.reclassified  # hold: the deltas concatenate as they are
        reader.add(*step)
    reader.add(*stream.finish())
    return reader.reasoning, reader.content


def _expected(text):
    r, c = split_reasoning(text)
    return r, c or ""


EAGER = pytest.mark.parametrize("eager", [False, True], ids=["hold", "eager"])


@EAGER
@pytest.mark.parametrize("text", [t for t, _ in CASES])
def test_stream_one_character_at_a_time_equals_one_shot(text, eager):
    assert _stream(list(text), eager) == _expected(text)


@EAGER
@pytest.mark.parametrize("text", [t for t, _ in CASES])
def test_stream_one_token_at_a_time_equals_one_shot(text, eager):
    # word-like "tokens" with whole tags, as a tokenizer with <think>/</think> ids yields them
    tokens = re.findall(r"</?think>|\s+|[^\s<]+|<", text)
    assert "".join(tokens) == text
    assert _stream(tokens, eager) == _expected(text)


@EAGER
def test_tags_split_across_deltas(eager):
    assert _stream(["<th", "ink>plan</th", "ink>ans", "wer"], eager) == ("plan", "answer")
    assert _stream(["a</", "think>b<", "/think", ">c"], eager) == ("a</think>b", "c")


@EAGER
def test_random_chunkings_equal_one_shot(eager):
    pieces = ["<think>", "</think>", "</th", "ink>", "<", "/", ">", " ", "\n", "a", "think", "<thi"]
    rng = random.Random(0)
    for _ in range(2000):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 10)))
        cuts = sorted(rng.sample(range(1, len(text)), min(len(text) - 1, rng.randint(0, 4)))) if len(text) > 1 else []
        chunks = [text[i:j] for i, j in zip([0] + cuts, cuts + [len(text)])]
        assert _stream(chunks, eager) == _expected(text), (text, chunks)


def test_hold_streams_reasoning_live_and_content_waits_for_finish():
    stream = ReasoningStream(eager=False)
    assert stream.feed("  ") == ("", "", 0)  # may still be followed by <think>
    assert stream.feed("<think>step one") == ("step one", "", 0)
    assert stream.feed(" then </th") == (" then ", "", 0)  # the partial tag waits
    assert stream.feed("ink>The answer") == ("", "", 0)  # after </think>: held
    assert stream.feed(" is 4.</think>") == ("</think>The answer is 4.", "", 0)  # another </think>: it was reasoning
    assert stream.feed("4") == ("", "", 0)
    assert stream.finish() == ("", "4", 0)


def test_eager_streams_content_and_corrects_it_at_a_later_end_tag():
    stream = ReasoningStream()
    assert stream.feed("<think>step one</think>") == ("step one", "", 0)
    assert stream.feed("The answer") == ("", "The answer", 0)  # shown at once
    assert stream.feed(" is 4.</th") == ("", " is 4.", 0)  # only the partial tag waits
    assert stream.feed("ink> no") == ("", " no", 16)  # the 16 characters shown were reasoning
    # " no" is corrected at the first tag; nothing is shown between the next two, so no correction
    assert stream.feed(", 5</think></think>") == (", 5</think>", "", 3)
    assert stream.feed("5") == ("", "5", 0)
    assert stream.feed("</think>6") == ("", "6", 1)
    assert stream.finish() == ("", "", 0)
    reader = StreamedSplit()
    for step in [("step one", "", 0), ("", "The answer is 4.", 0), ("", "", 16)]:
        reader.add(*step)
    assert (reader.reasoning, reader.content) == ("step one</think>The answer is 4.", "")


def test_eager_finish_releases_a_partial_tag_as_content():
    stream = ReasoningStream()
    assert stream.feed("a</think>b</thi") == ("a", "b", 0)
    assert stream.finish() == ("", "</thi", 0)


def test_a_correction_must_match_the_content_shown():
    reader = StreamedSplit()
    reader.add("r", "abc")
    with pytest.raises(ValueError):
        reader.add(reclassified=2)


@EAGER
def test_finish_without_end_tag_flushes_partial_tag_as_reasoning(eager):
    stream = ReasoningStream(eager=eager)
    assert stream.feed("<think>abc</thi") == ("abc", "", 0)
    assert stream.finish() == ("</thi", "", 0)


def test_stream_refuses_use_after_finish():
    stream = ReasoningStream()
    stream.finish()
    with pytest.raises(RuntimeError):
        stream.feed("x")
    with pytest.raises(RuntimeError):
        stream.finish()
