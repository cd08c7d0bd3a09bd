"""ArenaHard: arena-hard-auto's files, both orders judged, weighted verdicts, cached judgments."""
import json
import re

import pytest

from phi4r.evals import run_eval
from phi4r.evals.backends import Completion
from phi4r.evals.judge import EndpointJudge
from phi4r.tasks import get_task
from phi4r.tasks.arenahard import battles, parse_verdict, win_rate

import fake_judge

BASELINE = "gpt-4-0314"
# question -> (baseline answer, model answer)
CASES = {
    "Write a haiku about rain.": ("Rain falls.", "Soft rain on the roof, a long grey afternoon hums, puddles hold the sky."),
    "Explain recursion briefly.": ("A function calling itself on a smaller input.", "Self-reference on less input."),
    "Name a prime number.": ("Seven.", "Eleven"),
    "UNDECIDABLE: pick a colour.": ("Blue.", "Green."),
}
ANSWER = re.compile(r"<\|The Start of Assistant (A|B)'s Answer\|>\n(.*?)\n<\|The End of Assistant \1's Answer\|>", re.S)


def prefer_longer(body):
    """A judge that prefers the longer answer (strongly when twice as long), and gives no verdict
    on an UNDECIDABLE question. Eureka's extraction fallback (one user message) finds no answer."""
    if len(body["messages"]) == 1:
        return "Final Answer: none"
    user = body["messages"][-1]["content"]
    if "UNDECIDABLE" in user:
        return "Both answers are colours; I cannot say which is better."
    a, b = (len(text) for _, text in ANSWER.findall(user))
    if a == b:
        label = "A=B"
    elif a > b:
        label = "A>>B" if a >= 2 * b else "A>B"
    else:
        label = "B>>A" if b >= 2 * a else "B>A"
    return f"My own answer would be short.\n\nMy final verdict is: [[{label}]]"


@pytest.fixture
def judge():
    with fake_judge.judge_server(prefer_longer) as served:
        yield served


def write_bench(root, new_layout=False):
    """arena-hard-auto's data/<bench>/ directory: question.jsonl and model_answer/<baseline>.jsonl."""
    bench = root / "arena-hard-v0.1"
    (bench / "model_answer").mkdir(parents=True)
    questions, answers = [], []
    for n, (question, (baseline, _)) in enumerate(CASES.items()):
        qid = f"q{n}"
        if new_layout:
            questions.append({"uid": qid, "category": "arena-hard-v0.1", "cluster": "c", "prompt": question})
            answers.append({"uid": qid, "model": BASELINE, "messages": [
                {"role": "user", "content": question}, {"role": "assistant", "content": {"answer": baseline}}]})
        else:
            questions.append({"question_id": qid, "category": "arena-hard-v0.1", "cluster": "c", "turns": [{"content": question}]})
            answers.append({"question_id": qid, "answer_id": f"a{n}", "model_id": BASELINE,
                            "choices": [{"index": 0, "turns": [{"content": baseline, "token_len": 3}]}], "tstamp": 0})
    (bench / "question.jsonl").write_text("".join(json.dumps(q) + "\n" for q in questions))
    (bench / "model_answer" / f"{BASELINE}.jsonl").write_text("".join(json.dumps(a) + "\n" for a in answers))
    return bench


class Scripted:
    """Answers each question with its scripted model answer, after some reasoning."""
    name, system_prompt = "scripted", None

    def sampling_defaults(self):
        return {}

    def complete(self, jobs, sampling, system_prompt):
        for job in jobs:
            yield job, Completion("I should weigh the length of my answer.", CASES[job.instance.prompt][1], "stop", 9, 5)


def run(bench, url, out, runs=1):
    judge = EndpointJudge(url, "judge-model", cache=out / "judge_cache.jsonl", retries=0, backoff=0.0)
    try:
        summary = run_eval(Scripted(), ["arenahard"], out, runs=runs, data={"arenahard": str(bench)},
                           progress=False, plots=False, judge=judge)
    finally:
        judge.close()
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    return summary, {s["prompt"]: s for s in samples}


