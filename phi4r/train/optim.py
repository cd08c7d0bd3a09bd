"""The optimizer and the update every training loop ends a step with (SFT, GRPO, the recipes' stages).

AdamW with decoupled weight decay on matrices; the learning rate is a pure function of the step
(linear warm-up, then cosine to 0 or constant, TRL's `lr_scheduler_type`), so a resumed run needs
only the step to continue its schedule. Mixed precision is bf16 autocast around the forward
(`logprobs.token_logprobs`, on the device the tensors are on): weights, gradients and AdamW state
stay fp32 and bf16 needs no loss scaling, so the step itself is precision-agnostic.
"""
from __future__ import annotations

import math

import torch

SCHEDULES = ("cosine", "constant_with_warmup")


def make_optimizer(model: torch.nn.Module, cfg) -> torch.optim.AdamW:
    # Decay matrices (embeddings, projections) only: decaying RMSNorm gains towards 0 hurts.
    params = {id(p): p for p in model.parameters() if p.requires_grad}.values()  # tied weights once
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.learning_rate, betas=(cfg.adam_beta1, cfg.adam_beta2),
                             eps=cfg.adam_epsilon)


def lr_at(step: int, peak: float, warmup_steps: int, total_steps: int, schedule: str = "cosine") -> float:
    """Learning rate of optimizer step `step` (0-based): linear warm-up to `peak`, then cosine to 0
    at `total_steps` or constant."""
    if schedule not in SCHEDULES:
        raise ValueError(f"lr_scheduler_type must be one of {SCHEDULES}, got {schedule!r}")
    if step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    if schedule == "constant_with_warmup":
        return peak
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return peak * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def optimizer_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, cfg, step: int, total: int) -> tuple[float, float]:
    """Optimizer step `step` of `total` on the accumulated gradients: the schedule's learning rate,
    gradients clipped to cfg.max_grad_norm (when > 0), AdamW, gradients cleared.
    Returns (total gradient norm before clipping, learning rate) for the log."""
    lr = lr_at(step, cfg.learning_rate, cfg.warmup_steps, total, cfg.lr_scheduler_type)
    for group in optimizer.param_groups:
        group["lr"] = lr
    params = [p for p in model.parameters() if p.grad is not None]
    norm = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm if cfg.max_grad_norm > 0 else float("inf"))
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return float(norm), lr
