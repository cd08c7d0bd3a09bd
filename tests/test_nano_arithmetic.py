"""The nano recipe's multi-digit arithmetic (phi4r.recipes.nano.arithmetic, .arith_eval, .data):
column traces and their step checker, plain questions, the held-out evaluation and its seeds."""
import json
import random
import re

import pytest

from phi4r.evals.backends import Completion
from phi4r.reasoning import split_reasoning
from phi4r.recipes.nano import arith_eval, data, evaluation, recipe
from phi4r.recipes.nano import arithmetic as arith
from phi4r.tasks import get_task

task = get_task("arithmetic")

EDGES = ["99 + 99", "999 + 1", "1 + 999", "500 + 500", "0 + 10", "10 + 0", "905 + 95", "1000 - 1", "100 - 99",
         "305 - 298", "10 - 10", "909 - 99", "200 - 2", "47 * 0", "0 * 47", "10 * 10", "99 * 9", "12 * 34",
         "99 * 99", "305 * 7", "7 * 305", "100 * 10", "25 * 40", "(9 + 8) * 7", "9 * 8 - 7", "3 + 4 * 25",
         "(17 - 9) * (12 + 3)", "84 / 7 + 15"]


def problems_of_every_kind(n):
    for kind in arith.KINDS:
        for i in range(n):
            yield arith.expression(*arith.draw(random.Random(f"test-{kind}-{i}"), kind))


def test_teacher_traces_pass_the_checker_on_thousands_of_problems():
    """Every kind (two- and three-digit + and -, mixed lengths, x by one and two digits), the edge
    cases (carries out of every column, borrows across zeros, zero operands) and the task's own
    levels 1-6: the checker accepts each step, the value is Python's, the task's verifier agrees."""
    exprs = list(problems_of_every_kind(400)) + EDGES
    insts = [i for level in task.difficulties for i in task.generate(60, 5, difficulty=level)]
    checked = carries = borrows = 0
    for expr in exprs:
        text = arith.solve(arith.parse_expression(expr))
        result = arith.check_trace(f"What is {expr}?", text)
        assert result.value == eval(expr.replace("/", "//")), expr
        checked += result.steps
        carries += len(re.findall(r"carry [1-9]\.", text))
        borrows += text.count("borrow 1,")
    for inst in insts:
        text = data.teach(inst)
        assert arith.check_trace(inst.prompt, text, inst.answer["tree"]).value == inst.answer["value"]
        assert task.score(inst, text) == 1.0
    assert len(exprs) > 4000 and checked > 10_000 and carries > 2000 and borrows > 1000


def test_one_digit_operations_are_the_tasks_own_steps():
    """Levels 1-2 (one-digit operands) are taught exactly as the task's teacher teaches them."""
    for level in (1, 2):
        for inst in task.generate(200, 3, difficulty=level):
            assert data.teach(inst) == task.teacher(inst)
    assert "\n(" in data.teach(task.generate(1, 3, difficulty=3)[0])  # level 3: the column procedure


def test_the_checker_rejects_every_changed_digit_and_a_dropped_line():
    """A trace with one digit changed (anywhere: operands, lists, carries, sums, answers) or one line
    left out is refused, at the line that is wrong or at its first consequence."""
    for expr in ["67 + 81", "305 - 128", "47 * 6", "12 * 34", "(9 + 8) * 7", "99 + 1"]:
        q, text = f"What is {expr}?", arith.solve(arith.parse_expression(expr))
        for pos in [m.start() for m in re.finditer(r"\d", text)]:
            wrong = text[:pos] + str((int(text[pos]) + 1) % 10) + text[pos + 1:]
            with pytest.raises(arith.TraceError):
                arith.check_trace(q, wrong)
        lines = text.split("\n")
        for k in range(1, len(lines) - 4):  # the think block's lines
            with pytest.raises(arith.TraceError):
                arith.check_trace(q, "\n".join(lines[:k] + lines[k + 1:]))
    with pytest.raises(arith.TraceError, match="line 4: 6 \\+ 8 \\+ 0 is 14"):
        arith.check_trace("67 + 81 = ?", arith.solve(arith.parse_expression("67 + 81")).replace("= 14,", "= 15,"))


