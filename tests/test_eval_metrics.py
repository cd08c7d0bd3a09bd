"""Eureka metrics against values computed by hand on small synthetic result sets."""
import itertools
import math

import pytest

from phi4r.evals.metrics import breakdown, majority_score, pass_at_k, pass_ks, summarize


def sample(iid, run, score, extracted=None, task="t", category="c", difficulty=1, tokens=10, reasoning=6,
           finish="stop"):
    return {"task": task, "id": iid, "run": run, "score": float(score), "extracted": extracted,
            "category": category, "difficulty": difficulty, "response_tokens": tokens,
            "reasoning_tokens": reasoning, "finish_reason": finish}


# Three instances, three runs. Scores per instance over runs 0, 1, 2:
#   a: 1 1 0     b: 0 1 0     c: 0 0 0
GRID = {"a": [1, 1, 0], "b": [0, 1, 0], "c": [0, 0, 0]}
SAMPLES = [sample(i, r, s, extracted=str(s)) for i, scores in GRID.items() for r, s in enumerate(scores)]


def test_mean_and_std_over_runs():
    m = summarize(SAMPLES, runs=3)
    # Accuracy per run: run 0 = 1/3, run 1 = 2/3, run 2 = 0.
    assert m["accuracy_per_run"] == pytest.approx([1 / 3, 2 / 3, 0.0])
    assert m["mean"] == pytest.approx(1 / 3)
    # Sample std (ddof=1): deviations 0, 1/3, -1/3 -> sqrt((1/9 + 1/9) / 2) = 1/3.
    assert m["std"] == pytest.approx(1 / 3)
    assert m["instances"] == 3 and m["samples"] == 9


def test_best_and_worst_of_n():
    m = summarize(SAMPLES, runs=3)
    assert m["best_of_n"] == pytest.approx(2 / 3)  # a and b have a correct run
    assert m["worst_of_n"] == pytest.approx(0.0)  # no instance is always right
    always = [sample("x", r, 1) for r in range(3)] + [sample("y", r, r == 0) for r in range(3)]
    assert summarize(always, 3)["worst_of_n"] == pytest.approx(0.5)


def test_single_run_has_no_std():
    m = summarize([sample("a", 0, 1), sample("b", 0, 0)], runs=1)
    assert m["mean"] == 0.5 and m["std"] is None


def test_majority_vote_over_extracted_answers():
    # Two votes for "7" (wrong) beat one for "8" (right); answerless runs do not vote.
    votes = [sample("q", 0, 0, "7"), sample("q", 1, 1, "8"), sample("q", 2, 0, "7"), sample("q", 3, 0, None)]
    assert majority_score(votes) == 0.0
    # "8" twice, "7" once, and two runs with no answer: "8" wins although answerless runs are the most.
    votes = [sample("q", 0, 0, None), sample("q", 1, 1, "8"), sample("q", 2, 0, None), sample("q", 3, 1, "8"),
             sample("q", 4, 0, "7")]
    assert majority_score(votes) == 1.0
    # A tie goes to the answer of the earliest run, whatever order the samples come in.
    tie = [sample("q", 1, 1, "8"), sample("q", 0, 0, "7")]
    assert majority_score(tie) == 0.0
    assert majority_score([sample("q", 0, 0, None), sample("q", 1, 0, None)]) == 0.0
    # Structured answers vote by value: two equal lists beat a different one.
    lists = [sample("q", 0, 1, [True, False]), sample("q", 1, 0, [False, False]), sample("q", 2, 1, [True, False])]
    assert majority_score(lists) == 1.0


def test_majority_vote_in_summary():
    # a: "1","1","0" -> "1" (score 1); b: "0","1","0" -> "0"; c: all "0" -> 0. Majority = 1/3.
    assert summarize(SAMPLES, 3)["majority_vote"] == pytest.approx(1 / 3)


def brute_pass_at_k(outcomes: list[bool], k: int) -> float:
    """The definition: the fraction of k-subsets of the samples with at least one correct."""
    subsets = list(itertools.combinations(outcomes, k))
    return sum(any(s) for s in subsets) / len(subsets)


