"""AIME: integer answers 0-999, graded by numeric match on `Final Answer: N` (or \\boxed{N}).

Layouts: `problem`/`answer` (HuggingFaceH4, AI-MO and most copies), `Problem`/`Answer`/`Solution`
(Maxwell-Jia), `question`/`answer` (opencompass), Eureka's `Question`/`Answer` with `ID` and
`Year` (lchen001/AIME1983_2024, lchen001/AIME2025); files with only a `solution` give the
answer as its last \\boxed{}.
"""
from __future__ import annotations

import re

from .base import Instance, Score, parse_final_number
from .eureka import aime as eureka
from .external import ExternalTask, field
from .omnimath import last_boxed


def integer_answer(value) -> int:
    """`33`, `"033"`, `"$33$"` or `"\\boxed{33}"` as 33."""
    text = str(value).strip()
    text = last_boxed(text) or text
    m = re.fullmatch(r"\$?\s*(\d+)(?:\.0*)?\s*\$?", text.strip())
    if m is None:
        raise ValueError(f"answer {value!r} is not an integer")
    return int(m.group(1))


class Aime(ExternalTask):
    name = "aime"

    def from_record(self, record):
        problem = field(record, "problem", "Problem", "question", "Question", "prompt")
        answer = record.get("answer", record.get("Answer", record.get("ground_truth")))
        if answer is None or answer == "":
            solution = field(record, "solution", "Solution", default="")
            answer = last_boxed(solution)
            if answer is None:
                raise KeyError(f"record has no 'answer'/'Answer' and no \\boxed{{}} in a 'solution'; "
                               f"its fields are {sorted(record)}")
        prompt = f"{problem}\n\nThe answer is an integer from 0 to 999. Answer as \"Final Answer: N\"."
        return Instance(id="", task=self.name, prompt=prompt, answer={"value": integer_answer(answer)},
                        category=str(field(record, "year", "Year", default="aime")))

    def parse(self, text):
        return parse_final_number(text)

    def check(self, inst, response):
        got = self.extract(response)
        return Score(float(got is not None and got == inst.answer["value"]), got)

    eureka_source = "data_utils/numeric_answer_utils.py"

    def check_eureka(self, inst, response, judge=None):
        return eureka.check(inst, response, inst.answer["value"], judge)
