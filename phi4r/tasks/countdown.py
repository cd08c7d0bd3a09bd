"""Countdown: reach a target from given numbers with + - * /, each number used at most once.

Targets come from a random expression over some of the numbers, so every instance is solvable;
the answer is any expression that reaches the target. The verifier parses it with `ast` (never
`eval`), allows only numbers and the four operators, computes exactly with fractions, and checks
that it uses each given number at most once. The teacher searches (iterative deepening, fewest
operations first) and narrates the solution.
"""
from __future__ import annotations

import ast
from collections import Counter
from fractions import Fraction

from .base import Instance, Score, Task, last_match, trace

SMALL, LARGE = list(range(1, 11)), [25, 50, 75, 100]
# level -> (how many numbers, how many of them large, target range)
LEVELS = {1: (2, 0, (2, 81)), 2: (3, 0, (10, 100)), 3: (4, 1, (20, 250)), 4: (5, 1, (100, 500)),
          5: (6, 2, (100, 999))}
OPS = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/"}


def combine(a: int, b: int):
    """(result, op) pairs from a and b with positive whole results, skipping useless moves."""
    a, b = max(a, b), min(a, b)
    out = [(a + b, "+")]
    if a != b:
        out.append((a - b, "-"))
    if b > 1:
        out.append((a * b, "*"))
        if a % b == 0:
            out.append((a // b, "/"))
    return a, b, out


def search(numbers: list[int], target: int, max_ops: int):
    """The fewest combining steps [(a, op, b, result), ...] that produce target, or None."""
    def dfs(pool, depth, path, seen):
        if target in pool:
            return path
        if depth == 0 or len(pool) < 2:
            return None
        key = (tuple(sorted(pool)), depth)
        if key in seen:
            return None
        seen.add(key)
        for i in range(len(pool)):
            for j in range(i + 1, len(pool)):
                rest = pool[:i] + pool[i + 1:j] + pool[j + 1:]
                a, b, results = combine(pool[i], pool[j])
                for r, op in results:
                    found = dfs(rest + [r], depth - 1, path + [(a, op, b, r)], seen)
                    if found is not None:
                        return found
        return None

    for depth in range(max_ops + 1):
        found = dfs(list(numbers), depth, [], set())
        if found is not None:
            return found
    return None


def expression_of(steps, numbers: list[int], target: int) -> str:
    """Rebuild one expression from the combining steps (inner results in parentheses)."""
    if not steps:
        return str(target)
    exprs = [(n, str(n)) for n in numbers]
    for a, op, b, r in steps:
        ia = next(i for i, (v, _) in enumerate(exprs) if v == a)
        ea = exprs.pop(ia)[1]
        ib = next(i for i, (v, _) in enumerate(exprs) if v == b)
        eb = exprs.pop(ib)[1]
        exprs.append((r, f"({ea} {op} {eb})"))
    return exprs[-1][1][1:-1]  # the last step made the target; drop its outer parentheses


def evaluate(expr: str) -> tuple[Fraction, list[int]]:
    """Exact value and the numbers used; ValueError for anything but numbers and + - * /."""
    def walk(node):
        if isinstance(node, ast.BinOp) and type(node.op) in OPS:
            x, y = walk(node.left), walk(node.right)
            if isinstance(node.op, ast.Div):
                if y == 0:
                    raise ValueError("division by zero")
                return x / y
            return {ast.Add: x + y, ast.Sub: x - y, ast.Mult: x * y}[type(node.op)]
        if isinstance(node, ast.Constant) and type(node.value) is int and node.value >= 0:
            used.append(node.value)
            return Fraction(node.value)
        raise ValueError(f"not allowed: {ast.dump(node)[:40]}")

    used: list[int] = []
    if len(expr) > 500:
        raise ValueError("expression too long")
    try:
        tree = ast.parse(expr.replace("×", "*").replace("÷", "/"), mode="eval")
    except SyntaxError as e:
        raise ValueError(str(e)) from None
    return walk(tree.body), used


def random_target(rng, numbers: list[int]):
    """Combine a random subset (at least two numbers) at random; the last value is the target."""
    pool = rng.sample(numbers, rng.randint(2, len(numbers)))
    while len(pool) > 1:
        a, b = (pool.pop(rng.randrange(len(pool))) for _ in range(2))
        pool.append(rng.choice(combine(a, b)[2])[0])
    return pool[0]


class Countdown(Task):
    name = "countdown"
    difficulties = list(LEVELS)
    categories = [f"{count}_numbers" for count, _, _ in LEVELS.values()]

    def make(self, rng, difficulty, k):
        count, large, (lo, hi) = LEVELS[difficulty]
        while True:
            numbers = rng.sample(LARGE, large) + [rng.choice(SMALL) for _ in range(count - large)]
            rng.shuffle(numbers)
            target = random_target(rng, numbers)
            if lo <= target <= hi and target not in numbers:
                break
        prompt = (f"Numbers: {' '.join(map(str, numbers))}. Target: {target}.\n"
                  "Combine some of the numbers with + - * / and parentheses to get exactly the target; "
                  "use each number at most once.\nAnswer as \"Final Answer: <expression>\".")
        return Instance(id="", task=self.name, prompt=prompt, category=f"{count}_numbers",
                        difficulty=difficulty, answer={"numbers": numbers, "target": target})

    def parse(self, text):
        m = last_match(r"Final Answer:\s*(.+)", text)
        if m is None:
            return None
        # Tolerate markdown and a trailing "= target".
        return m.group(1).strip().strip("*`$").split("=")[0].strip() or None

    def check(self, inst, response):
        got = self.extract(response)
        if got is None:
            return Score(0.0, None, {"format_ok": False})
        try:
            val, used = evaluate(got)
        except (ValueError, ZeroDivisionError, RecursionError) as e:
            return Score(0.0, got, {"format_ok": False, "error": str(e)})
        numbers_ok = not (Counter(used) - Counter(inst.answer["numbers"]))
        reached = val == inst.answer["target"]
        return Score(float(numbers_ok and reached), got,
                     {"format_ok": True, "value": str(val), "numbers_ok": numbers_ok, "reached": reached})

    def teacher(self, inst):
        numbers, target = inst.answer["numbers"], inst.answer["target"]
        steps = search(numbers, target, len(numbers) - 1)
        lines = [f"Numbers {' '.join(map(str, numbers))}, target {target}. "
                 "Search combinations, fewest operations first."]
        pool = list(numbers)
        for a, op, b, r in steps:
            pool.remove(a)
            pool.remove(b)
            pool.append(r)
            lines.append(f"{a} {op} {b} = {r}" + ("" if r == target else f" (left: {' '.join(map(str, pool))})"))
        expr = expression_of(steps, numbers, target)
        lines.append(f"{expr} = {target}, each number used at most once.")
        return trace(lines, f"Final Answer: {expr}")
