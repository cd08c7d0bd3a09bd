"""GRPO with verifiable rewards (the report's RL stage for Phi-4-reasoning-plus).

Each step: take `num_prompts_per_step` prompts (split across processes), sample G completions per
prompt from the engine (one shared prefill per prompt; the engine wraps the very module being
trained, so its weights are always the current ones), score them with the task verifier shaped by
the length-aware reward (rewards.py), normalise rewards within each group into advantages, and
take `num_iterations` optimizer steps on the clipped policy-gradient loss (+ beta * KL to the frozen
initial model, k3 estimator), as TRL's GRPOTrainer does:

    ratio_t = exp(logp_t - logp_old_t)
    loss_t  = -min(ratio_t * A, clip(ratio_t, 1 - epsilon, 1 + epsilon_high) * A) + beta * k3_t
    k3_t    = exp(logp_ref_t - logp_t) - (logp_ref_t - logp_t) - 1

logp_old comes from the sampling policy: the training model under no_grad before the first update
(with one iteration it is logp itself, detached, so the ratio is exactly 1). Normalisers (sequences,
tokens) are global, so any number of torchrun processes takes the same step as one.
Sampling seeds depend only on (seed, step, prompt position): a run is reproducible and resumable.
"""
from __future__ import annotations

import copy
import random
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from .. import lora
from . import data as data_mod
from . import distributed as dist
from . import models
from .logprobs import pad_batch, token_logprobs
from .optim import optimizer_step
from .rewards import LengthConstants, Reward, reward
from .run import Run

LOSS_TYPES = ("grpo", "dapo", "bnpo", "dr_grpo")
PLOT_KEYS = ["reward", "accuracy", "completion_length", "truncated", "malformed", "repetition", "kl",
             "clip_ratio", "loss", "grad_norm", "lr"]


@dataclass
class Prompt:
    instance: object  # phi4r.tasks.Instance: what the verifier grades against
    ids: list[int]  # encode_chat(user prompt, add_generation_prompt=True)


@dataclass
class Completion:
    prompt: Prompt
    token_ids: list[int]  # generated tokens, the stop token included when it finished
    text: str
    correct: bool
    reward: Reward
    advantage: float = 0.0


def load_prompts(cfg, tokenizer, max_prompt_length: int) -> tuple[list[Prompt], int]:
    """(prompts that fit max_prompt_length, number dropped) from --tasks and/or --data."""
    from ..tasks import Instance

    instances = data_mod.task_instances(cfg.tasks, cfg.n_per_task, cfg.seed, cfg.difficulty) if cfg.tasks else []
    if cfg.data:
        for n, record in enumerate(data_mod.read_jsonl(cfg.data), 1):
            task = record.get("task") or cfg.verifier
            if not task or "prompt" not in record or "answer" not in record:
                raise ValueError(f"{cfg.data}:{n}: needs 'prompt', 'answer' and a 'task' (or --verifier)")
            instances.append(Instance.from_dict({"id": f"data-{n}", **record, "task": task}))
    prompts, dropped = [], 0
    for inst in instances:
        ids = tokenizer.encode_chat([{"role": "user", "content": inst.prompt}], add_generation_prompt=True,
                                    system_prompt=cfg.system_prompt)
        if len(ids) <= max_prompt_length:
            prompts.append(Prompt(inst, ids))
        else:
            dropped += 1
    return prompts, dropped


def sampling_seed(seed: int, step: int, position: int) -> int:
    """The seed of the prompt at `position` of global batch `step`: independent of rank and world size."""
    return random.Random(f"grpo-{seed}-{step}-{position}").getrandbits(63)


def rollout(llm, prompts: list[tuple[int, Prompt]], cfg, step: int) -> list[list]:
    """G samples for each (global position, prompt): one request, so one shared prefill, per prompt."""
    from ..sampling import SamplingParams

    params = [SamplingParams(n=cfg.num_generations, temperature=cfg.temperature, top_p=cfg.top_p, top_k=cfg.top_k,
                             min_p=0.0, max_tokens=cfg.max_completion_length, seed=sampling_seed(cfg.seed, step, pos))
              for pos, _ in prompts]
    return [r.outputs for r in llm.generate([p.ids for _, p in prompts], params, use_tqdm=False)]


def score(prompt: Prompt, outputs: list, cfg, constants: LengthConstants) -> list[Completion]:
    from ..tasks import get_task

    task = get_task(prompt.instance.task)
    group = []
    for out in outputs:
        correct = task.score(prompt.instance, out.text) >= 1.0  # full marks
        r = reward(out.text, out.token_ids, correct, out.finish_reason == "length", constants,
                   cfg.repetition_ngram, cfg.repetition_threshold)
        group.append(Completion(prompt, list(out.token_ids), out.text, correct, r))
    return group


def group_advantages(rewards: torch.Tensor, scale: bool) -> torch.Tensor:
    """rewards [P, G] -> (r - group mean) / (group std + 1e-4) (TRL: unbiased std; no scaling if off)."""
    centred = rewards - rewards.mean(dim=1, keepdim=True)
    return centred / (rewards.std(dim=1, keepdim=True) + 1e-4) if scale else centred


