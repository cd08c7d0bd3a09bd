"""Calendar planning (BA-Calendar style): find a meeting slot that satisfies every constraint.

Constraints: everyone's availability, the meeting duration, a buffer before and after (during
which participants must also be available), no weekends, no meetings before/after a time, a
blocked time, and priority for the earliest slot (earliest day in week order, then earliest
start). Each applicable constraint is a check; the score is 1 when all pass, `details` carries
the fraction passed. Times are exact minutes: the solver intersects intervals, no time grid.
"""
from __future__ import annotations

import re

from .base import Instance, Score, Task, last_match, trace
from .eureka import calendar as eureka
from .external import RecordLoader, field, structured

DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
WEEKEND = {"Saturday", "Sunday"}
NAMES = ["Alice", "Bob", "Carol", "Dan", "Erin", "Frank", "Grace", "Heidi", "Ivan", "Judy",
         "Ken", "Laura", "Mike", "Nina", "Oscar", "Peggy"]
NO_SLOT = "No common time slot available"

# level -> (participants, days offered, optional constraints drawn)
LEVELS = {1: (2, 2, 0), 2: (2, 3, 1), 3: (3, 5, 2), 4: (4, 7, 4), 5: (6, 7, 5)}
OPTIONAL = ["buffer", "no_weekends", "hours", "blocked", "earliest"]
PLANT = 0.8  # share of instances given a common slot on purpose; the rest mostly have none


def hm(minutes: int) -> str:
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


def block(a: int, b: int) -> str:
    return f"{hm(a)}-{hm(b)}"


def to_min(text: str) -> int:
    h, m = text.split(":")
    return int(h) * 60 + int(m)


def parse_block(text: str) -> tuple[int, int]:
    a, b = text.split("-")
    return to_min(a), to_min(b)


def intersect(xs, ys):
    out = []
    for a, b in xs:
        for c, d in ys:
            lo, hi = max(a, c), min(b, d)
            if lo < hi:
                out.append((lo, hi))
    return sorted(out)


def subtract(xs, cut):
    c, d = cut
    out = []
    for a, b in xs:
        for lo, hi in ((a, min(b, c)), (max(a, d), b)):
            if lo < hi:
                out.append((lo, hi))
    return out


def fmt_intervals(xs) -> str:
    return ", ".join(block(a, b) for a, b in xs) or "none"


def solve_day(spec: dict, day: str, steps: list[str] | None = None):
    """Earliest (start, end) on `day` meeting every constraint, or None; narrates into `steps`."""
    c = spec["constraints"]
    say = steps.append if steps is not None else (lambda s: None)
    if c.get("no_weekends") and day in WEEKEND:
        say(f"{day}: weekend, skipped.")
        return None
    buf, dur = c.get("buffer", 0), c["duration"]
    window = [(0, 24 * 60)]
    for name, days in spec["availability"].items():
        # Shrinking each free block by the buffer leaves the times the meeting itself may use.
        free = [(a + buf, b - buf) for a, b in map(parse_block, days.get(day, [])) if b - a > 2 * buf]
        window = intersect(window, free)
        say(f"{day}: {name} free {fmt_intervals(free)}" + (f" (after {buf}-min buffers)" if buf else "")
            + f"; common so far {fmt_intervals(window)}")
        if not window:
            return None
    if "hours" in c:
        window = intersect(window, [parse_block(c["hours"])])
        say(f"{day}: within {c['hours']}: {fmt_intervals(window)}")
    if "blocked" in c:
        window = subtract(window, parse_block(c["blocked"]))
        say(f"{day}: outside {c['blocked']}: {fmt_intervals(window)}")
    for a, b in window:
        if b - a >= dur:
            say(f"{day}: {fmt_intervals([(a, b)])} fits {dur} minutes: {block(a, a + dur)}.")
            return a, a + dur
    say(f"{day}: nothing long enough for {dur} minutes.")
    return None


def solve(spec: dict, steps: list[str] | None = None):
    for day in spec["days"]:
        found = solve_day(spec, day, steps)
        if found:
            return day, *found
    return None


def random_availability(rng, days: list[str]) -> dict:
    out = {}
    for day in days:
        if rng.random() < 0.15:
            continue  # away that day
        nblocks = rng.randint(1, 3)
        half_hours = sorted(rng.sample(range(16, 37), 2 * nblocks))  # 08:00 to 18:00
        out[day] = [block(half_hours[i] * 30, half_hours[i + 1] * 30) for i in range(0, 2 * nblocks, 2)]
    return out