def test_both_orders_weighted_verdicts_and_a_resumed_run_asks_nothing(tmp_path, judge):
    url, state = judge
    bench, out = write_bench(tmp_path), tmp_path / "run"
    summary, samples = run(bench, url, out)
    haiku, recursion, prime, colour = (samples[q] for q in CASES)
    # Much longer: B>>A with the model as B, A>>B with it as A: 6 battles, all won.
    assert haiku["extracted"] == ["B>>A", "A>>B"] and (haiku["details"]["wins"], haiku["details"]["battles"]) == (6.0, 6)
    assert recursion["extracted"] == ["A>B", "B>A"] and (recursion["details"]["wins"], recursion["details"]["battles"]) == (0.0, 2)
    assert prime["extracted"] == ["A=B", "A=B"] and prime["score"] == 0.5
    assert colour["extracted"] == [None, None] and colour["details"]["verdict_errors"] == 2
    assert colour["details"]["battles"] == 0 and colour["score"] == 0.0
    # The win rate pools the battles: 7 of 10 (the per-question mean would be 0.375).
    rate = win_rate(list(samples.values()))
    assert rate["mean"] == pytest.approx(0.7) and rate["battles"] == 10 and rate["verdict_errors"] == 2
    assert summary["metrics"]["by_task"]["arenahard"]["mean"] == pytest.approx(0.375)

    assert len(state["calls"]) == 8  # four questions, two orders each
    for body in state["calls"]:
        system, user = body["messages"]
        assert system["role"] == "system" and all(f"[[{v}]]" in system["content"] for v in ("A>>B", "A>B", "A=B", "B>A", "B>>A"))
        assert body["temperature"] == 0.0 and body["max_tokens"] >= 4096
        assert "weigh the length" not in user["content"]  # the judge reads the answer, not the reasoning
    for question, (baseline, model) in CASES.items():
        placed = [dict(ANSWER.findall(b["messages"][1]["content"])) for b in state["calls"]
                  if b["messages"][1]["content"].startswith(f"<|User Prompt|>\n{question}\n")]
        assert placed == [{"A": baseline, "B": model}, {"A": model, "B": baseline}]

    run(bench, url, out)  # resumed: every sample settled
    (out / "samples.jsonl").unlink()  # graded again from scratch: every verdict from the cache
    _, again = run(bench, url, out)
    assert len(state["calls"]) == 8
    assert {q: s["details"] for q, s in again.items()} == {q: s["details"] for q, s in samples.items()}


def test_a_run_without_a_judge_counts_no_battles(tmp_path):
    bench = write_bench(tmp_path)
    summary = run_eval(Scripted(), ["arenahard"], tmp_path / "run", data={"arenahard": str(bench)}, progress=False, plots=False)
    samples = [json.loads(line) for line in (tmp_path / "run" / "samples.jsonl").read_text().splitlines()]
    assert all(s["details"]["needs_judge"] for s in samples)
    assert win_rate(samples)["mean"] is None and win_rate(samples)["unjudged"] == 4
    assert summary["metrics"]["by_task"]["arenahard"]["instances"] == 4


def test_both_published_layouts_load_the_same(tmp_path):
    old = get_task("arenahard").load(write_bench(tmp_path / "v01") / "question.jsonl")
    new = get_task("arenahard").load(write_bench(tmp_path / "new", new_layout=True))
    assert [i.to_dict() for i in old] == [i.to_dict() for i in new]
    assert old[0].id == "arenahard-q0" and old[0].prompt == "Write a haiku about rain."
    assert old[0].answer == {"baseline": "Rain falls.", "baseline_model": BASELINE}


def test_missing_baseline_answers_are_named(tmp_path):
    bench = write_bench(tmp_path)
    task = get_task("arenahard")
    lines = (bench / "model_answer" / f"{BASELINE}.jsonl").read_text().splitlines()
    (bench / "model_answer" / f"{BASELINE}.jsonl").write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(ValueError, match="gpt-4-0314.jsonl has no answer to question q3"):
        task.load(bench)
    (bench / "model_answer" / f"{BASELINE}.jsonl").rename(bench / "model_answer" / "a.jsonl")
    (bench / "model_answer" / "b.jsonl").write_text("")
    with pytest.raises(ValueError, match="looked for gpt-4-0314.jsonl and found 2 other files"):
        task.load(bench)
    with pytest.raises(ValueError, match="model_answer: no such directory"):
        (tmp_path / "q.jsonl").write_text((bench / "question.jsonl").read_text())
        task.load(tmp_path / "q.jsonl")


