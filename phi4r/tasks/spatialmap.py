"""Spatial map: places on a grid, described by offsets between them, multiple choice (A-D).

Questions (the card's SpatialMap): the direction between two places, which place lies in a given
direction of another, and how many places lie in a direction. Each description links a place to
an earlier one by exact offsets, so every answer follows from geometry.
`load(path)` reads the card's released set instead (Eureka's text-only SpatialMap, see
choice_from_release).
"""
from __future__ import annotations

from .base import Instance, trace
from .choice import ChoiceTask, format_options, number_distractors, shuffle_options
from .external import RecordLoader, choice_from_release

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


class SpatialMap(RecordLoader, ChoiceTask):
    name = "spatialmap"
    # 2: Eureka's SpatialMap wording ("Consider a map ...", "Available options:", its answer line).
    prompt_version = 2
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
        value, distractors = asked["value"], asked["distractors"]
        links = [(names[i], rng.choice(names[:i])) for i in range(1, n)]
        options, letter = shuffle_options(rng, value, distractors)
        answer = {"letter": letter, "value": value, "options": options, "question": question,
                  "reference": asked["reference"], "subject": asked["subject"], "direction": asked["direction"],
                  "links": links, "positions": pos, "order": names}
        prompt = (
            "Consider a map of a town with multiple places (blocks are equal steps on a grid):\n"
            + "\n".join(link_sentences(answer)) + "\n"
            "Northeast means both north and east; north means due north (same east-west position); "
            "likewise for the other directions.\nPlease answer the following multiple-choice question "
            f"based on the provided information. {question_text(answer)} Available options:\n"
            f"{format_options(options)}\n\nProvide your answer in the following format:\n\n"
            "Final Answer: <single letter of your answer choice>"
        )
        return Instance(id="", task=self.name, prompt=prompt, category=question, difficulty=difficulty,
                        answer=answer, meta={"num_objects": n})

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
        return {"question": question, "value": value, "distractors": distractors, "reference": ref,
                "subject": subject, "direction": d}

    def from_record(self, record):
        return choice_from_release(self, record)

    def teacher(self, inst):
        """Coordinates from the first place, then the places the question is about, seen from the
        reference."""
        ans = inst.answer
        first, ref = ans["order"][0], ans["reference"]
        coords = {first: (0, 0)}
        steps = [f"Use coordinates (east, north) with the {first} at (0, 0)."]
        for a, b in ans["links"]:
            (ax, ay), (bx, by) = ans["positions"][a], ans["positions"][b]
            coords[a] = (coords[b][0] + ax - bx, coords[b][1] + ay - by)
            steps.append(f"{a}: {offset_text(ax - bx, ay - by)} of the {b} {coords[b]}, so {coords[a]}.")
        looked_at = {"direction": [ans["subject"]], "which_object": ans["options"]}.get(
            ans["question"], [x for x in ans["order"] if x != ref])
        steps.append(f"Seen from the {ref} {coords[ref]}:")
        steps += [f"the {x} {coords[x]} is {direction(coords[ref], coords[x])}." for x in looked_at]
        if ans["question"] == "count":
            steps.append(f"Places to the {ans['direction']}: {ans['value']}.")
        steps.append(f"The answer {ans['value']} is option {ans['letter']}.")
        return trace(steps, f"Final Answer: {ans['letter']}")


def link_sentences(ans) -> list[str]:
    """`The cafe is 2 blocks north of the bank.`: one sentence per place after the first, placing
    it by its offset from an earlier one."""
    pos = ans["positions"]
    return [f"The {a} is {offset_text(pos[a][0] - pos[b][0], pos[a][1] - pos[b][1])} of the {b}."
            for a, b in ans["links"]]


def question_text(ans) -> str:
    """The question as the prompt words it."""
    if ans["question"] == "direction":
        return f"In which direction is the {ans['subject']} from the {ans['reference']}?"
    if ans["question"] == "which_object":
        return f"Which place is to the {ans['direction']} of the {ans['reference']}?"
    return f"How many places are to the {ans['direction']} of the {ans['reference']}?"
