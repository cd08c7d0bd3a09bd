"""Random-weight Phi-3 checkpoints with a small trained tokenizer: for tests, benchmarks, examples.

Nothing is downloaded: the tokenizer is trained on a built-in corpus in well under a second.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from .chat import DEFAULT_SYSTEM_PROMPT
from .checkpoint import save
from .config import Phi3Config
from .model import Phi3ForCausalLM

_CORPUS = [
    DEFAULT_SYSTEM_PROMPT,
    "What is 12 + 7? Let me add the ones digits first. 2 + 7 = 9, so the answer is 19.",
    "The quick brown fox jumps over the lazy dog. Final Answer: 42",
    "def add(a, b):\n    return a + b\n\nprint(add(3, 4))\n",
    "<final_answer>{'Solution': 'True, False, True'}</final_answer> Unsatisfiable",
    "Path 0->1->2->0, TotalDistance 17. Monday 09:00-10:30. Right turn, left turn, north east.",
    "Über café naïve 東京 😀 — unicode text survives the byte-level tokenizer.",
] + [f"{a} + {b} = {a + b}; {a} * {b} = {a * b}." for a in range(0, 30, 3) for b in range(1, 20, 4)]

TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=512, rope_theta=10000.0)


def tiny_tokenizer(vocab_size: int = 512, system_prompt: str | None = None):
    from .tokenizer import train_bpe

    return train_bpe(_CORPUS, vocab_size=vocab_size, system_prompt=system_prompt)


def make_checkpoint(path: str | os.PathLike, seed: int = 0, dtype: torch.dtype = torch.float32,
                    vocab_size: int = 512, system_prompt: str | None = None, tokenizer=None,
                    **config_overrides) -> Path:
    """Write a random-weight checkpoint (config TINY updated by `config_overrides`) to `path`."""
    tokenizer = tokenizer or tiny_tokenizer(vocab_size, system_prompt)
    fields = {**TINY, **config_overrides}
    fields.setdefault("vocab_size", max(tokenizer.vocab_size, vocab_size))
    config = Phi3Config(bos_token_id=tokenizer.bos_id, eos_token_id=tokenizer.eos_id,
                        pad_token_id=tokenizer.pad_id, torch_dtype=str(dtype).removeprefix("torch."), **fields)
    torch.manual_seed(seed)
    model = Phi3ForCausalLM(config)
    # Larger-than-default init (std 2/sqrt(fan_in)) so random models write varied, non-degenerate text.
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 2.0 / p.shape[1] ** 0.5)
    save(model.to(dtype), tokenizer, path)
    return Path(path)
