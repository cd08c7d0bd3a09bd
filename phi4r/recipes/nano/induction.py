"""A synthetic copy warm-up that forms induction heads in a fresh model before SFT.

A small model trained on teacher traces learns the traces' wording long before it learns to look a
fact up in the prompt by content (it writes fluent walk-throughs of maps it invented). A few
minutes on raw token ids that can only be predicted by copying,

    [BOS] noise [SEP] x_1 .. x_L [SEP] x_1 .. x_L noise

with the loss on the second copy, make the model form the two-head circuit that does it (a
previous-token head feeding an induction head). L is drawn per sequence (4-16) and the copy starts
at a random offset, so no fixed relative position gives the answer: a model that learns one
offset scores 0% at every other length. The copy accuracy rises abruptly (a phase transition) after
a few hundred steps at batch 64, AdamW lr 1e-3 with a warm-up; at lr 3e-3, or 2e-3 without a
warm-up, the loss never leaves the uniform guess.

`task="recall"` (`recall_batch`) trains the same lookup at long range instead: records
`key v v v` scattered over noise, each used three times. From the copy warm-up, the values after
the first are copied quickly; the first, found by the key alone, comes later and abruptly, and
later the longer the records' span (the recipe runs it at 160 tokens, where it forms in a few
hundred steps; at 320 it did not within the budget).

`warm_up(cfg)` is an SFT run (`train_sft`) on these sequences, one fresh batch per step, until the
held-out copy accuracy passes `target` (then `extra_steps` more) or `max_steps`; it writes
`output_dir/final` (a Hugging Face directory with the tokenizer) and resumes from its newest
checkpoint when interrupted.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from ...train import checkpointing
from ...train.config import SFTConfig
from ...train.data import Example
from ...train.sft import train_sft


@dataclass
class InductionConfig(SFTConfig):
    """An SFT run on synthetic sequences: SFTConfig's fields with the warm-up's defaults (a fresh model
    of `init_config` sizes, or `model`), and what makes and ends the sequences."""
    task: str = "copy"  # "copy" (copy_batch) or "recall" (recall_batch)
    min_len: int = 4
    max_len: int = 16
    recall_len: int = 320
    recall_keys: int = 8
    target: float = 0.9  # held-out copy accuracy that ends the warm-up (after extra_steps more)
    extra_steps: int = 50
    per_device_train_batch_size: int = 64
    learning_rate: float = 1e-3
    lr_scheduler_type: str = "constant_with_warmup"
    warmup_steps: int = 50
    weight_decay: float = 0.0
    adam_beta2: float = 0.98
    bf16: bool = True
    max_steps: int = 800
    eval_steps: int = 20
    logging_steps: int = 20
    save_steps: int = 100
    save_total_limit: int = 1
    eval_fraction: float = 0.0
    group_by_length: bool = False


def copy_batch(b: int, max_len: int, min_len: int, vocab: int, bos: int, sep: int, gen: torch.Generator):
    """ids [b, T] and the mask of the T-1 next-token targets inside the second copy (its first token
    excluded: right after SEP the position, not the content, says where the copy starts)."""
    T = 2 * max_len + 3 + max_len // 2
    ids = torch.randint(0, vocab, (b, T), generator=gen)
    ids[:, 0] = bos
    mask = torch.zeros(b, T - 1, dtype=torch.bool)
    lens = torch.randint(min_len, max_len + 1, (b,), generator=gen).tolist()
    for i, n in enumerate(lens):
        first = 1 + int(torch.randint(0, T - 2 * n - 2, (1,), generator=gen))  # position of the first SEP
        second = first + 1 + n
        ids[i, first] = ids[i, second] = sep
        ids[i, second + 1: second + 1 + n] = ids[i, first + 1: first + 1 + n]
        mask[i, second: second + n] = True  # target t predicts ids[t + 1]
    return ids, mask


def recall_batch(b: int, T: int, n_keys: int, vocab: int, bos: int, values: list[int], gen: torch.Generator,
                 n_values: int = 3, uses: int = 3, slot: int = 6):
    """ids [b, T] and the target mask for long-range lookups of records like `(zoo -3 5)`.

    Noise tokens, among which `n_keys` keys each occur `uses` times, always followed by the same
    `n_values` tokens drawn from the small alphabet `values` (digits and signs, like coordinates):
    `... k 3 -1 ... k 3 -1 ...`. The loss is on the values after every occurrence but the first,
    which only a copy keyed by the key token, from up to T tokens back, can predict; the values'
    own tokens repeat everywhere, so after the first one the copy must keep its place in the
    record rather than key on the last token."""
    ids = torch.empty(b, T, dtype=torch.long)
    mask = torch.zeros(b, T - 1, dtype=torch.bool)
    alphabet = torch.tensor(values)
    slots = (T - 1) // slot
    if slots < n_keys * uses:
        raise ValueError(f"recall_batch: {n_keys} keys x {uses} uses need {n_keys * uses * slot + 1} tokens, T is {T}")
    for i in range(b):
        perm = torch.randperm(vocab, generator=gen)
        perm = perm[~torch.isin(perm, alphabet)]
        keys, noise = perm[:n_keys], perm[n_keys:]
        ids[i] = noise[torch.randint(0, len(noise), (T,), generator=gen)]
        ids[i, 0] = bos
        chosen = torch.randperm(slots, generator=gen)[: n_keys * uses].view(n_keys, uses).sort(-1).values
        for k in range(n_keys):
            value = alphabet[torch.randint(0, len(alphabet), (n_values,), generator=gen)]
            for j, s in enumerate(chosen[k].tolist()):
                at = 1 + s * slot + int(torch.randint(0, slot - n_values, (1,), generator=gen))
                ids[i, at] = keys[k]
                ids[i, at + 1: at + 1 + n_values] = value
                if j:
                    mask[i, at: at + n_values] = True  # target t predicts ids[t + 1]
    return ids, mask


def _logits(model, ids: torch.Tensor, bf16: bool) -> torch.Tensor:
    with torch.autocast(ids.device.type, dtype=torch.bfloat16, enabled=bf16):
        return model(ids[:, :-1]).float()


def copy_accuracy(model, ids: torch.Tensor, mask: torch.Tensor, bf16: bool, drop_first: bool = True) -> float:
    """Argmax accuracy on the copied tokens (tokens 2..L of the second copy; with drop_first False,
    every masked target: a recall batch's values)."""
    inner = mask.clone()
    if drop_first:
        inner[:, 1:] &= mask[:, :-1]  # drop each copy's first target
        inner[:, 0] = False
    was = model.training
    model.eval()
    with torch.no_grad():
        hits = _logits(model, ids, bf16).argmax(-1) == ids[:, 1:]
    model.train(was)
    return hits[inner].float().mean().item()


class StopAfterTarget:
    """The warm-up's evaluation and stop for `train_sft`: the held-out copy accuracy every
    eval_steps; the run ends `extra_steps` after it first reaches `target`."""

    def __init__(self, cfg: InductionConfig, held: tuple, log):
        self.cfg, self.held, self.log = cfg, held, log
        self.state = {"passed": None, "accuracy": None}

    def on_evaluate(self, model, step: int) -> dict:
        device = next(model.parameters()).device
        acc = copy_accuracy(model, *(t.to(device) for t in self.held), self.cfg.bf16, drop_first=self.cfg.task == "copy")
        if self.state["passed"] is None and acc >= self.cfg.target:
            self.state["passed"] = step
        self.state["accuracy"] = acc
        self.log(f"{Path(self.cfg.output_dir).name} step {step}: held-out copy accuracy {100 * acc:.1f}%")
        return {"copy_accuracy": acc}

    def should_stop(self, step: int) -> bool:
        return self.state["passed"] is not None and step >= self.state["passed"] + self.cfg.extra_steps


def warm_up(cfg: InductionConfig, log=print) -> Path:
    from ...tokenizer import Tokenizer

    final = Path(cfg.output_dir) / "final"
    if (final / "config.json").is_file():
        return final
    tok = Tokenizer.from_dir(cfg.tokenizer)
    vocab = min(tok.bos_id, tok.eos_id, tok.pad_id)  # plain (non-special) ids come first
    recall = cfg.task == "recall"
    if recall:  # the record values: digits with and without a leading space, and the minus sign
        values = sorted({i for d in "0123456789" for i in tok.encode(f" {d}") + tok.encode(d)} | set(tok.encode(" -")))

    def batch(b, g):
        if recall:
            return recall_batch(b, cfg.recall_len, cfg.recall_keys, vocab, tok.bos_id, values, g)
        return copy_batch(b, cfg.max_len, cfg.min_len, vocab, tok.bos_id, tok.eos_id, g)

    # One fresh batch per step (on one process), made up front from the seed, so a resumed run sees the same data.
    n = cfg.max_steps * cfg.per_device_train_batch_size * cfg.gradient_accumulation_steps
    ids, mask = batch(n, torch.Generator().manual_seed(cfg.seed + 1))
    examples = [Example(i, [0] + m) for i, m in zip(ids.tolist(), mask.int().tolist())]
    stop = StopAfterTarget(cfg, batch(128 if not recall else 32, torch.Generator().manual_seed(12345)), log)
    final = train_sft(replace(cfg, resume_from_checkpoint=checkpointing.latest_if_any(cfg.output_dir)),
                      examples=examples, callback=stop)
    steps = checkpointing.load_state(checkpointing.checkpoints(cfg.output_dir)[-1])["step"]  # the last step's
    (Path(cfg.output_dir) / "summary.json").write_text(json.dumps(
        {"steps": steps, "passed_at": stop.state["passed"], "copy_accuracy": stop.state["accuracy"],
         "config": asdict(cfg)}, indent=2) + "\n")
    if stop.state["passed"] is None:
        log(f"warm-up: copy accuracy {100 * stop.state['accuracy']:.1f}% after {steps} steps, below the target; "
            "continuing anyway")
    return final
