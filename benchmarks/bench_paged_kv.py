"""KV cache memory of the paged cache against the per-slot layout, priced at the Phi-4 shape.

    python benchmarks/bench_paged_kv.py [--max-tokens 64]

Runs the engine (greedy) on a small random checkpoint with an 8K context and counts the blocks the
paged cache has in use at its peak (the allocator's count: what the cache actually held), then prices
them at Phi-4-reasoning's KV shape (40 layers, 10 KV heads, head dim 128, bf16: 200 KiB per token).
The per-slot layout it replaced is [max_num_seqs, kv_heads, max_len, head_dim] per layer, max_len grown
by doubling from 256 to the longest sequence: its size is computed from the same runs.

Scenarios: one 7,000-token request plus 15 short ones (16 sequences, max_num_seqs 16); n=8 samples of
one 2,000-token prompt (paged: the prompt's blocks shared; also priced as 8 private copies).
"""
from __future__ import annotations

import argparse
import tempfile
import time

from phi4r.checkpoint import load, read_generation_config
from phi4r.engine import Engine
from phi4r.sampling import SamplingParams
from phi4r.tiny import _CORPUS, make_checkpoint

PHI4_BYTES_PER_TOKEN = 2 * 40 * 10 * 128 * 2  # K and V, 40 layers, 10 KV heads, head dim 128, bf16
BLOCK = 16


def per_slot_len(longest: int, limit: int) -> int:
    """The old layout's max_len: 256 doubled until it holds the longest sequence (at most the context)."""
    size = 256
    while size < longest:
        size *= 2
    return min(size, limit)


def gib(tokens: int) -> str:
    return f"{tokens * PHI4_BYTES_PER_TOKEN / 2**30:.2f} GiB"


def run(engine: Engine, requests: list[tuple[list[int], SamplingParams]]) -> float:
    start = time.perf_counter()
    for ids, params in requests:
        engine.add_request(None, ids, params)
    while engine.has_unfinished():
        engine.step()
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--max-tokens", type=int, default=64, help="tokens generated per sequence [64]")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = make_checkpoint(tmp, seed=0, max_position_embeddings=8192)
        model, tokenizer = load(path)
        text = tokenizer.encode(" ".join(_CORPUS) * 40)
        assert len(text) >= 7000, len(text)
        gen = SamplingParams(temperature=0, max_tokens=args.max_tokens, ignore_eos=True)
        rows = []

        # One long request and 15 short ones.
        engine = Engine(model, tokenizer, max_num_seqs=16, generation_config=read_generation_config(path))
        shorts = [tokenizer.encode(s) for s in _CORPUS[1:16]]
        seconds = run(engine, [(text[:7000], gen)] + [(s, gen) for s in shorts])
        peak = engine.cache.allocator.peak_used * BLOCK
        used = 7000 + sum(len(s) for s in shorts) + 16 * args.max_tokens
        old = 16 * per_slot_len(7000 + args.max_tokens, engine.max_model_len)
        rows.append(("7,000-token request + 15 short", used, peak, old, None, seconds))

        # n = 8 samples of one 2,000-token prompt.
        engine = Engine(model, tokenizer, max_num_seqs=16, generation_config=read_generation_config(path))
        seconds = run(engine, [(text[:2000], SamplingParams(temperature=0, n=8, max_tokens=args.max_tokens,
                                                            ignore_eos=True))])
        peak = engine.cache.allocator.peak_used * BLOCK
        used = 2000 + 8 * args.max_tokens
        copies = 8 * -(-(2000 + args.max_tokens) // BLOCK) * BLOCK
        old = 16 * per_slot_len(2000 + args.max_tokens, engine.max_model_len)
        rows.append(("n=8 samples of a 2,000-token prompt", used, peak, old, copies, seconds))

    print(f"KV cache at the Phi-4 shape ({PHI4_BYTES_PER_TOKEN // 1024} KiB per token), {args.max_tokens} tokens "
          f"generated per sequence, max_num_seqs 16, block {BLOCK} tokens")
    print()
    print("| scenario | tokens in the sequences | paged: peak blocks in use | per-sample prompt copies "
          "| per-slot layout (16 x max_len) | run |")
    print("|---|---|---|---|---|---|")
    for name, used, peak, old, copies, seconds in rows:
        copied = f"{copies:,} tokens = {gib(copies)}" if copies else "-"
        print(f"| {name} | {used:,} | {peak:,} tokens = {gib(peak)} | {copied} | {old:,} tokens = {gib(old)} "
              f"| {seconds:.1f} s |")


if __name__ == "__main__":
    main()
