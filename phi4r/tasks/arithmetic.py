"""Arithmetic graded by difficulty, from single-digit sums to multi-step expressions.

Expressions are trees with integer (non-negative, exact-division) intermediate results, printed
with the fewest parentheses; the teacher evaluates one operation per line.
"""
from __future__ import annotations

from .base import Instance, Score, Task, parse_final_number, trace

# level -> (operations, allowed operators, smallest and largest number, largest intermediate)
LEVELS = {1: (1, "+", 0, 9, 18), 2: (1, "+-*", 0, 9, 81), 3: (1, "+-*", 10, 99, 999),
          4: (2, "+-*", 1, 9, 200), 5: (3, "+-*/", 1, 20, 1000), 6: (5, "+-*/", 1, 100, 100_000)}
PREC = {"+": 1, "-": 1, "*": 2, "/": 2}


def value(node) -> int:
    if isinstance(node, int):
        return node
    op, a, b = node
    x, y = value(a), value(b)
    return {"+": x + y, "-": x - y, "*": x * y, "/": x // y if y else 0}[op]


def render(node, parent_prec: int = 0, right: bool = False, parent_op: str = "") -> str:
    if isinstance(node, int):
        return str(node)
    op, a, b = node
    text = f"{render(a, PREC[op], False, op)} {op} {render(b, PREC[op], True, op)}"
    # Parentheses when a looser operator sits under a tighter one, or on the right of - and /.
    if PREC[op] < parent_prec or (right and PREC[op] == parent_prec and parent_op in "-/"):
        return f"({text})"
    return text


def valid(node, hi: int) -> bool:
    """Every intermediate result is a whole number in [0, hi]."""
    if isinstance(node, int):
        return True
    op, a, b = node
    if not (valid(a, hi) and valid(b, hi)):
        return False
    x, y = value(a), value(b)
    if op == "/" and (y == 0 or x % y):
        return False
    return 0 <= value(node) <= hi


def random_tree(rng, ops: int, operators: str, lo: int, hi: int):
    if ops == 0:
        return rng.randint(lo, hi)
    op = rng.choice(operators)
    if op == "/":
        # A divisible dividend by construction: a multiple of the divisor's value.
        right = random_tree(rng, ops - 1, operators, lo, hi)
        return op, value(right) * rng.randint(1, 9), right
    left_ops = rng.randint(0, ops - 1)
    return op, random_tree(rng, left_ops, operators, lo, hi), random_tree(rng, ops - 1 - left_ops, operators, lo, hi)


def steps_of(node, out: list[str]) -> int:
    """Evaluate bottom-up, left to right, writing one line per operation."""
    if isinstance(node, int):
        return node
    op, a, b = node
    x, y = steps_of(a, out), steps_of(b, out)
    result = value(node)
    out.append(f"{x} {op} {y} = {result}")
    return result


class Arithmetic(Task):
    name = "arithmetic"
    difficulties = list(LEVELS)
    categories = sorted({f"{ops}_ops" for ops, *_ in LEVELS.values()})

    def make(self, rng, difficulty, k):
        ops, operators, lo, hi, top = LEVELS[difficulty]
        while True:
            tree = random_tree(rng, ops, operators, lo, hi)
            if valid(tree, top):
                break
        expr = render(tree)
        prompt = f"Compute {expr}.\nAnswer as \"Final Answer: N\"."
        return Instance(id="", task=self.name, prompt=prompt, category=f"{ops}_ops", difficulty=difficulty,
                        answer={"value": value(tree), "expression": expr, "tree": tree})

    def parse(self, text):
        return parse_final_number(text)

    def check(self, inst, response):
        got = self.extract(response)
        return Score(float(got is not None and got == inst.answer["value"]), got)

    def teacher(self, inst):
        lines: list[str] = []
        steps_of(inst.answer["tree"], lines)
        if len(lines) > 1:
            lines = [f"{inst.answer['expression']}: parentheses first, then * and /, then + and -, "
                     "each from left to right."] + lines
        return trace(lines, f"Final Answer: {inst.answer['value']}")
