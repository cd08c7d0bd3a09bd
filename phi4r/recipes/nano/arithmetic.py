"""The nano recipe's arithmetic: column-by-column teacher traces for multi-digit numbers, a checker
that verifies every step of such a trace, and arithmetic asked as a plain question.

A 3.6M-parameter model cannot add two-digit numbers in one step (`67 + 81 = 148`); it can look up
one token and apply a one-digit table. So an operation with a multi-digit operand is written as a
column procedure whose every line needs only that:

    (67) + [81], carry 0, answer {}
    7 + 1 + 0 = 8, carry 0.
    (6) + [8], carry 0, answer {8}
    6 + 8 + 0 = 14, carry 1.
    () + [], carry 1, answer {48}
    0 + 0 + 1 = 1, carry 0.
    () + [], carry 0, answer {148}
    so 67 + 81 = 148.

A *state* line holds what is left of each operand, the carry and the answer so far; an *op* line
works one column. The digits an op line needs are the last ones before `)` and `]` on the line
above (the two operands in different brackets, so each is found by one token, never by counting
positions), the carry follows the latest `carry`; the next state line copies the lists minus their
last digit and puts the new digit in front of the answer. An empty list reads as 0, and the block
ends on a state with both lists empty and no carry. Inside the brackets a number's digits are
written together, so (under the recipe's SPLIT, every digit its own piece) each digit is one token.

Subtraction (`a - b`, a >= b, as every benchmark level has it) borrows:
`5 - 8 - 0, borrow 1, 15 - 8 - 0 = 7.` (the borrow decided from the digits just written, then a
subtraction with a one-digit result); the `so` line drops the answer's leading zeros.
Multiplication by a one-digit number carries: `(47) * 6, carry 0, answer {}`, then
`7 * 6 = 42, 42 + 0 = 42, carry 4.` (a product of digits, then the carry added). A multi-digit
multiplier is written as rows (`12 * 34 = 12 * 4 + 12 * 30.`), each row a one-digit multiplication
whose answer starts with its shift's zeros, and the rows are then added by columns; a one-digit
number times a longer one is turned around first (`7 * 47 = 47 * 7.`). Two one-digit operands keep
the one-line step of the task's own teacher (`7 + 5 = 12`), so levels 1-2 are taught as before, and
so does division (`/`, levels 5-6 only, which the recipe does not train).

Expressions are evaluated as the task's teacher does: the task's header line when there is more
than one operation, then each operation bottom-up, left to right.
"""
from __future__ import annotations

import random
import re
from dataclasses import dataclass

from ...tasks.arithmetic import render, value
from ...tasks.base import trace

# The benchmark task's prompt (phi4r.tasks.arithmetic), which the tests hold to the task's own.
TASK_PROMPT = 'Compute {}.\nAnswer as "Final Answer: N".'
# How people ask: the recipe teaches these with the same trace and answer line as the task's prompt.
PLAIN_QUESTIONS = ["What is {}?", "Calculate {}", "{} = ?", "What is {}", "How much is {}?", "Calculate {}.",
                   "What's {}?", "{}", "Compute {}", "{} =", "what is {}?", "Work out {}."]
HEADER = "{}: parentheses first, then * and /, then + and -, each from left to right."
FINAL = "Final Answer: {}"

# Kinds of single-operation problems: name -> (operator, digits of a, digits of b). A list of digit
# counts is drawn from. Subtraction keeps a >= b.
KINDS = {
    "add2": ("+", [2], [2]), "sub2": ("-", [2], [2]),
    "add3": ("+", [3], [3]), "sub3": ("-", [3], [3]),
    "addmix": ("+", [1, 2, 3], [1, 2, 3]), "submix": ("-", [2, 3], [1, 2, 3]),
    "mul21": ("*", [2], [1]), "mul12": ("*", [1], [2]), "mul31": ("*", [3], [1]), "mul22": ("*", [2], [2]),
}


# ---- problems and prompts
def number(rng: random.Random, digits: int) -> int:
    return rng.randint(10 ** (digits - 1) if digits > 1 else 0, 10 ** digits - 1)


