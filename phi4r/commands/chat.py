"""`phi4r chat`: talk to a model in the terminal, or ask one question and print the streamed answer.

    phi4r chat "What is 17 + 25?"                 # one-shot: stream the thinking and the answer, exit
    phi4r chat                                    # interactive, multi-turn (/reset, /think, /exit)
    phi4r chat --model ~/models/Phi-4-reasoning --quantization int8 --fold-thinking
"""
from __future__ import annotations

import sys

from ._options import add_model_args, add_sampling_args, load_llm, sampling_params

EPILOG = ("Interactive commands: /reset (forget the conversation), /think [show|fold|hide] (how thinking is "
          "shown; no argument cycles), /exit (or Ctrl+D). Ctrl+C stops the current answer. Without a terminal "
          "(a pipe, CI) the thinking is printed between <think> and </think> lines, and the stats line goes to "
          "stderr.")
HELP = "/reset: forget the conversation · /think [show|fold|hide]: thinking display · /exit: quit"


def register(subparsers) -> None:
    p = subparsers.add_parser("chat", help="chat with a model in the terminal, or answer one prompt",
                              description=__doc__.split("\n")[0], epilog=EPILOG)
    p.add_argument("prompt", nargs="?", help="answer this one prompt and exit [interactive chat]")
    add_model_args(p)
    add_sampling_args(p, loop_guard=True)
    shown = p.add_mutually_exclusive_group()
    shown.add_argument("--fold-thinking", action="store_const", dest="thinking", const="fold",
                       help="show the thinking live in a small window, then fold it to one line")
    shown.add_argument("--hide-thinking", action="store_const", dest="thinking", const="hide",
                       help="print only the answer")
    p.set_defaults(func=_run, thinking="show")


def _run(args) -> int:
    from ._chat_view import ChatView

    if args.prompt is not None and not args.prompt.strip():
        raise ValueError("empty prompt")
    params = sampling_params(args)
    llm = load_llm(args, "chat", max_num_seqs=1, seed=args.seed)
    view = ChatView(mode=args.thinking)
    if args.prompt is not None:
        return 0 if _answer(llm, view, [{"role": "user", "content": args.prompt}], params, args) is not None else 1
    return _interactive(llm, view, params, args)


def _answer(llm, view, history: list[dict], params, args) -> str | None:
    """Stream one answer; returns its content ("" when there is none), or None if it did not finish."""
    from phi4r.engine import ContextLengthError

    view.begin()
    stream = llm.stream(history, params, system_prompt=args.system_prompt)
    final = None
    try:
        for delta in stream:
            view.feed(delta)
            final = delta if delta.request is not None else final
    except KeyboardInterrupt:
        view.abort("interrupted")
        return None
    except ContextLengthError as e:
        view.abort(f"{e}; /reset starts a new conversation")
        return None
    finally:
        stream.close()  # aborts the request if we stopped early
    view.end(final)
    return final.output.content or ""


def _interactive(llm, view, params, args) -> int:
    from ._chat_view import MODES

    tty = sys.stdin.isatty()
    if tty:
        import readline  # noqa: F401  (line editing and history for input())

        view.note(f"phi4r chat · {args.model} · {HELP}")
    history: list[dict] = []
    while True:
        try:
            line = input(">>> ") if tty else sys.stdin.readline()
        except (EOFError, KeyboardInterrupt):
            line = ""
            if tty:
                print()
        if not line:  # end of input
            return 0
        line = line.strip()
        if not line:
            continue
        command, _, arg = line.partition(" ")
        if command in ("/exit", "/quit"):
            return 0
        if command == "/reset":
            history.clear()
            view.note("[conversation cleared]")
        elif command == "/think":
            view.mode = arg.strip() if arg.strip() in MODES else MODES[(MODES.index(view.mode) + 1) % len(MODES)]
            view.note(f"[thinking: {view.mode}]")
        elif command in ("/help", "/?"):
            view.note(HELP)
        elif command.startswith("/"):
            view.note(f"[unknown command {command}; {HELP}]")
        else:
            turn = history + [{"role": "user", "content": line}]
            content = _answer(llm, view, turn, params, args)
            if content is not None:  # an interrupted answer is not part of the conversation
                history = turn + [{"role": "assistant", "content": content}]
