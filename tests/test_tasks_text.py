"""FlenQA, arithmetic and countdown: answers checked independently; corrupted answers fail."""
import re

import pytest

from phi4r.tasks import approx_tokens, get_task
from phi4r.tasks.countdown import evaluate
from phi4r.tasks.flenqa import TARGETS

flenqa, arith, countdown = get_task("flenqa"), get_task("arithmetic"), get_task("countdown")


def test_flenqa_lengths_and_facts():
    for level, target in TARGETS.items():
        for inst in flenqa.generate(3, seed=1, difficulty=level):
            assert all(fact in inst.prompt for fact in inst.answer["facts"])
            assert target <= approx_tokens(inst.prompt) <= target * 1.1 + 120
            assert flenqa.score(inst, f"Final Answer: {not inst.answer['truth']}") == 0.0
            assert flenqa.score(inst, f"Final Answer: {inst.answer['truth']}") == 1.0


def test_flenqa_monorel_answers_follow_the_chain():
    for inst in flenqa.generate(30, seed=3, difficulty=1):
        if inst.category != "monorel":
            continue
        pairs = re.findall(r"(\w+) is \w+ than (\w+)\.", inst.prompt)
        x, y = re.search(r"Is (\w+) \w+ than (\w+)\?", inst.prompt).groups()
        above = {y}  # everyone ranked above y, by following the facts upward
        while True:
            more = {a for a, b in pairs if b in above} - above
            if not more:
                break
            above |= more
        assert inst.answer["truth"] == (x in above - {y})


def test_flenqa_parse():
    assert flenqa.parse("Final Answer: True") is True
    assert flenqa.parse("final answer: **false**") is False
    assert flenqa.parse("So the answer is true.") is True
    assert flenqa.parse("It is true that...") is None


def test_arithmetic_values_and_off_by_one():
    for inst in arith.generate(60, seed=2):
        expr = inst.prompt.split("Compute ", 1)[1].split(".\n", 1)[0]
        assert re.fullmatch(r"[\d+\-*/() ]+", expr)
        assert eval(expr) == inst.answer["value"]  # our own digits-and-operators string
        value = inst.answer["value"]
        assert arith.score(inst, f"Final Answer: {value}") == 1.0
        assert arith.score(inst, f"Final Answer: {value + 1}") == 0.0
        assert arith.score(inst, f"Final Answer: {value - 1}") == 0.0
    assert [len(re.findall(r"[+\-*/]", i.answer["expression"])) for i in arith.generate(6, seed=0)] == [1, 1, 1, 2, 3, 5]


def test_number_extraction():
    inst = arith.generate(1, seed=0, difficulty=3)[0]
    v = inst.answer["value"]
    assert arith.extract(f"Final Answer: {v:,}") == v
    assert arith.extract(f"The result is \\boxed{{{v}}}") == v
    assert arith.extract(f"Final Answer: {v}.0") == v
    assert arith.extract("Final Answer: unknown") is None


def test_countdown_verifier():
    inst = countdown.generate(1, seed=0, difficulty=5)[0]
    numbers, target = inst.answer["numbers"], inst.answer["target"]
    expr = countdown.extract(countdown.teacher(inst))
    assert eval(expr) == target
    used = [int(x) for x in re.findall(r"\d+", expr)]
    assert all(used.count(x) <= numbers.count(x) for x in used)
    assert countdown.score(inst, f"Final Answer: {expr}") == 1.0
    assert countdown.score(inst, f"Final Answer: {expr} = {target}") == 1.0
    assert countdown.score(inst, f"Final Answer: ({expr}) + 1") == 0.0  # off by one
    assert countdown.score(inst, f"Final Answer: ({expr}) * {numbers[0]} / {numbers[0]}") == 0.0  # reuse
    assert countdown.score(inst, f"Final Answer: {target}") == 0.0  # the target is not a given number
    for hostile in ("__import__('os').system('true')", "(1).__class__", "2 ** 10", "-5 + 10", "1 if 1 else 2", "x + 1"):
        result = countdown.check(inst, f"Final Answer: {hostile}")
        assert result.score == 0.0 and result.details["format_ok"] is False, hostile


def test_countdown_exact_division():
    value, used = evaluate("(7 - 4) / 2 * 4")
    assert value == 6 and sorted(used) == [2, 4, 4, 7]
    with pytest.raises(ValueError):
        evaluate("1 / (2 - 2)")


def test_countdown_every_level_solvable_by_teacher():
    for level in countdown.difficulties:
        for inst in countdown.generate(4, seed=3, difficulty=level):
            assert len(inst.answer["numbers"]) == level + 1
            assert countdown.score(inst, countdown.teacher(inst)) == 1.0