def draw(rng: random.Random, kind: str) -> tuple[int, str, int]:
    """A problem (a, op, b) of `kind` (KINDS); "mix" kinds have at least one multi-digit operand."""
    if kind not in KINDS:
        raise ValueError(f"unknown arithmetic kind {kind!r}; known: {', '.join(KINDS)}")
    op, da, db = KINDS[kind]
    while True:
        a, b = number(rng, rng.choice(da)), number(rng, rng.choice(db))
        if op == "-" and a < b:
            a, b = b, a
        if max(a, b) >= 10:
            return a, op, b


def expression(a: int, op: str, b: int) -> str:
    return f"{a} {op} {b}"


def question(expr: str, form: int | None) -> str:
    """The task's prompt (form None) or plain question number `form` (cycled) about `expr`."""
    return TASK_PROMPT.format(expr) if form is None else PLAIN_QUESTIONS[form % len(PLAIN_QUESTIONS)].format(expr)


_EXPR = re.compile(r"[\d(][\d\s+\-*/()]*[\d)]")


def parse_question(text: str) -> str:
    """The expression a question asks about, spaced as the task writes it: "What is 67+81?" ->
    "67 + 81"; the task's own prompt too. ValueError when there is none or more than one."""
    found = [m.group(0) for m in _EXPR.finditer(text) if re.search(r"\d\s*[+\-*/]\s*[\d(]", m.group(0))]
    if len(found) != 1:
        raise ValueError(f"expected one arithmetic expression in the question, found {len(found)}: {text!r}")
    return render(parse_expression(found[0]))


def parse_expression(text: str):
    """A tree (op, left, right) of +, -, *, / over non-negative integers, with the usual precedence
    and left associativity; ValueError on anything else."""
    tokens = re.findall(r"\d+|[+\-*/()]|\S", text)
    pos = 0

    def peek():
        return tokens[pos] if pos < len(tokens) else None

    def take():
        nonlocal pos
        pos += 1
        return tokens[pos - 1]

    def atom():
        tok = take() if peek() is not None else None
        if tok == "(":
            node = expr()
            if peek() != ")":
                raise ValueError(f"unbalanced parentheses in {text!r}")
            take()
            return node
        if tok is None or not tok.isdigit():
            raise ValueError(f"expected a number at {tok!r} in {text!r}")
        return int(tok)

    def level(ops, sub):
        node = sub()
        while peek() is not None and peek() in ops:
            op = take()
            node = (op, node, sub())
        return node

    def expr():
        return level("+-", lambda: level("*/", atom))

    tree = expr()
    if peek() is not None:
        raise ValueError(f"unexpected {peek()!r} in {text!r}")
    return tree


# ---- the teacher
def _state(left: str, op: str, right: str, flag: str, c: int, answer: str) -> str:
    right_text = right if op == "*" else f"[{right}]"
    return f"({left}) {op} {right_text}, {flag} {c}, answer {{{answer}}}"


# One column's step: a one-digit operation on the digits and the carry (or borrow) coming in.
def add_step(x: int, y: int, c: int) -> str:
    s = x + y + c
    return f"{x} + {y} + {c} = {s}, carry {s // 10}."


def sub_step(x: int, y: int, c: int) -> str:
    borrow = int(x - y - c < 0)
    return f"{x} - {y} - {c}, borrow {borrow}, {10 * borrow + x} - {y} - {c} = {10 * borrow + x - y - c}."


def mul_step(x: int, m: int, c: int) -> str:
    p = x * m
    return f"{x} * {m} = {p}, {p} + {c} = {p + c}, carry {(p + c) // 10}."


# The drill: step lines alone, operands uniform over what a column holds (+ and -: two digits and a
# carry or borrow of 0-1; *: a digit, a multiplier digit and a carry of 0-8). Inside column traces a
# model this small got ~1 step in 5 wrong, nearly every wrong answer; a drill line is all steps.
DRILL_PROMPT = "Practice {} steps."
DRILLS = {
    "add": ("addition", lambda rng: add_step(rng.randint(0, 9), rng.randint(0, 9), rng.randint(0, 1))),
    "sub": ("subtraction", lambda rng: sub_step(rng.randint(0, 9), rng.randint(0, 9), rng.randint(0, 1))),
    "mul": ("multiplication", lambda rng: mul_step(rng.randint(0, 9), rng.randint(0, 9), rng.randint(0, 8))),
}
DRILL_LINES = 20