def plant(rng, spec: dict) -> None:
    """Make one slot that obeys the constraints free for everyone (random schedules of many
    people rarely share one), widening or adding a block in each person's availability."""
    c = spec["constraints"]
    days = [d for d in spec["days"] if not (c.get("no_weekends") and d in WEEKEND)]
    lo, hi = parse_block(c.get("hours", "08:00-18:00"))
    blocked = parse_block(c["blocked"]) if "blocked" in c else (0, 0)
    starts = [s for s in range(lo, hi - c["duration"] + 1, 30)
              if s + c["duration"] <= blocked[0] or s >= blocked[1]]
    day, start = rng.choice(days), rng.choice(starts)
    buf = c.get("buffer", 0)
    for days_free in spec["availability"].values():
        # Random extra margins, so the planted blocks do not all look alike.
        need = (start - buf - 30 * rng.randint(0, 2), start + c["duration"] + buf + 30 * rng.randint(0, 2))
        blocks = [parse_block(b) for b in days_free.get(day, [])]
        merged = [need]
        for a, b in sorted(blocks):
            if b < merged[0][0] or a > merged[0][1]:
                merged.append((a, b))
            else:
                merged[0] = (min(a, merged[0][0]), max(b, merged[0][1]))
        days_free[day] = [block(a, b) for a, b in sorted(merged)]


def spec_from_release(constraints: dict, availability: dict, days: list[str]) -> dict:
    """BA-Calendar's constraint fields as this task's spec (absent constraints are null or false)."""
    c = constraints
    spec_c: dict = {"duration": int(c["meeting_duration"])}
    if c.get("buffer_time_before_and_after_meeting"):
        spec_c["buffer"] = int(c["buffer_time_before_and_after_meeting"])
    if c.get("no_meetings_on_weekends"):
        spec_c["no_weekends"] = True
    if c.get("no_meetings_before") or c.get("no_meetings_after"):
        spec_c["hours"] = block(int(c.get("no_meetings_before") or 0) * 60, int(c.get("no_meetings_after") or 24) * 60)
    if c.get("no_meetings_during_specific_times"):
        spec_c["blocked"] = block(*parse_block(str(c["no_meetings_during_specific_times"]).replace(" ", "")))
    if c.get("high_priority_meeting"):
        spec_c["earliest"] = True
    spec = {"participants": list(availability), "days": days, "constraints": spec_c,
            "availability": {name: {d: list(b) for d, b in sched.items()} for name, sched in availability.items()}}
    found = solve(spec)
    spec["solution"] = None if found is None else f"{found[0]} {block(found[1], found[2])}"
    return spec


