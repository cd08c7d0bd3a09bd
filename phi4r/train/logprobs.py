"""Padded batches and per-token log-probabilities: what both trainers' losses are built from.

Sequences are right-padded: with causal attention a pad token only ever follows the real tokens,
so padding changes nothing for them and its positions are masked out of every loss.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def pad_batch(seqs: list[list[int]], masks: list[list[int]], pad_id: int,
              device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids [B, T], mask [B, T] float) right-padded to the longest sequence."""
    T = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), T), dtype=torch.float32)
    for b, (s, m) in enumerate(zip(seqs, masks)):
        ids[b, :len(s)] = torch.tensor(s)
        mask[b, :len(m)] = torch.tensor(m, dtype=torch.float32)
    return ids.to(device), mask.to(device)


def token_logprobs(model, ids: torch.Tensor, autocast: bool = False, temperature: float = 1.0) -> torch.Tensor:
    """log p(ids[:, t] | ids[:, :t]) for t >= 1, shape [B, T-1] (position 0 has no prediction).

    `temperature` scales the logits as sampling did, so GRPO's ratios compare the distributions the
    samples were really drawn from. Computed in fp32: bf16 log-softmax is too coarse for ratios."""
    with torch.autocast(ids.device.type, dtype=torch.bfloat16, enabled=autocast):
        logits = model(ids[:, :-1])
    logits = logits.float() / temperature if temperature != 1.0 else logits.float()
    targets = ids[:, 1:]
    return -F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none").view_as(targets)
