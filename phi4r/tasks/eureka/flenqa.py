"""FlenQA in Eureka: whichever of "true" / "false" occurs LAST anywhere in the response.

Follows data_utils/flenqa_utils.py (FlenQAOutputProcessor without chain of thought:
normalize_answer, response_category) and metrics/metrics_base.py (ExactMatch against the
lowercased ground truth), as user_configs/flenqa.py wires them.
"""
from __future__ import annotations

import re

from ..base import Score, final_text


def normalize(text: str) -> str:
    """normalize_answer: lowercase, articles to spaces, whitespace collapsed. (Its punctuation step
    replaces the 32 marks only as one run, in set order, which no response contains.)"""
    text = re.sub(r"\b(a|an|the)\b", " ", str(text).lower())
    return " ".join(text.split())


def category(text: str) -> str:
    """response_category: "not true" counts as false; then the later of the last "true" and the
    last "false" (substrings: "untrue" is true), "none" when neither occurs."""
    text = normalize(text).replace("not true", "false")
    t, f = text.rfind("true"), text.rfind("false")
    return "true" if t > f else "false" if f > t else "none"


def check(response: str, truth: bool) -> Score:
    text = final_text(response)
    got = category(normalize(text)) if text is not None else "none"
    return Score(float(got == str(truth).lower()), None if got == "none" else got == "true")