@pytest.mark.parametrize("reply, verdict", [
    ("... so [[A>B]].", "A>B"),
    ("First [[A>B]], on reflection [[B>>A]]", "B>>A"),  # the last verdict
    ("verdict: [[b>a]]", "B>A"),  # read upper-cased
    ("verdict: [A=B]", "A=B"),  # single brackets when there is no double-bracket verdict
    ("[[A>B]] but also [B>A]", "A>B"),  # double brackets first
    ("no verdict here", None),
])
def test_verdicts_are_read_as_arena_hard_auto_reads_them(reply, verdict):
    assert parse_verdict(reply) == verdict


def test_weights_and_malformed_labels():
    assert battles(("B>>A", "A>>B")) == (6.0, 6, 0)
    assert battles(("A<B", "B<A")) == (2.0, 2, 0)  # the mirrored spellings
    assert battles(("A=B", "B>A")) == (0.5, 2, 0)
    assert battles(("A>>>B", "A>B")) == (0.0, 0, 1)  # a label outside the five: the question counts no battles
    assert battles((None, None)) == (0.0, 0, 2)


def test_the_win_rate_is_the_bradley_terry_score_against_one_baseline():
    """arena-hard-auto's Bradley-Terry fit (a logistic regression, each tie one win for each side)
    on the battles of one model and one baseline gives back the weighted win rate."""
    linear_model = pytest.importorskip("sklearn.linear_model")
    np = pytest.importorskip("numpy")
    verdicts = [("B>>A", "A>>B"), ("A>B", "B>A"), ("A=B", "A=B"), ("A>B", "A>>B"), ("B>A", "A=B")]
    samples = []
    rows, outcome = [], []  # model as +1, baseline as -1; y = 1 when the model wins
    for n, pair in enumerate(verdicts):
        wins, count, _ = battles(pair)
        samples.append({"run": 0, "details": {"wins": wins, "battles": count}})
        for step, label in zip(("model_b", "model_a"), pair):
            a_score, weight = {"A>>B": (1, 3), "A>B": (1, 1), "A=B": (0.5, 1), "B>A": (0, 1), "B>>A": (0, 3)}[label]
            model_score = a_score if step == "model_a" else 1 - a_score
            for _ in range(weight):
                if model_score == 0.5:
                    rows += [[1.0], [1.0]]
                    outcome += [1, 0]
                else:
                    rows += [[1.0], [1.0]]
                    outcome += [int(model_score), int(model_score)]
    fit = linear_model.LogisticRegression(fit_intercept=False, C=np.inf, tol=1e-10).fit(np.array(rows), np.array(outcome))
    bradley_terry = 1 / (1 + np.exp(-fit.coef_[0][0]))
    assert win_rate(samples)["mean"] == pytest.approx(bradley_terry, abs=1e-6)


def test_the_cli_prints_the_pooled_win_rate_and_wants_a_judge(tmp_path, judge, capsys, monkeypatch):
    from phi4r.cli import main
    from phi4r.commands import eval as eval_command

    url, _ = judge
    bench = write_bench(tmp_path)
    args = ["eval", "--tasks", "arenahard", "--data", f"arenahard={bench}", "--out", str(tmp_path / "run"), "--quiet", "--no-plots"]
    assert main(args) == 2
    assert "arenahard is scored by a judge only" in capsys.readouterr().err
    monkeypatch.setattr(eval_command, "_backend", lambda args: Scripted())
    assert main([*args, "--judge-endpoint", url, "--judge-model", "j"]) == 0
    assert "arenahard: win rate against the baseline 70.0 over 10 weighted battles" in capsys.readouterr().out
