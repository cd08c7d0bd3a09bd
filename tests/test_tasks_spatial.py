"""Maze and SpatialMap answers against independent solvers; wrong letters fail."""
import math
import re

from phi4r.tasks import get_task
from phi4r.tasks.choice import parse_letter

maze, spatial = get_task("maze"), get_task("spatialmap")


def dfs_path(grid):
    """The simple path from S to E by recursive depth-first search (a different search from BFS)."""
    cells = {(r, c): ch for r, row in enumerate(grid) for c, ch in enumerate(row)}
    start = next(p for p, ch in cells.items() if ch == "S")

    def go(p, seen):
        if cells[p] == "E":
            return [p]
        for d in ((0, 1), (1, 0), (0, -1), (-1, 0)):
            q = (p[0] + d[0], p[1] + d[1])
            if cells.get(q, "#") != "#" and q not in seen:
                rest = go(q, seen | {q})
                if rest:
                    return [p] + rest
        return None

    return go(start, {start})


def turns(path):
    heading = [(b[0] - a[0], b[1] - a[1]) for a, b in zip(path, path[1:])]
    changes = [(h1, h2) for h1, h2 in zip(heading, heading[1:]) if h1 != h2]
    # Screen coordinates (row down): a positive cross product is clockwise, a right turn.
    rights = sum(h1[1] * h2[0] - h1[0] * h2[1] > 0 for h1, h2 in changes)
    return len(changes), rights


def test_maze_answers_match_a_dfs():
    for inst in maze.generate(45, seed=4):
        grid = inst.answer["grid"]
        open_cells = {(r, c) for r, row in enumerate(grid) for c, ch in enumerate(row) if ch != "#"}
        edges = sum((r + 1, c) in open_cells for r, c in open_cells) + sum((r, c + 1) in open_cells for r, c in open_cells)
        assert edges == len(open_cells) - 1  # a tree: the path is unique
        path = dfs_path(grid)
        total, rights = turns(path)
        q = inst.answer["question"]
        if q == "total_turns":
            assert inst.answer["value"] == total
        elif q == "right_turns":
            assert inst.answer["value"] == rights
        else:
            (sr, sc), (er, ec) = path[0], path[-1]
            words = (["above"] if er < sr else ["below"] if er > sr else []) + (
                ["left"] if ec < sc else ["right"] if ec > sc else [])
            assert inst.answer["value"] == "-".join(words)
        options = re.findall(r"^([A-D])\. (.+)$", inst.prompt, re.M)
        assert dict(options)[inst.answer["letter"]] == str(inst.answer["value"])
        assert len({v for _, v in options}) == 4


def positions_from_prompt(prompt):
    """Rebuild the map from the text alone."""
    pos = {}
    for a, rest, b in re.findall(r"The (\w+) is (.+?) of the (\w+)\.", prompt):
        pos.setdefault(b, (0, 0))
        dx = dy = 0
        for k, d in re.findall(r"(\d+) blocks? (north|south|east|west)", rest):
            k = int(k)
            dx += {"east": k, "west": -k}.get(d, 0)
            dy += {"north": k, "south": -k}.get(d, 0)
        pos[a] = (pos[b][0] + dx, pos[b][1] + dy)
    return pos


def compass(frm, to):
    """Direction by angle, each diagonal covering the open quadrant."""
    dx, dy = to[0] - frm[0], to[1] - frm[1]
    angle = math.degrees(math.atan2(dy, dx)) % 360
    named = {0: "east", 90: "north", 180: "west", 270: "south"}
    if angle in named:
        return named[angle]
    return ["northeast", "northwest", "southwest", "southeast"][int(angle // 90)]


def test_spatialmap_answers_follow_from_the_text():
    for inst in spatial.generate(45, seed=2):
        pos = positions_from_prompt(inst.prompt)
        assert len(pos) == inst.meta["num_objects"]
        question = re.search(r"information\. (.+\?) Available options:$", inst.prompt, re.M).group(1)
        options = dict(re.findall(r"^([A-D])\. (.+)$", inst.prompt, re.M))
        m = re.match(r"In which direction is the (\w+) from the (\w+)\?", question)
        if m:
            expected = compass(pos[m.group(2)], pos[m.group(1)])
        elif m := re.match(r"Which place is to the (\w+) of the (\w+)\?", question):
            hits = [o for o in options.values() if compass(pos[m.group(2)], pos[o]) == m.group(1)]
            assert len(hits) == 1
            expected = hits[0]
        else:
            m = re.match(r"How many places are to the (\w+) of the (\w+)\?", question)
            expected = str(sum(compass(pos[m.group(2)], p) == m.group(1) for x, p in pos.items() if x != m.group(2)))
        assert options[inst.answer["letter"]] == str(expected), (inst.prompt, inst.answer)


def test_wrong_letters_score_zero():
    for task in (maze, spatial):
        for inst in task.generate(6, seed=1):
            for letter in "ABCD":
                assert task.score(inst, f"Final Answer: {letter}") == float(letter == inst.answer["letter"])


def test_letter_extraction():
    assert parse_letter("Final Answer: C") == "C"
    assert parse_letter("Final Answer: (B)") == "B"
    assert parse_letter("final answer: **D**") == "D"
    assert parse_letter("So the answer is A.") == "A"
    assert parse_letter("Final Answer: B ... on reflection, Final Answer: C") == "C"
    assert parse_letter("Final Answer: E") is None  # only A-D here
    assert parse_letter("the answer is a bit unclear") is None
    assert parse_letter("Final Answer: Because") is None


def test_spatialmap_prompt_is_eurekas_and_the_teacher_solves_it():
    """Eureka's SpatialMap layout: the map, the question after "based on the provided information.",
    the options after "Available options:" and its answer line; the plain teacher places every
    place and its answer is the verifier's."""
    assert spatial.prompt_version == 2
    for inst in spatial.generate(12, seed=5):
        lines = inst.prompt.splitlines()
        assert lines[0].startswith("Consider a map") and lines[-1] == "Final Answer: <single letter of your answer choice>"
        at = next(i for i, line in enumerate(lines) if line.endswith("Available options:"))
        assert [line[:3] for line in lines[at + 1: at + 5]] == ["A. ", "B. ", "C. ", "D. "]
        assert not re.search(r"^\d+\. |^Question:", inst.prompt, re.M)
        text = spatial.teacher(inst)
        assert len(re.findall(r"^\w+: .+ of the \w+ \(-?\d+, -?\d+\), so", text, re.M)) == len(inst.answer["links"])
        assert spatial.score(inst, text) == 1.0
