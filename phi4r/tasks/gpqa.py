"""GPQA (Diamond): four options, `Final Answer: X` letter match.

Layouts: the original release (CSV, also the Hugging Face copy Idavidrein/gpqa): `Question`,
`Correct Answer`, `Incorrect Answer 1..3`, `Record ID`, `High-level domain`; the options are
shuffled with a fixed seed per item. Eureka's prepared rows (options already placed in columns
`A`-`D`, the correct letter in `ground_truth`) and copies with `question`, an `options`/`choices`
list and an `answer` letter or index keep their order.
"""
from __future__ import annotations

import random

from .base import Instance
from .choice import LETTERS, ChoiceTask, format_options, shuffle_options
from .eureka import gpqa as eureka
from .external import ExternalTask, as_list, field


def correct_letter(answer, n: int) -> str:
    """An answer given as a letter (`"B"`, `"(B)"`) or a 0-based index, as a letter."""
    text = str(answer).strip().strip("()").strip()
    if text.isdigit() and int(text) < n:
        return LETTERS[int(text)]
    if len(text) == 1 and text.upper() in LETTERS[:n]:
        return text.upper()
    raise ValueError(f"answer {answer!r} is neither a letter A-{LETTERS[n - 1]} nor an index below {n}")


class Gpqa(ChoiceTask, ExternalTask):
    name = "gpqa"
    eureka_source = "user_configs/gpqa.py"

    def check_eureka(self, inst, response, judge=None):
        return eureka.check(inst, response, inst.answer["letter"], judge)

    def from_record(self, record):
        question = str(field(record, "Question", "question", "problem")).strip()
        if all(record.get(k) not in (None, "") for k in "ABCD") and "ground_truth" in record:
            options = [str(record[k]).strip() for k in "ABCD"]
            letter = correct_letter(record["ground_truth"], 4)
        elif "Correct Answer" in record:
            correct = str(field(record, "Correct Answer")).strip()
            wrong = [str(field(record, f"Incorrect Answer {i}")).strip() for i in (1, 2, 3)]
            # Seeded by the item itself, so the order is the same in every run and on every machine.
            rng = random.Random("gpqa:" + str(field(record, "Record ID", default=question)))
            options, letter = shuffle_options(rng, correct, wrong)
        else:
            options = [str(o).strip() for o in as_list(field(record, "options", "choices"), "options")]
            letter = correct_letter(field(record, "answer", "answer_index", "label"), len(options))
        prompt = f"{question}\n\n{format_options(options)}\n\nAnswer as \"Final Answer: X\" where X is the letter."
        return Instance(id="", task=self.name, prompt=prompt, answer={"letter": letter, "options": options},
                        category=str(field(record, "High-level domain", "domain", default="gpqa")))
