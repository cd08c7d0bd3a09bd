"""Multiple-choice plumbing shared by maze, spatialmap and gpqa: options, letter extraction, grading."""
from __future__ import annotations

from .base import Score, Task, last_match
from .eureka import spatial

LETTERS = "ABCDEFGHIJ"


def shuffle_options(rng, correct, distractors) -> tuple[list, str]:
    """Options in random order and the letter of the correct one."""
    options = [correct, *distractors]
    rng.shuffle(options)
    return options, LETTERS[options.index(correct)]


def format_options(options) -> str:
    return "\n".join(f"{LETTERS[i]}. {opt}" for i, opt in enumerate(options))


def parse_letter(text: str, n: int = 4) -> str | None:
    """`Final Answer: X` (last one), else `answer is X`; X may be bold or in parentheses."""
    span = LETTERS[:n]
    # Only the lead-in ignores case: a lowercase "a" is a word, not an option.
    for pattern in (rf"(?i:final answer):\s*\**\s*\(?([{span}])\)?(?![A-Za-z])",
                    rf"(?i:answer is)\s*:?\s*\**\s*\(?([{span}])\)?(?![A-Za-z])"):
        m = last_match(pattern, text)
        if m:
            return m.group(1)
    return None


def number_distractors(rng, value: int, k: int = 3) -> list[int]:
    """k distinct non-negative integers near `value`, other than it."""
    pool = [v for v in range(max(0, value - 3), value + 4) if v != value]
    return rng.sample(pool, k)


class ChoiceTask(Task):
    """A task whose `answer` holds the correct `letter` among `options`."""

    def parse(self, text):
        return parse_letter(text, 4)

    def check(self, inst, response):
        got = self.extract(response)
        return Score(float(got == inst.answer["letter"]), got)

    # Maze and SpatialMap; GPQA has rules of its own.
    eureka_source = "data_utils/spatial_utils.py"

    def check_eureka(self, inst, response, judge=None):
        ans = inst.answer
        target = ans.get("value", ans["options"][LETTERS.index(ans["letter"])])
        return spatial.check(inst, response, ans["options"], target, judge)
