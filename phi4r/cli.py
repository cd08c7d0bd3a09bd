"""`phi4r` command line: one subcommand per module in phi4r/commands/.

Each command module exposes `register(subparsers)`, which adds its parser and sets `func`; modules
import torch only inside `func`, so `phi4r --help` stays instant.
"""
from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS = ["chat", "generate", "serve", "eval", "train", "bench", "merge_lora"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="phi4r", description="Run, serve, evaluate and train Phi-4-reasoning models.")
    parser.add_argument("--version", action="version", version=f"phi4r {importlib.import_module('phi4r').__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"phi4r.commands.{name}")
        except ModuleNotFoundError as e:
            if e.name != f"phi4r.commands.{name}":
                raise
            continue  # command not built yet
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
