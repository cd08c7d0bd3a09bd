"""Calendar: the earliest slot against a minute-by-minute brute force; each constraint checked."""

from phi4r.tasks import get_task
from phi4r.tasks.calendar import NO_SLOT

task = get_task("calendar")
WEEKEND = ("Saturday", "Sunday")


def minutes(hhmm):
    h, m = hhmm.split(":")
    return int(h) * 60 + int(m)


def span(text):
    a, b = text.split("-")
    return minutes(a), minutes(b)


def ok(spec, day, start):
    """Every constraint, written independently of the task's interval arithmetic."""
    c = spec["constraints"]
    end, buf = start + c["duration"], c.get("buffer", 0)
    if day not in spec["days"] or (c.get("no_weekends") and day in WEEKEND):
        return False
    for person in spec["availability"].values():
        if not any(a <= start - buf and end + buf <= b for a, b in map(span, person.get(day, []))):
            return False
    if "hours" in c and not (span(c["hours"])[0] <= start and end <= span(c["hours"])[1]):
        return False
    if "blocked" in c:
        lo, hi = span(c["blocked"])
        if start < hi and end > lo:
            return False
    return True


def brute_force(spec):
    for day in spec["days"]:
        for start in range(24 * 60):
            if ok(spec, day, start):
                return day, start
    return None


def slot(day, start, duration):
    return f"Final Answer: {day} {start // 60:02d}:{start % 60:02d}-{(start + duration) // 60:02d}:{(start + duration) % 60:02d}"


def test_solutions_match_brute_force():
    kinds = set()
    for inst in task.generate(40, seed=6):
        spec = inst.answer
        found = brute_force(spec)
        kinds.add(inst.category)
        if found is None:
            assert spec["solution"] is None and inst.category == "no_slot"
        else:
            day, start = found
            assert slot(day, start, spec["constraints"]["duration"]) == f"Final Answer: {spec['solution']}"
    assert kinds == {"slot", "no_slot"}


def test_shifted_and_wrong_slots():
    for inst in task.generate(30, seed=9):
        spec, c = inst.answer, inst.answer["constraints"]
        if spec["solution"] is None:
            got = task.check(inst, slot("Monday", 9 * 60, c["duration"]))
            assert got.score == 0.0
            assert task.score(inst, f"Final Answer: {NO_SLOT}") == 1.0
            continue
        assert task.score(inst, f"Final Answer: {NO_SLOT}") == 0.0
        day, start = spec["solution"].split()[0], minutes(spec["solution"].split()[1].split("-")[0])
        for shift in (-5, 5, 30):
            got = task.check(inst, slot(day, start + shift, c["duration"]))
            valid = ok(spec, day, start + shift) and not c.get("earliest") and shift > 0
            # Earlier than the earliest slot is never valid; later ones only without the priority rule.
            assert got.score == float(valid), (inst.id, shift, got.details)
            assert 0 < got.details["fraction_passed"] <= 1
        got = task.check(inst, slot(day, start, c["duration"] + 15))  # too long
        assert got.score == 0.0 and got.details["checks"]["duration"] == 0


def test_checks_report_each_constraint():
    inst = next(i for i in task.generate(50, seed=2, difficulty=4)
                if i.answer["solution"] and {"buffer", "hours", "blocked", "earliest"} <= set(i.answer["constraints"]))
    good = task.check(inst, task.teacher(inst))
    assert good.details["fraction_passed"] == 1.0
    assert set(good.details["checks"]) >= {"format", "availability", "duration", "buffer", "hours", "blocked", "earliest"}
    bad = task.check(inst, "Final Answer: Sunday 23:00-23:30")
    assert bad.score == 0.0 and 0 < bad.details["fraction_passed"] < 1 and bad.details["checks"]["format"] == 1
    none = task.check(inst, "Let me think.")
    assert none.extracted is None and none.details["fraction_passed"] == 0.0


def test_parse():
    assert task.parse("Final Answer: Tuesday 9:00-9:30") == "Tuesday 09:00-09:30"
    assert task.parse("Final Answer: **Friday 14:15 - 15:00**") == "Friday 14:15-15:00"
    assert task.parse("Final Answer: no common time slot available.") == NO_SLOT
    assert task.parse("Tuesday 09:00-09:30") is None


def test_teacher_reaches_the_solution_at_every_level():
    for level in task.difficulties:
        for inst in task.generate(12, seed=11, difficulty=level):
            assert task.score(inst, task.teacher(inst)) == 1.0, inst.id
