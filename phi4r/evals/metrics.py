"""Eureka's repeated-sampling metrics over scored samples.

Every instance is answered `runs` times. Accuracy is computed per run (the mean score over the
instances), then averaged over runs with the sample standard deviation (ddof=1, pandas' default,
as Eureka's aggregators use). Best-of-N / worst-of-N take each instance's max / min score over its
runs; majority vote scores the most frequent extracted answer; pass@k is the unbiased estimator of
Chen et al. (2021). Samples are dicts as the runner logs them (see runner.py).
"""
from __future__ import annotations

import json
import math
from collections import Counter, defaultdict
from statistics import mean, stdev


def pass_at_k(n: int, c: int, k: int) -> float:
    """P(at least one of k samples drawn without replacement from n, c of them correct, is correct)."""
    if k > n:
        raise ValueError(f"pass@{k} needs at least {k} samples, got {n}")
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def answer_key(extracted) -> str | None:
    """A hashable, order-stable form of an extracted answer (lists and dicts compare by value)."""
    return None if extracted is None else json.dumps(extracted, sort_keys=True, default=str)


def majority_score(samples: list[dict]) -> float:
    """The score of the most frequent extracted answer; samples without an answer do not vote.

    Ties go to the answer that appeared first (lowest run), so the result is deterministic; an
    instance where no run produced an answer scores 0.
    """
    ordered = sorted(samples, key=lambda s: s["run"])
    keys = [answer_key(s["extracted"]) for s in ordered]
    votes = Counter(k for k in keys if k is not None)
    if not votes:
        return 0.0
    top = max(votes.values())
    winner = next(k for k in keys if k is not None and votes[k] == top)
    return next(s["score"] for s, k in zip(ordered, keys) if k == winner)


def is_correct(score: float) -> bool:
    return score >= 1.0


def pass_ks(runs: int) -> list[int]:
    """k = 1, 2, 4, ... up to the number of runs, and the number of runs itself."""
    ks = [1 << i for i in range(runs.bit_length()) if 1 << i <= runs]
    return ks + [runs] if ks[-1] != runs else ks


def detail_means(samples: list[dict]) -> dict[str, float]:
    """Mean of each numeric or boolean field of the verifiers' details (e.g. BA-Calendar's fraction
    of constraint checks passed, the rate of well-formed answers), over the samples that have it."""
    values: dict[str, list[float]] = defaultdict(list)
    for s in samples:
        for key, value in (s.get("details") or {}).items():
            if isinstance(value, (bool, int, float)):
                values[key].append(float(value))
    return {key: mean(v) for key, v in sorted(values.items())}


def summarize(samples: list[dict], runs: int) -> dict:
    """All metrics for one group of samples (each sample: id, task, run, score, extracted, ...)."""
    by_instance: dict[tuple, list[dict]] = defaultdict(list)
    by_run: dict[int, list[float]] = defaultdict(list)
    for s in samples:
        by_instance[(s["task"], s["id"])].append(s)
        by_run[s["run"]].append(s["score"])
    per_run = [mean(by_run[r]) for r in sorted(by_run)]
    groups = list(by_instance.values())
    complete = [g for g in groups if len(g) >= runs]
    tokens = [s["response_tokens"] for s in samples if s.get("response_tokens") is not None]
    reasoning = [s["reasoning_tokens"] for s in samples if s.get("reasoning_tokens") is not None]
    return {
        "instances": len(groups),
        "samples": len(samples),
        "runs": runs,
        "accuracy_per_run": per_run,
        "mean": mean(per_run) if per_run else None,
        "std": stdev(per_run) if len(per_run) > 1 else None,
        "best_of_n": mean(max(s["score"] for s in g) for g in groups) if groups else None,
        "worst_of_n": mean(min(s["score"] for s in g) for g in groups) if groups else None,
        "majority_vote": mean(majority_score(g) for g in groups) if groups else None,
        # pass@k needs every instance's full set of runs; it is left out while a run is incomplete.
        "pass_at_k": {str(k): mean(pass_at_k(len(g), sum(is_correct(s["score"]) for s in g), k) for g in complete)
                      for k in pass_ks(runs)} if groups and len(complete) == len(groups) else {},
        "mean_tokens": mean(tokens) if tokens else None,
        "mean_reasoning_tokens": mean(reasoning) if reasoning else None,
        "errors": sum(s.get("error") is not None for s in samples),  # no answer (refused, failed): scored 0
        "truncation_rate": mean(s.get("finish_reason") == "length" for s in samples) if samples else None,
        "details": detail_means(samples),
    }


def breakdown(samples: list[dict], runs: int) -> dict:
    """Metrics overall, per task, and per task by category and by difficulty."""
    def grouped(key):
        groups: dict = defaultdict(lambda: defaultdict(list))
        for s in samples:
            groups[s["task"]][str(s[key]) or "-"].append(s)
        return {t: {k: summarize(v, runs) for k, v in sorted(g.items(), key=lambda kv: _order(kv[0]))}
                for t, g in groups.items()}

    return {
        "overall": summarize(samples, runs),
        "by_task": {t: summarize(v, runs) for t, v in _by_task(samples).items()},
        "by_category": grouped("category"),
        "by_difficulty": grouped("difficulty"),
    }


def compare_modes(samples: list[dict], runs: int) -> dict:
    """Per task, the metrics of every scoring mode a sample was graded in (its `modes`), how many
    samples the modes score differently, and how many verdicts skipped a judge (`needs_judge`)."""
    out = {}
    for task, group in _by_task(samples).items():
        modes = list(group[0]["modes"])
        out[task] = {"differ": sum(len({m["score"] for m in s["modes"].values()}) > 1 for s in group),
                     "needs_judge": sum(bool(m["details"].get("needs_judge")) for s in group for m in s["modes"].values()),
                     "by_mode": {mode: summarize([{**s, **s["modes"][mode]} for s in group], runs) for mode in modes}}
    return out


def _by_task(samples: list[dict]) -> dict[str, list[dict]]:
    tasks: dict[str, list[dict]] = defaultdict(list)
    for s in samples:
        tasks[s["task"]].append(s)
    return tasks


def _order(key: str):
    """Numeric keys (difficulty levels) in numeric order, other keys alphabetically after them."""
    return (0, int(key), "") if key.lstrip("-").isdigit() else (1, 0, key)
