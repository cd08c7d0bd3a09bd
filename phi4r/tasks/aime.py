"""AIME: integer answers 0-999, graded by numeric match on `Final Answer: N` (or \\boxed{N}).

Records: `problem` and `answer` (or `Problem` and `Answer`), optionally `id` and `year`.
"""
from __future__ import annotations

from .base import Instance, Score, parse_final_number
from .eureka import aime as eureka
from .external import ExternalTask, field


class Aime(ExternalTask):
    name = "aime"

    def from_record(self, record):
        problem = field(record, "problem", "Problem", "question")
        answer = int(str(field(record, "answer", "Answer")).strip())
        prompt = f"{problem}\n\nThe answer is an integer from 0 to 999. Answer as \"Final Answer: N\"."
        return Instance(id="", task=self.name, prompt=prompt, answer={"value": answer},
                        category=str(field(record, "year", "Year", default="aime")))

    def parse(self, text):
        return parse_final_number(text)

    def check(self, inst, response):
        got = self.extract(response)
        return Score(float(got is not None and got == inst.answer["value"]), got)

    eureka_source = "data_utils/numeric_answer_utils.py"

    def check_eureka(self, inst, response, judge=None):
        return eureka.check(inst, response, inst.answer["value"], judge)
