"""Training data: conversations -> token ids with an assistant-only loss mask, and the batch order.

The prompt part of every conversation is `Tokenizer.encode_chat` itself, so training sees exactly
the tokens inference will: the checkpoint's system prompt, `<|im_start|>role<|im_sep|>...<|im_end|>`.
Each assistant turn is the target, encoded as the model's OUTPUT: `<think>`/`</think>` become their
token ids (what the model emits when generating), everything else is plain text, and the turn's
closing `<|im_end|>` is a target too, so the model learns to stop.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from ..chat import message_text
from ..reasoning import THINK_END, THINK_START, THINK_TAGS
from ..tasks.external import parse_jsonl


@dataclass
class Example:
    ids: list[int]
    mask: list[int]  # 1 where ids[t] is a target (predicted from ids[:t]); 0 for system/user/template tokens


def encode_output(tokenizer, text: str) -> list[int]:
    """Ids of model output: think tags as their tokens (when the vocabulary has them), the rest plain."""
    tags = {THINK_START: tokenizer.think_start_id, THINK_END: tokenizer.think_end_id}
    ids: list[int] = []
    for piece in THINK_TAGS.split(text):
        ids += [tags[piece]] if tags.get(piece) is not None else tokenizer.encode(piece)
    return ids


def encode_conversation(tokenizer, messages: list[dict], system_prompt: str | None = None) -> Example:
    """Ids and loss mask of a whole conversation; every assistant turn (content + `<|im_end|>`) is a target.

    Non-assistant parts are the deltas between `encode_chat` of successive prefixes, so the prompt
    before each assistant turn is byte for byte what `encode_chat(..., add_generation_prompt=True)`
    gives at inference.
    """
    ids: list[int] = []
    mask: list[int] = []
    plain: list[int] = []  # encode_chat of the messages so far (assistant turns as plain text)
    for i, message in enumerate(messages):
        if message.get("role") != "assistant":
            continue
        head = tokenizer.encode_chat(messages[:i], add_generation_prompt=True, system_prompt=system_prompt)
        if head[:len(plain)] != plain:
            raise ValueError("encode_chat is not prefix-stable for this conversation")
        prompt = head[len(plain):]
        target = encode_output(tokenizer, message_text(message)) + [tokenizer.eos_id]
        ids += prompt + target
        mask += [0] * len(prompt) + [1] * len(target)
        plain = tokenizer.encode_chat(messages[:i + 1], add_generation_prompt=False, system_prompt=system_prompt)
    if not ids:
        raise ValueError("conversation has no assistant turn to train on")
    return Example(ids, mask)


# ---- sources
def read_jsonl(path: str | Path) -> list[dict]:
    return parse_jsonl(path, Path(path).read_text(encoding="utf-8"))


def jsonl_conversations(path: str | Path) -> list[list[dict]]:
    """`{"messages": [...]}` per line (OpenAI/TRL conversational format)."""
    out = []
    for n, record in enumerate(read_jsonl(path), 1):
        if not isinstance(record.get("messages"), list):
            raise ValueError(f"{path}:{n}: expected {{'messages': [...]}}")
        out.append(record["messages"])
    return out


def task_instances(names: list[str], n_per_task: int, seed: int, difficulty: int | None = None) -> list:
    from ..tasks import get_task

    return [inst for name in names for inst in get_task(name).generate(n_per_task, seed, difficulty)]


def teacher_conversations(names: list[str], n_per_task: int, seed: int, difficulty: int | None = None) -> list[list[dict]]:
    """One user prompt + the task teacher's `<think>...</think> answer` trace per instance."""
    from ..tasks import get_task

    return [[{"role": "user", "content": inst.prompt},
             {"role": "assistant", "content": get_task(inst.task).teacher(inst)}]
            for inst in task_instances(names, n_per_task, seed, difficulty)]


def split_heldout(items: list, fraction: float, seed: int, at_least: int = 0) -> tuple[list, list]:
    """(train, held-out): a seeded shuffle, then the first `fraction` held out: at least one when
    > 0, and at least `at_least` while that leaves three quarters to train on."""
    order = list(range(len(items)))
    random.Random(f"heldout-{seed}").shuffle(order)
    k = max(1, round(fraction * len(items)), min(at_least, len(items) // 4)) if fraction > 0 and len(items) > 1 else 0
    return [items[i] for i in order[k:]], [items[i] for i in order[:k]]


class BatchOrder:
    """Which examples make global batch `step`: a pure function of (seed, step), so the data
    position of a resumed run is just its step. Each epoch is a fresh seeded shuffle; the last
    incomplete global batch is dropped so every step has the same size on every rank.

    With `lengths`, examples of similar length are batched together: sort within windows of 64
    batches, cut, then shuffle the batches (less padding, still random).
    """

    WINDOW = 64

    def __init__(self, n: int, batch_size: int, seed: int, lengths: list[int] | None = None):
        if n < batch_size:
            raise ValueError(f"{n} examples (after dropping those too long for the context) cannot fill one "
                             f"global batch of {batch_size}")
        self.n, self.batch_size, self.seed, self.lengths = n, batch_size, seed, lengths
        self.steps_per_epoch = n // batch_size
        self._epoch: tuple[int, list[list[int]]] | None = None

    def _batches(self, epoch: int) -> list[list[int]]:
        rng = random.Random(f"batches-{self.seed}-{epoch}")
        order = list(range(self.n))
        rng.shuffle(order)
        order = order[: self.steps_per_epoch * self.batch_size]
        if self.lengths is not None:
            w = self.WINDOW * self.batch_size
            order = [i for s in range(0, len(order), w) for i in sorted(order[s:s + w], key=self.lengths.__getitem__)]
        batches = [order[s:s + self.batch_size] for s in range(0, len(order), self.batch_size)]
        if self.lengths is not None:
            rng.shuffle(batches)
        return batches

    def batch(self, step: int) -> list[int]:
        epoch, k = divmod(step, self.steps_per_epoch)
        if self._epoch is None or self._epoch[0] != epoch:
            self._epoch = (epoch, self._batches(epoch))
        return self._epoch[1][k]
