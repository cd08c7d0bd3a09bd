"""IFEval's instruction checkers: one function per instruction id, `check(text, **kwargs) -> bool`.

Each follows the reference checker of google-research's `instruction_following_eval` (as
packaged in lm-eval's `tasks/ifeval/instructions.py`) rule for rule, quirks included: keywords,
section splitters and postscript markers are used as regular expressions, unescaped; a highlight
`**x**` counts twice (as `*x*` and as `**x**`); an undetectable language passes. Where the
reference would draw a random argument (a missing or out-of-range kwarg) we raise instead, so a
score never depends on chance.
"""
from __future__ import annotations

import inspect
import json
import re
from collections import Counter

from .text import count_words, detect_language, sentences, word_tokens

RELATIONS = ("less than", "at least")
CHECKS: dict = {}


def instruction(instruction_id: str):
    def register(fn):
        CHECKS[instruction_id] = fn
        return fn
    return register


def compare(count: int, relation: str, threshold: int) -> bool:
    return count < threshold if relation == RELATIONS[0] else count >= threshold


def bind(instruction_id: str, kwargs: dict):
    """The checker for an instruction with its kwargs validated: `text -> bool`."""
    fn = CHECKS.get(instruction_id)
    if fn is None:
        raise ValueError(f"unknown IFEval instruction {instruction_id!r}")
    names = [n for n in inspect.signature(fn).parameters if n != "text"]
    # The published files hold a null, and the reference drops every falsy value, for a kwarg
    # an instruction does not take.
    kwargs = {k: v for k, v in (kwargs or {}).items() if v}
    if set(kwargs) != set(names):
        raise ValueError(f"{instruction_id} takes kwargs {names}; got {sorted(kwargs)}")
    validate(instruction_id, kwargs)
    return lambda text: fn(text, **kwargs)


COUNTS = ("num_sentences", "num_paragraphs", "num_words", "nth_paragraph", "num_placeholders", "num_bullets",
          "num_highlights", "num_sections", "frequency", "let_frequency", "capital_frequency")
PATTERNS = ("keywords", "keyword", "forbidden_words", "section_spliter", "postscript_marker")


def validate(instruction_id: str, kwargs: dict) -> None:
    def fail(message):
        raise ValueError(f"{instruction_id}: {message}")
    for name, value in kwargs.items():
        if "relation" in name and value not in RELATIONS:
            fail(f"{name} must be one of {RELATIONS}, got {value!r}")
        if name in COUNTS and (type(value) is not int or value < 0):
            fail(f"{name} must be a whole number >= 0, got {value!r}")
        for pattern in ([value] if isinstance(value, str) else value) if name in PATTERNS else ():
            try:  # used as regular expressions (see above): a broken one fails the load, not a sample
                re.compile(pattern)
            except (re.error, TypeError) as e:
                fail(f"{name} {pattern!r} is not a valid pattern ({e})")
    if not re.fullmatch(r"[A-Za-z]", kwargs.get("letter", "a")):
        fail(f"letter must be one ASCII letter, got {kwargs['letter']!r}")
    if kwargs.get("nth_paragraph", 0) > kwargs.get("num_paragraphs", 1 << 30):
        fail(f"nth_paragraph {kwargs['nth_paragraph']} > num_paragraphs {kwargs['num_paragraphs']}")


@instruction("keywords:existence")
def keywords_existence(text, keywords):
    return all(re.search(k, text, re.IGNORECASE) for k in keywords)


@instruction("keywords:frequency")
def keyword_frequency(text, keyword, frequency, relation):
    return compare(len(re.findall(keyword.strip(), text, re.IGNORECASE)), relation, frequency)


@instruction("keywords:forbidden_words")
def forbidden_words(text, forbidden_words):
    return not any(re.search(rf"\b{w}\b", text, re.IGNORECASE) for w in forbidden_words)


@instruction("keywords:letter_frequency")
def letter_frequency(text, letter, let_frequency, let_relation):
    return compare(Counter(text.lower())[letter.lower()], let_relation, let_frequency)


@instruction("language:response_language")
def response_language(text, language):
    detected = detect_language(text)
    return detected is None or detected == language


@instruction("length_constraints:number_sentences")
def number_sentences(text, num_sentences, relation):
    return compare(len(sentences(text)), relation, num_sentences)


