"""The two scoring modes on tables of response variants: `eureka` (Eureka ML Insights' extraction
and metric, commit 2ff37bd; the file each table follows is named above it, relative to the
`eureka_ml_insights` package) and `strict` (phi4r's verifiers, unchanged)."""
import json

import pytest

from phi4r.evals import TeacherBackend, run_eval
from phi4r.evals.backends import Completion
from phi4r.tasks import Instance, get_task
from phi4r.tasks.calendar import NO_SLOT
from phi4r.tasks.sat3 import UNSAT_ANSWER


def grades(task, inst, response):
    t = get_task(task)
    return t.grade(inst, response, "eureka").score, t.grade(inst, response, "strict").score


def check_table(task, inst, table):
    got = [(r, *grades(task, inst, r)) for r, _, _ in table]
    assert got == [(r, float(e), float(s)) for r, e, s in table]


# data_utils/numeric_answer_utils.py (NumericExtractAnswer: re.search, the FIRST match; then
# `Final Answer: [N]`; `$`, `,` dropped, `%` divides by 100) + metrics/numeric_answer_metrics.py.
AIME = [  # (response, eureka, strict)
    ("Final Answer: 42", 1, 1),
    ("Final Answer: 41\nFinal Answer: 42", 0, 1),  # Eureka: the first; phi4r: the last
    ("Final Answer: 42\nFinal Answer: 41", 1, 0),
    ("Final Answer: [42]", 1, 0),
    ("Final Answer: **42**", 0, 1),
    ("final answer: 42", 0, 1),  # case sensitive in Eureka
    ("Final Answer: $4,2", 1, 1),
    ("Final Answer: 4200%", 1, 0),
    ("The answer is \\boxed{42}.", 0, 1),  # Eureka reads no \boxed{} (its LLM extractor might)
    ("<think>Final Answer: 42</think>\n\nI give up.", 0, 0),  # only the text after the reasoning
]


def test_aime():
    check_table("aime", Instance("a", "aime", "", {"value": 42}), AIME)


def sat_instance(clauses, n=3, **extra):
    return Instance("s", "sat3", "", {"n": n, "clauses": clauses, **extra})


def sat(values):
    return "<final_answer>{'Solution': '" + values + "'}</final_answer>"


# data_utils/nphard_sat_utils.py (the last <final_answer> block must be a dict literal with
# `Solution`; exactly True/False tokens) + metrics/nphard_sat_metrics.py (membership in the
# instance's solution list; "" for Unsatisfiable against an empty list).
ONLY_TTT = [c for c in ([s1, s2, s3] for s1 in (1, -1) for s2 in (2, -2) for s3 in (3, -3)) if c != [-1, -2, -3]]
SAT_UNIQUE = [
    (sat("True, True, True"), 1, 1),
    (sat("true, true, true"), 0, 1),
    ("{'Solution': 'True, True, True'}", 0, 1),  # no <final_answer> block
    (sat("True, True, True") + "\n<final_answer>{'Solution': 'True, True, False'}</final_answer>", 0, 0),
    (sat("x1=True, x2=True, x3=True"), 0, 0),
    (UNSAT_ANSWER, 0, 0),
]
SAT_NONE = [
    (UNSAT_ANSWER, 1, 1),  # the form the prompt asks for (prompt version 2)
    ("<final_answer>Unsatisfiable</final_answer>", 0, 1),  # not a dict: Eureka reads nothing
    ("Unsatisfiable", 0, 1),
    (sat("True, True, True"), 0, 0),
]
SAT_LISTED = [  # a released record: Eureka credits only the listed assignments
    (sat("True, False, False"), 1, 1),
    (sat("True, True, True"), 0, 1),  # satisfies the clause, not in the list
    (sat("False, False, False"), 0, 0),
]


