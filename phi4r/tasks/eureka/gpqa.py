"""GPQA in Eureka: the LAST `Final Answer: X` (case sensitive, X one word character directly after
one space), exact match with the letter.

Follows user_configs/gpqa.py (RegexTransform `Final Answer: (\\w)(?=\\s|\\W|$)`, ImputeNA, the
LLM-extraction fallback read with the same pattern ignoring case), data_utils/transform.py
(RegexTransform: last occurrence) and metrics/metrics_base.py (ExactMatch).
"""
from __future__ import annotations

import re

from ..base import Instance, Judge, Score
from . import with_fallback

PATTERN = r"Final Answer: (\w)(?=\s|\W|$)"


def parse_letter(text: str, ignore_case: bool = False) -> str:
    found = re.findall(PATTERN, text, flags=re.IGNORECASE if ignore_case else 0)
    return found[-1] if found else ""


def check(inst: Instance, response: str, letter: str, judge: Judge | None = None) -> Score:
    details: dict = {}
    got = with_fallback(parse_letter, "", inst, response, judge, details, lambda r: parse_letter(r, True))
    return Score(float(got == letter), got or None, details)
