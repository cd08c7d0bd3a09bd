"""The LLM judge behind an OpenAI-compatible endpoint: a fake judge server with scripted replies."""
import json

import pytest

from phi4r.evals import run_eval
from phi4r.evals.backends import Completion
from phi4r.evals.judge import EndpointJudge, JudgeError

import fake_judge

TRUE = "## Student Final Answer\n1\n\n## Equivalence Judgement\nTRUE\n\n## Justification\nk = 1 is the answer."
UNDECIDED = ("Which k works for every n?", "The answer is k = 1 for all n", "\\boxed{1}")  # math-verify: a bare 1
PROVEN = ("Half of one?", "\\frac{1}{2}", "\\boxed{0.5}")  # math-verify proves it: no judge
WORDS = ("Six times seven?", 42, "It is forty-two, i.e. 42.")  # no `Final Answer:`: the extraction fallback


def _reply(body):
    text = body["messages"][0]["content"]
    return TRUE if "## Reference Answer" in text else "Final Answer: 42"


@pytest.fixture
def judge_server():
    with fake_judge.judge_server(_reply) as served:
        yield served


class Scripted:
    """Answers each instance with the response scripted for its problem."""
    name, system_prompt = "scripted", None

    def __init__(self, answers):
        self.answers = answers

    def sampling_defaults(self):
        return {}

    def complete(self, jobs, sampling, system_prompt):
        for job in jobs:
            content = next(r for p, r in self.answers.items() if job.instance.prompt.startswith(p))
            yield job, Completion("Let me think: nothing to see here.", content, "stop", 5, 0)


def _data(tmp_path):
    (tmp_path / "math.jsonl").write_text("".join(json.dumps({"problem": p, "answer": a}) + "\n" for p, a, _ in (UNDECIDED, PROVEN)))
    (tmp_path / "aime.jsonl").write_text(json.dumps({"problem": WORDS[0], "answer": WORDS[1]}) + "\n")
    data = {"math": str(tmp_path / "math.jsonl"), "aime": str(tmp_path / "aime.jsonl")}
    return data, Scripted({p: r for p, _, r in (UNDECIDED, PROVEN, WORDS)})


def _run(tmp_path, url, out):
    data, backend = _data(tmp_path)
    judge = EndpointJudge(url, "judge-model", cache=out / "judge_cache.jsonl", retries=1, backoff=0.0)
    run_eval(backend, ["math", "aime"], out, data=data, scoring="eureka", judge=judge, progress=False, plots=False)
    judge.close()
    return {s["task"] + ":" + s["prompt"].split("?")[0]: s for s in map(json.loads, (out / "samples.jsonl").read_text().splitlines())}


def test_the_judge_decides_what_rules_cannot_and_a_resumed_run_asks_nothing(tmp_path, judge_server):
    url, state = judge_server
    out = tmp_path / "run"
    samples = _run(tmp_path, url, out)
    undecided, proven, words = samples["math:Which k works for every n"], samples["math:Half of one"], samples["aime:Six times seven"]
    assert (undecided["modes"]["strict"]["score"], undecided["score"]) == (0.0, 1.0)  # the judge's TRUE
    assert undecided["details"]["needs_judge"] is False
    assert proven["score"] == 1.0 and proven["details"]["needs_judge"] is False
    assert (words["modes"]["strict"]["score"], words["score"], words["extracted"]) == (0.0, 1.0, 42.0)
    assert words["details"] == {"needs_judge": False, "judge_extracted": True}
    assert len(state["calls"]) == 2  # the proven answer never reached the judge
    for body in state["calls"]:
        assert body["model"] == "judge-model" and body["temperature"] == 0.0
    equivalence = next(b["messages"][0]["content"] for b in state["calls"] if "## Reference Answer" in b["messages"][0]["content"])
    assert UNDECIDED[1] in equivalence and UNDECIDED[2] in equivalence and "{response}" not in equivalence
    assert "nothing to see here" not in equivalence  # the judge reads the content, as Eureka's model_output
    assert len((out / "judge_cache.jsonl").read_text().splitlines()) == 2

    _run(tmp_path, url, out)  # resumed: every sample settled
    (out / "samples.jsonl").unlink()  # graded again from scratch: the verdicts come from the cache
    again = _run(tmp_path, url, out)
    assert len(state["calls"]) == 2
    assert {k: s["score"] for k, s in again.items()} == {k: s["score"] for k, s in samples.items()}


def test_a_failing_judge_leaves_the_sample_needing_one(tmp_path, judge_server):
    url, state = judge_server
    state["fail"] = True
    out = tmp_path / "run"
    samples = _run(tmp_path, url, out)
    undecided, words = samples["math:Which k works for every n"], samples["aime:Six times seven"]
    for s in (undecided, words):
        assert s["details"]["needs_judge"] is True and s["score"] == 0.0
        assert "HTTP 503: judge overloaded" in s["details"]["judge_error"]
    assert samples["math:Half of one"]["score"] == 1.0
    assert len(state["calls"]) == 4  # two questions, each asked once more after the failure
    assert not (out / "judge_cache.jsonl").exists()  # nothing cached: a later run asks again


def test_a_refused_or_unreachable_judge_raises_judge_error(tmp_path):
    from phi4r.tasks.base import Instance
    judge = EndpointJudge("http://127.0.0.1:9", "m", retries=0)
    with pytest.raises(JudgeError, match="judge http://127.0.0.1:9/v1/chat/completions"):
        judge("extract", Instance("a", "aime", "q", {"value": 1}), "r")
    with pytest.raises(ValueError, match="unknown judge step"):
        judge("pairwise", Instance("a", "aime", "q", {"value": 1}), "r")
