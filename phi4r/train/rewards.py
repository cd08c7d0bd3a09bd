"""The Phi-4-reasoning-plus reward (Phi-4-reasoning technical report, arXiv:2504.21318, its RL section).

    R_final = (8/13) * R_acc + (1/13) * R_rep

R_acc, from the task verifier's verdict and the response length L (completion tokens):
  - truncated (no end of sequence, finish_reason "length"): -0.5
  - malformed think block (finished, but not `<think>` ... `</think>` answer with exactly one of each,
    `<think>` first): -1.0
  - correct: rho = min(1, max(0, L - L_pos) / (L_max - L_pos)), R = 0.5 + 0.25 * (1 + cos(pi * rho))
    (1.0 up to L_pos, falling to 0.5 at L_max: long correct answers are nudged shorter)
  - wrong:   rho = min(1, L / L_neg),                          R = -0.5 - 0.25 * (1 + cos(pi * rho))
    (-1.0 for a short wrong answer, rising to -0.5 at L_neg: thinking longer when wrong is penalised less)
The report's constants (L_max 31744, L_pos 25600, L_neg 3702) are for 32K responses; `LengthConstants.scaled`
keeps their proportions for a smaller `max_completion_length`.

R_rep, the repetition penalty, in [-1, 0] (the report names 5-grams and a frequency threshold of 5; this
exact form is ours): over the completion's token ids, an n-gram occurrence is "repeated" when that
n-gram occurs at least `threshold` times in the response; R_rep = -(repeated occurrences) /
(all n-gram occurrences), so 0 for no loops and towards -1 for a response that is one loop.
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

from ..reasoning import THINK_END, THINK_START

REPORT_L_MAX, REPORT_L_POS, REPORT_L_NEG = 31744, 25600, 3702
W_ACC, W_REP = 8 / 13, 1 / 13
MALFORMED_REWARD, TRUNCATED_REWARD = -1.0, -0.5


@dataclass(frozen=True)
class LengthConstants:
    l_max: int = REPORT_L_MAX
    l_pos: int = REPORT_L_POS
    l_neg: int = REPORT_L_NEG

    @classmethod
    def scaled(cls, max_completion_length: int, l_max: int | None = None, l_pos: int | None = None,
               l_neg: int | None = None) -> "LengthConstants":
        """The report's constants in proportion to this run's L_max (default: max_completion_length)."""
        l_max = l_max or max_completion_length
        return cls(l_max=l_max,
                   l_pos=l_pos if l_pos is not None else round(l_max * REPORT_L_POS / REPORT_L_MAX),
                   l_neg=l_neg if l_neg is not None else max(1, round(l_max * REPORT_L_NEG / REPORT_L_MAX)))


def accuracy_reward(correct: bool, length: int, c: LengthConstants) -> float:
    if correct:
        rho = min(1.0, max(0, length - c.l_pos) / max(1, c.l_max - c.l_pos))
        return 0.5 + 0.25 * (1.0 + math.cos(math.pi * rho))
    rho = min(1.0, length / c.l_neg)
    return -0.5 - 0.25 * (1.0 + math.cos(math.pi * rho))


def repetition_penalty(token_ids: list[int], n: int = 5, threshold: int = 5) -> float:
    grams = [tuple(token_ids[i:i + n]) for i in range(len(token_ids) - n + 1)]
    if not grams:
        return 0.0
    counts = Counter(grams)
    repeated = sum(k for k in counts.values() if k >= threshold)
    return -repeated / len(grams)


def well_formed(text: str) -> bool:
    """`<think>` reasoning `</think>` answer: the response opens with `<think>` and has one of each tag."""
    return text.lstrip().startswith(THINK_START) and text.count(THINK_START) == text.count(THINK_END) == 1


@dataclass
class Reward:
    total: float
    accuracy: float  # R_acc
    repetition: float  # R_rep
    kind: str  # correct | wrong | malformed | truncated


def reward(text: str, token_ids: list[int], correct: bool, truncated: bool, c: LengthConstants,
           ngram: int = 5, threshold: int = 5) -> Reward:
    """R_final for one completion (`text` decoded with its think tags, `token_ids` its tokens)."""
    if truncated:
        kind, r_acc = "truncated", TRUNCATED_REWARD
    elif not well_formed(text):
        kind, r_acc = "malformed", MALFORMED_REWARD
    else:
        kind, r_acc = ("correct" if correct else "wrong"), accuracy_reward(correct, len(token_ids), c)
    r_rep = repetition_penalty(token_ids, ngram, threshold)
    return Reward(W_ACC * r_acc + W_REP * r_rep, r_acc, r_rep, kind)
