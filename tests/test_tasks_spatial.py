"""Maze and SpatialMap answers against independent solvers; wrong letters fail."""
import math
import re

from phi4r.tasks import get_task
from phi4r.tasks.choice import parse_letter
from phi4r.tasks.spatialmap import ORIGIN

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
        question = inst.prompt.splitlines()[-6].removeprefix("Question: ")
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


def test_spatialmap_teacher_writes_each_placement_as_true_sums():
    """Each placement's sums count in steps of one (`7 + 3 = 8 + 2 = 9 + 1 = 10`): every step moves
    one and has one less to go, and the last value is the record's coordinate."""
    steps = 0
    for inst in spatial.generate(20, 3, difficulty=2):
        text = spatial.teacher(inst)
        found = re.findall(r"x ([^,]+), y ([^,]+), so \(\w+ (-?\d+) (-?\d+)\)\.", text)
        assert len(found) == len(inst.answer["links"])
        for *chains, cx, cy in found:
            for chain, result in zip(chains, (cx, cy)):
                terms = chain.split(" = ")
                pairs = [re.fullmatch(r"(-?\d+) ([+-]) (\d+)", t).groups() for t in terms[:-1]]
                for (a, sign, n), (b, sign2, m) in zip(pairs, pairs[1:]):
                    assert sign == sign2 and int(m) == int(n) - 1
                    assert int(b) == int(a) + (1 if sign == "+" else -1)
                    steps += 1
                a, sign, n = pairs[-1]
                assert int(n) <= 1 and int(terms[-1]) == int(a) + (1 if sign == "+" else -1) * int(n) == int(result)
    assert steps > 50


def test_spatialmap_teacher_keeps_each_place_in_one_record_everywhere():
    """The trace's lookups are copies: wherever the record `(X a b)` appears, (a, b) is X's one
    position (relative to the first place); the prompt never has a name glued to a bracket, so
    every earlier `(X` is followed by the same coordinates; the trace ends on the option the
    verifier accepts."""
    for inst in spatial.generate(30, 4, difficulty=1):
        text = spatial.teacher(inst)
        pos = inst.answer["positions"]
        x0, y0 = pos[inst.answer["order"][0]]
        records = re.findall(r"\((\w+) (-?\d+) (-?\d+)\)", text)
        assert {name for name, _, _ in records} >= set(inst.answer["order"])
        for name, x, y in records:
            assert (int(x), int(y)) == (pos[name][0] - x0 + ORIGIN, pos[name][1] - y0 + ORIGIN)
        assert not re.search(r"\(\w", inst.prompt.replace("(blocks", "").replace("(same", ""))
        assert re.search(r"^[A-D]\. .*yes[,.]", text, re.M)
        assert spatial.score(inst, text) == 1.0


def test_spatialmap_teacher_sums_are_unsigned_and_axes_are_named():
    """At levels 1-2 the first place at (ORIGIN, ORIGIN) keeps every coordinate non-negative; each
    comparison names its axis' direction, and the direction is those names put together."""
    compared = 0
    for level in (1, 2):
        for inst in spatial.generate(40, 6, difficulty=level):
            text = spatial.teacher(inst)
            assert not re.search(r"\(\w+ -?\d+ -\d+\)|\(\w+ -\d+", text)
            for x, cx, nx, y, cy, ny, word in re.findall(
                    r"x (\d+) vs (\d+) (\w+), y (\d+) vs (\d+) (\w+), so (\w+)", text):
                compared += 1
                assert nx == ("east" if int(x) > int(cx) else "west" if int(x) < int(cx) else "same")
                assert ny == ("north" if int(y) > int(cy) else "south" if int(y) < int(cy) else "same")
                assert word == (ny if ny != "same" else "") + (nx if nx != "same" else "")
    assert compared > 80


def test_spatialmap_teacher_copies_the_question_then_follows_its_order():
    """The trace restates the prompt's question line word for word; a direction question is then
    answered subject first, as the question names it, and a count goes through the places by the
    prompt's numbers (`2. The bank`)."""
    kinds = set()
    for inst in spatial.generate(30, 8, difficulty=1):
        text = spatial.teacher(inst)
        asked = re.search(r"^Question: .+$", inst.prompt, re.M).group(0)
        assert re.findall(r"^Question: .+$", text, re.M) == [asked]
        after = text.split(asked + "\n", 1)[1].splitlines()
        kinds.add(inst.answer["question"])
        if m := re.match(r"Question: In which direction is the (\w+) from the (\w+)\?", asked):
            assert re.match(rf"The {m.group(1)} \(\w+ \d+ \d+\) from the {m.group(2)} ", after[0])
        else:
            assert after[0].startswith(f"From the {inst.answer['reference']} (")
        if inst.answer["question"] == "count":
            numbered = dict(re.findall(r"^(\d+)\. The (\w+) is", inst.prompt, re.M))
            counted = re.findall(r"^(\d+)\. The (\w+)[ :]", "\n".join(after), re.M)
            assert counted[0] == ("0", inst.answer["order"][0])
            assert all(numbered[i] == name for i, name in counted[1:])
            assert len(counted) == len(inst.answer["order"])
    assert kinds == {"direction", "which_object", "count"}