def test_sat3():
    check_table("sat3", sat_instance(ONLY_TTT), SAT_UNIQUE)
    check_table("sat3", sat_instance(ONLY_TTT + [[-1, -2, -3]]), SAT_NONE)
    check_table("sat3", sat_instance([[1, 2, 3]], solutions=["(1, 0, 0)"]), SAT_LISTED)
    # A generated instance lists every model: any satisfying assignment is in it.
    assert get_task("sat3").grade(sat_instance([[1, 2, 3]]), sat("False, True, False"), "eureka").score == 1.0


def tsp(path, total=None):
    extra = "" if total is None else f", 'TotalDistance': '{total}'"
    return f"<final_answer>{{'Path': '{path}'{extra}}}</final_answer>"


# data_utils/nphard_tsp_utils.py (the last block; JSON after ' -> "; digits and arrows kept) +
# metrics/nphard_tsp_metrics.py (valid, optimal length, in the list of optimal tours; the stated
# total is never read).
TSP_DIST = [[0, 1, 5, 1], [1, 0, 1, 5], [5, 1, 0, 1], [1, 5, 1, 0]]  # optimum 4: 0-1-2-3-0 and its reverse
TSP = [
    (tsp("0->1->2->3->0", 4), 1, 1),
    (tsp("0->1->2->3->0", 5), 1, 0),  # a wrong total
    (tsp("0->1->2->3->0"), 1, 0),  # no total
    (tsp("0 -> 3 -> 2 -> 1 -> 0", 4), 1, 1),
    ('<final_answer>{"Path": "0->1->2->3->0", "TotalDistance": 4}</final_answer>', 1, 1),
    (tsp("1->2->3->0->1", 4), 0, 0),  # the listed tours start at 0
    (tsp("0->2->1->3->0", 12), 0, 0),
    ("{'Path': '0->1->2->3->0', 'TotalDistance': '4'}", 0, 1),  # no block
]
TSP_LISTED = [(tsp("0->1->2->3->0", 4), 1, 1), (tsp("0->3->2->1->0", 4), 0, 1)]


def test_tsp():
    answer = {"dist": TSP_DIST, "optimal": 4, "tour": [0, 1, 2, 3, 0]}
    check_table("tsp", Instance("t", "tsp", "", answer), TSP)
    check_table("tsp", Instance("t", "tsp", "", {**answer, "optimal_tours": "[(0, 1, 2, 3)]"}), TSP_LISTED)


def calendar(availability, days, solution, **constraints):
    spec = {"participants": list(availability), "days": days, "availability": availability,
            "constraints": constraints, "solution": solution}
    return Instance("c", "calendar", "", spec)


# data_utils/ba_calendar_utils.py (`**` and newlines dropped, the last `Final Answer: Day HH:MM-HH:MM`
# with two-digit hours, else the no-solution phrase) + metrics/ba_calendar_metrics.py
# (run_programmatic_tests: all_correct and fraction_passed over format and the applicable checks).
WEEKEND = calendar({"Ann": {"Friday": ["09:00-10:00"], "Saturday": ["09:00-12:00"]},
                    "Bob": {"Friday": ["09:00-11:00"], "Saturday": ["10:00-12:00"]}},
                   ["Friday", "Saturday"], "Friday 09:00-10:00", duration=60, no_weekends=True)
CALENDAR = [  # (response, eureka, strict, eureka fraction_passed)
    ("Final Answer: Friday 09:00-10:00", 1, 1, 1.0),
    ("**Final Answer:** Friday 09:00-10:00", 1, 1, 1.0),
    # Eureka's weekend check reads the day alone, strptime(day, "%A"): a date in the week of
    # 1900-01-01, a Monday, so every day passes it.
    ("Final Answer: Saturday 10:00-11:00", 1, 0, 1.0),
    ("Final Answer: Friday 09:00-09:30", 0, 0, 0.75),  # too short
    ("Final Answer: Friday 9:00-10:00", 0, 1, 0.0),  # one-digit hour: Eureka reads nothing
    (f"Final Answer: {NO_SLOT}", 0, 0, 0.0),
]
NO_COMMON = calendar({"Ann": {"Friday": ["09:00-10:00"]}, "Bob": {"Friday": ["11:00-12:00"]}}, ["Friday"], None,
                     duration=60)
