"""TSP: Held-Karp against brute force; only valid, optimal tours with the right distance pass."""
import itertools
import random

from phi4r.tasks import get_task
from phi4r.tasks.tsp import format_answer, held_karp

task = get_task("tsp")


def length(dist, tour):
    return sum(dist[a][b] for a, b in zip(tour, tour[1:]))


def brute_force(dist):
    n = len(dist)
    return min(length(dist, [0, *p, 0]) for p in itertools.permutations(range(1, n)))


def test_held_karp_matches_brute_force():
    rng = random.Random(0)
    for n in range(3, 9):
        for _ in range(6):
            dist = [[0] * n for _ in range(n)]
            for a, b in itertools.combinations(range(n), 2):
                dist[a][b] = dist[b][a] = rng.randint(1, 100)
            opt, tour = held_karp(dist)
            assert opt == brute_force(dist) == length(dist, tour)
            assert tour[0] == tour[-1] == 0 and sorted(tour[:-1]) == list(range(n))


def test_instances_store_the_brute_force_optimum():
    for level in (1, 2, 3, 4, 5):
        for inst in task.generate(3, seed=1, difficulty=level):
            dist = inst.answer["dist"]
            assert len(dist) == level + 3 == inst.meta["num_nodes"]
            assert all(dist[a][b] == dist[b][a] > 0 for a, b in itertools.combinations(range(len(dist)), 2))
            assert inst.answer["optimal"] == brute_force(dist)


def test_grading():
    inst = task.generate(1, seed=3, difficulty=4)[0]
    dist, opt, tour = inst.answer["dist"], inst.answer["optimal"], inst.answer["tour"]
    assert task.score(inst, format_answer(tour, opt)) == 1.0
    assert task.score(inst, format_answer(tour[::-1], opt)) == 1.0  # either direction
    assert task.score(inst, format_answer(tour, opt + 1)) == 0.0  # wrong stated distance
    assert task.score(inst, f"{{'Path': '{'->'.join(map(str, tour))}'}}") == 0.0  # distance missing
    # Swapping two cities gives a valid tour; it passes only if it is still optimal.
    for i, j in itertools.combinations(range(1, len(tour) - 1), 2):
        swapped = tour[:]
        swapped[i], swapped[j] = swapped[j], swapped[i]
        got = task.check(inst, format_answer(swapped, length(dist, swapped)))
        assert got.score == float(length(dist, swapped) == opt)
        assert got.details["optimality_gap"] == (length(dist, swapped) - opt) / opt
    bad = [[0, 1, 2, 3, 4, 5, 0], tour[:-1], [1, *tour[1:-1], 1], tour[:-2] + [tour[1], 0]]
    for t in bad:  # wrong length, not closed, wrong start, a repeated city
        got = task.check(inst, format_answer(t, opt))
        assert got.score == 0.0 and got.details["valid"] is False


def test_teacher_corrupted_by_a_swap_fails():
    failures = 0
    for inst in task.generate(10, seed=8):
        tour = task.extract(task.teacher(inst))["path"]
        swapped = tour[:]
        swapped[1], swapped[2] = swapped[2], swapped[1]
        d = inst.answer["dist"]
        if length(d, swapped) > inst.answer["optimal"]:
            failures += 1
            assert task.score(inst, format_answer(swapped, length(d, swapped))) == 0.0
    assert failures >= 5


def test_parse():
    text = "<final_answer>{'Path': '0->2->1->0', 'TotalDistance': '12'}</final_answer>"
    assert task.parse(text) == {"path": [0, 2, 1, 0], "total": 12.0}
    assert task.parse("{'Path': '0 -> 2 -> 1 -> 0', 'TotalDistance': 12}") == {"path": [0, 2, 1, 0], "total": 12.0}
    assert task.parse("{'Path': '0->x->0'}") is None
    assert task.parse("the tour is 0, 1, 2") is None
