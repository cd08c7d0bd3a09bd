"""How `phi4r chat` shows a streamed answer: the thinking, then the answer, then a stats line.

Thinking modes: "show" prints it in full (dimmed on a terminal); "fold" shows it live in a small
window that collapses to one line "thought for N tokens" when the answer starts; "hide" prints none
of it. On a terminal the view uses rich; otherwise (a pipe, CI) it writes plain text with explicit
`<think>` / `</think>` lines, and the stats and notes go to stderr so stdout holds only the answer.
"""
from __future__ import annotations

import sys
import time

from rich.console import Console
from rich.live import Live
from rich.text import Text

from phi4r.reasoning import THINK_END, THINK_START, partial_suffix

MODES = ("show", "fold", "hide")
FOLD_LINES = 4  # thinking lines visible in the live window of "fold"
TAIL_CHARS = 4000  # thinking text kept for that window (the rest has scrolled away)


class LiveSplit:
    """Splits streamed text for display at each `</think>`: thinking before, answer after.

    reasoning.ReasoningStream is exact (the LAST `</think>` decides) but therefore holds the answer
    back until the end; a terminal wants the answer to stream. So this switches at every `</think>`
    and reports each one ("close"): if the model closes its thinking twice, the text between the
    tags was shown as answer, and the view marks the second close so nothing is hidden.
    """

    def __init__(self):
        self.thinking = True
        self.started = False  # a leading <think> is dropped: the view shows its own marker
        self.pending = ""  # text that may be the start of a tag

    def feed(self, text: str) -> list[tuple[str, str]]:
        """[(kind, text)] with kind "thinking", "answer" or "close" (text "")."""
        text = self.pending + text
        self.pending = ""
        if not self.started:
            stripped = text.lstrip()
            if len(stripped) < len(THINK_START) and THINK_START.startswith(stripped):
                self.pending = text
                return []
            self.started = True
            text = stripped[len(THINK_START):] if stripped.startswith(THINK_START) else text
        events = []
        while (cut := text.find(THINK_END)) >= 0:
            events += [(self._kind(), text[:cut]), ("close", "")]
            self.thinking, text = False, text[cut + len(THINK_END):]
        keep = partial_suffix(text)
        self.pending = text[len(text) - keep:]
        events.append((self._kind(), text[:len(text) - keep]))
        return [e for e in events if e[1] or e[0] == "close"]

    def finish(self) -> list[tuple[str, str]]:
        text, self.pending = self.pending, ""
        return [(self._kind(), text)] if text else []

    def _kind(self) -> str:
        return "thinking" if self.thinking else "answer"


class ChatView:
    """Renders one answer at a time: begin(), feed(delta) for each engine Delta, end(final_delta)."""

    def __init__(self, console: Console | None = None, mode: str = "show"):
        self.console = console or Console(highlight=False, soft_wrap=True)
        self.tty = self.console.is_terminal
        self.mode = mode

    # ---- notes outside answers
    def note(self, text: str) -> None:
        if self.tty:
            self.console.print(Text(text, style="dim"))
        else:
            print(text, file=sys.stderr, flush=True)

    # ---- one answer
    def begin(self) -> None:
        self.split = LiveSplit()
        self.start, self.first_token = time.perf_counter(), None
        self.tokens = self.thinking_tokens = 0
        self.in_answer = self.shown_think = self.answer_shown = False
        self.tail = self.held = ""
        self.live = None
        if self.tty and self.mode != "show":
            self.live = Live(self._window(), console=self.console, transient=True, refresh_per_second=8)
            self.live.start()

    def feed(self, delta) -> None:
        if delta.token_ids:
            self.first_token = self.first_token or time.perf_counter()
            self.tokens += len(delta.token_ids)
            if not self.in_answer:
                self.thinking_tokens += len(delta.token_ids)
        for kind, text in self.split.feed(delta.text):
            self._event(kind, text)

    def end(self, final) -> None:
        """`final`: the delta that finished the request (its .output and .request are set)."""
        for kind, text in self.split.finish():
            self._event(kind, text)
        out = final.output
        if not self.in_answer:  # the thinking never closed
            self._close_thinking(out.reasoning_tokens)
            self._write("answer", f"[no answer: stopped while thinking, finish_reason={out.finish_reason}]")
        self._end_line()
        elapsed = time.perf_counter() - (self.first_token or self.start)
        rate = (self.tokens - 1) / elapsed if self.tokens > 1 and elapsed > 0 else 0.0
        ttft = (self.first_token or self.start) - self.start
        self.note(f"[{final.request.num_prompt_tokens} prompt tokens · {self.tokens} generated "
                  f"({out.reasoning_tokens} thinking, {out.content_tokens} answer) · {rate:.1f} tok/s · "
                  f"first token {ttft:.2f} s · finish_reason={out.finish_reason}]")

    def abort(self, reason: str) -> None:
        """The answer ended without finishing (Ctrl+C, a prompt too long for the context)."""
        if self.live:
            self.live.stop()
        self._end_line()
        self.note(f"[{reason}]")

    # ---- rendering
    def _event(self, kind: str, text: str) -> None:
        if kind == "close":
            if self.in_answer:  # a second </think>: what was shown as the answer was still thinking
                self.held = ""
                self._line("\n" + THINK_END)
            else:
                self._close_thinking(self.thinking_tokens)
            return
        if kind == "answer" and not self.answer_shown:
            text = text.lstrip()  # the blank lines after </think>
            self.answer_shown = bool(text)
        self._write(kind, text)

    def _close_thinking(self, tokens: int) -> None:
        self.in_answer, self.held = True, ""
        seconds = time.perf_counter() - self.start
        if self.live:
            self.live.stop()
            self.live = None
        if self.mode == "fold":
            self._line(f"{'▸ ' if self.tty else ''}[thought for {tokens} tokens, {seconds:.1f} s]")
        elif self.mode == "show" and self.shown_think:
            self._line("\n" + ("─" * 20 if self.tty else THINK_END))

    def _write(self, kind: str, text: str) -> None:
        # Trailing whitespace waits for more text: at a </think> or the end it is dropped, so the
        # tags and the stats line are not preceded by blank lines.
        text, self.held = self.held + text, ""
        body = text.rstrip()
        text, self.held = body, text[len(body):]
        if not text:
            return
        if kind == "thinking" and not self.in_answer:
            if self.mode != "show":
                self.tail = (self.tail + text)[-TAIL_CHARS:]
                if self.live:
                    self.live.update(self._window())
                return
            if not self.shown_think:
                self.shown_think = True
                text = text.lstrip()
                if not self.tty:
                    text = f"{THINK_START}\n{text}"
        if self.tty:
            self.console.out(text, style="dim" if kind == "thinking" else None, highlight=False, end="")
        else:
            sys.stdout.write(text)
            sys.stdout.flush()

    def _end_line(self) -> None:
        self.held = ""
        if self.tty:
            self.console.out("")
        else:
            print(flush=True)

    def _line(self, text: str) -> None:
        if self.tty:
            self.console.print(Text(text, style="dim"))
        else:
            print(text, flush=True)

    def _window(self) -> Text:
        """The live thinking window of "fold" (last lines of the thinking), or a status line for "hide"."""
        status = Text(f"thinking… {self.thinking_tokens} tokens", style="dim bold")
        if self.mode == "hide" or not self.tail:
            return status
        lines = Text(self.tail, style="dim").wrap(self.console, self.console.width)[-FOLD_LINES:]
        return Text("\n").join([status, *lines])