CALENDAR_NONE = [  # the right answer fails every Eureka check
    (f"Final Answer: {NO_SLOT}", 0, 1, 0.0),
    (f"So: {NO_SLOT.lower()}.", 0, 0, 0.0),
    ("Final Answer: Friday 09:00-10:00", 0, 0, 2 / 3),
]
# Eureka's priority check assigns its verdict for every day in turn: the LAST day with a common slot
# decides, here Tuesday, although Monday is earlier.
PRIORITY = calendar({"Ann": {"Monday": ["09:00-11:00"], "Tuesday": ["09:00-12:00"]},
                     "Bob": {"Monday": ["10:00-12:00"], "Tuesday": ["09:00-12:00"]}},
                    ["Monday", "Tuesday"], "Monday 10:00-11:00", duration=60, earliest=True)
CALENDAR_PRIORITY = [
    ("Final Answer: Monday 10:00-11:00", 0, 1, 0.75),
    ("Final Answer: Tuesday 09:00-10:00", 1, 0, 1.0),
]


@pytest.mark.parametrize("inst, table", [(WEEKEND, CALENDAR), (NO_COMMON, CALENDAR_NONE), (PRIORITY, CALENDAR_PRIORITY)])
def test_calendar(inst, table):
    task = get_task("calendar")
    check_table("calendar", inst, [row[:3] for row in table])
    assert [task.grade(inst, r, "eureka").details["fraction_passed"] for r, *_ in table] == \
        pytest.approx([row[3] for row in table])


# data_utils/spatial_utils.py (extract_answer_from_text_map_and_maze: option texts from the answer
# line and from the first line of the response) + metrics/metrics_base.py (SubstringExistsMatch:
# the right option's text inside what was read).
SPATIAL = [
    ("Final Answer: B", 1, 1),
    ("Final Answer: **B**", 1, 1),
    ("Final Answer: A", 1, 0),  # "north" is inside "northeast"
    ("Final Answer: C", 0, 0),
    ("The answer is north", 1, 0),
    ("North-east is tempting.\nFinal Answer: C", 1, 0),  # the first line names "North"
    ("Final Answer: north", 1, 0),
    ("I cannot tell.", 0, 0),
]
MAZE_COUNT = [("Final Answer: C", 1, 1), ("Final Answer: one", 1, 0), ("Final Answer: 1", 1, 0), ("Final Answer: A", 0, 0)]
MAZE_DIRECTION = [("Final Answer: B", 1, 1), ("Final Answer: A", 1, 0), ("Final Answer: C", 0, 0)]


def choice(task, options, letter):
    return Instance("m", task, "", {"options": options, "letter": letter, "value": options["ABCD".index(letter)]})


def test_spatialmap_and_maze():
    check_table("spatialmap", choice("spatialmap", ["northeast", "north", "south", "west"], "B"), SPATIAL)
    check_table("maze", choice("maze", [2, 3, 1, 4], "C"), MAZE_COUNT)
    check_table("maze", choice("maze", ["above-left", "above", "left", "below"], "B"), MAZE_DIRECTION)


def test_an_answer_line_that_opens_the_response_reads_its_letter():
    # Eureka's `^Answer: X. word` branch calls .lower() on a findall tuple and raises; the letter is
    # what it means to read.
    inst = choice("spatialmap", ["northeast", "north", "south", "west"], "B")
    assert grades("spatialmap", inst, "Answer: B. north") == (1.0, 0.0)


# data_utils/flenqa_utils.py (response_category: "not true" is false, then whichever of true/false
# occurs last, substrings included) + metrics/metrics_base.py (ExactMatch).
FLENQA_TRUE = [
    ("Final Answer: True", 1, 1),
    ("Final Answer: **True**", 1, 1),
    ("true", 1, 0),
    ("It is untrue", 1, 0),
    ("Final Answer: True, as it is not false", 0, 1),
    ("The answer is not true.", 0, 0),
]
FLENQA_FALSE = [("Final Answer: False", 1, 1), ("This is not true", 1, 0), ("Final Answer: True", 0, 0)]