def drill(kind: str, rng: random.Random, lines: int = DRILL_LINES) -> tuple[str, str]:
    """(prompt, answer) of a drill of `kind` (DRILLS): `lines` random step lines in a think block."""
    if kind not in DRILLS:
        raise ValueError(f"unknown drill {kind!r}; known: {', '.join(DRILLS)}")
    name, step = DRILLS[kind]
    return DRILL_PROMPT.format(name), trace([step(rng) for _ in range(lines)], "Final Answer: done")


def add_lines(a: int, b: int) -> list[str]:
    left, right, c, answer = str(a), str(b), 0, ""
    lines = [_state(left, "+", right, "carry", c, answer)]
    while left or right or c:
        x, y = int(left[-1:] or 0), int(right[-1:] or 0)
        s = x + y + c
        lines.append(add_step(x, y, c))
        left, right, c, answer = left[:-1], right[:-1], s // 10, str(s % 10) + answer
        lines.append(_state(left, "+", right, "carry", c, answer))
    lines.append(f"so {a} + {b} = {int(answer)}.")
    return lines


def sub_lines(a: int, b: int) -> list[str]:
    if a < b:
        raise ValueError(f"{a} - {b}: the column subtraction needs a >= b")
    left, right, c, answer = str(a), str(b), 0, ""
    lines = [_state(left, "-", right, "borrow", c, answer)]
    while left or right:
        x, y = int(left[-1:] or 0), int(right[-1:] or 0)
        borrow = int(x - y - c < 0)
        r = 10 * borrow + x - y - c
        lines.append(sub_step(x, y, c))
        left, right, c, answer = left[:-1], right[:-1], borrow, str(r) + answer
        lines.append(_state(left, "-", right, "borrow", c, answer))
    lines.append(f"so {a} - {b} = {int(answer)}.")
    return lines


def row_lines(a: int, m: int, shift: int) -> tuple[list[str], int]:
    """a times the digit m, the answer starting with `shift` zeros; (lines, the row's value)."""
    left, c, answer = str(a), 0, "0" * shift
    lines = [_state(left, "*", str(m), "carry", c, answer)]
    while left or c:
        x = int(left[-1:] or 0)
        s = x * m + c
        lines.append(mul_step(x, m, c))
        left, c, answer = left[:-1], s // 10, str(s % 10) + answer
        lines.append(_state(left, "*", str(m), "carry", c, answer))
    return lines, int(answer)


def mul_lines(a: int, b: int) -> list[str]:
    lines = []
    if a < 10 <= b:  # the longer number on the left: one row per digit of the shorter
        lines.append(f"{a} * {b} = {b} * {a}.")
        a, b = b, a
    if b < 10:
        rows, v = row_lines(a, b, 0)
        return lines + rows + [f"so {a} * {b} = {v}."]
    places = [(int(d), k) for k, d in enumerate(reversed(str(b)))]
    lines.append(f"{a} * {b} = " + " + ".join(f"{a} * {d * 10 ** k}" for d, k in places) + ".")
    values = []
    for d, k in places:
        rows, v = row_lines(a, d, k)
        lines += rows + [f"so {a} * {d * 10 ** k} = {v}."]
        values.append(v)
    total = values[0]
    for v in values[1:]:
        lines += add_lines(total, v)
        total += v
    lines.append(f"so {a} * {b} = {total}.")
    return lines


def operation_lines(x: int, op: str, y: int) -> list[str]:
    """One operation's steps: the task's one-line step for two one-digit operands (and for
    division), else the column procedure."""
    if (x < 10 and y < 10) or op == "/":
        return [f"{x} {op} {y} = {value((op, x, y))}"]
    return {"+": lambda: add_lines(x, y), "-": lambda: sub_lines(x, y), "*": lambda: mul_lines(x, y)}[op]()


def _steps(node, out: list[str]) -> int:
    if isinstance(node, int):
        return node
    op, a, b = node
    x, y = _steps(a, out), _steps(b, out)
    out += operation_lines(x, op, y)
    return value((op, x, y))


def tree_of(node):
    """A tree from JSON (lists) or the task's tuples."""
    return node if isinstance(node, int) else (node[0], tree_of(node[1]), tree_of(node[2]))


def solve(tree) -> str:
    """The teacher trace of an expression tree (the task's answer format)."""
    tree = tree_of(tree)
    lines: list[str] = []
    result = _steps(tree, lines)
    if not isinstance(tree, int) and (isinstance(tree[1], tuple) or isinstance(tree[2], tuple)):
        lines.insert(0, HEADER.format(render(tree)))
    return trace(lines, FINAL.format(result))