class Calendar(RecordLoader, Task):
    name = "calendar"
    difficulties = list(LEVELS)
    categories = ["slot", "no_slot"]

    def make(self, rng, difficulty, k):
        people, ndays, nopt = LEVELS[difficulty]
        names = rng.sample(NAMES, people)
        days = DAYS[:ndays] if ndays < 7 else DAYS
        constraints: dict = {"duration": rng.choice([30, 45, 60, 90])}
        for opt in rng.sample(OPTIONAL, nopt):
            if opt == "buffer":
                constraints["buffer"] = rng.choice([10, 15, 30])
            elif opt == "hours":
                constraints["hours"] = block(rng.choice([8, 9, 10]) * 60, rng.choice([15, 16, 17]) * 60)
            elif opt == "blocked":
                start = rng.choice(range(10 * 60, 15 * 60 + 1, 30))
                constraints["blocked"] = block(start, start + rng.choice([30, 60]))
            else:
                constraints[opt] = True
        spec = {"participants": names, "days": days, "constraints": constraints,
                "availability": {n: random_availability(rng, days) for n in names}}
        if rng.random() < PLANT:
            plant(rng, spec)
        found = solve(spec)
        spec["solution"] = None if found is None else f"{found[0]} {block(found[1], found[2])}"
        category = "no_slot" if found is None else "slot"
        return Instance(id="", task=self.name, prompt=self.prompt(spec), answer=spec,
                        category=category, difficulty=difficulty,
                        meta={"num_constraints": len(constraints) + 1, "participants": people})

    def from_record(self, record):
        """BA-Calendar's release (microsoft/ba-calendar): the problem in `task_prompt` (`prompt` once
        Eureka renames it), `constraints`, `metadata.availability` (a dict written as text) and
        `params.days_of_week`; the raw fields stay under `answer["release"]` for Eureka's checks."""
        constraints = structured(field(record, "constraints"))
        metadata = structured(field(record, "metadata"))
        params = structured(field(record, "params", default={})) or {}
        availability = structured(field(metadata, "availability"))
        if not isinstance(availability, dict):
            raise TypeError("metadata.availability is not a dict of schedules")
        days = list(params.get("days_of_week") or [d for d in DAYS if any(d in s for s in availability.values())])
        spec = spec_from_release(constraints, availability, days)
        # Eureka's priority check reads params.days_of_week, so it is filled in when absent.
        spec["release"] = {"constraints": constraints, "metadata": metadata, "params": {**params, "days_of_week": days}}
        prompt = ("Find a common time slot for the meeting described below that satisfies every constraint. "
                  "A buffer time must also be free before and after the meeting; a high-priority meeting "
                  f'takes the earliest possible slot. Answer as "Final Answer: Day HH:MM-HH:MM", or '
                  f'"Final Answer: {NO_SLOT}" if there is none.\n\n' + str(field(record, "task_prompt", "prompt")))
        return Instance(id="", task=self.name, prompt=prompt, answer=spec,
                        category="no_slot" if spec["solution"] is None else "slot",
                        meta={"num_constraints": len(spec["constraints"]) + 1, "participants": len(availability)})

    @staticmethod
    def prompt(spec: dict) -> str:
        c = spec["constraints"]
        lines = [f"Schedule a {c['duration']}-minute meeting for {', '.join(spec['participants'])}. "
                 f"Days: {', '.join(spec['days'])}.", "Availability (everyone else is busy):"]
        for name, days in spec["availability"].items():
            avail = "; ".join(f"{d} {', '.join(days[d])}" for d in spec["days"] if d in days)
            lines.append(f"{name}: {avail or 'not available'}")
        rules = ["Everyone must be available for the whole meeting."]
        if "buffer" in c:
            rules.append(f"Everyone must also be available {c['buffer']} minutes before and after it.")
        if c.get("no_weekends"):
            rules.append("No meetings on weekends.")
        if "hours" in c:
            a, b = c["hours"].split("-")
            rules.append(f"No meetings before {a} or after {b}.")
        if "blocked" in c:
            rules.append(f"No meetings during {c['blocked']}.")
        if c.get("earliest"):
            rules.append("High priority: take the earliest possible slot (earliest day, then time).")
        lines += ["Constraints:"] + [f"- {r}" for r in rules]
        lines.append(f'Answer as "Final Answer: Day HH:MM-HH:MM", or "Final Answer: {NO_SLOT}".')
        return "\n".join(lines)

    def parse(self, text):
        m = last_match(r"Final Answer:\s*(.*)", text)
        if m is None:
            return None
        body = m.group(1)
        if re.search(re.escape(NO_SLOT), body, re.I):
            return NO_SLOT
        slot = re.search(r"(" + "|".join(DAYS) + r")\s+(\d{1,2}:\d{2})\s*-\s*(\d{1,2}:\d{2})", body)
        if slot is None:
            return None
        return f"{slot.group(1)} {hm(to_min(slot.group(2)))}-{hm(to_min(slot.group(3)))}"

    def checks(self, spec: dict, answer: str | None) -> dict[str, int]:
        """One 0/1 entry per applicable constraint (plus format), as BA-Calendar reports them."""
        c = spec["constraints"]
        names = ["format", "availability", "duration"] + [k for k in OPTIONAL if k in c]
        if answer == NO_SLOT:
            # Right exactly when no slot exists; then there is nothing left to violate.
            return {k: int(spec["solution"] is None) for k in names}
        if answer is None:
            return {k: 0 for k in names}
        day, times = answer.split()
        a, b = parse_block(times)
        buf = c.get("buffer", 0)

        def everyone_free(lo, hi):
            return all(any(x <= lo and hi <= y for x, y in map(parse_block, days.get(day, [])))
                       for days in spec["availability"].values())

        result = {"format": 1, "availability": int(day in spec["days"] and everyone_free(a, b)),
                  "duration": int(b - a == c["duration"])}
        if "buffer" in c:
            result["buffer"] = int(everyone_free(a - buf, b + buf))
        if "no_weekends" in c:
            result["no_weekends"] = int(day not in WEEKEND)
        if "hours" in c:
            lo, hi = parse_block(c["hours"])
            result["hours"] = int(lo <= a and b <= hi)
        if "blocked" in c:
            lo, hi = parse_block(c["blocked"])
            result["blocked"] = int(b <= lo or a >= hi)
        if "earliest" in c:
            result["earliest"] = int(answer == spec["solution"])
        return {k: result[k] for k in names}

    def check(self, inst, response):
        got = self.extract(response)
        checks = self.checks(inst.answer, got)
        passed = sum(checks.values())
        return Score(float(passed == len(checks)), got,
                     {"checks": checks, "fraction_passed": passed / len(checks)})

    eureka_source = "metrics/ba_calendar_metrics.py"

    def check_eureka(self, inst, response, judge=None):
        # A released BA-Calendar record keeps Eureka's own columns; a generated one is converted.
        row = inst.answer.get("release") or eureka.eureka_row(inst.answer)
        return eureka.check(row, response)

    def teacher(self, inst):
        spec = inst.answer
        steps = [f"Meeting of {spec['constraints']['duration']} minutes. Check the days in order."]
        found = solve(spec, steps)
        if found is None:
            steps.append("No day has a slot that satisfies every constraint.")
            return trace(steps, f"Final Answer: {NO_SLOT}")
        slot = f"{found[0]} {block(found[1], found[2])}"
        steps.append(f"The earliest slot that satisfies every constraint is {slot}.")
        return trace(steps, f"Final Answer: {slot}")