def policy_loss(logp, old, ref, mask, adv, cfg, n_seqs: int, n_tokens: float):
    """This micro-batch's share of the global loss, and its (kl, clipped) token sums for the log."""
    ratio = torch.exp(logp - old)
    high = cfg.epsilon_high if cfg.epsilon_high is not None else cfg.epsilon
    a = adv[:, None]
    per_token = -torch.min(ratio * a, torch.clamp(ratio, 1 - cfg.epsilon, 1 + high) * a)
    kl = torch.zeros_like(logp)
    if ref is not None:
        kl = torch.exp(ref - logp) - (ref - logp) - 1
        per_token = per_token + cfg.beta * kl
    clipped = ((ratio < 1 - cfg.epsilon) & (a < 0)) | ((ratio > 1 + high) & (a > 0))
    if cfg.loss_type == "grpo":  # mean over each sequence's tokens, then over sequences
        loss = ((per_token * mask).sum(1) / mask.sum(1).clamp(min=1)).sum() / n_seqs
    elif cfg.loss_type == "dr_grpo":
        loss = (per_token * mask).sum() / (n_seqs * cfg.max_completion_length)
    else:  # dapo / bnpo: every token of the global batch weighs the same
        loss = (per_token * mask).sum() / n_tokens
    return loss, float((kl.detach() * mask).sum()), float((clipped * mask).sum())


def micro_batches(completions: list[Completion], cfg, model, ref, pad_id: int, device) -> list[tuple]:
    """Fixed micro-batches for all inner iterations: (ids, completion mask, advantages, old logprobs, ref logprobs).
    Old-policy logprobs are taken now, before any update (with one iteration the loss uses logp.detach())."""
    micro = []
    for s in range(0, len(completions), cfg.per_device_train_batch_size):
        chunk = completions[s:s + cfg.per_device_train_batch_size]
        ids, mask = pad_batch([c.prompt.ids + c.token_ids for c in chunk],
                              [[0] * len(c.prompt.ids) + [1] * len(c.token_ids) for c in chunk], pad_id, device)
        adv = torch.tensor([c.advantage for c in chunk], dtype=torch.float32, device=device)
        with torch.no_grad():
            old = token_logprobs(model, ids, cfg.bf16, cfg.temperature, cfg.loss_chunk_size) if cfg.num_iterations > 1 else None
            ref_lp = token_logprobs(ref, ids, cfg.bf16, cfg.temperature, cfg.loss_chunk_size) if ref is not None else None
        micro.append((ids, mask[:, 1:], adv, old, ref_lp))
    return micro


def optimize(ddp, model, optimizer, micro: list[tuple], cfg, step: int, n_seqs: int, n_tokens: float) -> dict:
    """`num_iterations` optimizer steps on one batch of generations; this rank's sums for the log."""
    sums = {"loss": 0.0, "kl": 0.0, "clipped": 0.0}
    for it in range(cfg.num_iterations):
        for j, (ids, mask, adv, old, ref_lp) in enumerate(micro):
            sync = j == len(micro) - 1 or not dist.is_distributed()
            with dist.grad_sync(ddp, sync):
                logp = token_logprobs(ddp, ids, cfg.bf16, cfg.temperature, cfg.loss_chunk_size)
                loss, kl, clipped = policy_loss(logp, logp.detach() if old is None else old, ref_lp, mask, adv,
                                                cfg, n_seqs, n_tokens)
                (loss * dist.world_size()).backward()  # DDP/FSDP average over ranks; the loss is already global
            sums["loss"] += loss.item() / cfg.num_iterations
            sums["kl"] += kl / cfg.num_iterations
            sums["clipped"] += clipped / cfg.num_iterations
        sums["grad_norm"], sums["lr"] = optimizer_step(model, optimizer, cfg, step * cfg.num_iterations + it,
                                                       cfg.max_steps * cfg.num_iterations)
    return sums


def step_record(groups: list[list[Completion]], sums: dict, cfg, n_tokens: float, has_ref: bool, device) -> dict:
    """Global means for the log: every rank contributes sums."""
    completions = [c for g in groups for c in g]
    stds = torch.tensor([[c.reward.total for c in g] for g in groups], dtype=torch.float64).std(dim=1)
    per_completion = {"reward": [c.reward.total for c in completions], "accuracy": [c.correct for c in completions],
                      "completion_length": [len(c.token_ids) for c in completions],
                      "truncated": [c.reward.kind == "truncated" for c in completions],
                      "malformed": [c.reward.kind == "malformed" for c in completions],
                      "repetition": [c.reward.repetition for c in completions]}
    totals = dist.all_sum([float(sum(v)) for v in per_completion.values()]
                          + [float(stds.sum()), sums["loss"], sums["kl"], sums["clipped"]], device)
    n_seqs = cfg.num_prompts_per_step * cfg.num_generations
    record = {k: t / n_seqs for k, t in zip(per_completion, totals)}
    std_sum, loss, kl, clipped = totals[len(per_completion):]
    record.update(reward_std=std_sum / cfg.num_prompts_per_step, loss=loss, kl=kl / n_tokens if has_ref else 0.0,
                  clip_ratio=clipped / n_tokens, grad_norm=sums["grad_norm"], lr=sums["lr"])
    return record