def teacher(inst) -> str:
    """The recipe's trace of an arithmetic instance (the task's Instance)."""
    return solve(inst.answer["tree"])


# ---- the checker
class TraceError(ValueError):
    """A step of a trace is wrong; `line` is its 1-based number in the think block (0: the frame)."""

    def __init__(self, line: int, message: str):
        super().__init__(f"line {line}: {message}")
        self.line = line


@dataclass
class Checked:
    value: int  # the final answer, proved by the steps
    steps: int  # op lines checked


_FRAME = re.compile(r"<think>\n(.*)\n</think>\n\nFinal Answer: (\d+)", re.S)
_STATE = re.compile(r"\((\d*)\) ([+\-*]) (?:\[(\d*)\]|(\d)), (carry|borrow) (\d), answer \{(\d*)\}")


class _Lines:
    def __init__(self, lines: list[str]):
        self.lines, self.i = lines, 0

    def next(self, what: str) -> str:
        if self.i >= len(self.lines):
            raise TraceError(self.i + 1, f"the trace ends where {what} should be")
        self.i += 1
        return self.lines[self.i - 1]

    def fail(self, message: str):
        raise TraceError(self.i, message)

    def expect(self, want: str, what: str) -> None:
        got = self.next(what)
        if got != want:
            self.fail(f"expected {what} {want!r}, got {got!r}")


def _check_state(lines: _Lines, op: str, left: str, right: str, flag: str, c: int, answer: str) -> None:
    got = lines.next("a state line")
    m = _STATE.fullmatch(got)
    if not m:
        lines.fail(f"not a state line: {got!r}")
    g_left, g_op, g_right_list, g_right_digit, g_flag, g_c, g_answer = m.groups()
    g_right = g_right_digit if op == "*" else g_right_list
    if g_op != op or (g_right is None) or g_flag != flag:
        lines.fail(f"a state line of {op} with a {flag} expected, got {got!r}")
    for name, have, want in (("left operand", g_left, left), ("right operand", g_right, right),
                             (flag, g_c, str(c)), ("answer", g_answer, answer)):
        if have != want:
            lines.fail(f"the {name} should be {want!r}, got {have!r}")


def _check_columns(lines: _Lines, a: int, op: str, b: int, shift: int = 0) -> tuple[int, int]:
    """A column block of a op b (op *: b one digit); returns (its value, op lines)."""
    flag = "borrow" if op == "-" else "carry"
    left, right, c, answer, steps = str(a), str(b), 0, "0" * shift, 0
    _check_state(lines, op, left, right, flag, c, answer)
    while (left or c) if op == "*" else (left or right or (op == "+" and c)):
        x, y = int(left[-1:] or 0), (int(right[-1:] or 0) if op != "*" else b)
        got = lines.next("a column step")
        steps += 1
        if op == "+":
            m = re.fullmatch(r"(\d) \+ (\d) \+ (\d) = (\d+), carry (\d)\.", got)
            if not m or tuple(map(int, m.groups()[:3])) != (x, y, c):
                lines.fail(f"expected the column {x} + {y} + {c}, got {got!r}")
            s = int(m.group(4))
            if s != x + y + c or int(m.group(5)) != s // 10:
                lines.fail(f"{x} + {y} + {c} is {x + y + c}, carry {(x + y + c) // 10}: {got!r}")
            digit, c = s % 10, s // 10
        elif op == "-":
            m = re.fullmatch(r"(\d) - (\d) - (\d), borrow (\d), (\d+) - (\d) - (\d) = (\d)\.", got)
            if not m or tuple(map(int, m.groups()[:3])) != (x, y, c):
                lines.fail(f"expected the column {x} - {y} - {c}, got {got!r}")
            borrow = int(x - y - c < 0)
            g_borrow, g_x, g_y, g_c, r = map(int, m.groups()[3:])
            if g_borrow != borrow:
                lines.fail(f"{x} - {y} - {c} {'needs' if borrow else 'needs no'} borrow: {got!r}")
            if (g_x, g_y, g_c) != (x + 10 * borrow, y, c) or r != g_x - g_y - g_c:
                lines.fail(f"{x + 10 * borrow} - {y} - {c} is {x + 10 * borrow - y - c}: {got!r}")
            digit, c = r, borrow
        else:
            m = re.fullmatch(r"(\d) \* (\d) = (\d+), (\d+) \+ (\d) = (\d+), carry (\d)\.", got)
            if not m or (int(m.group(1)), int(m.group(2)), int(m.group(5))) != (x, y, c):
                lines.fail(f"expected the column {x} * {y} with carry {c}, got {got!r}")
            p, p2, s, carry = int(m.group(3)), int(m.group(4)), int(m.group(6)), int(m.group(7))
            if p != x * y or p2 != p or s != p + c or carry != s // 10:
                lines.fail(f"{x} * {y} = {x * y}, + {c} = {x * y + c}, carry {(x * y + c) // 10}: {got!r}")
            digit, c = s % 10, s // 10
        left, right, answer = left[:-1], right[:-1] if op != "*" else right, str(digit) + answer
        _check_state(lines, op, left, right, flag, c, answer)
    return int(answer), steps


