"""3SAT: find a satisfying assignment of a random 3-CNF formula, or show there is none.

Categories by clause/variable ratio, as in the card's 3SAT set: `hard` (ratio 4.26, the phase
transition), `hard_many_solutions` (ratio 4.26, kept only when satisfiable with several models),
`easy_under` (ratio 2, under-constrained) and `easy_over` (ratio 8, over-constrained).
Level d has d + 2 variables: levels 1-4 (3-6 variables) are for small models, levels 2-13 are the
card's 4-15 variables.
"""
from __future__ import annotations

import re

import numpy as np
from pysat.solvers import Solver

from .base import Instance, Score, Task, last_match, trace
from .eureka import nphard
from .external import RecordLoader, as_list, field

RATIOS = {"hard": 4.26, "hard_many_solutions": 4.26, "easy_under": 2.0, "easy_over": 8.0}


def random_3cnf(rng, n: int, m: int) -> list[list[int]]:
    """m uniform random 3-literal clauses over distinct variables, duplicates dropped."""
    clauses: list[list[int]] = []
    for _ in range(m):
        clause = sorted((v if rng.random() < 0.5 else -v for v in rng.sample(range(1, n + 1), 3)), key=abs)
        if clause not in clauses:
            clauses.append(clause)
    return clauses


def count_models(n: int, clauses: list[list[int]]) -> int:
    """Exact model count by evaluating all 2^n assignments at once (n <= 20)."""
    bits = (np.arange(2**n)[:, None] >> np.arange(n)) & 1 == 1
    ok = np.ones(2**n, dtype=bool)
    for clause in clauses:
        sat = np.zeros(2**n, dtype=bool)
        for lit in clause:
            sat |= bits[:, abs(lit) - 1] if lit > 0 else ~bits[:, abs(lit) - 1]
        ok &= sat
    return int(ok.sum())


def is_satisfiable(clauses: list[list[int]]) -> bool:
    with Solver(name="glucose4", bootstrap_with=clauses) as solver:
        return solver.solve()


def clause_str(clause: list[int]) -> str:
    return "(" + " | ".join(f"x{lit}" if lit > 0 else f"~x{-lit}" for lit in clause) + ")"


def format_solution(values: list[bool]) -> str:
    return "<final_answer>{'Solution': '" + ", ".join(str(v) for v in values) + "'}</final_answer>"


# Eureka's form: its parser reads only a dict, so a bare `Unsatisfiable` block scores 0 there.
UNSAT_ANSWER = "<final_answer>{'Solution': 'Unsatisfiable'}</final_answer>"


def dpll(n: int, clauses: list[list[int]]) -> tuple[dict[int, bool] | None, list[str]]:
    """DPLL with unit propagation, narrating each decision, forced value and conflict."""
    steps: list[str] = []

    def value(lit, assign):
        v = assign.get(abs(lit))
        return None if v is None else v == (lit > 0)

    def propagate(assign):
        while True:
            forced = None
            for i, clause in enumerate(clauses, 1):
                vals = [value(lit, assign) for lit in clause]
                if True in vals:
                    continue
                free = [lit for lit, v in zip(clause, vals) if v is None]
                if not free:
                    steps.append(f"Clause {i} {clause_str(clause)} is false: conflict.")
                    return False
                if len(free) == 1:
                    forced = (i, free[0])
                    break
            if forced is None:
                return True
            i, lit = forced
            assign[abs(lit)] = lit > 0
            steps.append(f"Clause {i} forces x{abs(lit)}={lit > 0}.")

    def search(assign):
        if not propagate(assign):
            return None
        open_clauses = [c for c in clauses if True not in (value(lit, assign) for lit in c)]
        if not open_clauses:
            return assign
        # Branch on a literal of the most constrained open clause, trying to satisfy it first.
        shortest = min(open_clauses, key=lambda c: sum(value(lit, assign) is None for lit in c))
        lit = next(lit for lit in shortest if value(lit, assign) is None)
        var = abs(lit)
        for val in (lit > 0, lit < 0):
            steps.append(f"Try x{var}={val}.")
            found = search({**assign, var: val})
            if found is not None:
                return found
        steps.append(f"Both values of x{var} fail; back up.")
        return None

    return search({}), steps


