"""Eureka mode: the card's harness (Microsoft's eureka-ml-insights, commit 2ff37bd) rule for rule.

One module per benchmark ports Eureka's answer extraction and metric; each function names the
Eureka file it follows (paths relative to the `eureka_ml_insights` package), quirks included:
first vs last match, substring matches, solution lists, the calendar's checks. The tasks call
these from `check_eureka`; `check` stays phi4r's exact verifier ("strict").

What Eureka reads is its `model_output` column: for a reasoning model behind an OpenAI-compatible
API that is the message content, without the reasoning, so both modes read the text after the
last `</think>` (`final_text`); a response cut inside its reasoning has no answer in either mode.

Eureka's LLM steps (the answer-extraction fallback, Omni-MATH's equivalence judge) go through the
`judge` hook (base.Judge). Without a judge the step is skipped and the verdict's details say
`needs_judge`, so a report can count the samples a judge would have looked at.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..base import Instance, Judge, final_text


def with_fallback(parse: Callable[[str], Any], missing: Any, inst: Instance, response: str,
                  judge: Judge | None, details: dict, parse_reply: Callable[[str], Any] | None = None) -> Any:
    """`parse` over the answer text; when it finds nothing (`missing`), Eureka's LLM extraction
    (user_configs/llm_extraction.py: only rows whose rule-based answer is empty are sent to the
    extractor, whose reply is read by the pipeline's transform, `parse_reply`, by default `parse`)."""
    text = final_text(response)
    got = missing if text is None else parse(text)
    details["needs_judge"] = False
    if got != missing:
        return got
    if judge is None:
        details["needs_judge"] = True
        return got
    reply = judge("extract", inst, response)
    details["judge_extracted"] = True
    return missing if reply is None else (parse_reply or parse)(reply)
