"""The task contract shared by evaluation and training.

A task makes `Instance`s (a seeded generator, or a loader of a published file), reads the answer
out of a model response (`extract`), grades it (`check` / `score`), and where it can, writes a
teacher trace that solves the instance step by step (`teacher`).
"""
from __future__ import annotations

import random
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from ..reasoning import THINK_END, THINK_START, final_text

# How a response is graded. "strict": phi4r's exact verifiers. "eureka": Microsoft's Eureka ML
# Insights harness, which scored the model card, rule for rule (phi4r/tasks/eureka/).
MODES = ("strict", "eureka")

# The judge model behind Eureka's LLM steps: judge(step, inst, response) -> the judge's raw reply,
# or None when it has none; `response` is the whole response, reasoning included. Steps: "extract"
# (Eureka's answer-extraction fallback, asked only when its rules found no answer; the reply is read
# with the same rules) and "math_equivalence" (Omni-MATH's equivalence judgement, whose reply ends
# in `## Equivalence Judgement` TRUE / FALSE), and ArenaHard's pairwise verdicts against a baseline
# ("arenahard_model_b", "arenahard_model_a": tasks/arenahard.py). Without a judge those steps are
# skipped and the verdict's details say `needs_judge`.
Judge = Callable[[str, "Instance", str], "str | None"]


@dataclass
class Instance:
    id: str
    task: str
    prompt: str
    answer: Any  # JSON-serialisable ground truth, or the data the verifier needs
    category: str = ""
    difficulty: int = 0
    meta: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Instance":
        return cls(**d)


@dataclass
class Score:
    score: float  # in [0, 1]
    extracted: Any  # the parsed answer, None when there is none
    details: dict = field(default_factory=dict)


def approx_tokens(text: str) -> int:
    """A token-ish length (words and punctuation marks), to size prompts for small contexts."""
    return len(re.findall(r"\w+|[^\w\s]", text))


def last_match(pattern: str, text: str, flags: int = 0) -> re.Match | None:
    matches = list(re.finditer(pattern, text, flags))
    return matches[-1] if matches else None


class Task:
    """Base class. Subclasses set `name`, `difficulties` and implement `make`, `parse`, `check`
    and `teacher`; file-backed benchmarks set `procedural = False` and implement `load`."""

    name: str = ""
    # Bumped only on purpose, when the wording of `prompt` changes: scores of different prompt
    # versions are not comparable, so every sample log records it.
    prompt_version: int = 1
    difficulties: list[int] = []
    categories: list[str] = []
    procedural = True

    def generate(self, n: int, seed: int, difficulty: int | None = None) -> list[Instance]:
        """n instances, deterministic for `seed`. Without a difficulty the levels are cycled.

        Each instance draws from its own RNG seeded by its id, so an instance does not depend on
        how many others were generated with it.
        """
        if not self.procedural:
            raise NotImplementedError(f"{self.name} reads a published file: use load(path)")
        if difficulty is not None and difficulty not in self.difficulties:
            raise ValueError(f"{self.name}: difficulty {difficulty} not in {self.difficulties}")
        levels = [difficulty] if difficulty is not None else self.difficulties
        out = []
        for i in range(n):
            level = levels[i % len(levels)]
            iid = f"{self.name}-{level}-{seed}-{i}"
            # The position within its level picks the category, so categories stay balanced.
            inst = self.make(random.Random(iid), level, i // len(levels))
            inst.id, inst.task, inst.difficulty = iid, self.name, level
            out.append(inst)
        return out

    def make(self, rng: random.Random, difficulty: int, k: int) -> Instance:
        raise NotImplementedError

    def load(self, path, limit: int | None = None) -> list[Instance]:
        raise NotImplementedError(f"{self.name} is procedural: use generate(n, seed)")

    def extract(self, response: str) -> Any | None:
        text = final_text(response)
        return None if text is None else self.parse(text)

    def parse(self, text: str) -> Any | None:
        """Read the answer from the final (post-reasoning) text."""
        raise NotImplementedError

    def check(self, inst: Instance, response: str) -> Score:
        """The strict verdict: phi4r's exact verifier."""
        raise NotImplementedError

    # The Eureka file whose rules `check_eureka` follows; None when Eureka has no such benchmark,
    # and then the eureka verdict is the strict one.
    eureka_source: str | None = None

    def check_eureka(self, inst: Instance, response: str, judge: Judge | None = None) -> Score:
        """The verdict of Eureka's extraction and metric for this benchmark (see `eureka_source`)."""
        return self.check(inst, response)

    def grade(self, inst: Instance, response: str, mode: str = "strict", judge: Judge | None = None) -> Score:
        if mode == "strict":
            return self.check(inst, response)
        if mode == "eureka":
            return self.check_eureka(inst, response, judge)
        raise ValueError(f"unknown scoring mode {mode!r}; known: {', '.join(MODES)}")

    def score(self, inst: Instance, response: str, mode: str = "strict") -> float:
        return self.grade(inst, response, mode).score

    def teacher(self, inst: Instance) -> str:
        raise NotImplementedError(f"{self.name} has no teacher")


def trace(steps: list[str], answer: str) -> str:
    """A teacher trace in the model's output format."""
    return f"{THINK_START}\n" + "\n".join(steps) + f"\n{THINK_END}\n\n" + answer


def parse_final_number(text: str):
    """The number in the last `Final Answer: N`, else in the last `\\boxed{N}`; commas allowed.
    An int when it is whole, else a float; None when there is none."""
    m = (last_match(r"Final Answer:\s*\**\s*\$?(-?\d[\d,]*(?:\.\d+)?)", text, re.I)
         or last_match(r"\\boxed\{\s*(-?\d[\d,]*(?:\.\d+)?)\s*\}", text))
    if m is None:
        return None
    digits = m.group(1).replace(",", "")
    if "." not in digits:
        return int(digits)
    value = float(digits)
    return int(value) if value.is_integer() else value
