"""The length-aware reward at the report's breakpoints, format penalties and the repetition penalty."""
import pytest

from phi4r.train.rewards import (W_ACC, W_REP, LengthConstants, accuracy_reward, repetition_penalty, reward,
                                 well_formed)

REPORT = LengthConstants()  # 31744 / 25600 / 3702
OK = "<think>\nsteps\n</think>\n\nFinal Answer: 5"


@pytest.mark.parametrize("length, want", [(0, 1.0), (3702, 1.0), (25600, 1.0), ((25600 + 31744) // 2, 0.75),
                                          (31744, 0.5), (40000, 0.5)])
def test_correct_answers(length, want):
    assert accuracy_reward(True, length, REPORT) == pytest.approx(want, abs=1e-12)


@pytest.mark.parametrize("length, want", [(0, -1.0), (1851, -0.75), (3702, -0.5), (25600, -0.5), (31744, -0.5)])
def test_wrong_answers(length, want):
    assert accuracy_reward(False, length, REPORT) == pytest.approx(want, abs=1e-12)


def test_between_breakpoints_follows_the_cosine():
    import math

    rho = (30000 - 25600) / (31744 - 25600)
    assert accuracy_reward(True, 30000, REPORT) == pytest.approx(0.5 + 0.25 * (1 + math.cos(math.pi * rho)))
    assert accuracy_reward(False, 1000, REPORT) == pytest.approx(-0.5 - 0.25 * (1 + math.cos(math.pi * 1000 / 3702)))
    # Monotone: a correct answer never gains by growing, a wrong one never loses.
    assert all(accuracy_reward(True, n, REPORT) >= accuracy_reward(True, n + 500, REPORT) for n in range(0, 32000, 500))
    assert all(accuracy_reward(False, n, REPORT) <= accuracy_reward(False, n + 100, REPORT) for n in range(0, 4000, 100))


def test_constants_scale_with_the_completion_limit():
    assert LengthConstants.scaled(31744) == REPORT
    c = LengthConstants.scaled(1024)
    assert (c.l_max, c.l_pos, c.l_neg) == (1024, 826, 119)
    assert LengthConstants.scaled(1024, l_neg=50).l_neg == 50
    assert accuracy_reward(True, 1024, c) == 0.5 and accuracy_reward(False, 119, c) == -0.5


def test_format_penalties_and_weights():
    c = LengthConstants.scaled(100)
    ids = list(range(10))  # no repeats
    good = reward(OK, ids, correct=True, truncated=False, c=c)
    assert good.kind == "correct" and good.total == pytest.approx(W_ACC * 1.0)
    assert reward(OK, ids, False, False, c).kind == "wrong"
    for text in ("Final Answer: 5", "<think>a</think>b</think> 5", "x <think>a</think> 5", "<think>never closed"):
        assert not well_formed(text)
        r = reward(text, ids, correct=True, truncated=False, c=c)
        assert (r.kind, r.accuracy, r.total) == ("malformed", -1.0, pytest.approx(-W_ACC))
    r = reward("<think>cut off in the middle", ids, correct=False, truncated=True, c=c)
    assert (r.kind, r.accuracy, r.total) == ("truncated", -0.5, pytest.approx(-0.5 * W_ACC))
    assert well_formed("  " + OK)


def test_repetition_penalty():
    assert repetition_penalty(list(range(50))) == 0.0
    assert repetition_penalty([1, 2, 3]) == 0.0  # shorter than one 5-gram
    assert repetition_penalty([1, 2, 3, 4, 5] * 10) == -1.0  # one loop: every 5-gram repeats 9-10 times
    gram = [7, 7, 7, 7, 7]
    four = sum(([100 + i] + gram for i in range(4)), [])  # the 5-gram occurs 4 times: under the threshold
    five = sum(([100 + i] + gram for i in range(5)), [])  # 5 times: its 5 occurrences are repeated
    assert repetition_penalty(four) == 0.0
    assert repetition_penalty(five) == pytest.approx(-5 / (len(five) - 4))
    assert repetition_penalty(five, threshold=6) == 0.0
    looped = reward(OK, [1, 2, 3, 4, 5] * 10, True, False, LengthConstants.scaled(100))
    assert looped.repetition == -1.0 and looped.total == pytest.approx(W_ACC * 1.0 - W_REP)
