"""The nano recipe's training data: the tasks' instances in the recipe's prompts and traces.

Instances come from the benchmark tasks' generators (`Task.generate`); what the model reads and
writes is the recipe's: spatialmap's numbered prompt and record trace (`.spatialmap`), calendar's
day-record sweep (`.calendar`), arithmetic's column traces (`.arithmetic`), plain arithmetic
questions, and copy conversations. The tokenizer's split is the recipe's too (SPLIT). No
arithmetic problem of the held-out evaluations (`held_out_expressions`) is trained on.
"""
from __future__ import annotations

import json
import os
import random
from functools import lru_cache
from pathlib import Path

from ...tasks import Instance, get_task
from . import arithmetic, calendar, spatialmap

# The fine split (every digit and punctuation mark its own piece) with one exception: a clock time
# `08:30` is one piece, so the times the data uses become tokens of their own. Digit by digit, a
# time is five tokens whose minutes follow a `:` like every other time's, and the model copying
# `08:30` from a schedule wrote `:00` for `:30` (and back) a third of the time.
SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)| ?\p{L}+| ?\d\d:\d\d| ?\p{N}| ?[^\s\p{L}\p{N}]"
         r"|\s*[\r\n]+|\s+(?!\S)|\s+")
PROMPTS = {"spatialmap": spatialmap.prompt}  # tasks whose prompt the recipe writes its own way
# Arithmetic's trace is the task's one-line step for one-digit operands (levels 1-2 as the task
# teaches them) and the column procedure for multi-digit ones.
TEACHERS = {"spatialmap": spatialmap.teacher, "calendar": calendar.teacher, "arithmetic": arithmetic.teacher}

# "copy": conversations whose answer repeats a task prompt word for word: every answer token is a
# lookup, which carries the warm-up's copying over to the chat format and these prompts.
COPY_PROMPT = "Repeat this text exactly:\n\n"
# A third of the arithmetic prompts are plain questions (no "Answer as" line), so a user's
# "What is 17 + 25?" gets the same thinking and "Final Answer: N" as the task's own prompt.
PLAIN_ARITHMETIC = ["What is {}?", "Compute {}.", "Calculate {}.", "{} = ?", "What is {}", "How much is {}?"]
# "columns": kind -> n (`.arithmetic` KINDS: "add2", "sub3", "mul21", ...): single operations with
# multi-digit operands, which the task's levels hardly have (level 3 is one operation on two-digit
# numbers; nothing has three-digit ones), in column traces; every other one asked as a plain
# question (`arithmetic.PLAIN_QUESTIONS`, cycled), the others in the task's prompt.
COLUMNS = "columns"
# "drill": kind -> n conversations of `arithmetic.DRILL_LINES` column steps each (`.arithmetic` DRILLS).
DRILL = "drill"
NOT_TASKS = ("copy", COLUMNS, DRILL)
# The benchmark's held-out arithmetic (the recipe's evaluation and test seeds) is kept out of training
# for the multi-digit levels, this many instances per level; levels 1-2 have 100 and ~250 distinct
# problems, all of which training sees.
BENCHMARK_HELD_OUT = {"levels": (3, 4, 5, 6), "limit": 200}


def prompt(inst) -> str:
    """The prompt of `inst` as the nano model reads it."""
    return PROMPTS[inst.task](inst) if inst.task in PROMPTS else inst.prompt


def teach(inst) -> str:
    """The recipe's teacher trace of `inst` (the task's own teacher where the recipe has none)."""
    return TEACHERS[inst.task](inst) if inst.task in TEACHERS else get_task(inst.task).teacher(inst)


@lru_cache(maxsize=1)
def held_out_expressions() -> frozenset[str]:
    """The arithmetic expressions no training conversation may ask: every problem of `.arith_eval`
    (its development and held-out seeds, up to its largest n) and the benchmark's multi-digit levels
    at the recipe's evaluation and test seeds."""
    from .arith_eval import all_expressions
    from .evaluation import DEV_SEED, EVAL_SEEDS, TEST_SEED

    task = get_task("arithmetic")
    return frozenset(all_expressions()) | {i.answer["expression"] for seed in (DEV_SEED, TEST_SEED, *EVAL_SEEDS)
                                for level in BENCHMARK_HELD_OUT["levels"]
                                for i in task.generate(BENCHMARK_HELD_OUT["limit"], seed, difficulty=level)}


def instances(mix: dict, seed: int) -> list:
    """mix: task -> {level: n} ("copy" and "columns" entries are skipped: see copy_conversations and
    column_conversations). Arithmetic instances asking a held-out problem are left out."""
    excluded = held_out_expressions() if "arithmetic" in mix else set()
    return [inst for name, levels in mix.items() if name not in NOT_TASKS for level, n in levels.items()
            for inst in get_task(name).generate(n, seed, difficulty=level)
            if not (inst.task == "arithmetic" and inst.answer["expression"] in excluded)]


def column_instances(kinds: dict, seed: int) -> list[Instance]:
    """kind -> n: n problems of each kind (none held out) as the arithmetic task's instances (its
    verifier grades them), alternately in the task's prompt and as plain questions."""
    excluded, out, k = held_out_expressions(), [], 0
    for kind, n in kinds.items():
        for i in range(n):
            rng = random.Random(f"columns-{kind}-{seed}-{i}")
            while (expr := arithmetic.expression(*(problem := arithmetic.draw(rng, kind)))) in excluded:
                pass
            a, op, b = problem
            out.append(Instance(id=f"columns-{kind}-{seed}-{i}", task="arithmetic",
                                prompt=arithmetic.question(expr, None if k % 2 == 0 else k // 2),
                                answer={"value": arithmetic.value((op, a, b)), "expression": expr, "tree": [op, a, b]},
                                category=kind))
            k += 1
    return out


def column_conversations(kinds: dict, seed: int) -> list[list[dict]]:
    """column_instances answered by column traces."""
    return [[{"role": "user", "content": i.prompt},
             {"role": "assistant", "content": arithmetic.solve(arithmetic.parse_expression(i.answer["expression"]))}]
            for i in column_instances(kinds, seed)]


def drill_conversations(kinds: dict, seed: int) -> list[list[dict]]:
    """kind -> n: n drills of each kind (`arithmetic.drill`)."""
    convs = []
    for kind, n in kinds.items():
        for i in range(n):
            ask, answer = arithmetic.drill(kind, random.Random(f"drill-{kind}-{seed}-{i}"))
            convs.append([{"role": "user", "content": ask}, {"role": "assistant", "content": answer}])
    return convs


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
    """The taught conversations of `mix` at `seed`, its column conversations and drills, then its copy
    conversations (other instances of the same tasks: seed + 500)."""
    return ([[{"role": "user", "content": user_prompt(i, k)}, {"role": "assistant", "content": teach(i)}]
             for k, i in enumerate(instances(mix, seed))]
            + column_conversations(mix.get(COLUMNS, {}), seed)
            + drill_conversations(mix.get(DRILL, {}), seed)
            + copy_conversations(mix.get("copy", {}), seed + 500))


def write_jsonl(path: Path, records) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)
    os.replace(tmp, path)
    return path
