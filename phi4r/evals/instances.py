"""Which instances an evaluation covers: seeded generations of procedural tasks, the user's files
for published benchmarks (and for procedural tasks, their released sets)."""
from __future__ import annotations

from ..tasks import Instance, get_task

DEFAULT_PROCEDURAL_LIMIT = 10


def select_instances(tasks: list[str], limit: int | None = None, seed: int = 0,
                     difficulty: list[int] | None = None, data: dict[str, str] | None = None) -> list[Instance]:
    """`limit` instances per procedural task (per difficulty when levels are given), generated from
    `seed`; a task given a file in `data` reads it instead (its first `limit` records, or all)."""
    data = data or {}
    unused = set(data) - set(tasks)
    if unused:
        raise ValueError(f"--data given for tasks not evaluated: {', '.join(sorted(unused))}")
    out: list[Instance] = []
    for name in tasks:
        task = get_task(name)
        if name in data:  # a published file; procedural tasks read their released sets too
            out += task.load(data[name], limit)
            continue
        if not task.procedural:
            raise ValueError(f"task {name!r} reads a published file: pass --data {name}=PATH")
        n = DEFAULT_PROCEDURAL_LIMIT if limit is None else limit
        for level in difficulty or [None]:
            out += task.generate(n, seed, difficulty=level)
    ids = [(i.task, i.id) for i in out]
    if len(set(ids)) != len(ids):
        raise ValueError("instance ids are not unique (the same task or file listed twice?)")
    return out
