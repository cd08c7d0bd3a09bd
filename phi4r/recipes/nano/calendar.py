"""The nano recipe's calendar trace: each person's line copied into day records, then the records
swept together like a merge, shaped around what a small model copies reliably.

The benchmark's prompt, verifier and reference solver (`solve`) are `phi4r.tasks.calendar`'s; the
prompt is the benchmark's own, only the trace is the recipe's.
"""
from __future__ import annotations

from ...tasks.base import trace
from ...tasks.calendar import NO_SLOT, WEEKEND, block, fmt_intervals, hm, parse_block, subtract


def teacher(inst) -> str:
    return sweep_trace(inst.answer)


# Records: the first person's free blocks are kept as `(Monday ...)`, every later person's as
# `[Mon ...]`. A day glued to a bracket is a token the prompt never has (there it follows a space),
# and the two forms are different tokens, so the record of a day is found by one token wherever it
# is. In the prompt a day name follows every person, and finding "Frank's Tuesday" there needs two
# keys at once (a small model copied the right person's blocks 37% of the time that way).
FIRST, LATER = ("(", ")"), ("[", "]")


def day_key(day: str, brackets) -> str:
    return brackets[0] + (day if brackets == FIRST else day[:3])


def record(day: str, blocks, brackets) -> str:
    """`(Monday 08:30-09:30, 12:30-13:00)`, or `(Tuesday none)`: a day's free blocks as (start, end)."""
    return f"{day_key(day, brackets)} {fmt_intervals(blocks)}{brackets[1]}"


def records(days_free: dict, days: list[str], brackets) -> str:
    """One record per day offered, in the prompt's order, so writing them is copying the person's
    line. `days_free`: day -> list of (start, end)."""
    return " ".join(record(d, days_free.get(d, []), brackets) for d in days)


def sweep(xs, ys, names, steps, fit=None):
    """Intersect two sorted lists of blocks the way a merge does: take the first block of each,
    write their overlap (later start, earlier end), then move past the block that ends first.
    Overlaps come out in time order, so the first one `fit` accepts is the earliest slot.
    Returns (common blocks, the accepted slot or None)."""
    i = j = 0
    common = []
    while i < len(xs) and j < len(ys):
        (a, b), (c, d) = xs[i], ys[j]
        lo, hi = max(a, c), min(b, d)
        first = names[0] if b < d else names[1] if d < b else "both"
        line = (f"{names[0]} {block(a, b)}, {names[1]} {block(c, d)}: start {hm(a)} vs {hm(c)} later {hm(lo)}, "
                f"end {hm(b)} vs {hm(d)} earlier {hm(hi)} {first}" + ("" if lo < hi else ", none"))
        found = None
        if lo < hi:
            common.append((lo, hi))
            if fit is not None:
                line, found = fit(lo, hi, line)
        steps.append(line + ".")
        if found:
            return common, found
        i, j = i + (b <= d), j + (d <= b)
    return common, None


def fitter(c: dict):
    """The check of one common block against the meeting: buffers, hours, the blocked time, then
    the length. Appends its steps to the block's line; returns (line, (start, end) or None)."""
    dur, buf = c["duration"], c.get("buffer", 0)

    def fit(lo, hi, line):
        parts = []
        if buf:
            lo, hi = lo + buf, hi - buf
            parts.append(f"buffers {hm(lo - buf)} + {buf} = {hm(lo)}, {hm(hi + buf)} - {buf} = {hm(hi)}")
        if "hours" in c:
            h1, h2 = parse_block(c["hours"])
            parts.append(f"hours {hm(lo)} vs {hm(h1)} later {hm(max(lo, h1))}, "
                         f"{hm(hi)} vs {hm(h2)} earlier {hm(min(hi, h2))}")
            lo, hi = max(lo, h1), min(hi, h2)
        pieces = [(lo, hi)] if lo < hi else []
        if "blocked" in c and pieces:
            pieces = subtract(pieces, parse_block(c["blocked"]))
            parts.append(f"outside {c['blocked']}: {fmt_intervals(pieces)}")
        found = None
        for a, b in pieces:
            enough = a + dur <= b
            parts.append(f"{hm(a)} + {dur} = {hm(a + dur)} vs {hm(b)} {'fits' if enough else 'too short'}")
            if enough:
                found = (a, a + dur)
                break
        if not pieces:
            parts.append("too short")
        return line + ", " + ", ".join(parts), found
    return fit


def sweep_trace(spec: dict) -> str:
    """The teacher's trace: each person's line copied into day records, then day by day the
    records of that day swept together (`sweep`), each common block checked against the meeting
    (`fitter`) on the last person's sweep. Every step is a copy, a comparison of two times written
    next to each other, or a sum of a time and a few minutes."""
    c, days, people = spec["constraints"], spec["days"], spec["participants"]
    head = f"Meeting of {c['duration']} minutes"
    if "buffer" in c:
        head += f", free {c['buffer']} minutes before and after"
    if "hours" in c:
        head += f", within {c['hours']}"
    if "blocked" in c:
        head += f", not during {c['blocked']}"
    steps = [head + ". Check the days in order."]
    free = {name: {d: list(map(parse_block, blocks)) for d, blocks in days_free.items()}
            for name, days_free in spec["availability"].items()}
    steps.append(f"{people[0]}: {records(free[people[0]], days, FIRST)}")
    common = {d: free[people[0]].get(d, []) for d in days}
    for k, person in enumerate(people[1:], 2):
        last = k == len(people)
        steps.append(f"{person}: {records(free[person], days, LATER)}")
        for day in days:
            if last and c.get("no_weekends") and day in WEEKEND:
                steps.append(f"{day}: weekend, skipped.")
                continue
            theirs = free[person].get(day, [])
            steps.append(f"{day}: {record(day, common[day], FIRST)} {record(day, theirs, LATER)}")
            common[day], found = sweep(common[day], theirs, ("common" if k > 2 else people[0], person),
                                       steps, fitter(c) if last else None)
            if found:
                slot = f"{day} {block(*found)}"
                steps.append(f"The earliest slot that satisfies every constraint is {slot}.")
                return trace(steps, f"Final Answer: {slot}")
            if last:
                steps.append(f"{day}: nothing fits.")
        if not last:
            # The common blocks so far become the first record of the next sweep.
            steps.append(f"Common: {records(common, days, FIRST)}")
    steps.append("No day has a slot that satisfies every constraint.")
    return trace(steps, f"Final Answer: {NO_SLOT}")
