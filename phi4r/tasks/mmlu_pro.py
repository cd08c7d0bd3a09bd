"""MMLU-Pro: ten options A-J, graded with the official answer-extraction cascade.

Records use the published columns: `question`, `options` (a list), `answer` (a letter) or
`answer_index`, `category`, optionally `question_id`.
"""
from __future__ import annotations

import re

from .base import Instance, Score
from .choice import LETTERS, format_options
from .external import ExternalTask, field


def extract_mmlu_pro(text: str) -> str | None:
    """The official cascade: `answer is (X)`, then `Answer: X`, then the last standalone A-J."""
    m = re.search(r"answer is \(?([A-J])\)?", text)
    if m:
        return m.group(1)
    m = re.search(r".*[aA]nswer:\s*([A-J])", text)
    if m:
        return m.group(1)
    m = re.search(r"\b[A-J]\b(?!.*\b[A-J]\b)", text, re.DOTALL)
    return m.group(0) if m else None


class MmluPro(ExternalTask):
    name = "mmlu_pro"

    def from_record(self, record):
        options = [str(o) for o in field(record, "options")]
        answer = str(field(record, "answer", default=""))
        if len(answer) == 1 and answer in LETTERS[: len(options)]:
            letter = answer
        else:
            letter = LETTERS[int(field(record, "answer_index"))]
        category = str(field(record, "category", default="other"))
        prompt = (f"The following is a multiple choice question about {category}. Think step by step and "
                  f"then finish your answer with \"the answer is (X)\" where X is the correct letter choice.\n\n"
                  f"Question: {field(record, 'question')}\nOptions:\n{format_options(options)}")
        return Instance(id="", task=self.name, prompt=prompt, answer={"letter": letter, "options": options},
                        category=category)

    def parse(self, text):
        return extract_mmlu_pro(text)

    def check(self, inst, response):
        got = self.extract(response)
        return Score(float(got == inst.answer["letter"]), got)
