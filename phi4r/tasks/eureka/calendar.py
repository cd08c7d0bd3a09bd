"""BA-Calendar in Eureka: the last `Final Answer: Day HH:MM-HH:MM`, graded by BenchAgents'
programmatic checks; the score is `all_correct`, `fraction_passed` the partial credit.

Follows data_utils/ba_calendar_utils.py (BA_Calendar_ExtractAnswer) and
metrics/ba_calendar_metrics.py (BACalendarMetric.run_programmatic_tests and its helpers), which
read an instance as Eureka's data set has it: `constraints`, `metadata.availability` (a dict
written as a string) and `params.days_of_week`. `eureka_row` writes a phi4r instance that way.
"""
from __future__ import annotations

import json
import re
from datetime import datetime, timedelta

from ..base import Score, final_text

NO_SOLUTION = "No common time slot available"
CHECKS = ["availability", "meeting_duration", "buffer_time", "no_weekends", "time_restrictions",
          "specific_times", "priority"]


def eureka_row(spec: dict) -> dict:
    """A phi4r calendar instance (calendar.py's spec) in Eureka's columns; absent constraints are
    falsy, which the checks read as "not applicable"."""
    c = spec["constraints"]
    before, after = c["hours"].split("-") if "hours" in c else (None, None)
    return {
        "constraints": {
            "availability": True, "meeting_duration": c["duration"],
            "buffer_time_before_and_after_meeting": c.get("buffer"),
            "no_meetings_on_weekends": bool(c.get("no_weekends")),
            "no_meetings_before": int(before.split(":")[0]) if before else None,
            "no_meetings_after": int(after.split(":")[0]) if after else None,
            "no_meetings_during_specific_times": c.get("blocked"),
            "high_priority_meeting": bool(c.get("earliest")),
        },
        "metadata": {"availability": json.dumps(spec["availability"])},
        "params": {"days_of_week": spec["days"], "granularity": 5},
    }


def parse_calendar(text: str) -> str:
    """BA_Calendar_ExtractAnswer.parse_output_answer: `**` and newlines removed, the last
    `Final Answer: Day HH:MM-HH:MM` (two-digit hours), else the no-solution phrase anywhere."""
    text = text.replace("**", "").replace("\n", "")
    match = re.findall(r"Final Answer:\s*(\w+ \d{2}:\d{2}-\d{2}:\d{2})", text)
    if match:
        return match[-1]
    return NO_SOLUTION if NO_SOLUTION.lower() in text.lower() else ""


def well_formed(solution: str) -> bool:
    """check_time_slot_format."""
    return bool(re.match(r"^(Monday|Tuesday|Wednesday|Thursday|Friday|Saturday|Sunday) "
                         r"([0-9]|[01]\d|2[0-3]):[0-5]\d-([0-9]|[01]\d|2[0-3]):[0-5]\d$", solution))


def parse_block(block: str):
    start, end = block.split("-")
    return datetime.strptime(start, "%H:%M"), datetime.strptime(end, "%H:%M")


def slots(start, end) -> list:
    """generate_time_slots: 5-minute slots (Eureka overrides the data's granularity with 5)."""
    out, t = [], start
    while t + timedelta(minutes=5) <= end:
        out.append((t, t + timedelta(minutes=5)))
        t += timedelta(minutes=5)
    return out


