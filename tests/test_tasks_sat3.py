"""3SAT: instances and verdicts cross-checked against python-sat; corrupted answers fail."""
import itertools

from pysat.solvers import Solver

from phi4r.tasks import get_task
from phi4r.tasks.sat3 import RATIOS, format_solution

task = get_task("sat3")


def pysat_models(clauses, limit=None):
    with Solver(name="minisat22", bootstrap_with=clauses) as s:
        return list(itertools.islice(s.enum_models(), limit))


def satisfies(values, clauses):
    return all(any((lit > 0) == values[abs(lit) - 1] for lit in c) for c in clauses)


def test_instances_match_pysat():
    for level in (1, 2, 4, 6, 8):
        for inst in task.generate(8, seed=2, difficulty=level):
            n, clauses = inst.answer["n"], inst.answer["clauses"]
            assert n == level + 2 and all(len(c) == 3 and len({abs(x) for x in c}) == 3 for c in clauses)
            models = pysat_models(clauses)
            assert len(models) == inst.meta["num_models"]
            assert inst.answer["satisfiable"] == bool(models)
            if inst.category == "hard_many_solutions":
                assert len(models) >= 2


def test_categories_follow_clause_ratio():
    for inst in task.generate(40, seed=0, difficulty=13):
        m = round(RATIOS[inst.category] * inst.answer["n"])
        # Duplicate clauses are dropped, so a formula may have a few fewer than ratio * n.
        assert 0.9 * m <= inst.meta["num_clauses"] <= m
    cats = [i.category for i in task.generate(8, seed=0, difficulty=5)]
    assert cats == list(RATIOS) * 2


def test_verdicts_against_the_solver():
    seen_unsat = seen_sat = 0
    for inst in task.generate(52, seed=7):
        n, clauses = inst.answer["n"], inst.answer["clauses"]
        models = pysat_models(clauses, limit=1)
        unsat_reply = task.check(inst, "<final_answer>Unsatisfiable</final_answer>")
        assert unsat_reply.score == (0.0 if models else 1.0)
        assert task.score(inst, "Unsatisfiable") == unsat_reply.score  # bare word accepted too
        if models:
            seen_sat += 1
            values = [lit > 0 for lit in models[0]][:n]
            assert task.score(inst, format_solution(values)) == 1.0
            for v in range(n):  # every single-variable flip, judged independently
                flipped = values[:v] + [not values[v]] + values[v + 1:]
                assert task.score(inst, format_solution(flipped)) == float(satisfies(flipped, clauses))
        else:
            seen_unsat += 1
            for values in itertools.islice(itertools.product([True, False], repeat=n), 16):
                assert task.score(inst, format_solution(list(values))) == 0.0
    assert seen_sat and seen_unsat


def test_teacher_flip_is_caught():
    caught = 0
    for inst in task.generate(40, seed=4):
        got = task.extract(task.teacher(inst))
        if got == "UNSAT":
            assert task.score(inst, format_solution([True] * inst.answer["n"])) == 0.0
            continue
        for v in range(len(got)):
            flipped = got[:v] + [not got[v]] + got[v + 1:]
            if not satisfies(flipped, inst.answer["clauses"]):
                assert task.score(inst, format_solution(flipped)) == 0.0
                caught += 1
                break
    assert caught > 10


def test_parse_forms():
    assert task.parse("<final_answer>{'Solution': 'True, False, True'}</final_answer>") == [True, False, True]
    assert task.parse('{"Solution": "true,false"}') == [True, False]
    assert task.parse("<final_answer>{'Solution': 'True, Maybe'}</final_answer>") is None
    assert task.parse("<final_answer>Unsatisfiable</final_answer>") == "UNSAT"
    # The last final_answer block is the answer.
    text = "<final_answer>Unsatisfiable</final_answer> no: <final_answer>{'Solution': 'True'}</final_answer>"
    assert task.parse(text) == [True]
    assert task.parse("I could not decide.") is None
    inst = task.generate(1, seed=0, difficulty=3)[0]
    assert task.check(inst, format_solution([True])).score == 0.0  # wrong number of values
