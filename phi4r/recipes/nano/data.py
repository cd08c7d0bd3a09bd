"""The nano recipe's training data: the tasks' instances in the recipe's prompts and traces.

Instances come from the benchmark tasks' generators (`Task.generate`); what the model reads and
writes is the recipe's: spatialmap's numbered prompt and record trace (`.spatialmap`), calendar's
day-record sweep (`.calendar`), arithmetic's own teacher, plain arithmetic questions, and copy
conversations. The tokenizer's split is the recipe's too (SPLIT).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from ...tasks import get_task
from . import calendar, spatialmap

# The fine split (every digit and punctuation mark its own piece) with one exception: a clock time
# `08:30` is one piece, so the times the data uses become tokens of their own. Digit by digit, a
# time is five tokens whose minutes follow a `:` like every other time's, and the model copying
# `08:30` from a schedule wrote `:00` for `:30` (and back) a third of the time.
SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)| ?\p{L}+| ?\d\d:\d\d| ?\p{N}| ?[^\s\p{L}\p{N}]"
         r"|\s*[\r\n]+|\s+(?!\S)|\s+")
PROMPTS = {"spatialmap": spatialmap.prompt}  # tasks whose prompt the recipe writes its own way
TEACHERS = {"spatialmap": spatialmap.teacher, "calendar": calendar.teacher}

# "copy": conversations whose answer repeats a task prompt word for word: every answer token is a
# lookup, which carries the warm-up's copying over to the chat format and these prompts.
COPY_PROMPT = "Repeat this text exactly:\n\n"
# A third of the arithmetic prompts are plain questions (no "Answer as" line), so a user's
# "What is 17 + 25?" gets the same thinking and "Final Answer: N" as the task's own prompt.
PLAIN_ARITHMETIC = ["What is {}?", "Compute {}.", "Calculate {}.", "{} = ?", "What is {}", "How much is {}?"]


def prompt(inst) -> str:
    """The prompt of `inst` as the nano model reads it."""
    return PROMPTS[inst.task](inst) if inst.task in PROMPTS else inst.prompt


def teach(inst) -> str:
    """The recipe's teacher trace of `inst` (the task's own teacher where the recipe has none)."""
    return TEACHERS[inst.task](inst) if inst.task in TEACHERS else get_task(inst.task).teacher(inst)


def instances(mix: dict, seed: int) -> list:
    """mix: task -> {level: n} (a "copy" entry is skipped: see copy_conversations)."""
    return [inst for name, levels in mix.items() if name != "copy" for level, n in levels.items()
            for inst in get_task(name).generate(n, seed, difficulty=level)]


def copy_conversations(sources: dict, seed: int) -> list[list[dict]]:
    """task -> n: n of the task's prompts (its levels 1 and 2 in turn), answered by repeating them."""
    texts = [prompt(inst) for name, n in sources.items() for level in (1, 2)
             for inst in get_task(name).generate(n // 2, seed, difficulty=level)]
    return [[{"role": "user", "content": COPY_PROMPT + t},
             {"role": "assistant", "content": "<think>\nThe text, word for word.\n</think>\n\n" + t}] for t in texts]


def user_prompt(inst, k: int) -> str:
    if inst.task == "arithmetic" and k % 3 == 1:
        return PLAIN_ARITHMETIC[(k // 3) % len(PLAIN_ARITHMETIC)].format(inst.answer["expression"])
    return prompt(inst)


def sft_conversations(mix: dict, seed: int) -> list[list[dict]]:
    """The taught conversations of `mix` at `seed`, then its copy conversations (other instances
    of the same tasks: seed + 500)."""
    return ([[{"role": "user", "content": user_prompt(i, k)}, {"role": "assistant", "content": teach(i)}]
             for k, i in enumerate(instances(mix, seed))]
            + copy_conversations(mix.get("copy", {}), seed + 500))


def write_jsonl(path: Path, records) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)
    os.replace(tmp, path)
    return path
