"""Flags shared by the commands: the model options (every command that loads a model), sampling, numbers.

Sampling flags default to None so the engine fills them from the checkpoint's generation_config.json
(Phi-4-reasoning: temperature 0.8, top_p 0.95, top_k 50): clients that silently drop the card's
defaults are a known problem, so an unset flag must never mean a hard-coded value here.
"""
from __future__ import annotations

import argparse
import math
import os
import sys


def number(kind, low: float, what: str, high: float = math.inf):
    """An argparse type: a finite `kind` (int or float) in [low, high], else a one-line error saying what is wanted."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
        if not math.isfinite(value) or not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}")
        return value
    return parse


def int_list(text: str) -> list[int]:
    """An argparse type: comma-separated positive integers, e.g. 1,4,16."""
    values = [positive_int(x) for x in text.split(",") if x.strip()]
    if not values:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of positive integers")
    return values


def names_from(known, what: str):
    """An argparse type: a comma-separated list of names from `known` (in the order given), else an
    error naming the first unknown one and the choices."""
    def parse(text: str) -> list[str]:
        names = [x.strip() for x in text.split(",") if x.strip()]
        unknown = [n for n in names if n not in known]
        if unknown or not names:
            raise argparse.ArgumentTypeError(f"unknown {what} {(unknown or [text])[0]!r}; choose from {','.join(known)}")
        return names
    return parse


def kv_memory(text: str):
    """An argparse type: a KV cache budget, bytes or a fraction (phi4r.kv_budget.parse_memory)."""
    from phi4r.kv_budget import parse_memory

    try:
        parse_memory(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


positive_int = number(int, 1, "a positive integer")
count = number(int, 0, "an integer >= 0")
non_negative = number(float, 0, "a number >= 0")


def add_model_args(p, group=None, precision: bool = True, **model) -> None:
    """--model, --dtype, --quantization, --threads, --compile, --kv-cache-memory. `group` holds --model (e.g. a mutually
    exclusive group with --endpoint); `model` overrides --model's default/help; precision=False leaves
    out --dtype/--quantization (a command that sweeps them itself)."""
    (group or p).add_argument("--model", **{"default": "nano", "help": "'nano' (the shipped model), a checkpoint "
                                            "directory or a .gguf file [nano]", **model})
    if precision:
        p.add_argument("--dtype", help="float32, bfloat16 or float16 [the checkpoint's; bfloat16 with int8/w8a8/int4]")
        p.add_argument("--quantization", choices=["int8", "w8a8", "int4"],
                       help="int8: weight-only int8 linear layers (faster decoding); w8a8: int8 weights and "
                            "per-token int8 activations (faster batched decoding, slightly less accurate); "
                            "int4: weight-only int4, group-wise (fastest decoding, least memory, least accurate)")
    p.add_argument("--threads", type=positive_int, help="torch CPU threads [1 for small models such as nano, else "
                                                        "one per core]; fewer is faster on a busy machine")
    p.add_argument("--compile", action="store_true", default=None,
                   help="decode through torch.compile: faster steps after 5-70 s of compiling at start "
                        "(worth it for serving and long runs; also PHI4R_COMPILE=1)")
    p.add_argument("--kv-cache-memory", type=kv_memory, metavar="SIZE|FRACTION",
                   help="the KV cache's budget: a size (8GiB, 512MiB, bytes) or a fraction of the memory available "
                        "after loading (0.5); requests wait or are preempted and recomputed when it is full "
                        "[room for max(context, 2048 x max-num-seqs) tokens, at most half the available memory]")


def add_sampling_args(p, loop_guard: bool | None = None, **seed):
    """The sampling flags (and --loop-guard unless None; `seed` overrides --seed's default/help)."""
    g = p.add_argument_group("sampling (unset: the checkpoint's generation_config.json)")
    g.add_argument("--temperature", type=non_negative, help="0 is greedy")
    g.add_argument("--top-p", type=number(float, 0, "a number in (0, 1]", 1))
    g.add_argument("--top-k", type=number(int, -1, "an integer >= -1"), help="0 or -1: no top-k")
    g.add_argument("--max-tokens", type=positive_int, help="tokens per answer, thinking included [what the context leaves]")
    g.add_argument("--thinking-budget", type=count, help="thinking tokens before </think> is forced")
    g.add_argument("--seed", type=int, **{"help": "makes the run reproducible", **seed})
    g.add_argument("--system-prompt", help="replaces the default system prompt ('' for none)")
    if loop_guard is not None:
        add_loop_guard_arg(g, loop_guard)
    return g


def add_loop_guard_arg(p, default: bool) -> None:
    p.add_argument("--loop-guard", action=argparse.BooleanOptionalAction, default=default,
                   help="end an answer stuck repeating itself (finish_reason 'repetition') "
                        f"[{'on' if default else 'off'}]")


def sampling_params(args, **fields):
    """SamplingParams from the flags (unset ones stay None); `fields` add or override."""
    from phi4r.sampling import SamplingParams

    return SamplingParams(temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
                          max_tokens=args.max_tokens, thinking_budget=args.thinking_budget,
                          loop_guard=args.loop_guard, **fields)


def model_kwargs(args) -> dict:
    """LLM keyword arguments for the model flags (LLM applies the small-model one-thread rule)."""
    return {"model": args.model, "dtype": getattr(args, "dtype", None),
            "quantization": getattr(args, "quantization", None), "threads": args.threads, "compile": args.compile,
            "kv_cache_memory": getattr(args, "kv_cache_memory", None)}


def load_llm(args, command: str, **engine):
    """The LLM the flags name (errors propagate to cli.main, which prints them on one line)."""
    from phi4r.api import LLM

    if args.compile or (args.compile is None and os.environ.get("PHI4R_COMPILE") == "1"):
        print(f"phi4r {command}: the first decode steps compile (5-70 s) before tokens flow", file=sys.stderr)
    return LLM(**model_kwargs(args), **engine)
