"""`phi4r train tokenizer`: a small byte-level BPE trained on exactly what the model will read and write.

The corpus is the conversations the model will be trained on: the tasks' prompts and teacher traces
(plus an optional JSONL), each with the system prompt that opens it, so merges follow what the
model really reads. `<think>`/`</think>` are cut out of the traces first: they are
added tokens of their own, so merges spent on their characters would be wasted.
"""
from __future__ import annotations

from pathlib import Path

from ..reasoning import THINK_TAGS
from . import config as config_mod
from . import data as data_mod


def corpus(cfg) -> list[str]:
    from ..chat import DEFAULT_SYSTEM_PROMPT, message_text
    from ..tasks import get_task, list_tasks

    names = cfg.tasks or [n for n in list_tasks(procedural=True) if _has_teacher(get_task(n))]
    system = DEFAULT_SYSTEM_PROMPT if cfg.system_prompt is None else cfg.system_prompt
    conversations = data_mod.teacher_conversations(names, cfg.n_per_task, cfg.seed, cfg.difficulty)
    texts = []
    if cfg.data:
        for record in data_mod.read_jsonl(cfg.data):
            if "text" in record:
                texts.append(record["text"])
            else:
                conversations.append(record.get("messages", []))
    for messages in conversations:
        texts += ([system] if messages and messages[0].get("role") != "system" else []) + [message_text(m) for m in messages]
    return [THINK_TAGS.sub("", t) for t in texts if t]


def _has_teacher(task) -> bool:
    from ..tasks import Task

    return type(task).teacher is not Task.teacher


def train_tokenizer(cfg, pattern: str | None = None) -> Path:
    """`pattern`: a pre-tokenizer regex of a recipe's own, in place of `cfg.split`'s."""
    from ..tokenizer import train_bpe

    texts = corpus(cfg)
    tokenizer = train_bpe(texts, vocab_size=cfg.vocab_size, system_prompt=cfg.system_prompt, split=cfg.split,
                          pattern=pattern)
    out = Path(cfg.output_dir)
    tokenizer.save(out)
    config_mod.save(cfg, out / "train_config.yaml")
    print(f"tokenizer: {tokenizer.vocab_size} ids from {len(texts)} texts ({sum(map(len, texts))} characters) -> {out}")
    return out