def test_every_digit_is_one_token():
    """Under the recipe's split a digit never joins another character: a tokenizer trained on the
    traces (as the recipe trains its own) and the shipped one write every digit of a trace as its own
    token (with at most a leading space), and no `dd:dd` (the split's one-piece clock time) occurs."""
    from phi4r.checkpoint import NANO_DIR
    from phi4r.tokenizer import Tokenizer, train_bpe

    texts = [q + "\n" + arith.solve(arith.parse_expression(arith.parse_question(q)))
             for q in (arith.question(e, k) for k, e in enumerate(problems_of_every_kind(30)))]
    assert not any(re.search(r"\d\d:\d\d", t) for t in texts)
    for tok in (train_bpe(texts, vocab_size=600, pattern=data.SPLIT), Tokenizer.from_dir(NANO_DIR)):
        merged = 0
        for text in texts[:100]:
            pieces = [tok.decode([i]) for i in tok.encode(text)]
            assert "".join(pieces) == text
            assert all(re.fullmatch(r" ?\d", p) for p in pieces if re.search(r"\d", p)), pieces
            merged += sum(len(p) > 1 for p in pieces)
        assert merged > 0  # the trained tokenizer does merge (words, a space and a digit)


def test_plain_questions_and_the_tasks_prompt_are_parsed():
    assert arith.parse_question("What is 67 + 81?") == "67 + 81"
    assert arith.parse_question("Calculate 305 - 128") == "305 - 128"
    assert arith.parse_question("12 * 34 = ?") == "12 * 34"
    assert arith.parse_question("what is 12*34") == "12 * 34"
    assert arith.parse_question("How much is (9+8) * 7?") == "(9 + 8) * 7"
    assert arith.parse_question("Compute ((2 + 3)) - 1.") == "2 + 3 - 1"
    assert arith.parse_expression("8 - (3 - 1)") == ("-", 8, ("-", 3, 1))
    assert arith.parse_expression("8 - 3 - 1") == ("-", ("-", 8, 3), 1)
    for bad in ["What is 7?", "Is 1 + 2 more than 3 + 4?", "hello", "What is 3 + ?", "What is (3 + 4?"]:
        with pytest.raises(ValueError):
            arith.parse_question(bad)
    for level in task.difficulties:  # the task's prompt is TASK_PROMPT, and its expression parses back
        for inst in task.generate(30, 11, difficulty=level):
            assert inst.prompt == arith.TASK_PROMPT.format(inst.answer["expression"])
            assert arith.parse_question(inst.prompt) == inst.answer["expression"]
    for k in range(len(arith.PLAIN_QUESTIONS)):
        assert arith.parse_question(arith.question("305 - 128", k)) == "305 - 128"


def test_evaluation_seeds_are_fixed_disjoint_and_never_trained_on():
    """Dev and held-out seeds differ; no conversation of a training mix with multi-digit levels and
    every column kind (the recipe's SFT seeds) asks an evaluation problem, nor the benchmark's
    held-out multi-digit instances, though the same generators without the exclusion would."""
    assert not set(arith_eval.DEV_SEEDS) & set(arith_eval.HELDOUT_SEEDS) and len(arith_eval.HELDOUT_SEEDS) >= 3
    assert arith_eval.problems("add_sub_2", 70001, 5) == arith_eval.problems("add_sub_2", 70001, 50)[:5]
    held_out = arith_eval.all_expressions()
    benchmark = {i.answer["expression"] for seed in (evaluation.DEV_SEED, evaluation.TEST_SEED, *evaluation.EVAL_SEEDS) for level in (3, 4)
                 for i in task.generate(50, seed, difficulty=level)}
    kinds = {kind: 300 for kind in arith.KINDS}
    mix = {"arithmetic": {3: 1500, 4: 400}, data.COLUMNS: kinds}
    asked = {arith.parse_question(user["content"])
             for offset in (recipe.SFT_SEED_OFFSET, 3000, 4000) for user, _ in data.sft_conversations(mix, offset)}
    assert len(asked) > 3000 and not asked & held_out and not asked & benchmark
    raw = {arith.expression(*arith.draw(random.Random(f"columns-{kind}-{recipe.SFT_SEED_OFFSET}-{i}"), kind))
           for kind in kinds for i in range(300)}
    raw |= {i.answer["expression"] for i in task.generate(1500, recipe.SFT_SEED_OFFSET, difficulty=3)}
    assert raw & held_out and raw & benchmark  # the exclusion has something to exclude