def test_flenqa():
    check_table("flenqa", Instance("f", "flenqa", "", {"truth": True}), FLENQA_TRUE)
    check_table("flenqa", Instance("f", "flenqa", "", {"truth": False}), FLENQA_FALSE)


# user_configs/gpqa.py (RegexTransform `Final Answer: (\w)(?=\s|\W|$)`, case sensitive, the last)
# + metrics/metrics_base.py (ExactMatch).
GPQA = [
    ("Final Answer: C", 1, 1),
    ("Final Answer: D\nFinal Answer: C", 1, 1),
    ("Final Answer: C\nFinal Answer: D", 0, 0),
    ("final answer: C", 0, 1),
    ("Final Answer: **C**", 0, 1),
    ("Final Answer: (C)", 0, 1),
    ("Final Answer:C", 0, 1),
    ("The answer is C", 0, 1),
]


def test_gpqa_and_the_extraction_judge():
    inst = Instance("g", "gpqa", "", {"letter": "C", "options": ["w", "x", "y", "z"]})
    check_table("gpqa", inst, GPQA)
    task, asked = get_task("gpqa"), []

    def judge(step, inst, response):
        asked.append((step, response))
        return "Final Answer: c" if "(C)" in response else "Final Answer: C"

    assert task.grade(inst, "Final Answer: **C**", "eureka").details == {"needs_judge": True}
    verdict = task.grade(inst, "Final Answer: **C**", "eureka", judge)
    assert (verdict.score, verdict.details) == (1.0, {"needs_judge": False, "judge_extracted": True})
    assert task.grade(inst, "Final Answer: (C)", "eureka", judge).score == 0.0  # "c" is not "C"
    assert task.grade(inst, "Final Answer: C", "eureka", judge).score == 1.0
    assert asked == [("extract", "Final Answer: **C**"), ("extract", "Final Answer: (C)")]  # rules first


def test_mmlu_pro_has_no_eureka_pipeline_so_both_modes_agree():
    inst = Instance("p", "mmlu_pro", "", {"letter": "B", "options": list("abcdefghij")})
    assert get_task("mmlu_pro").eureka_source is None
    check_table("mmlu_pro", inst, [("the answer is (B)", 1, 1), ("Answer: C", 0, 0)])


# Omni-MATH: strict rejects a bare number for a text answer (math-verify reads "k = 1" out of
# a sentence); Eureka asks an LLM judge (user_configs/omni_math.py, data_utils/omni_math_utils.py).
MATH = [  # (reference, response, strict)
    ("The answer is k = 1 for all n", "\\boxed{1}", 0),
    ("n \\text{ is odd}", "\\boxed{1}", 0),
    ("k = 1", "\\boxed{1}", 1),
    ("3 \\text{ ways}", "\\boxed{3}", 1),
    ("\\frac{1}{2}", "\\boxed{0.5}", 1),
    ("\\sin x", "\\boxed{\\sin(x)}", 1),
]


@pytest.mark.parametrize("gold, response, strict", MATH)
def test_math_text_answers(gold, response, strict):
    inst = Instance("m", "math", "", {"answer": gold})
    task = get_task("math")
    assert task.grade(inst, response, "strict").score == strict
    verdict = task.grade(inst, response, "eureka")
    # math-verify's proof of equivalence needs no judge; only what it cannot decide waits for one
    assert verdict.score == strict and verdict.details["needs_judge"] == (strict == 0)


def test_math_judge_decides_in_eureka_mode():
    inst, task = Instance("m", "math", "", {"answer": "The answer is k = 1 for all n"}), get_task("math")
    reply = "## Student Final Answer\n1\n\n## Equivalence Judgement\n**TRUE**\n\n## Justification\nsame"
    assert task.grade(inst, "\\boxed{1}", "eureka", lambda step, i, r: reply).score == 1.0
    unreadable = task.grade(inst, "\\boxed{1}", "eureka", lambda step, i, r: "no verdict")
    assert (unreadable.score, unreadable.details) == (0.0, {"needs_judge": False, "judge_unreadable": True})


