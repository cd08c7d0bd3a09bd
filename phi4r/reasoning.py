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

`ReasoningStream` splits while streaming; each `feed`/`finish` returns a `Split(reasoning, content,
reclassified)`. Reasoning streams as it arrives; only a possible partial tag at the end of the text
so far (at most 7 characters, e.g. "</th") and leading whitespace that may precede `<think>` wait.
Text after a `</think>` is content unless another `</think>` follows. Two policies for it:
- eager (the default, as vLLM, llama.cpp and Ollama stream): content streams as it is written. When
  a later `</think>` arrives, `reclassified` is the number of content characters streamed since the
  previous correction (all the content shown so far): they were reasoning after all. A reader applies
  it BEFORE the split's own text: reasoning += `</think>` + content shown, content = "" (see
  `StreamedSplit`). Concatenated deltas with their corrections equal `split_reasoning(text)`.
- hold (`eager=False`): content is held until `finish()`, or released as reasoning (the earlier tag
  included) the moment a later `</think>` arrives; `reclassified` is always 0 and the concatenated
  deltas equal the one-shot split as they are, at the price of the answer arriving at the end.
"""
from __future__ import annotations

import re
from dataclasses import replace
from typing import NamedTuple

THINK_START, THINK_END = "<think>", "</think>"
THINK_TAGS = re.compile(f"({THINK_START}|{THINK_END})")  # split() keeps the tags, sub() drops them


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


def final_text(text: str) -> str | None:
    """What a grader reads: the text after the LAST `</think>`. A `<think>` that never closed means the
    model never answered (cut at max_tokens): None. With no tags at all, the whole text is the answer."""
    if THINK_END in text:
        return text.rsplit(THINK_END, 1)[1]
    return None if THINK_START in text else text


def partial_suffix(text: str, tag: str = THINK_END) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of `tag`: what a stream must
    hold back because the next delta may complete the tag."""
    for n in range(min(len(tag) - 1, len(text)), 0, -1):
        if tag.startswith(text[-n:]):
            return n
    return 0


class Split(NamedTuple):
    """One streaming step: first move `reclassified` characters of content already streamed to the
    reasoning (after a `</think>`), then append `reasoning` and `content`."""
    reasoning: str = ""
    content: str = ""
    reclassified: int = 0


class StreamedSplit:
    """A reader's side of a stream: `add()` each step, corrections included; `.reasoning` and
    `.content` are then the split so far (at the end, `split_reasoning`'s with content None as "")."""

    def __init__(self):
        self.reasoning = self.content = ""

    def add(self, reasoning: str = "", content: str = "", reclassified: int = 0) -> None:
        if reclassified:
            if reclassified != len(self.content):
                raise ValueError(f"a correction of {reclassified} characters for {len(self.content)} of content")
            self.reasoning, self.content = self.reasoning + THINK_END + self.content, ""
        self.reasoning += reasoning
        self.content += content


class ReasoningStream:
    """Incremental `split_reasoning`: `feed(delta) -> Split` per text delta, then `finish()` for the
    rest. See the module docstring for the eager and hold policies."""

    def __init__(self, eager: bool = True):
        self.eager = eager
        self._head: str | None = ""  # text before we know whether it opens with <think>; None once known
        self._tail = ""  # reasoning text that might begin a </think>
        self._held: list[str] | None = None  # hold: text after the latest </think>; None before the first
        self._held_end = ""  # hold: last characters of the held text, to find a tag split across deltas
        self._held_len = 0
        self._shown = 0  # eager: content characters streamed since the latest </think>
        self._finished = False

    def feed(self, delta: str) -> Split:
        if self._finished:
            raise RuntimeError("ReasoningStream.feed() after finish()")
        if self._head is not None:
            self._head += delta
            stripped = self._head.lstrip()
            if THINK_START.startswith(stripped) and stripped != THINK_START:
                return Split()  # only whitespace or part of "<think>" so far
            delta, self._head = _strip_start(self._head), None
        return self._scan(delta)

    def finish(self) -> Split:
        """The final split; the stream takes no more text afterwards."""
        if self._finished:
            raise RuntimeError("ReasoningStream.finish() called twice")
        split = self._scan(self._head) if self._head is not None else Split()  # e.g. "  <thi" is plain text
        self._head, self._finished = None, True
        if self._held is None:
            return split._replace(reasoning=split.reasoning + self._tail)
        rest = self._tail if self.eager else "".join(self._held)  # eager: the partial tag is content
        return split._replace(content=split.content + rest)

    def _scan(self, text: str) -> Split:
        """Consume `text`; return what is now certain (hold) or shown (eager)."""
        out, content, moved = [], "", 0
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
            elif self.eager:  # after a </think>: show it, and correct it if a later </think> comes
                text, self._tail = self._tail + text, ""
                cut = text.find(THINK_END)
                if cut < 0:
                    keep = partial_suffix(text)
                    content, self._tail = text[:len(text) - keep], text[len(text) - keep:]
                    self._shown += len(content)
                    break
                shown, self._shown = self._shown, 0  # content is shown only when a call ends
                moved = moved or shown
                out.append(text[:cut] if shown else THINK_END + text[:cut])
                text = text[cut + len(THINK_END):]
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
        return Split("".join(out), content, moved)


class HoldBack:
    """Turns a stream of eager engine deltas into hold-policy ones (content only once certain) by
    re-splitting each sample's text; call it on every delta, in order."""

    def __init__(self):
        self.streams: dict[tuple[str, int], ReasoningStream] = {}

    def __call__(self, delta):
        key = (delta.request_id, delta.index)
        stream = self.streams.setdefault(key, ReasoningStream(eager=False))
        reasoning, content, _ = stream.feed(delta.text) if delta.text else Split()
        if delta.finish_reason:
            tail = stream.finish()
            reasoning, content = reasoning + tail.reasoning, content + tail.content
            del self.streams[key]
        return replace(delta, reasoning=reasoning, content=content, reclassified=0)
