"""Spatial map: places on a grid, described by offsets between them, multiple choice (A-D).

Questions (the card's SpatialMap): the direction between two places, which place lies in a given
direction of another, and how many places lie in a direction. Each description links a place to
an earlier one by exact offsets, so every answer follows from geometry.
"""
from __future__ import annotations

from .base import Instance, trace
from .choice import LETTERS, ChoiceTask, format_options, number_distractors, shuffle_options

PLACES = ["bank", "cafe", "library", "park", "school", "museum", "bakery", "hotel", "pharmacy",
          "cinema", "gym", "station", "market", "church", "zoo", "stadium"]
COUNTS = {1: 5, 2: 6, 3: 8, 4: 10, 5: 12}
QUESTIONS = ["direction", "which_object", "count"]
DIRECTIONS = ["north", "south", "east", "west", "northeast", "northwest", "southeast", "southwest"]


def direction(frm, to) -> str:
    """Compass direction of `to` seen from `frm` (y grows to the north)."""
    dx, dy = to[0] - frm[0], to[1] - frm[1]
    return ("north" if dy > 0 else "south" if dy < 0 else "") + ("east" if dx > 0 else "west" if dx < 0 else "")


def offset_text(dx: int, dy: int) -> str:
    def blocks(k):
        return f"{abs(k)} block{'s' if abs(k) > 1 else ''}"

    parts = [f"{blocks(dy)} {'north' if dy > 0 else 'south'}" if dy else "",
             f"{blocks(dx)} {'east' if dx > 0 else 'west'}" if dx else ""]
    return " and ".join(p for p in parts if p)


class SpatialMap(ChoiceTask):
    name = "spatialmap"
    difficulties = list(COUNTS)
    categories = QUESTIONS

    def make(self, rng, difficulty, k):
        n = COUNTS[difficulty]
        question = self.categories[k % len(self.categories)]
        while True:
            names = rng.sample(PLACES, n)
            side = n + 2
            points = rng.sample([(x, y) for x in range(side) for y in range(side)], n)
            pos = dict(zip(names, points))
            asked = self.ask(rng, question, names, pos)
            if asked:
                break
        text, value, distractors = asked["text"], asked["value"], asked["distractors"]
        links = [(names[i], rng.choice(names[:i])) for i in range(1, n)]
        # Numbered, so that "the next sentence" is a lookup of one number, for a reader and a model.
        lines = [f"{i}. The {a} is {offset_text(pos[a][0] - pos[b][0], pos[a][1] - pos[b][1])} of the {b}."
                 for i, (a, b) in enumerate(links, 1)]
        options, letter = shuffle_options(rng, value, distractors)
        prompt = (
            "A map of a town (blocks are equal steps on a grid):\n" + "\n".join(lines) + "\n"
            "Northeast means both north and east; north means due north (same east-west position); "
            f"likewise for the other directions.\nQuestion: {text}\n{format_options(options)}\n"
            'Answer as "Final Answer: X" where X is the letter.'
        )
        return Instance(id="", task=self.name, prompt=prompt, category=question, difficulty=difficulty,
                        answer={"letter": letter, "value": value, "options": options, "question": question,
                                "reference": asked["reference"], "subject": asked["subject"],
                                "direction": asked["direction"], "links": links, "positions": pos,
                                "order": names},
                        meta={"num_objects": n})

    @staticmethod
    def ask(rng, question, names, pos) -> dict | None:
        """The question about a reference place, its answer and three distractors; None if this
        map cannot pose it."""
        subject, ref = rng.sample(names, 2)
        d = direction(pos[ref], pos[subject])
        if question == "direction":
            value, distractors = d, rng.sample([x for x in DIRECTIONS if x != d], 3)
        elif question == "which_object":
            others = [x for x in names if x != ref and direction(pos[ref], pos[x]) != d]
            if len(others) != len(names) - 2 or len(others) < 3:
                return None  # the answer must be the only place in that direction
            value, distractors = subject, rng.sample(others, 3)
        else:
            subject, d = None, rng.choice(DIRECTIONS)
            value = sum(direction(pos[ref], pos[x]) == d for x in names if x != ref)
            distractors = number_distractors(rng, value)
        asked = {"question": question, "value": value, "distractors": distractors, "reference": ref,
                 "subject": subject, "direction": d}
        return asked | {"text": question_text(asked)}

    def teacher(self, inst):
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


def question_text(ans) -> str:
    """The question as the prompt words it."""
    if ans["question"] == "direction":
        return f"In which direction is the {ans['subject']} from the {ans['reference']}?"
    if ans["question"] == "which_object":
        return f"Which place is to the {ans['direction']} of the {ans['reference']}?"
    return f"How many places are to the {ans['direction']} of the {ans['reference']}?"


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
