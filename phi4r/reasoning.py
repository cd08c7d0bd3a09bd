"""Split a Phi-4-reasoning completion into reasoning and content, at once or while streaming.

Semantics (vLLM's `deepseek_r1` parser, plus the fix Phi-4-reasoning needs):
- The cut is at the LAST `</think>`: the model sometimes closes its thinking more than once, and
  cutting at the first loses the answer. Earlier `</think>` strings stay in the reasoning as text.
- A `<think>` at the very start (after optional whitespace, which goes with it) is removed; a
  `<think>` anywhere else is ordinary text.
- No start tag: the text before `</think>` is still reasoning (the prompt may have opened it).
- No `</think>` at all (also with no tags at all, or cut at max_tokens): everything is reasoning
  and content is None, exactly as vLLM reports it.
- Empty reasoning is "" (never None); empty content after `</think>` is None, as in vLLM.

Streaming with `ReasoningStream` gives exactly the one-shot result: the concatenated reasoning
deltas equal `split_reasoning(text)[0]` and the concatenated content deltas equal
`split_reasoning(text)[1] or ""`. Because the last `</think>` decides and a stream cannot take text
back, the policy is:
- reasoning streams as it arrives; only a possible partial tag at the end of the text so far
  (at most 7 characters, e.g. "</th") and leading whitespace that may precede `<think>` wait;
- text after a `</think>` is held: it is content unless another `</think>` follows, in which case
  it is released as reasoning (the earlier tag included) the moment that tag arrives;
- the content is released by `finish()`, once the stream is known to hold no further `</think>`.
So the thinking streams live and the answer (usually much shorter) arrives in one piece at the end:
the price of never reporting as content what the final text says is reasoning.
"""
from __future__ import annotations

THINK_START, THINK_END = "<think>", "</think>"


def _strip_start(text: str) -> str:
    stripped = text.lstrip()
    return stripped[len(THINK_START):] if stripped.startswith(THINK_START) else text


def split_reasoning(text: str) -> tuple[str, str | None]:
    """(reasoning, content) of a completion; content is None when there is no `</think>` or nothing after it."""
    text = _strip_start(text)
    cut = text.rfind(THINK_END)
    if cut < 0:
        return text, None
    return text[:cut], text[cut + len(THINK_END):] or None


def partial_suffix(text: str, tag: str = THINK_END) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of `tag`: what a stream must
    hold back because the next delta may complete the tag."""
    for n in range(min(len(tag) - 1, len(text)), 0, -1):
        if tag.startswith(text[-n:]):
            return n
    return 0


class ReasoningStream:
    """Incremental `split_reasoning`: `feed(delta) -> (reasoning_delta, content_delta)` per text delta
    (either may be ""), then `finish()` for the rest. See the module docstring for the guarantee."""

    def __init__(self):
        self._head: str | None = ""  # text before we know whether it opens with <think>; None once known
        self._tail = ""  # reasoning text that might begin a </think>
        self._held: list[str] | None = None  # text after the latest </think>; None before the first
        self._held_end = ""  # last characters of the held text, to find a tag split across deltas
        self._held_len = 0
        self._finished = False

    def feed(self, delta: str) -> tuple[str, str]:
        if self._finished:
            raise RuntimeError("ReasoningStream.feed() after finish()")
        if self._head is not None:
            self._head += delta
            stripped = self._head.lstrip()
            if THINK_START.startswith(stripped) and stripped != THINK_START:
                return "", ""  # only whitespace or part of "<think>" so far
            delta, self._head = _strip_start(self._head), None
        return self._scan(delta), ""

    def finish(self) -> tuple[str, str]:
        """The final (reasoning_delta, content_delta); the stream takes no more text afterwards."""
        if self._finished:
            raise RuntimeError("ReasoningStream.finish() called twice")
        reasoning = self._scan(self._head) if self._head is not None else ""  # e.g. "  <thi" is plain text
        self._head, self._finished = None, True
        if self._held is None:
            return reasoning + self._tail, ""
        return reasoning, "".join(self._held)

    def _scan(self, text: str) -> str:
        """Consume `text`; return what is now certainly reasoning."""
        out = []
        while text:
            if self._held is None:  # still in the first stretch of reasoning
                text, self._tail = self._tail + text, ""
                cut = text.find(THINK_END)
                if cut < 0:
                    keep = partial_suffix(text)
                    out.append(text[:len(text) - keep])
                    self._tail = text[len(text) - keep:]
                    break
                out.append(text[:cut])
                self._held, text = [], text[cut + len(THINK_END):]
            else:  # after a </think>: hold until the end, or until a later </think> proves it reasoning
                window = self._held_end + text
                cut = window.find(THINK_END)
                if cut < 0:
                    self._held.append(text)
                    self._held_len += len(text)
                    self._held_end = window[-(len(THINK_END) - 1):]
                    break
                full = "".join(self._held) + text
                cut += self._held_len - len(self._held_end)
                out.append(THINK_END + full[:cut])
                self._held, self._held_end, self._held_len = [], "", 0
                text = full[cut + len(THINK_END):]
        return "".join(out)