def parse_clauses(text: str) -> list[list[int]] | None:
    """Clauses written in a prompt: parenthesised groups of literals (`x1`, `~x2`, `¬x_3`,
    `NOT x4`, `-x5`), else lists of integers (`[1, -2, 3]`), else DIMACS lines ending in 0;
    None when there are none."""
    lit = r"(¬|~|!|-|\bnot\s+|\bNOT\s+)?\s*(?:\b[xXvV]_?)(\d+)\b"
    clauses = []
    for group in re.findall(r"\(([^()]*)\)", text):
        found = re.findall(lit, group)
        if found:
            clauses.append([-int(v) if neg else int(v) for neg, v in found])
    if not clauses:  # integer lists: [[1, -2, 3], ...]
        clauses = [[int(t) for t in g.split(",")] for g in re.findall(r"\[\s*(-?[1-9]\d*(?:\s*,\s*-?[1-9]\d*)*)\s*\]", text)]
    if not clauses:
        clauses = [[int(t) for t in line.split()[:-1]]
                   for line in text.split("\n") if re.fullmatch(r"\s*(-?[1-9]\d*\s+)+0\s*", line)]
    return clauses or None


def assignment(value) -> list[bool]:
    """`"1,0,1"`, `"(1, 0, 1)"` or `"True, False, True"` as a list of bools."""
    tokens = [t.strip().lower() for t in str(value).strip().strip("()[]").split(",")]
    if not tokens or any(t not in ("0", "1", "true", "false") for t in tokens):
        raise ValueError(f"solution {value!r} is not a list of 0/1 values")
    return [t in ("1", "true") for t in tokens]


def satisfies(values: list[bool], clauses: list[list[int]]) -> bool:
    return all(any(abs(lit) <= len(values) and (lit > 0) == values[abs(lit) - 1] for lit in c) for c in clauses)


def same_models(n: int, clauses: list[list[int]], solutions: list[list[bool]]) -> bool:
    """Whether `clauses` have exactly the released models (a release lists every model)."""
    if max(abs(lit) for c in clauses for lit in c) > n or not all(satisfies(v, clauses) for v in solutions):
        return False
    return n > 20 or count_models(n, clauses) == len({tuple(v) for v in solutions})