def _check_operation(lines: _Lines, x: int, op: str, y: int) -> tuple[int, int]:
    """One operation's steps in the trace; returns (its value, op lines checked)."""
    true = value((op, x, y))
    if (x < 10 and y < 10) or op == "/":
        lines.expect(f"{x} {op} {y} = {true}", "the one-line step")
        return true, 1
    if op in "+-":
        v, steps = _check_columns(lines, x, op, y)
    else:
        a, b = x, y
        if a < 10 <= b:
            lines.expect(f"{a} * {b} = {b} * {a}.", "the turn-around")
            a, b = b, a
        if b < 10:
            v, steps = _check_columns(lines, a, "*", b)
        else:
            places = [(int(d), k) for k, d in enumerate(reversed(str(b)))]
            lines.expect(f"{a} * {b} = " + " + ".join(f"{a} * {d * 10 ** k}" for d, k in places) + ".",
                         "the rows")
            values, steps = [], 0
            for d, k in places:
                v, n = _check_columns(lines, a, "*", d, shift=k)
                lines.expect(f"so {a} * {d * 10 ** k} = {v}.", "the row's result")
                values.append(v)
                steps += n
            v = values[0]
            for w in values[1:]:
                s, n = _check_columns(lines, v, "+", w)
                lines.expect(f"so {v} + {w} = {s}.", "the sum of rows")
                v, steps = s, steps + n
        x, y = a, b
    lines.expect(f"so {x} {op} {y} = {v}.", "the operation's result")
    if v != true:  # the steps above prove v; this guards the checker itself
        lines.fail(f"{x} {op} {y} is {true}, not {v}")
    return v, steps


def check_trace(question_text: str, response: str, tree=None) -> Checked:
    """Verify every step of a column trace answering `question_text` (the task's prompt or a plain
    question): each state line's lists, carry and answer follow from the lines above, each column's
    digits are the lists' last, each one-digit operation is true, each result is the procedure's,
    and the final answer is the expression's value. Raises TraceError at the first wrong step.

    `tree`: the task instance's tree, which decides the order of the operations (`4 + 3 + 1` may be
    4 + (3 + 1)); without it, the question's expression parsed left to right."""
    tree = tree_of(tree) if tree is not None else parse_expression(parse_question(question_text))
    m = _FRAME.fullmatch(response.strip("\n"))
    if not m:
        raise TraceError(0, "not '<think>\\n...\\n</think>\\n\\nFinal Answer: N'")
    lines = _Lines(m.group(1).split("\n"))
    ops: list[tuple] = []

    def order(node) -> int:
        if isinstance(node, int):
            return node
        op, a, b = node
        x, y = order(a), order(b)
        ops.append((x, op, y))
        return value((op, x, y))

    true = order(tree)
    if len(ops) > 1:
        lines.expect(HEADER.format(render(tree)), "the header")
    steps = 0
    for x, op, y in ops:
        _, n = _check_operation(lines, x, op, y)
        steps += n
    if lines.i != len(lines.lines):
        raise TraceError(lines.i + 1, f"unexpected line after the last step: {lines.lines[lines.i]!r}")
    if int(m.group(2)) != true:
        raise TraceError(0, f"the final answer {m.group(2)} is not {true}")
    return Checked(true, steps)
