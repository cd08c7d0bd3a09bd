"""Every loader on a few records in each published layout (the original release, the Hugging Face
copies, Eureka's renamed columns), written as JSONL, JSON, CSV and Parquet: the released gold
answers, written the way a reasoning model writes them, score 100%; the same answers shuffled
across the items score 0%."""
import csv
import json
import os
import sys
from pathlib import Path

import pytest
from conftest import run_in_group

from phi4r.tasks import get_task
from phi4r.tasks.calendar import NO_SLOT

pa = pytest.importorskip("pyarrow")
import pyarrow.parquet as pq

FORMATS = ["jsonl", "json", "csv", "parquet"]
ROOT = Path(__file__).resolve().parents[1]


def think(answer: str) -> str:
    return f"<think>\nLet me work through this carefully. Final Answer: maybe something else?\n</think>\n\n{answer}"


def write(path: Path, records: list[dict], fmt: str) -> Path:
    """`records` as a file in format `fmt`; nested cells in CSV are Python literals, as pandas'
    `to_csv` writes them."""
    path = path.with_suffix("." + fmt)
    if fmt == "jsonl":
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    elif fmt == "json":
        path.write_text(json.dumps(records, ensure_ascii=False, indent=1), encoding="utf-8")
    elif fmt == "csv":
        names = list(dict.fromkeys(k for r in records for k in r))
        with open(path, "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, names)
            w.writeheader()
            w.writerows({k: repr(v) if isinstance(v, (list, dict, tuple)) else v for k, v in r.items()}
                        for r in records)
    else:
        pq.write_table(pa.Table.from_pylist(records), path)
    return path


# Each layout: the task, its records, and the gold response for a record (from the released truth).
def aime_layouts():
    h4 = [{"id": 60 + i, "problem": f"Problem {i} with $x^2$.", "solution": f"... so $\\boxed{{{a}}}$.",
           "answer": str(a), "url": "https://artofproblemsolving.com", "year": "2024"}
          for i, a in enumerate([33, 204, 7])]
    eureka = [{"ID": f"2024-I-{i}", "Year": 2024, "Problem Number": i, "Question": f"Problem {i}?",
               "Answer": a, "Part": "I"} for i, a in enumerate([33, 204, 7])]
    maxwell = [{"ID": f"2024-II-{i}", "Problem": f"Problem {i}?", "Solution": "Work.", "Answer": a}
               for i, a in enumerate([70, 5, 116])]
    boxed_only = [{"problem": f"Problem {i}?", "solution": f"So the answer is $\\boxed{{{a:03d}}}$."}
                  for i, a in enumerate([9, 73, 540])]
    opencompass = [{"question": f"Problem {i}?", "answer": str(a)} for i, a in enumerate([1, 2, 3])]

    def gold(r):
        ans = r.get("answer", r.get("Answer"))
        if ans is None:
            ans = r["solution"].split("boxed{")[1].split("}")[0]
        return think(f"Final Answer: {int(ans)}")
    return {"aime/h4": h4, "aime/eureka": eureka, "aime/maxwell-jia": maxwell, "aime/solution-only": boxed_only,
            "aime/opencompass": opencompass}, gold


def math_layouts():
    math500 = [{"problem": "Half of one?", "solution": "It is $\\boxed{\\frac{1}{2}}$.", "answer": "\\frac{1}{2}",
                "subject": "Algebra", "level": 2, "unique_id": "test/algebra/1.json"},
               {"problem": "Two squared?", "solution": "$\\boxed{4}$", "answer": "4", "subject": "Algebra",
                "level": 1, "unique_id": "test/algebra/2.json"},
               {"problem": "Roots?", "solution": "$\\boxed{(x+1)^2}$", "answer": "x^2+2x+1",
                "subject": "Algebra", "level": 3, "unique_id": "test/algebra/3.json"}]
    omni = [{"domain": ["Mathematics -> Algebra -> Other"], "difficulty": 6.5, "problem": f"Problem {i}",
             "solution": "Long proof.", "answer": a, "source": "imo"}
            for i, a in enumerate(["\\sqrt{2}", "17", "\\frac{\\pi}{3}"])]

    def gold(r):
        return think(f"The answer is $\\boxed{{{r['answer']}}}$.")
    return {"math/math500": math500, "math/omni-math": omni}, gold


def gpqa_layouts():
    official = [{"Pre-Revision Question": "old", "Question": f"\nWhich particle {i}?\n", "Correct Answer": f"right {i}",
                 "Incorrect Answer 1": f"wrong a{i}", "Incorrect Answer 2": f"wrong b{i}",
                 "Incorrect Answer 3": f"wrong c{i}", "Explanation": "Because.", "Record ID": f"rec{i}",
                 "High-level domain": "Physics", "Subdomain": "Quantum Mechanics"} for i in range(8)]
    eureka = [{"Question": f"Q{i}?", "A": f"w{i}", "B": f"x{i}", "C": f"y{i}", "D": f"z{i}",
               "Correct Answer": f"{'wxyz'[i % 4]}{i}", "ground_truth": "ABCD"[i % 4],
               "Record ID": f"e{i}", "High-level domain": "Chemistry"} for i in range(4)]
    generic = [{"question": f"Q{i}?", "options": [f"o{i}{k}" for k in range(4)], "answer": "ABCD"[(i + 1) % 4]}
               for i in range(4)]

    def gold(r):
        return think(f"Final Answer: {r['_letter']}")
    return {"gpqa/official": official, "gpqa/eureka": eureka, "gpqa/options-list": generic}, gold


def mmlu_layouts():
    hf = [{"question_id": 70 + i, "question": f"Which law {i}?",
           "options": [f"choice {i}-{k}" for k in range(10 - 3 * (i % 2))] + ["N/A"] * (3 * (i % 2)),
           "answer": "ABCDEFGHIJ"[i * 2], "answer_index": i * 2, "cot_content": "", "category": "law",
           "src": "ori_mmlu-jurisprudence"} for i in range(4)]
    inline = [{"question": f"Pick one {i}.\nOptions:\nA. red\nB. green\nC. blue\nD. black",
               "answer": "ABCD"[3 - i], "category": "other"} for i in range(4)]

    def gold(r):
        return think(f"Checking every option, the answer is ({r['answer']}).")
    return {"mmlu_pro/hf": hf, "mmlu_pro/options-in-question": inline}, gold


SAT_FORMULAS = [  # (clauses, every model as released: 0/1 strings in variable order)
    ([[1, 2, 3], [-1, -2, 3], [-3, 1, 2], [1, -2, -3]], None),
    ([[1, 2, -4], [-1, 3, 4], [2, -3, 4], [-2, -3, -4], [1, -2, 3]], None),
    ([[1, 2], [1, -2], [-1, 2], [-1, -2]], None),  # unsatisfiable
]


def sat_models(n, clauses):
    out = []
    for bits in range(2 ** n):
        values = [(bits >> (n - 1 - i)) & 1 for i in range(n)]
        if all(any((lit > 0) == bool(values[abs(lit) - 1]) for lit in c) for c in clauses):
            out.append(",".join(map(str, values)))
    return out


def sat_layouts():
    def text(clauses):
        return ("Variables: " + ", ".join(f"x{i}" for i in range(1, 1 + max(abs(v) for c in clauses for v in c)))
                + "\nClauses: " + " AND ".join("(" + " OR ".join(f"x{v}" if v > 0 else f"NOT x{-v}" for v in c) + ")"
                                                for c in clauses))
    release, renamed = [], []
    for uid, (clauses, _) in enumerate(SAT_FORMULAS):
        n = max(abs(v) for c in clauses for v in c)
        models = sat_models(n, clauses)
        truth = f"({models[0]})" if models else "Unsatisfiable"
        release.append({"query_text": text(clauses), "target_text": truth, "solution": models,
                        "category": "hard", "num_var": n, "uid": uid})
        renamed.append({"prompt": text(clauses).replace(" AND ", " ∧ ").replace("NOT ", "¬").replace(" OR ", " ∨ "),
                        "ground_truth": truth, "solution": [f"({m})" for m in models], "category": "easy", "uid": uid})

    def gold(r):
        if not r["solution"]:
            return think("<final_answer>{'Solution': 'Unsatisfiable'}</final_answer>")
        bits = r["solution"][-1].strip("()").split(",")
        return think("<final_answer>{'Solution': '" + ", ".join("True" if b == "1" else "False" for b in bits)
                     + "'}</final_answer>")
    return {"sat3/eureka-release": release, "sat3/eureka-renamed": renamed}, gold


TSP_MATRICES = [
    [[0, 2, 9, 10], [2, 0, 6, 4], [9, 6, 0, 3], [10, 4, 3, 0]],
    [[0, 5, 8, 7, 3], [5, 0, 4, 9, 6], [8, 4, 0, 2, 9], [7, 9, 2, 0, 4], [3, 6, 9, 4, 0]],
    [[0, 1, 9, 9, 9, 1], [1, 0, 1, 9, 9, 9], [9, 1, 0, 1, 9, 9], [9, 9, 1, 0, 1, 9], [9, 9, 9, 1, 0, 1],
     [1, 9, 9, 9, 1, 0]],
]


def brute_tsp(w):
    import itertools
    n = len(w)
    tours = [(0, *p) for p in itertools.permutations(range(1, n))]
    cost = {t: sum(w[a][b] for a, b in zip(t, t[1:] + t[:1])) for t in tours}
    best = min(cost.values())
    return best, [t for t in tours if cost[t] == best]


def tsp_layouts():
    release, renamed = [], []
    for uid, w in enumerate(TSP_MATRICES):
        best, tours = brute_tsp(w)
        text = "The distances between cities are: " + "; ".join(
            f"{a}-{b}: {w[a][b]}" for a in range(len(w)) for b in range(a + 1, len(w)))
        common = {"weight_matrix": w, "optimal_tour": str(tours) + ".", "category": f"level_{uid + 1}", "uid": uid}
        release.append({"query_text": text, "target_text": best, **common})
        renamed.append({"prompt": text, "ground_truth": best, **common})

    def gold(r):
        import ast
        tour = list(ast.literal_eval(r["optimal_tour"].rstrip(".") if isinstance(r["optimal_tour"], str)
                                     else r["optimal_tour"])[-1])
        best = r.get("target_text", r.get("ground_truth"))
        return think(f"<final_answer>{{'Path': '{'->'.join(map(str, tour + tour[:1]))}', "
                     f"'TotalDistance': '{best}'}}</final_answer>")
    return {"tsp/eureka-release": release, "tsp/geometer-renamed": renamed}, gold


def calendar_layouts():
    # Each item has exactly one feasible slot (the `_slot`), built into the schedules.
    items = [
        ({"Alice": {"Monday": ["09:00-10:00"], "Tuesday": ["13:00-15:00"]},
          "Bob": {"Monday": ["11:00-12:00"], "Tuesday": ["14:00-16:00"]}},
         {"meeting_duration": 30, "buffer_time_before_and_after_meeting": 0, "no_meetings_on_weekends": False,
          "no_meetings_before": None, "no_meetings_after": None, "high_priority_meeting": True,
          "no_meetings_during_specific_times": None}, ["Monday", "Tuesday"], "Tuesday 14:00-14:30"),
        ({"Carol": {"Wednesday": ["08:00-12:00"], "Saturday": ["09:00-17:00"]},
          "Dan": {"Wednesday": ["10:00-11:30"], "Saturday": ["09:00-17:00"]}},
         {"meeting_duration": 60, "buffer_time_before_and_after_meeting": 15, "no_meetings_on_weekends": True,
          "no_meetings_before": 9, "no_meetings_after": 17, "high_priority_meeting": True,
          "no_meetings_during_specific_times": None}, ["Wednesday", "Saturday"], "Wednesday 10:15-11:15"),
        ({"Erin": {"Thursday": ["09:00-13:00"]}, "Frank": {"Thursday": ["09:00-13:00"]}},
         {"meeting_duration": 45, "buffer_time_before_and_after_meeting": None, "no_meetings_on_weekends": False,
          "no_meetings_before": 11, "no_meetings_after": None, "high_priority_meeting": True,
          "no_meetings_during_specific_times": "11:00-12:00"}, ["Thursday"], "Thursday 12:00-12:45"),
        ({"Gus": {"Friday": ["09:00-09:30"]}, "Hana": {"Friday": ["10:00-11:00"]}},
         {"meeting_duration": 30, "buffer_time_before_and_after_meeting": 0, "no_meetings_on_weekends": True,
          "no_meetings_before": None, "no_meetings_after": None, "high_priority_meeting": False,
          "no_meetings_during_specific_times": None}, ["Friday"], "No common time slot available"),
    ]
    release, renamed = [], []
    for i, (avail, constraints, days, slot) in enumerate(items):
        text = f"Participants: {', '.join(avail)}. Availability: {avail}. Constraints: {constraints}."
        common = {"id": i, "constraints": {**constraints, "availability": True},
                  "metadata": {"availability": str(avail), "participants": str(list(avail))},
                  "params": {"days_of_week": days, "granularity": 5}, "_slot": slot}
        release.append({"task_prompt": text, **common})
        renamed.append({"prompt": text, **common})

    def gold(r):
        return think(f"Final Answer: {r['_slot']}")
    return {"calendar/ba-calendar": release, "calendar/eureka-renamed": renamed}, gold


def choice_release(kind):
    if kind == "maze":
        qs = [("How many right turns are there on the path from S to E?", ["3", "1", "0", "2"], "2"),
              ("How many total turns are there on the path from S to E?", ["4", "6", "5", "7"], "4"),
              ("Which direction is the exit E from the start S?", ["Left", "Right", "Up", "Down"], "Up"),
              ("How many right turns are there on the path from S to E?", ["8", "9", "10", "11"], "C. 10")]
    else:
        qs = [("In which direction is the bank from the park?", ["Northeast", "Southwest", "North", "East"], "North"),
              ("Which object is to the south of the cafe?", ["bank", "park", "zoo", "gym"], "gym"),
              ("How many objects are in the northwest of the zoo?", ["1", "0", "2", "3"], "1"),
              ("In which direction is the zoo from the bank?", ["West", "East", "South", "North"], "B")]
    rows = []
    for i, (q, opts, truth) in enumerate(qs):
        body = "#####\n#S..#\n#.#E#\n#####" if kind == "maze" else "The bank is 2 blocks north of the park."
        rows.append({"id": i, "prompt": f"{body}\nPlease answer the following multiple-choice question based on "
                     f"the provided information. {q} Available options:\n"
                     + "\n".join(f"{'ABCD'[k]}. {o}" for k, o in enumerate(opts)), "ground_truth": truth,
                     "task": kind, "_letter": next("ABCD"[k] for k, o in enumerate(opts)
                                                   if truth in (o, "ABCD"[k], f"{'ABCD'[k]}. {o}"))})
    return rows


def choice_layouts(kind):
    def gold(r):
        return think(f"Final Answer: {r['_letter']}")
    return {f"{kind}/vision-language-text-only": choice_release(kind)}, gold


def flenqa_layouts():
    rows = [("MonoRel", "Is Ann older than Cid?", "True", "Ann is older than Ben. Ben is older than Cid.", ""),
            ("PIR", "Is Ben in a blue room?", "False", "Ben walked into the kitchen. The kitchen is red.", ""),
            ("Simplified RuleTaker", "Dora is kind.", "True", "Dora is smart. Filler text about a lighthouse.",
             "If someone is smart, then they are kind."),
            ("PIR", "Is Eli in the garden?", "False", "Eli walked into the attic.", "")]
    release = [{"assertion/question": q, "mixin": m, "label": label, "dataset": ds, "rule": rule,
                "facts": [m.split(".")[0] + "."], "statement": [q], "ctx_size": 250 * (i + 1),
                "padding_type": "Books", "dispersion": "random", "sample_id": i}
               for i, (ds, q, label, m, rule) in enumerate(rows)]
    renamed = [{"question": r["assertion/question"], "ground_truth": r["label"],
                **{k: v for k, v in r.items() if k not in ("assertion/question", "label")}} for r in release]

    def gold(r):
        return think(f"Final Answer: {r.get('label', r.get('ground_truth'))}")
    return {"flenqa/release": release, "flenqa/eureka-renamed": renamed}, gold


LAYOUTS = {}
GOLD = {}
for make in (aime_layouts, math_layouts, gpqa_layouts, mmlu_layouts, sat_layouts, tsp_layouts, calendar_layouts,
             lambda: choice_layouts("maze"), lambda: choice_layouts("spatialmap"), flenqa_layouts):
    layouts, gold_fn = make()
    for name, records in layouts.items():
        LAYOUTS[name] = records
        GOLD[name] = gold_fn


def gpqa_letters(task, insts, records):
    """The released correct option's letter, found in each loaded prompt."""
    for inst, r in zip(insts, records):
        correct = r.get("Correct Answer") or r["options"]["ABCD".index(r["answer"])]
        line = next(line for line in inst.prompt.split("\n") if line[3:] == correct.strip())
        r["_letter"] = line[0]


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_gold_scores_full_and_shuffled_scores_nothing(tmp_path, layout, fmt):
    records = [dict(r) for r in LAYOUTS[layout]]
    name = layout.split("/")[0]
    task = get_task(name)
    stored = [{k: v for k, v in r.items() if not k.startswith("_")} for r in records]
    insts = task.load(write(tmp_path / name, stored, fmt))
    assert len(insts) == len(records) and len({i.id for i in insts}) == len(insts)
    assert all(i.task == name and i.id.startswith(name + "-") for i in insts)
    json.dumps([i.to_dict() for i in insts])  # instances go into sample logs as JSON
    if name == "gpqa":
        gpqa_letters(task, insts, records)
    gold = [GOLD[layout](r) for r in records]
    assert [task.score(i, g) for i, g in zip(insts, gold)] == [1.0] * len(insts)
    shuffled = gold[1:] + gold[:1]
    # Only an item whose neighbour happens to share its gold answer (a letter) may score.
    same = sum(a == b for a, b in zip(gold, shuffled))
    assert sum(task.score(i, g) for i, g in zip(insts, shuffled)) == same and same <= len(gold) // 4
    # Cut off mid-thought, a response has no answer even if the gold one appears inside <think>.
    assert task.score(insts[0], "<think>" + gold[0].split("</think>")[1]) == 0.0


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
@pytest.mark.parametrize("layout", [name for name in sorted(LAYOUTS)
                                    if name.split("/")[0] in ("sat3", "tsp", "calendar", "maze", "spatialmap")])
def test_released_items_grade_in_both_modes(tmp_path, layout, fmt):
    """The loaders' answers are what both scoring modes read: gold scores 1 in strict and eureka
    mode, a neighbour's gold 0 in both."""
    records, name = LAYOUTS[layout], layout.split("/")[0]
    task = get_task(name)
    insts = task.load(write(tmp_path / name, [{k: v for k, v in r.items() if not k.startswith("_")}
                                              for r in records], fmt))
    gold = [GOLD[layout](r) for r in records]
    for inst, r, right, wrong in zip(insts, records, gold, gold[1:] + gold[:1]):
        # Eureka fails every check of the no-slot phrase, even where it is the right answer.
        expected = (1.0, 0.0 if r.get("_slot") == NO_SLOT else 1.0)
        assert (task.score(inst, right, "strict"), task.score(inst, right, "eureka")) == expected
        if wrong != right:
            assert (task.score(inst, wrong, "strict"), task.score(inst, wrong, "eureka")) == (0.0, 0.0)


def test_released_items_keep_what_eurekas_checks_need(tmp_path):
    sat = get_task("sat3").load(write(tmp_path / "sat", LAYOUTS["sat3/eureka-release"], "jsonl"))
    assert [i.answer["satisfiable"] for i in sat] == [True, True, False]
    assert sat[0].answer["clauses"] == SAT_FORMULAS[0][0] and sat[0].category == "hard"
    numpy_csv = [{**r, "solution": "[" + " ".join(f"'{m}'" for m in r["solution"]) + "]"}
                 for r in LAYOUTS["sat3/eureka-release"]]
    again = get_task("sat3").load(write(tmp_path / "np", numpy_csv, "csv"))
    assert [i.answer for i in again] == [i.answer for i in sat]
    tsp = get_task("tsp").load(write(tmp_path / "tsp", LAYOUTS["tsp/eureka-release"], "parquet"))
    assert [i.answer["optimal"] for i in tsp] == [brute_tsp(w)[0] for w in TSP_MATRICES]
    assert tsp[0].answer["optimal_tours"][0][0] == tsp[0].answer["optimal_tours"][0][-1] and tsp[2].category == "level_3"
    cal = get_task("calendar").load(write(tmp_path / "cal", LAYOUTS["calendar/ba-calendar"], "csv"))
    assert [i.answer["solution"] for i in cal] == [r["_slot"] if "No" not in r["_slot"] else None
                                                   for r in LAYOUTS["calendar/ba-calendar"]]
    assert cal[1].answer["release"]["params"]["days_of_week"] == ["Wednesday", "Saturday"]
    flen = get_task("flenqa").load(write(tmp_path / "flen", LAYOUTS["flenqa/release"], "parquet"))
    assert [i.category for i in flen] == ["monorel", "pir", "rules", "pir"]
    assert flen[1].difficulty == 500 and flen[1].meta["padding_type"] == "Books"
    mmlu = get_task("mmlu_pro").load(write(tmp_path / "mmlu", LAYOUTS["mmlu_pro/hf"], "jsonl"))
    assert len(mmlu[1].answer["options"]) == 7 and "N/A" not in mmlu[1].prompt
    inline = get_task("mmlu_pro").load(write(tmp_path / "in", LAYOUTS["mmlu_pro/options-in-question"], "csv"))
    assert inline[0].answer["options"] == ["red", "green", "blue", "black"]
    assert "Question: Pick one 0.\nOptions:\nA. red" in inline[0].prompt
    # A pandas CSV export of the Parquet release writes lists as numpy reprs.
    record = {"question": "Q?", "options": "['red' \"it's blue\" 'b, c'\n 'd']", "answer": "C", "category": "law"}
    (numpy_csv,) = get_task("mmlu_pro").load(write(tmp_path / "np", [record], "csv"))
    assert numpy_csv.answer == {"letter": "C", "options": ["red", "it's blue", "b, c", "d"]}


@pytest.mark.parametrize("name,record,found", [
    ("gpqa", {"prompt": "Q?", "label": 1}, "'Question', 'question'"),
    ("mmlu_pro", {"question": "Q?", "answer": "A"}, "no 'options'"),
    ("sat3", {"text": "(x1)"}, "'query_text', 'prompt'"),
    ("tsp", {"prompt": "cities"}, "'weight_matrix'"),
    ("calendar", {"task_prompt": "meet"}, "'constraints'"),
    ("maze", {"prompt": "A maze.", "ground_truth": "3"}, "no 'Available options:'"),
    ("flenqa", {"question": "Is it?", "mixin": "text"}, "'label', 'ground_truth'"),
    ("math", {"question": "Q?"}, "no 'answer'"),
    ("mmlu_pro", {"question": "Q?", "options": "a; b", "answer": "A"}, "'options' is not a list"),
])
def test_unknown_layout_names_the_fields_found(tmp_path, name, record, found):
    path = write(tmp_path / name, [record], "jsonl")
    with pytest.raises(ValueError, match=f"record 1 fits no {name} layout") as err:
        get_task(name).load(path)
    assert found in str(err.value)
    if "fields are" in str(err.value):
        assert str(sorted(record)) in str(err.value)


def test_phi4r_saved_instances_load_back(tmp_path):
    task = get_task("sat3")
    insts = task.generate(3, seed=1, difficulty=1)
    for fmt in ("jsonl", "parquet"):
        back = task.load(write(tmp_path / f"saved-{fmt}", [i.to_dict() for i in insts], fmt))
        assert [b.to_dict() for b in back] == [i.to_dict() for i in insts]


def run_cli(args, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = run_in_group([sys.executable, "-m", "phi4r.cli", "eval", *args, "--quiet", "--no-plots"], timeout=300,
                        cwd=tmp_path, env=env)
    return proc.returncode, proc.stdout, proc.stderr


@pytest.mark.slow
def test_cli_evaluates_released_files(tmp_path):
    """`phi4r eval --data` on released files: the teacher solves the released 3SAT, TSP and
    BA-Calendar items (100%), and the nano model answers every other loader's items."""
    data = {n: write(tmp_path / n, [{k: v for k, v in r.items() if not k.startswith("_")}
                                    for r in LAYOUTS[layout]], fmt)
            for n, layout, fmt in [("sat3", "sat3/eureka-release", "parquet"), ("tsp", "tsp/eureka-release", "csv"),
                                   ("calendar", "calendar/ba-calendar", "jsonl")]}
    rc, out, err = run_cli(["--model", "teacher", "--tasks", "sat3,tsp,calendar", "--out", str(tmp_path / "t"),
                            "--data", ",".join(f"{n}={p}" for n, p in data.items())], tmp_path)
    assert rc == 0, err
    assert "| accuracy | 100.0 | 100.0 | 100.0 | 100.0 |" in out
    files = {"aime": ("aime/eureka", "csv"), "math": ("math/omni-math", "parquet"), "gpqa": ("gpqa/official", "csv"),
             "mmlu_pro": ("mmlu_pro/hf", "parquet"), "maze": ("maze/vision-language-text-only", "jsonl"),
             "spatialmap": ("spatialmap/vision-language-text-only", "json"), "flenqa": ("flenqa/release", "parquet")}
    data = {n: write(tmp_path / n, [{k: v for k, v in r.items() if not k.startswith("_")} for r in LAYOUTS[layout]],
                     fmt) for n, (layout, fmt) in files.items()}
    rc, out, err = run_cli(["--model", "nano", "--tasks", ",".join(files), "--max-tokens", "4", "--limit", "2",
                            "--out", str(tmp_path / "n"), "--data", ",".join(f"{n}={p}" for n, p in data.items())],
                           tmp_path)
    assert rc == 0, err
    rows = [json.loads(line) for line in (tmp_path / "n" / "samples.jsonl").read_text().splitlines()]
    assert sorted({r["task"] for r in rows}) == sorted(files) and len(rows) == 2 * len(files)


def test_spreadsheet_csv_and_damaged_parquet(tmp_path):
    # Spreadsheet exports start with a byte-order mark and quote multi-line cells.
    path = tmp_path / "gpqa_diamond.csv"
    rows = [{"Question": "Line one\nline two ü?", "Correct Answer": "yes", "Incorrect Answer 1": "no",
             "Incorrect Answer 2": "maybe", "Incorrect Answer 3": "never", "Record ID": "r1"}]
    with open(path, "w", newline="", encoding="utf-8-sig") as f:
        w = csv.DictWriter(f, list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    (inst,) = get_task("gpqa").load(path)
    assert inst.prompt.startswith("Line one\nline two ü?") and inst.id == "gpqa-r1"
    (tmp_path / "bad.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(ValueError, match="bad.parquet: not a readable Parquet file"):
        get_task("aime").load(tmp_path / "bad.parquet")


@pytest.mark.parametrize("text,clauses", [
    ("(x1 ∨ ¬x_2 ∨ x3) ∧ (~x1 | !x2 | NOT x3) and (-x4 OR v5)", [[1, -2, 3], [-1, -2, -3], [-4, 5]]),
    ("Clauses: [[1, -2, 3], [-1, 2, 4]]", [[1, -2, 3], [-1, 2, 4]]),
    ("p cnf 3 2\n1 -2 3 0\n-1 2 0", [[1, -2, 3], [-1, 2]]),
    ("no formula (see above)", None),
])
def test_sat_clause_notations(text, clauses):
    from phi4r.tasks.sat3 import parse_clauses
    assert parse_clauses(text) == clauses


def test_sat_prompt_read_wrongly_falls_back_to_released_solutions(tmp_path):
    # A prompt whose groups are not the formula: the clauses contradict the released models, so
    # they are dropped rather than trusted.
    record = {"query_text": "Variables (x1 and x2). Clauses: x1 or x2; not x1 or not x2.",
              "solution": ["1,0", "0,1"], "category": "hard"}
    (inst,) = get_task("sat3").load(write(tmp_path / "sat", [record], "jsonl"))
    assert inst.answer["clauses"] is None and inst.answer["n"] == 2 and inst.answer["satisfiable"]
    # Graded by the released models alone, in both modes; no teacher trace without the formula.
    sat3 = get_task("sat3")
    for response, score in [("True, False", 1.0), ("False, True", 1.0), ("True, True", 0.0), ("Unsatisfiable", 0.0)]:
        response = think("<final_answer>{'Solution': '" + response + "'}</final_answer>")
        assert (sat3.score(inst, response, "strict"), sat3.score(inst, response, "eureka")) == (score, score)
    with pytest.raises(ValueError, match="clauses could not be read"):
        sat3.teacher(inst)
    (unsat,) = sat3.load(write(tmp_path / "unsat", [{**record, "solution": [], "num_var": 2}], "jsonl"))
    for response, score in [("Unsatisfiable", 1.0), ("True, False", 0.0)]:
        response = think("<final_answer>{'Solution': '" + response + "'}</final_answer>")
        assert (sat3.score(unsat, response, "strict"), sat3.score(unsat, response, "eureka")) == (score, score)
