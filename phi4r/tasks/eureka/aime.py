"""AIME in Eureka: the FIRST `Final Answer: N` (or `Final Answer: [N]`), compared numerically.

Follows data_utils/numeric_answer_utils.py (NumericExtractAnswer), metrics/numeric_answer_metrics.py
(NumericMatch) and user_configs/aime.py (AIME_HYBRIDEXTRACT_PIPELINE: the LLM-extraction fallback).
"""
from __future__ import annotations

import re

from ..base import Instance, Judge, Score
from . import with_fallback


def parse_numeric(text: str) -> float | None:
    """NumericExtractAnswer.parse_output_answer: `re.search`, so the first match wins; `$` and
    commas dropped, `N%` is N/100; `\\boxed{}` is not read."""
    match = re.search(r"Final Answer:\s*([\$]?-?[\d,]+(?:\.\d+)?%?)", text)
    if not match:
        match = re.search(r"Final Answer:\s*\[([\$]?-?[\d,]+(?:\.\d+)?%?)\]", text)
    if not match:
        return None
    answer = match.group(1).replace("$", "").replace(",", "")
    try:
        return float(answer[:-1]) / 100 if answer.endswith("%") else float(answer)
    except ValueError:  # "Final Answer: ," has no digits
        return None


def numeric_match(answer: float | None, target) -> bool:
    """NumericMatch: |target - answer| < 1e-6; no answer is "none" (not correct)."""
    return answer is not None and abs(float(target) - answer) < 1e-6


def check(inst: Instance, response: str, target, judge: Judge | None = None) -> Score:
    details: dict = {}
    got = with_fallback(parse_numeric, None, inst, response, judge, details)
    return Score(float(numeric_match(got, target)), got, details)