@instruction("length_constraints:number_paragraphs")
def number_paragraphs(text, num_paragraphs):
    """Paragraphs split by a `***` divider; an empty one is allowed only at either end."""
    parts = re.split(r"\s?\*\*\*\s?", text)
    inner_empty = any(not p.strip() for p in parts[1:-1])
    return not inner_empty and sum(bool(p.strip()) for p in parts) == num_paragraphs


@instruction("length_constraints:number_words")
def number_words(text, num_words, relation):
    return compare(count_words(text), relation, num_words)


@instruction("length_constraints:nth_paragraph_first_word")
def nth_paragraph_first_word(text, num_paragraphs, nth_paragraph, first_word):
    parts = text.split("\n\n")
    count = sum(bool(p.strip()) for p in parts)
    # The n-th part counts empty parts too (as the reference indexes), the total does not.
    if nth_paragraph > count or not parts[nth_paragraph - 1].strip():
        return False
    word = parts[nth_paragraph - 1].split()[0].lstrip("'").lstrip('"')
    word = re.match(r"[^.,?!'\"]*", word).group(0).lower()
    return count == num_paragraphs and word == first_word.lower()


@instruction("detectable_content:number_placeholders")
def number_placeholders(text, num_placeholders):
    return len(re.findall(r"\[.*?\]", text)) >= num_placeholders


@instruction("detectable_content:postscript")
def postscript(text, postscript_marker):
    marker = postscript_marker.strip()
    pattern = {"P.P.S": r"\s*p\.\s?p\.\s?s.*$", "P.S.": r"\s*p\.\s?s\..*$"}.get(marker, r"\s*" + marker.lower() + r".*$")
    return bool(re.search(pattern, text.lower(), re.MULTILINE))


@instruction("detectable_format:number_bullet_lists")
def number_bullet_lists(text, num_bullets):
    stars = re.findall(r"^\s*\*[^*].*$", text, re.MULTILINE)
    dashes = re.findall(r"^\s*-.*$", text, re.MULTILINE)
    return len(stars) + len(dashes) == num_bullets


@instruction("detectable_format:constrained_response")
def constrained_response(text):
    return any(option in text for option in ("My answer is yes.", "My answer is no.", "My answer is maybe."))


@instruction("detectable_format:number_highlighted_sections")
def number_highlighted_sections(text, num_highlights):
    single = [h for h in re.findall(r"\*[^\n*]*\*", text) if h.strip("*").strip()]
    double = [h for h in re.findall(r"\*\*[^\n*]*\*\*", text) if h[2:-2].strip()]
    return len(single) + len(double) >= num_highlights


@instruction("detectable_format:multiple_sections")
def multiple_sections(text, section_spliter, num_sections):
    parts = re.split(r"\s?" + section_spliter.strip() + r"\s?\d+\s?", text)
    return len(parts) - 1 >= num_sections


@instruction("detectable_format:json_format")
def json_format(text):
    body = text.strip()
    for fence in ("```json", "```Json", "```JSON", "```"):  # each in turn, as the reference chains them
        body = body.removeprefix(fence)
    body = body.removesuffix("```").strip()
    try:
        json.loads(body)
    except (ValueError, RecursionError):
        return False
    return True


@instruction("detectable_format:title")
def title(text):
    return any(t.lstrip("<").rstrip(">").strip() for t in re.findall(r"<<[^\n]+>>", text))


@instruction("combination:two_responses")
def two_responses(text):
    parts = text.split("******")
    if any(not p.strip() for p in parts[1:-1]):
        return False
    answers = [p for p in parts if p.strip()]
    return len(answers) == 2 and answers[0].strip() != answers[1].strip()


@instruction("combination:repeat_prompt")
def repeat_prompt(text, prompt_to_repeat):
    return text.strip().lower().startswith(prompt_to_repeat.strip().lower())


@instruction("startend:end_checker")
def end_checker(text, end_phrase):
    return text.strip().strip('"').lower().endswith(end_phrase.strip().lower())


@instruction("startend:quotation")
def quotation(text):
    body = text.strip()
    return len(body) > 1 and body[0] == '"' and body[-1] == '"'


@instruction("change_case:capital_word_frequency")
def capital_word_frequency(text, capital_frequency, capital_relation):
    return compare(sum(w.isupper() for w in word_tokens(text)), capital_relation, capital_frequency)


@instruction("change_case:english_capital")
def english_capital(text):
    return text.isupper() and detect_language(text) in (None, "en")


@instruction("change_case:english_lowercase")
def english_lowercase(text):
    return text.islower() and detect_language(text) in (None, "en")


@instruction("punctuation:no_comma")
def no_comma(text):
    return "," not in text
