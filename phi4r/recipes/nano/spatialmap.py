"""The nano recipe's spatialmap format: a prompt that numbers its sentences and labels its question,
and a teacher trace written for what a 3.6M model can do.

The benchmark's own prompt and teacher are `phi4r.tasks.spatialmap`; this module reads the same
instances (their `answer` holds the map and the question) and writes them the recipe's way.
"""
from __future__ import annotations

from ...tasks.base import trace
from ...tasks.choice import LETTERS, format_options
from ...tasks.spatialmap import direction, link_sentences, offset_text, question_text


def prompt(inst) -> str:
    """The prompt the nano model was trained on: sentences numbered, so that "the next sentence" is
    a lookup of one number, and the question labelled `Question:` (the trace copies that line)."""
    ans = inst.answer
    lines = [f"{i}. {sentence}" for i, sentence in enumerate(link_sentences(ans), 1)]
    return ("A map of a town (blocks are equal steps on a grid):\n" + "\n".join(lines) + "\n"
            "Northeast means both north and east; north means due north (same east-west position); "
            f"likewise for the other directions.\nQuestion: {question_text(ans)}\n{format_options(ans['options'])}\n"
            'Answer as "Final Answer: X" where X is the letter.')


def teacher(inst) -> str:
    """Coordinates by sums, then the question copied, then the options one by one.

    Written for a small model, whose lookups are copies of what followed a token before: a
    place's coordinates are kept in a record `(cafe 3 2)`. The record's name token (no leading
    space) never occurs in the prompt and is followed by the same coordinates every time, so
    the lookup `(cafe` -> `3 2` has one answer wherever the model looks; prompt names (`the
    cafe`) are followed by different words each time. Each sum or comparison has its operands
    next to it. The question is copied word for word after `Question:` (as in the prompt), so
    the kind of question and its places are on the line above the step that uses them: without
    it the model answered direction questions with the which-place line. A count goes through
    the places as the prompt numbers them (`2. The bank`), so the next name is a copy too.
    (The recipe's recall warm-up is what teaches the model to find a record by its name,
    however far back it is.)"""
    ans = inst.answer
    first, ref = ans["order"][0], ans["reference"]
    answer = f"Final Answer: {ans['letter']}"
    coords = {first: (ORIGIN, ORIGIN)}
    steps = [f"Coordinates (x east, y north): 0. The {first} {record(first, coords[first])}."]
    for i, (a, b) in enumerate(ans["links"], 1):
        dx = ans["positions"][a][0] - ans["positions"][b][0]
        dy = ans["positions"][a][1] - ans["positions"][b][1]
        (bx, by) = coords[b]
        coords[a] = (bx + dx, by + dy)
        steps.append(f"{i}. The {a} is {offset_text(dx, dy)} of the {b} {record(b, coords[b])}: "
                     f"x {count_sum(bx, dx)}, y {count_sum(by, dy)}, "
                     f"so {record(a, coords[a])}.")
    steps.append(f"Question: {question_text(ans)}")
    if ans["question"] == "direction":
        subject = ans["subject"]
        # In the question's order: the subject, then the place it is seen from.
        steps.append(f"The {subject} {record(subject, coords[subject])} from the {ref} "
                     f"{record(ref, coords[ref])}: {compare(coords[ref], coords[subject])}.")
        return trace(steps + check_options(ans["options"], ans["value"]), answer)
    steps.append(f"From the {ref} {record(ref, coords[ref])}:")
    if ans["question"] == "which_object":
        for letter, x in zip(LETTERS, ans["options"]):
            hit = x == ans["value"]
            steps.append(f"{letter}. {x} {record(x, coords[x])}: {compare(coords[ref], coords[x])}, "
                         f"{'yes' if hit else 'no'}.")
            if hit:
                break
        return trace(steps, answer)
    count = 0
    for i, x in enumerate(ans["order"]):
        if x == ref:
            steps.append(f"{i}. The {x}: the reference, skip.")
            continue
        hit = direction(coords[ref], coords[x]) == ans["direction"]
        count += hit
        steps.append(f"{i}. The {x} {record(x, coords[x])}: {compare(coords[ref], coords[x])}, "
                     f"{'yes' if hit else 'no'}, {count}.")
    steps.append(f"Places to the {ans['direction']}: {count}.")
    return trace(steps + check_options(ans["options"], ans["value"]), answer)


# The first place's coordinates: far enough from 0 that on the maps of levels 1-2 (grids of 7 and 8
# blocks a side) no coordinate is negative, so every sum is `a + d` or `a - d` with a, d >= 0 and a
# non-negative result, the sums a small model gets right (signed sums from an origin at (0, 0) were
# right 36-49% of the time, unsigned additions 96%).
ORIGIN = 7


def record(name: str, xy) -> str:
    """`(cafe 3 2)`: a place's name glued to the bracket (a token the prompt never has), then its
    coordinates right after it."""
    return f"({name} {xy[0]} {xy[1]})"


def count_sum(a: int, d: int) -> str:
    """`7 + 3 = 8 + 2 = 9 + 1 = 10`: a sum as steps of one, each step the next (or previous) number
    and one less to go, so no step needs more than counting (written in one step, `a - d` with a
    non-negative result was right 45% of the time, signed sums 36-49%)."""
    n = abs(d)
    if n == 0:
        return f"{a} + 0 = {a}"
    sign, step = ("-", -1) if d < 0 else ("+", 1)
    return " = ".join(f"{a + k * step} {sign} {n - k}" for k in range(n)) + f" = {a + d}"


def compare(frm, to) -> str:
    """`x 4 vs 7 west, y 2 vs 2 same, so west`: per axis the place's coordinate, the reference's,
    then the direction they make, decided with both numbers already written (a symbol before the
    reference's number had to look it up and compare in one token: 0% right when equal); the
    direction is the two names put together (north/south first)."""
    names = {"x": ("east", "west"), "y": ("north", "south")}
    parts = []
    for axis, a, b in zip("xy", frm, to):
        more, less = names[axis]
        parts.append(f"{axis} {b} vs {a} {more if b > a else less if b < a else 'same'}")
    return ", ".join(parts) + f", so {direction(frm, to)}"


def check_options(options, value) -> list[str]:
    """`A. north: no.` ... up to the option equal to the answer: `C. south: yes.`"""
    lines = []
    for letter, option in zip(LETTERS, options):
        hit = option == value
        lines.append(f"{letter}. {option}: {'yes' if hit else 'no'}.")
        if hit:
            break
    return lines
