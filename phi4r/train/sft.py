"""Supervised fine-tuning on reasoning traces (the report's SFT stage, scaled to any model).

Loss: mean negative log-likelihood over the assistant tokens of the whole global batch (system
and user tokens are never targets). The mean is over the GLOBAL token count, so gradient
accumulation and any number of torchrun processes give the same update as one big batch.

    from phi4r.train.config import SFTConfig
    from phi4r.train.sft import train_sft
    final_dir = train_sft(SFTConfig(model="ckpt", tasks=["arithmetic"], n_per_task=500, max_steps=200))
"""
from __future__ import annotations

import math
import time
from pathlib import Path

import torch
from . import data as data_mod
from . import distributed as dist
from . import models
from .logprobs import pad_batch, token_logprobs
from .optim import optimizer_step
from .run import Run

PLOT_KEYS = ["loss", "eval_loss", "lr", "grad_norm", "tokens_per_s"]
# An eval_loss over one or two conversations says little about the model (and a small data set
# holding out 5% holds out one): hold out at least this many while a quarter of the data allows.
MIN_HELDOUT = 8


def load_conversations(cfg) -> list[list[dict]]:
    conversations = []
    if cfg.tasks:
        conversations += data_mod.teacher_conversations(cfg.tasks, cfg.n_per_task, cfg.seed, cfg.difficulty)
    if cfg.data:
        conversations += data_mod.jsonl_conversations(cfg.data)
    return conversations


def micro_batches(items: list, size: int) -> list[list]:
    return [items[i:i + size] for i in range(0, len(items), size)]


def summed_nll(model, examples: list[data_mod.Example], pad_id: int, device, bf16: bool, chunk: int = 0) -> torch.Tensor:
    """Sum of -log p over the target tokens of `examples`."""
    ids, mask = pad_batch([e.ids for e in examples], [e.mask for e in examples], pad_id, device)
    return -(token_logprobs(model, ids, bf16, chunk_size=chunk) * mask[:, 1:]).sum()


@torch.no_grad()
def evaluate(model, examples: list[data_mod.Example], cfg, pad_id: int, device) -> float:
    """Held-out loss (token mean), each rank scoring its share."""
    mine = dist.shard(examples)
    # A rank out of held-out examples scores one more (weight 0): FSDP needs the same forwards on all.
    nll = sum(float(summed_nll(model, mb or examples[:1], pad_id, device, cfg.bf16, cfg.loss_chunk_size)) * bool(mb)
              for mb in dist.lockstep(micro_batches(mine, cfg.per_device_train_batch_size), None))
    nll, tokens = dist.all_sum([nll, sum(sum(e.mask) for e in mine)], device)
    return nll / tokens


def train_step(ddp, model, optimizer, batch: list[data_mod.Example], cfg, step: int, total: int, pad_id: int,
               device) -> tuple[float, float, float]:
    """Optimizer step `step` of `total` on a global batch (this rank's share, in micro-batches);
    (loss, grad norm, lr)."""
    n_targets = sum(sum(e.mask) for e in batch)  # global: every rank computes the same count
    micro = micro_batches(dist.shard(batch), cfg.per_device_train_batch_size)
    nll = 0.0
    for j, mb in enumerate(micro):
        # Gradients are reduced on the last micro-batch only; DDP and FSDP average, hence * world size.
        sync = j == len(micro) - 1 or not dist.is_distributed()
        with dist.grad_sync(ddp, sync):
            loss = summed_nll(ddp, mb, pad_id, device, cfg.bf16, cfg.loss_chunk_size)
            (loss * dist.world_size() / n_targets).backward()
        nll += loss.item()
    grad_norm, lr = optimizer_step(model, optimizer, cfg, step, total)
    (nll,) = dist.all_sum([nll], device)
    return nll / n_targets, grad_norm, lr