def test_column_conversations_and_the_other_tasks_data():
    """The "columns" entry: its count, the task's prompt and plain questions in turn, traces the
    checker accepts; adding it leaves the other tasks' conversations as they were."""
    convs = data.column_conversations({"add2": 6, "mul21": 4}, 1000)
    assert len(convs) == 10
    for k, (user, assistant) in enumerate(convs):
        assert ("Answer as" in user["content"]) == (k % 2 == 0)
        arith.check_trace(user["content"], assistant["content"])
    base = {"arithmetic": {1: 4, 3: 4}, "spatialmap": {1: 2}, "calendar": {1: 2}, "copy": {"calendar": 2}}
    without = data.sft_conversations(base, 1000)
    with_columns = data.sft_conversations({**base, data.COLUMNS: {"sub3": 3}}, 1000)
    added = data.column_conversations({"sub3": 3}, 1000)
    assert len(with_columns) == len(without) + 3 and [c for c in with_columns if c not in added] == without


class ColumnTeacher:
    """A backend answering with the recipe's column trace: what a model that learned it writes."""
    name, system_prompt = "column-teacher", None

    def sampling_defaults(self):
        return {"temperature": 0.8}

    def complete(self, jobs, sampling, system_prompt):
        for job in jobs:
            text = arith.teacher(job.instance)
            yield job, Completion(*split_reasoning(text), "stop", len(text.split()), None, text)


def test_arith_eval_grades_column_traces_right_and_reports_across_seeds(tmp_path):
    result = arith_eval.run(ColumnTeacher(), arith_eval.DEV_SEEDS, 4, runs=2, out=tmp_path)
    for mode in ("greedy", "sampled"):
        for category in arith_eval.CATEGORIES:
            assert result[mode]["accuracy"][category] == {"mean": 1.0, "std": 0.0, "per_seed": [1.0] * 3}
            assert result[mode]["trace_ok"][category]["mean"] == 1.0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["config"]["sampling_greedy"]["temperature"] == 0.0
    assert len((tmp_path / "samples-sampled-101.jsonl").read_text().splitlines()) == 4 * 6 * 2
    table = arith_eval.table(result)
    assert "| plain_mul_2x1 | 100.0 ± 0.0 | 100 / 100 / 100 | 100.0 ± 0.0 |" in table
    insts = arith_eval.instances(101, 5)
    assert {i.category for i in insts} == set(arith_eval.CATEGORIES)
    assert all(task.score(i, arith.teacher(i)) == 1.0 for i in insts)
    assert sum("Answer as" in i.prompt for i in insts) == 15  # three task-prompt categories
    with pytest.raises(ValueError):
        arith_eval.problems("add_sub_2", 101, arith_eval.N_MAX + 1)


def test_arith_eval_runs_on_nano(capsys):
    assert arith_eval.main(["--model", "nano", "--seeds", "dev", "-n", "2", "--runs", "2",
                            "--categories", "add_sub_2,plain_mul_2x1"]) == 0
    out = capsys.readouterr().out
    assert "seeds [101, 102, 103], n 2" in out and "| add_sub_2 |" in out and "| plain_mul_2x1 |" in out
    with pytest.raises(SystemExit):
        arith_eval.main(["--seeds", "heldout", "-n", str(arith_eval.N_MAX + 1)])
