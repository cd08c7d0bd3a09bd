"""GPQA (Diamond): four options shuffled with a fixed seed per item, `Final Answer: X` letter match.

Records use the published columns: `Question`, `Correct Answer`, `Incorrect Answer 1..3`,
optionally `Record ID` and `High-level domain`.
"""
from __future__ import annotations

import random

from .base import Instance
from .choice import ChoiceTask, format_options, shuffle_options
from .eureka import gpqa as eureka
from .external import ExternalTask, field


class Gpqa(ChoiceTask, ExternalTask):
    name = "gpqa"
    eureka_source = "user_configs/gpqa.py"

    def check_eureka(self, inst, response, judge=None):
        return eureka.check(inst, response, inst.answer["letter"], judge)

    def from_record(self, record):
        question = field(record, "Question", "question").strip()
        correct = field(record, "Correct Answer").strip()
        wrong = [field(record, f"Incorrect Answer {i}").strip() for i in (1, 2, 3)]
        # Seeded by the item itself, so the order is the same in every run and on every machine.
        rng = random.Random("gpqa:" + str(field(record, "Record ID", default=question)))
        options, letter = shuffle_options(rng, correct, wrong)
        prompt = f"{question}\n\n{format_options(options)}\n\nAnswer as \"Final Answer: X\" where X is the letter."
        return Instance(id="", task=self.name, prompt=prompt, answer={"letter": letter, "options": options},
                        category=str(field(record, "High-level domain", default="gpqa")))
