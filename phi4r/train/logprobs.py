"""Padded batches and per-token log-probabilities: what both trainers' losses are built from.

Sequences are right-padded: with causal attention a pad token only ever follows the real tokens,
so padding changes nothing for them and its positions are masked out of every loss.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint


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


def token_logprobs(model, ids: torch.Tensor, autocast: bool = False, temperature: float = 1.0,
                   chunk_size: int = 0) -> torch.Tensor:
    """log p(ids[:, t] | ids[:, :t]) for t >= 1, shape [B, T-1] (position 0 has no prediction).

    `temperature` scales the logits as sampling did, so GRPO's ratios compare the distributions the
    samples were really drawn from. Computed in fp32: bf16 log-softmax is too coarse for ratios.
    With `chunk_size` > 0 the lm_head and log-softmax run over `chunk_size` positions at a time, each
    chunk recomputed in backward: the fp32 logits [B, T, V] (32K x 100K: 13 GB per sequence) never
    exist at once, only one chunk's."""
    targets = ids[:, 1:]

    def head(hidden: torch.Tensor, lm_head: torch.nn.Linear) -> torch.Tensor:
        if chunk_size <= 0 or chunk_size >= hidden.shape[1]:
            return _logprobs(lm_head, hidden, targets, temperature)
        return torch.cat([checkpoint(_logprobs, lm_head, hidden[:, s:s + chunk_size],
                                     targets[:, s:s + chunk_size], temperature, use_reentrant=False)
                          for s in range(0, hidden.shape[1], chunk_size)], dim=1)

    with torch.autocast(ids.device.type, dtype=torch.bfloat16, enabled=autocast):
        return model(ids[:, :-1], head=head)


def _logprobs(lm_head: torch.nn.Module, hidden: torch.Tensor, targets: torch.Tensor, temperature: float) -> torch.Tensor:
    logits = lm_head(hidden)
    with torch.autocast(hidden.device.type, enabled=False):  # the log-softmax in fp32 even under bf16 autocast
        logits = logits.float() / temperature if temperature != 1.0 else logits.float()
        return -F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none").view_as(targets)
