"""Maze navigation on an ASCII map, multiple choice (A-D).

Questions (the card's Maze): the number of right turns, the total number of turns along the path
from S to E, and the direction of E relative to S. Mazes are perfect (carved by a random
depth-first walk), so the path is unique; a breadth-first search finds it.
Level d has a maze of `SIZES[d]` x `SIZES[d]` cells ((2 * size + 1) characters a side).
`load(path)` reads the card's released set instead (Eureka's text-only Maze, see choice_from_release).
"""
from __future__ import annotations

from collections import deque

from .base import Instance, trace
from .choice import ChoiceTask, format_options, number_distractors, shuffle_options
from .external import RecordLoader, choice_from_release

SIZES = {1: 3, 2: 4, 3: 5, 4: 7, 5: 9}
QUESTIONS = ["right_turns", "total_turns", "exit_direction"]
MOVES = {"up": (-1, 0), "down": (1, 0), "left": (0, -1), "right": (0, 1)}
# Clockwise on the map: these direction changes are right turns.
RIGHT_TURNS = {("up", "right"), ("right", "down"), ("down", "left"), ("left", "up")}
DIRECTIONS = ["above", "below", "left", "right", "above-left", "above-right", "below-left", "below-right"]


def carve(rng, rows: int, cols: int) -> list[str]:
    """A perfect maze as text rows: '#' wall, '.' open."""
    grid = [["#"] * (2 * cols + 1) for _ in range(2 * rows + 1)]
    start = (rng.randrange(rows), rng.randrange(cols))
    seen, stack = {start}, [start]
    grid[2 * start[0] + 1][2 * start[1] + 1] = "."
    while stack:
        r, c = stack[-1]
        nexts = [(r + dr, c + dc) for dr, dc in MOVES.values()
                 if 0 <= r + dr < rows and 0 <= c + dc < cols and (r + dr, c + dc) not in seen]
        if not nexts:
            stack.pop()
            continue
        nr, nc = rng.choice(nexts)
        grid[r + nr + 1][c + nc + 1] = "."  # the wall between the two cells
        grid[2 * nr + 1][2 * nc + 1] = "."
        seen.add((nr, nc))
        stack.append((nr, nc))
    return ["".join(row) for row in grid]


def find(grid: list[str], ch: str) -> tuple[int, int]:
    return next((r, row.index(ch)) for r, row in enumerate(grid) if ch in row)


def shortest_path(grid: list[str]) -> list[tuple[int, int]]:
    """Breadth-first search from S to E over open characters."""
    start, goal = find(grid, "S"), find(grid, "E")
    parent = {start: None}
    queue = deque([start])
    while queue:
        here = queue.popleft()
        if here == goal:
            break
        for dr, dc in MOVES.values():
            nxt = (here[0] + dr, here[1] + dc)
            if grid[nxt[0]][nxt[1]] != "#" and nxt not in parent:
                parent[nxt] = here
                queue.append(nxt)
    path, node = [], goal
    while node is not None:
        path.append(node)
        node = parent[node]
    return path[::-1]


def segments(path) -> list[tuple[str, int, tuple[int, int]]]:
    """The path as straight runs: (direction, steps, end position)."""
    names = {v: k for k, v in MOVES.items()}
    runs: list[list] = []
    for a, b in zip(path, path[1:]):
        d = names[(b[0] - a[0], b[1] - a[1])]
        if runs and runs[-1][0] == d:
            runs[-1][1] += 1
            runs[-1][2] = b
        else:
            runs.append([d, 1, b])
    return [tuple(r) for r in runs]


def relative_direction(start, goal) -> str:
    dr, dc = goal[0] - start[0], goal[1] - start[1]
    vertical = "above" if dr < 0 else "below" if dr > 0 else ""
    horizontal = "left" if dc < 0 else "right" if dc > 0 else ""
    return "-".join(p for p in (vertical, horizontal) if p)


class Maze(RecordLoader, ChoiceTask):
    name = "maze"
    difficulties = list(SIZES)
    categories = QUESTIONS

    def make(self, rng, difficulty, k):
        size = SIZES[difficulty]
        grid = [list(row) for row in carve(rng, size, size)]
        cells = [(2 * r + 1, 2 * c + 1) for r in range(size) for c in range(size)]
        s, e = rng.sample(cells, 2)
        grid[s[0]][s[1]], grid[e[0]][e[1]] = "S", "E"
        grid = ["".join(row) for row in grid]
        question = self.categories[k % len(self.categories)]
        runs = segments(shortest_path(grid))
        turns = [(a[0], b[0]) for a, b in zip(runs, runs[1:])]
        if question == "exit_direction":
            value = relative_direction(s, e)
            distractors = rng.sample([d for d in DIRECTIONS if d != value], 3)
            text = "Where is the exit E relative to the start S?"
        else:
            value = len(turns) if question == "total_turns" else sum(t in RIGHT_TURNS for t in turns)
            distractors = number_distractors(rng, value)
            text = ("How many turns in total do you make along the path from S to E?"
                    if question == "total_turns" else
                    "How many right turns do you make along the path from S to E?")
        options, letter = shuffle_options(rng, value, distractors)
        prompt = (
            "Maze: # is a wall, . is open, S is the start, E is the exit. You move up, down, left "
            "or right. A turn is a change of direction; a right turn is clockwise on the map "
            "(up to right, right to down, down to left, left to up).\n"
            + "\n".join(grid) + f"\n{text}\n{format_options(options)}\n"
            'Answer as "Final Answer: X" where X is the letter.'
        )
        return Instance(id="", task=self.name, prompt=prompt, category=question, difficulty=difficulty,
                        answer={"letter": letter, "value": value, "options": options, "grid": grid,
                                "question": question}, meta={"cells": size})

    def from_record(self, record):
        return choice_from_release(self, record)

    def teacher(self, inst):
        grid, question = inst.answer["grid"], inst.answer["question"]
        s, e = find(grid, "S"), find(grid, "E")
        steps = [f"Rows count from the top, columns from the left, from 0. S is at row {s[0]}, "
                 f"column {s[1]}; E is at row {e[0]}, column {e[1]}."]
        if question == "exit_direction":
            dr, dc = e[0] - s[0], e[1] - s[1]
            steps.append(f"E is {abs(dr)} rows {'down' if dr >= 0 else 'up'} and "
                         f"{abs(dc)} columns {'right' if dc >= 0 else 'left'} from S: "
                         f"{inst.answer['value']}.")
        else:
            runs = segments(shortest_path(grid))
            steps.append("The path from S to E: " + ", ".join(
                f"{d} {n} to ({r},{c})" for d, n, (r, c) in runs) + ".")
            rights = 0
            for a, b in zip(runs, runs[1:]):
                right = (a[0], b[0]) in RIGHT_TURNS
                rights += right
                steps.append(f"{a[0]} then {b[0]}: {'right' if right else 'left'} turn.")
            total = len(runs) - 1
            steps.append(f"Turns: {total} in total, {rights} right." if total else "No turns.")
        letter = inst.answer["letter"]
        steps.append(f"The answer {inst.answer['value']} is option {letter}.")
        return trace(steps, f"Final Answer: {letter}")