def train_grpo(cfg) -> Path:
    """Run GRPO as `cfg` says; returns the final model's directory."""
    from ..api import LLM

    if cfg.loss_type not in LOSS_TYPES:
        raise ValueError(f"loss_type must be one of {LOSS_TYPES}, got {cfg.loss_type!r}")
    if cfg.num_generations < 2:
        raise ValueError("num_generations must be at least 2: advantages compare samples of one prompt")
    run = Run(cfg, "grpo", PLOT_KEYS)
    model, tokenizer, device, world = run.model, run.tokenizer, run.device, dist.world_size()
    if cfg.num_prompts_per_step % world:
        raise ValueError(f"num_prompts_per_step={cfg.num_prompts_per_step} must be a multiple of the {world} processes")
    run.log_file("samples")  # one completion per logged step, to read along
    ref = None
    if cfg.beta > 0:  # the frozen starting model, also when resuming; under LoRA the base itself, adapters
        # off; under FSDP sharded like the policy
        if cfg.use_peft:
            ref = lora.WithoutAdapters(model)
        else:  # frozen, so bf16 when the forward runs in bf16 anyway: half the memory of an fp32 copy
            ref = models.start(cfg)[0].to(device).eval().requires_grad_(False)
            ref = ref.to(torch.bfloat16) if cfg.bf16 else ref
            ref = dist.wrap(ref, device, cfg) if cfg.fsdp else ref
    # Under FSDP the engine samples from a full copy, refreshed from the shards before every rollout.
    sampler = copy.deepcopy(model) if cfg.fsdp else model

    context = model.config.max_position_embeddings
    if cfg.max_completion_length >= context:
        raise ValueError(f"max_completion_length={cfg.max_completion_length} leaves no room for a prompt in the "
                         f"model's context of {context} tokens")
    max_prompt_length = min(cfg.max_prompt_length, context - cfg.max_completion_length)
    prompts, dropped = load_prompts(cfg, tokenizer, max_prompt_length)
    order = data_mod.BatchOrder(len(prompts), cfg.num_prompts_per_step, cfg.seed)
    data_position = {"prompts": len(prompts), "prompts_per_step": cfg.num_prompts_per_step}
    constants = LengthConstants.scaled(cfg.max_completion_length, cfg.l_max, cfg.l_pos, cfg.l_neg)
    G = cfg.num_generations
    # The engine wraps the module being trained: its samples always come from the current weights.
    llm = LLM.from_model(sampler, tokenizer, max_num_seqs=max(G, min(cfg.max_num_seqs, G * cfg.num_prompts_per_step // world)),
                         max_model_len=max_prompt_length + cfg.max_completion_length)
    model.train()  # from_model set eval mode
    ddp, optimizer, step = run.start(data_position, cfg.max_steps, (
        f"{len(prompts)} prompts ({dropped} longer than {max_prompt_length} tokens dropped), "
        f"{cfg.num_prompts_per_step} x G={G} completions per step, {cfg.max_steps} steps, reward constants "
        f"L_max={constants.l_max} L_pos={constants.l_pos} L_neg={constants.l_neg}, "
        f"{world} process(es) on {device}, {models.trainable(model)}"))

    while step < cfg.max_steps:
        started = time.perf_counter()
        if sampler is not model:
            dist.copy_weights(model, sampler)
        mine = dist.shard(list(enumerate(prompts[i] for i in order.batch(step))))
        groups = [score(p, outs, cfg, constants) for (_, p), outs in zip(mine, rollout(llm, mine, cfg, step))]
        gen_time = time.perf_counter() - started
        rewards = torch.tensor([[c.reward.total for c in g] for g in groups], dtype=torch.float64)
        for g, adv in zip(groups, group_advantages(rewards, cfg.scale_rewards).tolist()):
            for c, a in zip(g, adv):
                c.advantage = a
        completions = [c for g in groups for c in g]
        (n_tokens,) = dist.all_sum([sum(len(c.token_ids) for c in completions)], device)
        micro = micro_batches(completions, cfg, model, ref, run.pad_id, device)
        sums = optimize(ddp, model, optimizer, micro, cfg, step, cfg.num_prompts_per_step * G, n_tokens)
        step += 1

        record = step_record(groups, sums, cfg, n_tokens, ref is not None, device)
        record.update(gen_tokens_per_s=n_tokens / gen_time, step_time=time.perf_counter() - started)
        logged = step % cfg.logging_steps == 0 or step == cfg.max_steps
        if logged:
            c = completions[0]
            run.log(step, {"prompt": c.prompt.instance.prompt, "completion": c.text, "reward": c.reward.total,
                           "kind": c.reward.kind}, name="samples")
        run.step_done(step, record if logged else {}, {"reward": record["reward"], "accuracy": record["accuracy"]},
                      step == cfg.max_steps, shown=("reward", "accuracy", "completion_length"))
    return run.finish()