def by_duration(time_slots, duration) -> list:
    """filter_slots_by_duration: from each slot, the shortest run of slots that lasts `duration`
    minutes. Eureka adds the slots up one by one; as `slots` are consecutive and 5 minutes each,
    the run from slot i ends at slot i + ceil(duration / 5) - 1 (at least slot i itself)."""
    count = max(1, -(-duration // 5))
    return [(time_slots[i][0], time_slots[i + count - 1][1]) for i in range(len(time_slots) - count + 1)]


def by_constraints(time_slots, c: dict, day: str) -> list:
    """filter_slots_by_constraints (a slot ending exactly at the no-meetings-after hour is dropped)."""
    out = []
    for start, end in time_slots:
        if c["no_meetings_before"] and start < datetime.strptime(f"{int(c['no_meetings_before'])}:00", "%H:%M"):
            continue
        if c["no_meetings_after"] and end >= datetime.strptime(f"{int(c['no_meetings_after'])}:00", "%H:%M"):
            continue
        if c["no_meetings_on_weekends"] and day in ("Saturday", "Sunday"):
            continue
        if c["no_meetings_during_specific_times"]:
            lo, hi = parse_block(c["no_meetings_during_specific_times"])
            if start < hi and end > lo:
                continue
        out.append((start, end))
    return out


def everyone_free(availability: dict, day: str, start, end) -> int:
    for schedule in availability.values():
        if day not in schedule or not any(a <= start and b >= end for a, b in map(parse_block, schedule[day])):
            return 0
    return 1


def run_checks(row: dict, solution: str) -> dict:
    """run_programmatic_tests: format plus one 0/1 per applicable constraint (None = not
    applicable); every check but format fails an answer that is not a well-formed slot, so the
    no-solution phrase fails them all."""
    c, ok = row["constraints"], well_formed(solution) and solution != NO_SOLUTION
    availability = row["metadata"]["availability"]  # text in Eureka's files; a dict in some JSON copies
    availability = availability if isinstance(availability, dict) else json.loads(availability.replace("'", '"'))
    day, start, end = None, None, None
    if ok:
        day, times = solution.split()
        start, end = parse_block(times)
    buffer = c.get("buffer_time_before_and_after_meeting", True)
    applicable = {
        "availability": c.get("availability", True), "meeting_duration": c.get("meeting_duration", True),
        "buffer_time": buffer is not None and buffer, "no_weekends": c.get("no_meetings_on_weekends", True),
        "time_restrictions": c.get("no_meetings_before", True) or c.get("no_meetings_after", True),
        "specific_times": c.get("no_meetings_during_specific_times", True),
        "priority": c.get("high_priority_meeting", False),
    }
    result: dict = {"format": int(well_formed(solution))}
    for name in CHECKS:
        if not applicable[name]:
            result[name] = None
        elif not ok:
            result[name] = 0
        elif name == "availability":
            result[name] = everyone_free(availability, day, start, end)
        elif name == "meeting_duration":
            result[name] = int((end - start).total_seconds() / 60 == c["meeting_duration"])
        elif name == "buffer_time":
            pad = timedelta(minutes=c["buffer_time_before_and_after_meeting"])
            result[name] = everyone_free(availability, day, start - pad, end + pad)
        elif name == "no_weekends":
            result[name] = int(datetime.strptime(day, "%A").weekday() < 5)
        elif name == "time_restrictions":
            before, after = c.get("no_meetings_before"), c.get("no_meetings_after")
            result[name] = int(not (before and start < datetime.strptime(f"{int(before)}:00", "%H:%M"))
                               and not (after and end > datetime.strptime(f"{int(after)}:00", "%H:%M")))
        elif name == "specific_times":
            lo, hi = parse_block(c["no_meetings_during_specific_times"])
            result[name] = int(not (start < hi and end > lo))
        else:
            result[name] = int(solution == first_slot(row, availability))
    return result


def first_slot(row: dict, availability: dict) -> str | None:
    """check_priority_programmatic's expected answer: the first common slot of each day in turn,
    the LAST day that has one winning (Eureka assigns the result in its loop over days)."""
    c, expected = row["constraints"], None
    buffer = c["buffer_time_before_and_after_meeting"] or 0
    for day in row["params"]["days_of_week"]:
        common = None
        for schedule in availability.values():
            if day in schedule:
                mine = []
                for block in schedule[day]:
                    found = by_duration(slots(*parse_block(block)), c["meeting_duration"] + 2 * buffer)
                    mine.extend(by_constraints(found, c, day))
                common = set(mine) if common is None else common.intersection(mine)
        if common:
            start, end = min(common)
            expected = (f"{day} {(start + timedelta(minutes=buffer)).strftime('%H:%M')}-"
                        f"{(end - timedelta(minutes=buffer)).strftime('%H:%M')}")
    return expected


def check(row: dict, response: str) -> Score:
    text = final_text(response)
    got = parse_calendar(text) if text is not None else ""
    checks = run_checks(row, got.strip('"').strip("`").strip("\n"))
    passed = [v for v in checks.values() if v is not None]
    # all_correct: no check is 0; fraction_passed: the mean over the applicable checks.
    return Score(float(0 not in passed), got or None,
                 {"checks": checks, "fraction_passed": sum(passed) / len(passed)})