@pytest.mark.parametrize("n,c,k", [(5, 0, 1), (5, 2, 1), (5, 2, 2), (5, 2, 4), (5, 5, 3), (8, 3, 5), (10, 1, 10),
                                   (6, 4, 3)])
def test_pass_at_k_is_the_exact_formula(n, c, k):
    outcomes = [True] * c + [False] * (n - c)
    assert pass_at_k(n, c, k) == pytest.approx(brute_pass_at_k(outcomes, k))
    assert pass_at_k(n, c, k) == pytest.approx(1 - math.comb(n - c, k) / math.comb(n, k))


def test_pass_at_k_in_summary():
    m = summarize(SAMPLES, 3)
    assert list(m["pass_at_k"]) == ["1", "2", "3"]
    # pass@1 is the mean accuracy; pass@2: a (c=2) 1, b (c=1) 1 - C(2,2)/C(3,2) = 2/3, c 0.
    assert m["pass_at_k"]["1"] == pytest.approx(1 / 3)
    assert m["pass_at_k"]["2"] == pytest.approx((1 + 2 / 3 + 0) / 3)
    assert m["pass_at_k"]["3"] == pytest.approx(2 / 3)
    assert pass_ks(5) == [1, 2, 4, 5] and pass_ks(8) == [1, 2, 4, 8] and pass_ks(1) == [1]
    with pytest.raises(ValueError):
        pass_at_k(3, 1, 4)


def test_pass_at_k_counts_only_full_scores():
    partial = [sample("p", r, 0.5) for r in range(2)]
    assert summarize(partial, 2)["pass_at_k"]["2"] == 0.0
    assert summarize(partial, 2)["best_of_n"] == 0.5


def test_lengths_and_truncation():
    samples = [sample("a", 0, 1, tokens=10, reasoning=4), sample("a", 1, 0, tokens=30, reasoning=30, finish="length"),
               sample("b", 0, 0, tokens=20, reasoning=None), sample("b", 1, 0, tokens=40, reasoning=10, finish="length")]
    m = summarize(samples, 2)
    assert m["mean_tokens"] == 25
    assert m["mean_reasoning_tokens"] == pytest.approx(44 / 3)  # unknown counts are left out, not zero
    assert m["truncation_rate"] == 0.5


def test_breakdown_by_task_category_and_difficulty():
    samples = (
        [sample("s1", r, r == 0, task="sat3", category="hard", difficulty=2) for r in range(2)]
        + [sample("s2", r, 1, task="sat3", category="easy", difficulty=10) for r in range(2)]
        + [sample("t1", r, 0, task="tsp", category="6_nodes", difficulty=1) for r in range(2)]
    )
    b = breakdown(samples, 2)
    assert b["by_task"]["sat3"]["mean"] == pytest.approx(0.75)
    assert b["by_task"]["tsp"]["mean"] == 0.0
    assert b["overall"]["mean"] == pytest.approx(0.5)  # runs: (1 + 1 + 0) / 3 and (0 + 1 + 0) / 3
    assert b["by_task"]["sat3"]["std"] == pytest.approx(math.sqrt(2 * 0.25**2))
    assert b["by_category"]["sat3"]["hard"]["mean"] == 0.5
    assert b["by_category"]["sat3"]["easy"]["worst_of_n"] == 1.0
    assert list(b["by_difficulty"]["sat3"]) == ["2", "10"]  # numeric order, not "10" < "2"
    assert set(b["by_category"]) == {"sat3", "tsp"}


def test_verifier_details_are_averaged_where_present():
    samples = [{**sample("a", 0, 1), "details": {"fraction_passed": 0.5, "format_ok": True, "checks": {"x": 1}}},
               {**sample("a", 1, 0), "details": {"fraction_passed": 1.0, "format_ok": False, "reason": "late"}},
               {**sample("b", 0, 0), "details": {}}, {**sample("b", 1, 0), "details": {"format_ok": False}}]
    assert summarize(samples, 2)["details"] == {"format_ok": pytest.approx(1 / 3), "fraction_passed": 0.75}
