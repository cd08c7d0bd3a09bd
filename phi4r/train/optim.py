"""AdamW with decoupled weight decay on matrices, and the warm-up + cosine learning-rate schedule.

The schedule is a pure function of the step, so a resumed run needs only the step to continue it.
"""
from __future__ import annotations

import math

import torch


def make_optimizer(model: torch.nn.Module, cfg) -> torch.optim.AdamW:
    # Decay matrices (embeddings, projections) only: decaying RMSNorm gains towards 0 hurts.
    params = {id(p): p for p in model.parameters() if p.requires_grad}.values()  # tied weights once
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.learning_rate, betas=(cfg.adam_beta1, cfg.adam_beta2),
                             eps=cfg.adam_epsilon)


def lr_at(step: int, peak: float, warmup_steps: int, total_steps: int) -> float:
    """Learning rate of optimizer step `step` (0-based): linear warm-up to `peak`, then cosine to 0."""
    if step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return peak * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def clip_grad_norm(model: torch.nn.Module, max_norm: float) -> float:
    """Clip when max_norm > 0; always return the (pre-clip) total norm for the log."""
    params = [p for p in model.parameters() if p.grad is not None]
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm if max_norm > 0 else float("inf"))
    return float(norm)
