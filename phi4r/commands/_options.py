"""Model and sampling flags shared by `phi4r chat` and `phi4r generate`.

Sampling flags default to None so the engine fills them from the checkpoint's generation_config.json
(Phi-4-reasoning: temperature 0.8, top_p 0.95, top_k 50): clients that silently drop the card's
defaults are a known problem, so an unset flag must never mean a hard-coded value here.
"""
from __future__ import annotations

import sys

# One torch thread for models under this size unless --threads says otherwise (LLM's rule; see api.py).
SMALL_MODEL = 100 * 10**6


def add_model_args(p) -> None:
    p.add_argument("--model", default="nano", help="'nano' (the shipped model) or a checkpoint directory [nano]")
    p.add_argument("--dtype", help="float32, bfloat16 or float16 [the checkpoint's; bfloat16 with int8/w8a8]")
    p.add_argument("--quantization", choices=["int8", "w8a8"],
                   help="int8: weight-only int8 linear layers (faster decoding); w8a8: int8 weights and per-token "
                        "int8 activations (faster batched decoding, slightly less accurate)")
    p.add_argument("--threads", type=int, help=f"torch CPU threads [1 for models under {SMALL_MODEL // 10**6}M "
                                               "parameters, else one per core]; fewer is faster on a busy machine")
    p.add_argument("--compile", action="store_true", default=None,
                   help="decode through torch.compile: faster steps after 5-70 s of compiling at start "
                        "(worth it for serving and long runs; also PHI4R_COMPILE=1)")


def add_sampling_args(p) -> None:
    g = p.add_argument_group("sampling (unset: the checkpoint's generation_config.json)")
    g.add_argument("--temperature", type=float, help="0 is greedy")
    g.add_argument("--top-p", type=float)
    g.add_argument("--top-k", type=int, help="0 or -1: no top-k")
    g.add_argument("--max-tokens", type=int, help="tokens per answer, thinking included [what the context leaves]")
    g.add_argument("--thinking-budget", type=int, help="thinking tokens before </think> is forced")
    g.add_argument("--seed", type=int, help="makes the run reproducible")
    g.add_argument("--system-prompt", help="replaces the checkpoint's default system prompt ('' for none)")


def sampling_params(args, **fields):
    """SamplingParams from the flags (unset ones stay None); `fields` add or override."""
    from phi4r.sampling import SamplingParams

    return SamplingParams(temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
                          max_tokens=args.max_tokens, thinking_budget=args.thinking_budget, **fields)


def load_llm(args, command: str, max_num_seqs: int):
    """The LLM the flags name, or None after printing why it cannot be loaded."""
    from phi4r.api import LLM
    from phi4r.checkpoint import CheckpointError

    try:
        return LLM(args.model, dtype=args.dtype, quantization=args.quantization, max_num_seqs=max_num_seqs,
                   seed=args.seed, threads=args.threads,  # LLM applies the small-model one-thread rule
                   compile=getattr(args, "compile", None))
    except (CheckpointError, ValueError) as e:
        print(f"phi4r {command}: {e}", file=sys.stderr)
        return None
