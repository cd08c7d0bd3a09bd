"""`phi4r` command line: one subcommand per module in phi4r/commands/.

Each command module exposes `register(subparsers)`, which adds its parser and sets `func`; modules
import torch only inside `func`, so `phi4r --help` stays instant.

A user's mistake (a bad flag, a missing file, a checkpoint that is not one, a value phi4r refuses)
is one line on stderr, `phi4r COMMAND: message`, and exit status 2 (1 for a file that cannot be
read). Anything else is a bug and keeps its traceback; PHI4R_DEBUG=1 shows tracebacks for all.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback
from pathlib import Path

COMMANDS = ["chat", "generate", "serve", "eval", "train", "bench", "quantize", "export_gguf", "merge_lora"]
PACKAGE = Path(__file__).resolve().parent


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors: the usage of a command with 20 flags buries the message."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="phi4r", description="Run, serve, evaluate and train Phi-4-reasoning models.")
    parser.add_argument("--version", action="version", version=f"phi4r {importlib.import_module('phi4r').__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")  # subparsers are Parsers too
    for name in COMMANDS:
        importlib.import_module(f"phi4r.commands.{name}").register(sub)
    return parser


def user_error(e: BaseException) -> int | None:
    """The exit status for an exception that reports a user's mistake, None for a bug.

    phi4r validates with ValueError (CheckpointError, ContextLengthError, ... are subclasses), so a
    ValueError raised by phi4r's own code is a refusal; one raised inside torch or another library
    is not, nor is a ValueError phi4r code trips over (unpacking), which has no `raise` of its own.
    """
    if isinstance(e, OSError) and e.filename is not None:
        return 1  # a file or directory the user named is missing or unreadable
    if not isinstance(e, ValueError):
        return None
    frames = traceback.extract_tb(e.__traceback__)
    last = frames[-1] if frames else None
    if last is None or not Path(last.filename).resolve().is_relative_to(PACKAGE):
        return None
    return 2 if (last.line or "").lstrip().startswith("raise") else None


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    command = " ".join(c for c in (args.command, getattr(args, "train_command", None)) if c)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:  # Ctrl+C where the command has nothing to save (loading, say)
        if os.environ.get("PHI4R_DEBUG") == "1":
            raise
        print(f"\nphi4r {command}: interrupted", file=sys.stderr)
        return 130
    except (OSError, ValueError) as e:
        status = user_error(e)
        if status is None or os.environ.get("PHI4R_DEBUG") == "1":
            raise
        message = str(e) if not isinstance(e, OSError) else f"{e.strerror}: {e.filename}"
        print(f"phi4r {command}: {message}", file=sys.stderr)
        return status


if __name__ == "__main__":
    sys.exit(main())