class Sat3(RecordLoader, Task):
    name = "sat3"
    # 2: unsatisfiable is answered as Eureka's prompt asks, <final_answer>{'Solution': 'Unsatisfiable'}</final_answer>.
    prompt_version = 2
    difficulties = list(range(1, 14))
    categories = list(RATIOS)

    def make(self, rng, difficulty, k):
        n = difficulty + 2
        category = self.categories[k % len(self.categories)]
        m = round(RATIOS[category] * n)
        for _ in range(10_000):
            clauses = random_3cnf(rng, n, m)
            models = count_models(n, clauses)
            if category != "hard_many_solutions" or models >= max(2, n // 2):
                break
        names = ", ".join(f"x{i}" for i in range(1, n + 1))
        prompt = (
            f"Find True/False values for {names} that satisfy every clause below "
            f"(~ means NOT, | means OR), or say that no such values exist.\n"
            + "\n".join(f"{i}. {clause_str(c)}" for i, c in enumerate(clauses, 1))
            + f"\nAnswer as <final_answer>{{'Solution': 'True, False, ...'}}</final_answer> with the "
            f"values of x1..x{n} in order, or {UNSAT_ANSWER} if no such values exist."
        )
        return Instance(
            id="", task=self.name, prompt=prompt, category=category, difficulty=difficulty,
            answer={"n": n, "clauses": clauses, "satisfiable": models > 0},
            meta={"num_vars": n, "num_clauses": len(clauses), "num_models": models},
        )

    def from_record(self, record):
        """Eureka's 3SAT release (microsoft/sat, a copy of GeoMeterData/nphard_sat1): the formula in
        `query_text` (`prompt` once Eureka renames it), every satisfying assignment as a 0/1 string
        in `solution` (empty when unsatisfiable), `category`, and the instance's own fields."""
        text = str(field(record, "query_text", "prompt", "question"))
        raw = field(record, "solution", "solutions", default=[])
        listed = not isinstance(raw, str) or raw.strip().startswith("[")
        solutions = [assignment(v) for v in (as_list(raw, "solution") if listed else [raw])]
        clauses = parse_clauses(text)
        n = len(solutions[0]) if solutions else int(field(record, "num_var", "num_vars", "n", default=0)) \
            or max((abs(lit) for c in clauses or [] for lit in c), default=0)
        if clauses and "solution" in record and not same_models(n, clauses, solutions):
            clauses = None  # read wrongly from the prompt: grade by the released solutions only
        if clauses is None and "solution" not in record:
            raise KeyError(f"record has no 'solution' and its prompt lists no clauses; its fields are {sorted(record)}")
        satisfiable = bool(solutions) if "solution" in record or clauses is None else is_satisfiable(clauses)
        prompt = ("Decide whether the 3-SAT formula below has a satisfying assignment. If it has, give the "
                  "value of every variable in order as <final_answer>{'Solution': 'True, False, ...'}"
                  "</final_answer>; if none exists, answer <final_answer>{'Solution': 'Unsatisfiable'}"
                  "</final_answer>.\n\n" + text)
        return Instance(id="", task=self.name, prompt=prompt, category=str(field(record, "category", default="sat3")),
                        difficulty=max(n - 2, 0),
                        answer={"n": n, "clauses": clauses, "satisfiable": satisfiable, "solutions": solutions},
                        meta={"num_vars": n, "num_clauses": len(clauses or []), "num_models": len(solutions)})

    def parse(self, text):
        """'UNSAT', a list of bools, or None. The last <final_answer> block wins; without one the
        last Solution dict or 'Unsatisfiable' in the text is read (bare or as the Solution)."""
        block = last_match(r"<final_answer>(.*?)</final_answer>", text, re.S)
        body = block.group(1) if block else text
        sol = last_match(r"""['"]?Solution['"]?\s*:\s*['"]([^'"]*)['"]""", body)
        unsat = last_match(r"\bunsatisfiable\b", body, re.I)
        if unsat and (sol is None or unsat.start() > sol.start()):
            return "UNSAT"
        if sol is None:
            return None
        values = []
        for tok in sol.group(1).split(","):
            tok = tok.strip().lower()
            if tok not in ("true", "false"):
                return None
            values.append(tok == "true")
        return values

    def check(self, inst, response):
        got = self.extract(response)
        clauses, n = inst.answer["clauses"], inst.answer["n"]
        if got is None:
            return Score(0.0, None, {"format_ok": False})
        if clauses is None:  # a released item whose formula could not be read: its listed models decide
            solutions = [v if isinstance(v, list) else assignment(v) for v in inst.answer["solutions"]]
            correct = not solutions if got == "UNSAT" else got in solutions
            return Score(float(correct), got, {"format_ok": True, "claimed_unsat": got == "UNSAT"})
        if got == "UNSAT":
            # Graded by a real solver, not by the stored label.
            correct = not is_satisfiable(clauses)
            return Score(float(correct), got, {"format_ok": True, "claimed_unsat": True})
        if len(got) != n:
            return Score(0.0, got, {"format_ok": False, "reason": f"expected {n} values"})
        satisfied = sum(any((lit > 0) == got[abs(lit) - 1] for lit in c) for c in clauses)
        return Score(float(satisfied == len(clauses)), got,
                     {"format_ok": True, "clauses_satisfied": satisfied / len(clauses)})

    eureka_source = "metrics/nphard_sat_metrics.py"

    def check_eureka(self, inst, response, judge=None):
        # A released record carries its list of solutions; a generated one lists all its models.
        a = inst.answer
        solutions = a["solutions"] if "solutions" in a else nphard.all_models(a["n"], a["clauses"])
        return nphard.check_sat(inst, response, solutions, judge)

    def teacher(self, inst):
        n, clauses = inst.answer["n"], inst.answer["clauses"]
        if clauses is None:
            raise ValueError(f"sat3 item {inst.id}: no teacher trace, its prompt's clauses could not be read")
        assign, steps = dpll(n, clauses)
        steps = [f"{len(clauses)} clauses over {n} variables. Search with unit propagation."] + steps
        if assign is None:
            steps.append("Every branch ends in a conflict, so the formula is unsatisfiable.")
            return trace(steps, UNSAT_ANSWER)
        values = [assign.get(i, True) for i in range(1, n + 1)]
        free = [f"x{i}" for i in range(1, n + 1) if i not in assign]
        steps.append("All clauses are satisfied." + (f" Free: {', '.join(free)} = True." if free else ""))
        steps.append("Assignment: " + ", ".join(f"x{i}={v}" for i, v in enumerate(values, 1)) + ".")
        return trace(steps, format_solution(values))