def train_sft(cfg, conversations: list[list[dict]] | None = None, examples: list[data_mod.Example] | None = None,
              callback=None) -> Path:
    """Run SFT as `cfg` says; returns the final model's directory. Besides cfg's data: `conversations`,
    and `examples` already encoded (token ids and loss mask, e.g. synthetic sequences).

    `callback` (as TRL's TrainerCallback; every rank calls it): `on_evaluate(model, step) -> dict` adds
    metrics at each evaluation, `should_stop(step)` ends the run before max_steps, and its `state`
    (a dict of plain values) is kept in the checkpoints, so a resumed run stops where an
    uninterrupted one would."""
    run = Run(cfg, "sft", PLOT_KEYS)
    model, tokenizer, device = run.model, run.tokenizer, run.device

    # Data: encode once, drop what does not fit, hold some out.
    max_length = min(cfg.max_length, model.config.max_position_embeddings)
    encoded = [data_mod.encode_conversation(tokenizer, messages, cfg.system_prompt)
               for messages in load_conversations(cfg) + list(conversations or [])] + list(examples or [])
    fit = [e for e in encoded if len(e.ids) <= max_length]
    dropped = len(encoded) - len(fit)
    train, heldout = data_mod.split_heldout(fit, cfg.eval_fraction, cfg.seed, MIN_HELDOUT)
    global_batch = cfg.per_device_train_batch_size * cfg.gradient_accumulation_steps * dist.world_size()
    order = data_mod.BatchOrder(len(train), global_batch, cfg.seed,
                                [len(e.ids) for e in train] if cfg.group_by_length else None)
    total = cfg.max_steps or max(1, math.ceil(cfg.num_train_epochs * order.steps_per_epoch))
    data_position = {"examples": len(train), "global_batch": global_batch, "steps_per_epoch": order.steps_per_epoch}

    # The logged loss is the mean over each step's batch (before its update), so it follows what the
    # batches hold; grouped by length, one batch can be all short (easy) conversations and the next
    # all long (hard) ones. eval_loss, always over the same held-out set, is the one to compare.
    grouping = ("; batches grouped by length, so a step's loss follows its batch's lengths: compare eval_loss"
                if cfg.group_by_length else "")
    ddp, optimizer, step = run.start(data_position, total, (
        f"{len(train)} train / {len(heldout)} held-out conversations ({dropped} longer than max_length={max_length} "
        f"dropped), global batch {global_batch}, {total} steps, {dist.world_size()} process(es) on {device}, "
        f"{models.trainable(model)}{grouping}"))
    if callback is not None:
        callback.state.update(run.summary.get("callback", {}))

    window = {"loss": 0.0, "tokens": 0, "steps": 0, "time": 0.0}
    stop = lambda: step >= total or (callback is not None and callback.should_stop(step))  # noqa: E731
    while not stop():
        started = time.perf_counter()
        batch = [train[i] for i in order.batch(step)]
        loss, grad_norm, lr = train_step(ddp, model, optimizer, batch, cfg, step, total, run.pad_id, device)
        step += 1
        window["loss"] += loss
        window["tokens"] += sum(len(e.ids) for e in batch)
        window["steps"] += 1
        window["time"] += time.perf_counter() - started  # training only, not evaluation or saving

        record = {}
        if (heldout or callback is not None) and (step % cfg.eval_steps == 0 or stop()):
            record = {"eval_loss": evaluate(model, heldout, cfg, run.pad_id, device)} if heldout else {}
            record.update(callback.on_evaluate(model, step) if callback is not None else {})
        done = stop()  # after the evaluation, which may decide it
        if step % cfg.logging_steps == 0 or done:
            record.update({"loss": window["loss"] / window["steps"], "lr": lr, "grad_norm": grad_norm,
                           "tokens_per_s": window["tokens"] / window["time"],
                           "steps_per_s": window["steps"] / window["time"], "epoch": step / order.steps_per_epoch})
            window = {"loss": 0.0, "tokens": 0, "steps": 0, "time": 0.0}
        run.step_done(step, record, {"loss": loss, "epoch": step / order.steps_per_epoch,
                                     **({"callback": callback.state} if callback is not None else {})},
                      done, shown=("loss", "eval_loss", "lr"))
    return run.finish()