def test_unknown_mode_is_refused():
    with pytest.raises(ValueError, match="unknown scoring mode 'exact'"):
        get_task("aime").grade(Instance("a", "aime", "", {"value": 1}), "Final Answer: 1", "exact")


class OldFormTeacher(TeacherBackend):
    """The teacher, answering unsatisfiable formulas the way sat3's first prompt asked."""

    def complete(self, jobs, sampling, system_prompt):
        for job, c in super().complete(jobs, sampling, system_prompt):
            content = c.content.replace(UNSAT_ANSWER, "<final_answer>Unsatisfiable</final_answer>")
            yield job, Completion(c.reasoning, content, c.finish_reason, c.response_tokens, c.reasoning_tokens)


def test_run_logs_both_modes_and_reports_where_they_differ(tmp_path):
    kwargs = {"limit": 6, "seed": 7, "progress": False, "plots": False}  # seed 7: both kinds of instance
    summary = run_eval(OldFormTeacher(), ["sat3", "calendar"], tmp_path, scoring="eureka", **kwargs)
    samples = [json.loads(line) for line in (tmp_path / "samples.jsonl").read_text().splitlines()]
    # Eureka fails exactly the unsatisfiable formulas (old form) and the calendars without a slot.
    unsat = {s["id"] for s in samples if s["task"] == "sat3" and "Unsatisfiable" in s["content"]}
    no_slot = {s["id"] for s in samples if s["task"] == "calendar" and NO_SLOT in s["content"]}
    assert unsat and no_slot
    for s in samples:
        assert s["modes"]["strict"]["score"] == 1.0
        assert s["modes"]["eureka"]["score"] == float(s["id"] not in unsat | no_slot) == s["score"]
    modes = summary["modes"]
    assert (modes["sat3"]["differ"], modes["calendar"]["differ"]) == (len(unsat), len(no_slot))
    assert summary["metrics"]["by_task"]["sat3"]["mean"] == modes["sat3"]["by_mode"]["eureka"]["mean"] == 1 - len(unsat) / 6
    report = (tmp_path / "report.md").read_text()
    assert "| task | eureka (headline) | strict | samples scored differently | verdicts without a judge |" in report
    # Eureka's LLM extractor would be asked about the bare `Unsatisfiable` blocks.
    assert f"| sat3 | {100 * (1 - len(unsat) / 6):.1f} | 100.0 | {len(unsat)} | {len(unsat)} |" in report
    assert "strict details (mean over samples): claimed_unsat" in report  # the other mode, where they differ

    # The headline mode is a reporting choice: the same log, scored strict, asks nothing again;
    # samples logged without modes are graded again from their text.
    (tmp_path / "samples.jsonl").write_text("".join(
        json.dumps({k: v for k, v in s.items() if k != "modes"}) + "\n" for s in samples))
    again = run_eval(TeacherBackend(), ["sat3", "calendar"], tmp_path, **kwargs)
    assert again["metrics"]["overall"]["mean"] == 1.0
    assert again["modes"]["sat3"]["by_mode"]["eureka"]["mean"] == 1 - len(unsat) / 6


def test_cli_picks_the_headline_mode(tmp_path, capsys):
    from phi4r.cli import main

    args = ["eval", "--model", "teacher", "--tasks", "calendar", "--limit", "6", "--seed", "7", "--quiet", "--no-plots"]
    assert main([*args, "--out", str(tmp_path), "--scoring", "eureka"]) == 0
    printed = capsys.readouterr().out
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["settings"]["scoring"] == "eureka"
    eureka = summary["modes"]["calendar"]["by_mode"]["eureka"]["mean"]
    assert eureka < 1.0 and f"| accuracy | {100 * eureka:.1f} |" in printed  # the teacher's no-slot answers
    with pytest.raises(SystemExit) as refused:
        main([*args, "--out", str(tmp_path), "--scoring", "exact"])
    assert refused.value.code == 2 and "invalid choice: 'exact'" in capsys.readouterr().err
