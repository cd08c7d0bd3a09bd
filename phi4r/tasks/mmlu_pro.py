"""MMLU-Pro: ten options A-J, graded with the official answer-extraction cascade.

Layouts: the Hugging Face release (TIGER-Lab/MMLU-Pro: `question`, `options` list, `answer`
letter, `answer_index`, `cot_content`, `category`, `src`, `question_id`; a CSV export keeps the
list as text), and copies whose `question` holds the options as `A. ...` lines.
"""
from __future__ import annotations

import re

from .base import Instance, Score
from .choice import LETTERS, format_options
from .external import ExternalTask, as_list, field


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


def split_options(question: str) -> tuple[str, list[str]] | None:
    """A question whose options are written inside it (`A. ...` or `(A) ...` lines, A, B, C... in
    order, after an optional `Options:` line): the bare question and the options, or None."""
    lines = question.split("\n")
    options: list[str] = []
    first = None
    for i, line in enumerate(lines):
        m = re.match(r"\s*\(?([A-J])[.):]\s*(.*)", line)
        if m and len(options) < len(LETTERS) and m.group(1) == LETTERS[len(options)]:
            first = i if first is None else first
            options.append(m.group(2).strip())
        elif options:
            break
    if len(options) < 2:
        return None
    stem = lines[:first]
    if stem and stem[-1].strip().rstrip(":").lower() in ("options", "choices", "answer choices"):
        stem = stem[:-1]
    return "\n".join(stem).strip(), options


class MmluPro(ExternalTask):
    name = "mmlu_pro"

    def from_record(self, record):
        question = str(field(record, "question", "Question", "prompt")).strip()
        options = record.get("options", record.get("choices"))
        if options is None or options == "":
            if split_options(question) is None:
                raise KeyError(f"record has no 'options' and its question lists no A., B., ... options; "
                               f"its fields are {sorted(record)}")
            question, options = split_options(question)
        options = [str(o).strip() for o in as_list(options, "options")]
        answer = str(record.get("answer", "")).strip().strip("()")
        if len(answer) == 1 and answer in LETTERS[: len(options)]:
            index = LETTERS.index(answer)
        else:
            index = int(field(record, "answer_index"))
        # The official evaluation drops the "N/A" padding options, then letters the rest.
        keep = [i for i, o in enumerate(options) if o != "N/A"]
        if index not in keep:
            raise ValueError(f"answer {LETTERS[index] if index < len(LETTERS) else index} is not among the options")
        options, letter = [options[i] for i in keep], LETTERS[keep.index(index)]
        category = str(field(record, "category", "subject", default="other"))
        prompt = (f"The following is a multiple choice question about {category}. Think step by step and "
                  f"then finish your answer with \"the answer is (X)\" where X is the correct letter choice.\n\n"
                  f"Question: {question}\nOptions:\n{format_options(options)}")
        return Instance(id="", task=self.name, prompt=prompt, answer={"letter": letter, "options": options},
                        category=category)

    def parse(self, text):
        return extract_mmlu_pro(text)

    def check(self, inst, response):
        got = self.extract(response)
        return Score(float(got == inst.answer["letter"]), got)
