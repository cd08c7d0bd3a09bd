"""Omni-MATH in Eureka: an LLM judge decides equivalence with the reference answer; no rules.

Follows user_configs/omni_math.py (the judge prompt prompt_templates/omni_math_templates/
omni_math_gpt_eval.jinja) and data_utils/omni_math_utils.py (Omni_Math_ParseLabel: the line after
`## Equivalence Judgement`, TRUE or FALSE). Eureka asks the judge for every sample; here an answer
math-verify already proves equivalent (the strict verdict 1) is accepted without asking, so the
judge sees only what math-verify cannot decide. Without a judge the strict verdict stands in for
those, marked `needs_judge`.
"""
from __future__ import annotations

from ..base import Instance, Judge, Score


def judgement(reply: str | None) -> float | None:
    """Omni_Math_ParseLabel.extract_label: 1 for TRUE, 0 for FALSE, None when unreadable (Eureka's
    NaN, which its mean leaves out; here it scores 0 with `judge_unreadable`)."""
    data = {}
    for part in (reply or "").split("## ")[1:]:
        lines = part.strip().split("\n")
        title = lines[0].strip().replace("#", "").replace("*", "").lower()
        data[title] = lines[1].strip() if len(lines) > 1 else ""
    label = data.get("equivalence judgement", "").strip().replace("#", "").replace("*", "").lower()
    return {"true": 1.0, "false": 0.0}.get(label)


def check(inst: Instance, response: str, strict: Score, judge: Judge | None = None) -> Score:
    if strict.score == 1.0 or judge is None:
        return Score(strict.score, strict.extracted, {**strict.details, "needs_judge": strict.score != 1.0})
    verdict = judgement(judge("math_equivalence", inst, response))
    details = {"needs_judge": False, **({"judge_unreadable": True} if verdict is None else {})}
    return Score(verdict or 0.0, strict.extracted, details)
