"""Maze and SpatialMap (text-only) in Eureka: the option TEXT is read from the answer line and the
first line, and the data set's answer must be a substring of what was read.

Follows data_utils/spatial_utils.py (extract_answer_from_text_map_and_maze, ExtractQuestionOptions),
metrics/metrics_base.py (SubstringExistsMatch) and user_configs/vision_language/maze.py and
spatial_map.py (the LLM-extraction fallback, read with `Final Answer:\\s*(.+)`).
"""
from __future__ import annotations

import re

from ..base import Instance, Judge, Score
from . import with_fallback

NUMBERS = {"zero": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7,
           "eight": 8, "nine": 9}


def option_lines(options: list) -> list[str]:
    """ExtractQuestionOptions: the prompt's option lines, `A. text`."""
    return [f"{'ABCDEFGHIJ'[i]}. {opt}" for i, opt in enumerate(options)]


def extract(raw: str, options: list[str], match_first: bool = False) -> str:
    """extract_answer_from_text_map_and_maze: "<option text> or <option text>" (read from the
    answer line, and from the first line of the response), "" when neither names an option.

    Eureka passes re.IGNORECASE where re.sub takes `count`, so each substitution below is case
    sensitive and made at most twice (IGNORECASE == 2)."""
    if not raw:
        return ""
    idx = 0 if match_first else -1
    raw = re.sub(r"\bno objects\b", "0 objects", raw, count=2)
    raw = re.sub(r"\bnot\b", "no", raw, count=2)
    raw = re.sub(r"\bshould be\b", "is", raw, count=2)
    for word, digit in NUMBERS.items():
        raw = re.sub(rf"\b{word}\b", str(digit), raw, count=2)
    opts = {x.split(".")[0].strip().lower(): x.split(".")[1].strip().lower() for x in options}
    parsed_letter = parsed = ""
    answers_pattern = rf"\b({'|'.join(opts.values())})\b"
    if "answer:" in raw.lower():
        matches = re.findall(r"^\**Answer:\**\s+(\w)\. (\w+)", raw, re.IGNORECASE)
        if matches:  # findall with two groups gives tuples: `.lower()` on one raises in Eureka
            option = matches[idx][0].lower()
            parsed_letter = opts.get(option, option)
        matches = re.findall(r"Answer:\**\s+([^\n]+)", raw, re.IGNORECASE)
        if matches:
            line = matches[idx]
            found = re.findall(answers_pattern, line, re.IGNORECASE)
            if found:
                parsed = found[idx]
            else:
                letters = re.findall(rf"\b({'|'.join(opts)})\b", line, re.IGNORECASE)
                if letters:
                    parsed_letter = opts[letters[idx].lower()]
    elif "answer is" in raw.lower():
        matches = re.findall(r"answer is:*\s*\**([\w\d]+)[\s:.]*\**", raw, re.IGNORECASE)
        if matches:
            option = matches[idx].lower()
            parsed_letter = opts.get(option, option)
    found = re.findall(answers_pattern, raw.splitlines()[0], re.IGNORECASE)
    if found:
        parsed = found[idx]
    return " or ".join(filter(None, [parsed, parsed_letter]))


def parse_reply(reply: str) -> str:
    """The fallback extractor's reply: RegexTransform(`Final Answer:\\s*(.+)`, ignore_case, last)."""
    found = re.findall(r"Final Answer:\s*(.+)", reply, flags=re.IGNORECASE)
    return found[-1] if found else ""


def check(inst: Instance, response: str, options: list, target, judge: Judge | None = None) -> Score:
    """SubstringExistsMatch: the target option's text, lowercased, inside what was extracted."""
    details: dict = {}
    lines = option_lines(options)
    got = with_fallback(lambda t: extract(t, lines), "", inst, response, judge, details, parse_reply)
    return Score(float(str(target).lower() in str(got).lower()), got or None, details)
