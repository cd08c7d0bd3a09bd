"""MATH / OmniMath-style free-form answers, graded by symbolic equivalence with math-verify.

Layouts: MATH / MATH-500 (`problem`, `solution`, `answer`, `subject` or `type`, `level` "Level 5",
`unique_id`), Omni-MATH (KbsdJames/Omni-MATH: `domain` list, `difficulty`, `problem`, `solution`,
`answer`, `source`); without an `answer` the last \\boxed{} of the `solution` is the answer.
"""
from __future__ import annotations

import re
import threading

from math_verify import parse, verify

from .base import Instance, Score, last_match
from .eureka import omni_math as eureka
from .external import ExternalTask, field, structured

# Words of a sentence, not of mathematics: letters not led by a backslash (\frac, \text) and not
# a function name. Two or more make the reference a text answer.
WORD = re.compile(r"(?<![\\A-Za-z])[A-Za-z]{2,}")
MATH_WORDS = {"sin", "cos", "tan", "cot", "sec", "csc", "log", "ln", "lg", "exp", "max", "min", "gcd",
              "lcm", "mod", "deg", "det", "arcsin", "arccos", "arctan", "sinh", "cosh", "tanh", "lim", "inf", "sup"}
NUMBER = re.compile(r"[-+]?(\d[\d,]*(\.\d+)?|\.\d+|\\d?frac\{-?\d+\}\{\d+\})")


def last_boxed(text: str) -> str | None:
    """The contents of the last \\boxed{...}, braces balanced."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    depth, i = 0, start + len("\\boxed")
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i + 1:j]
    return None


def is_text_answer(gold: str) -> bool:
    return len([w for w in WORD.findall(gold) if w.lower() not in MATH_WORDS]) >= 2


def is_bare_number(pred: str) -> bool:
    return NUMBER.fullmatch(pred.strip().strip("$").strip().replace(" ", "")) is not None


def equivalent(gold: str, pred: str) -> bool:
    # math-verify times out with signal.alarm, which works only in the main thread.
    timeout = 5 if threading.current_thread() is threading.main_thread() else None
    g = parse(f"${gold}$", parsing_timeout=timeout)
    p = parse(f"${pred}$", parsing_timeout=timeout)
    return bool(g and p and verify(g, p, timeout_seconds=timeout))


class MathTask(ExternalTask):
    name = "math"

    def from_record(self, record):
        answer = field(record, "answer", "Answer", "ground_truth", default="")
        solution = str(field(record, "solution", "Solution", default=""))
        if answer == "":
            answer = last_boxed(solution)
            if answer is None:
                raise KeyError(f"record has no 'answer' and no \\boxed{{}} in a 'solution'; its fields are {sorted(record)}")
        level = field(record, "level", "difficulty", default=0)
        digits = re.search(r"\d+(?:\.\d+)?", str(level))
        category = structured(field(record, "type", "subject", "domain", default="math"))
        prompt = f"{field(record, 'problem', 'Problem', 'question', 'Question')}\n\nPut the final answer in \\boxed{{}}."
        return Instance(id="", task=self.name, prompt=prompt, answer={"answer": str(answer)},
                        difficulty=round(float(digits.group())) if digits else 0,
                        category=str(category[0] if isinstance(category, list) and category else category),
                        meta={"solution": solution} if solution else {})

    def parse(self, text):
        boxed = last_boxed(text)
        if boxed is not None:
            return boxed.strip()
        m = last_match(r"Final Answer:\s*(.+)", text)
        return m.group(1).strip().strip("$").strip() if m else None

    def check(self, inst, response):
        got = self.extract(response)
        gold = inst.answer["answer"]
        # math-verify reads a number out of a sentence ("... k = 1 for all n" parses as 1), so a
        # bare number would pass for an answer that says more: only a judge may accept that.
        if got is not None and is_text_answer(gold) and is_bare_number(got):
            return Score(0.0, got, {"bare_number_for_text": True})
        return Score(float(got is not None and equivalent(gold, got)), got)

    eureka_source = "data_utils/omni_math_utils.py"

    def check_eureka(self, inst, response, judge=None):
        return eureka.check(inst, response, self.check(inst, response), judge)
