"""How `phi4r chat` shows a streamed answer: the thinking, then the answer, then a stats line.

Thinking modes: "show" prints it in full (dimmed on a terminal); "fold" shows it live in a small
window that collapses to one line "thought for N tokens" when the answer starts; "hide" prints none
of it. On a terminal the view uses rich; otherwise (a pipe, CI) it writes plain text with explicit
`<think>` / `</think>` lines, and the stats and notes go to stderr so stdout holds only the answer.

The answer streams as it is written (the engine's eager deltas). If the model closes its thinking
again, the engine corrects the answer shown so far into thinking (`Delta.reclassified`): text once
printed stays, so the view marks the spot (a `</think>` line, and on a terminal a note) and what
follows the last mark is the answer.
"""
from __future__ import annotations

import sys
import time

from rich.console import Console
from rich.live import Live
from rich.text import Text

from phi4r.reasoning import THINK_END, THINK_START

MODES = ("show", "fold", "hide")
FOLD_LINES = 4  # thinking lines visible in the live window of "fold"
TAIL_CHARS = 4000  # thinking text kept for that window (the rest has scrolled away)


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
            self.thinking_tokens = delta.reasoning_tokens
        if delta.reclassified:  # the answer shown so far (and this reasoning) was thinking after all
            self._write("answer", delta.reasoning)
            self._reopen()
        elif delta.reasoning:
            self._write("thinking", delta.reasoning)
        if delta.content:
            if not self.in_answer:
                self._close_thinking(self.thinking_tokens)
            if not self.answer_shown:
                self.answer_shown = bool(delta.content.lstrip())  # the blank lines after </think> are dropped
                self._write("answer", delta.content.lstrip())
            else:
                self._write("answer", delta.content)

    def end(self, final) -> None:
        """`final`: the delta that finished the request (its .output and .request are set)."""
        out = final.output
        if not self.in_answer:
            self._close_thinking(out.reasoning_tokens)
            if out.finish_reason == "error":
                self._write("answer", f"[no answer: the engine failed on this request: {out.error}]")
            elif THINK_END not in out.text:  # the thinking never closed
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
    def _reopen(self) -> None:
        """Mark a correction: the answer printed since the last mark was thinking."""
        self.held, self.answer_shown = "", False
        if self.tty:
            self._end_line()
            self._line("[the model closed its thinking again: the text above was thinking too]")
            self._line("─" * 20)
        else:
            self._line("\n" + THINK_END)

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
