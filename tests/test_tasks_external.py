"""Loaders and graders for published benchmark files (small files written here)."""
import importlib.util
import json

import pytest

from phi4r.tasks import get_task
from phi4r.tasks.external import read_records
from phi4r.tasks.mmlu_pro import extract_mmlu_pro
from phi4r.tasks.omnimath import equivalent, last_boxed


def write_jsonl(path, records):
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    return path


def test_read_records(tmp_path):
    records = [{"a": 1}, {"a": 2}, {"a": 3}]
    assert read_records(write_jsonl(tmp_path / "x.jsonl", records), limit=2) == records[:2]
    (tmp_path / "x.json").write_text(json.dumps(records))
    assert read_records(tmp_path / "x.json") == records
    (tmp_path / "wrapped.json").write_text(json.dumps({"data": records}))
    assert read_records(tmp_path / "wrapped.json") == records
    viewer = {"features": [{"name": "a"}], "rows": [{"row_idx": i, "row": r, "truncated_cells": []}
                                                     for i, r in enumerate(records)]}
    (tmp_path / "viewer.json").write_text(json.dumps(viewer))  # the datasets-server /rows answer
    assert read_records(tmp_path / "viewer.json") == records
    (tmp_path / "one.json").write_text(json.dumps({"a": 1, "b": [{"c": 2}], "d": [{"e": 3}]}))
    assert read_records(tmp_path / "one.json") == [{"a": 1, "b": [{"c": 2}], "d": [{"e": 3}]}]
    (tmp_path / "lines.json").write_text("\n".join(json.dumps(r) for r in records))  # JSON Lines named .json
    assert read_records(tmp_path / "lines.json") == records
    (tmp_path / "bad.jsonl").write_text('{"a": 1}\nnot json\n')
    with pytest.raises(ValueError, match="bad.jsonl:2"):
        read_records(tmp_path / "bad.jsonl")
    (tmp_path / "x.txt").write_text("a\n")
    with pytest.raises(ValueError, match="expected one of .jsonl, .json, .csv"):
        read_records(tmp_path / "x.txt")
    with pytest.raises(FileNotFoundError, match="missing.csv"):
        read_records(tmp_path / "missing.csv")
    (tmp_path / "latin1.jsonl").write_bytes(b'{"a": "caf\xe9"}\n')
    with pytest.raises(ValueError, match="not UTF-8"):
        read_records(tmp_path / "latin1.jsonl")
    (tmp_path / "scalars.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="record 1 is not an object"):
        read_records(tmp_path / "scalars.json")


def test_unicode_line_separators_inside_strings(tmp_path):
    # U+2028, U+2029 and U+0085 are legal raw inside JSON strings; only "\n" ends a JSON Lines record.
    records = [{"problem": "a\u2028b\u2029c\u0085d", "answer": "1"}, {"problem": "e", "answer": "2"}]
    path = tmp_path / "u.jsonl"
    path.write_text("\r\n".join(json.dumps(r, ensure_ascii=False) for r in records) + "\r\n", encoding="utf-8")
    assert "\u2028" in path.read_text(encoding="utf-8")
    assert read_records(path) == records
    a, b = get_task("aime").load(path)
    assert "a\u2028b" in a.prompt and b.answer == {"value": 2}


@pytest.mark.skipif(importlib.util.find_spec("pyarrow") is not None, reason="pyarrow installed")
def test_parquet_needs_pyarrow(tmp_path):
    (tmp_path / "x.parquet").write_bytes(b"PAR1")
    with pytest.raises(ImportError, match="pyarrow"):
        read_records(tmp_path / "x.parquet")


def test_file_tasks_do_not_generate(tmp_path):
    with pytest.raises(NotImplementedError, match="load"):
        get_task("aime").generate(1, seed=0)
    with pytest.raises(NotImplementedError, match="generate"):
        get_task("arithmetic").load(write_jsonl(tmp_path / "x.jsonl", [{"a": 1}]))


def test_unknown_layout_names_the_fields(tmp_path):
    path = write_jsonl(tmp_path / "odd.jsonl", [{"text": "Find x.", "solution_value": 3}])
    with pytest.raises(ValueError, match=r"odd.jsonl: record 1 fits no aime layout: .*'problem'.*"
                                         r"its fields are \['solution_value', 'text'\]"):
        get_task("aime").load(path)


def test_aime(tmp_path):
    task = get_task("aime")
    path = write_jsonl(tmp_path / "aime.jsonl", [
        {"id": "2024-I-1", "problem": "Find x.", "answer": "033"},
        {"Problem": "Find y.", "Answer": 204, "Year": 2025},
    ])
    a, b = task.load(path)
    assert (a.id, a.answer, a.task) == ("aime-2024-I-1", {"value": 33}, "aime")
    assert b.id == "aime-1" and b.category == "2025" and "Final Answer: N" in b.prompt
    assert task.score(a, "<think>it is 32</think>\n\nFinal Answer: 33") == 1.0
    assert task.score(a, "Final Answer: 033") == 1.0
    assert task.score(a, "so \\boxed{33}") == 1.0
    assert task.score(a, "Final Answer: 34") == 0.0
    assert task.score(a, "<think>Final Answer: 33</think>\n\nI give up.") == 0.0
    assert len(task.load(path, limit=1)) == 1


def test_math_equivalence(tmp_path):
    task = get_task("math")
    path = write_jsonl(tmp_path / "math.jsonl", [
        {"problem": "Half of one?", "solution": "It is $\\boxed{\\frac{1}{2}}$.", "level": "Level 2", "type": "Algebra"},
        {"problem": "Roots?", "answer": "x^2 + 2x + 1", "domain": ["Mathematics -> Algebra"], "difficulty": 3.5},
    ])
    half, poly = task.load(path)
    assert half.answer == {"answer": "\\frac{1}{2}"} and half.difficulty == 2 and half.category == "Algebra"
    assert poly.category == "Mathematics -> Algebra" and poly.difficulty == 4
    assert task.score(half, "<think>...</think>\n\nThe answer is \\boxed{0.5}.") == 1.0
    assert task.score(half, "\\boxed{\\dfrac{1}{2}}") == 1.0
    assert task.score(half, "Final Answer: 1/2") == 1.0
    assert task.score(half, "\\boxed{0.25}") == 0.0
    assert task.score(poly, "\\boxed{(x+1)^2}") == 1.0
    assert task.score(poly, "\\boxed{(x-1)^2}") == 0.0
    assert task.score(half, "no boxed answer") == 0.0
    assert equivalent("\\frac{1}{2}", "0.5") and not equivalent("2", "3")
    assert last_boxed("\\boxed{1} then \\boxed{\\frac{a}{b}}") == "\\frac{a}{b}"


def test_gpqa_fixed_shuffle(tmp_path):
    task = get_task("gpqa")
    records = [{"Record ID": f"rec{i}", "Question": f"Question {i}?", "Correct Answer": f"right {i}",
                "Incorrect Answer 1": f"wrong1 {i}", "Incorrect Answer 2": f"wrong2 {i}",
                "Incorrect Answer 3": f"wrong3 {i}", "High-level domain": "Physics"} for i in range(20)]
    path = write_jsonl(tmp_path / "gpqa.jsonl", records)
    first, again = task.load(path), task.load(path)
    assert [i.prompt for i in first] == [i.prompt for i in again]
    letters = {i.answer["letter"] for i in first}
    assert len(letters) > 1  # the correct answer is not always in the same place
    for inst, rec in zip(first, records):
        assert f"{inst.answer['letter']}. {rec['Correct Answer']}" in inst.prompt
        assert inst.category == "Physics" and inst.id == f"gpqa-{rec['Record ID']}"
        for letter in "ABCD":
            assert task.score(inst, f"<think>x</think>\nFinal Answer: {letter}") == float(letter == inst.answer["letter"])


def test_mmlu_pro(tmp_path):
    task = get_task("mmlu_pro")
    options = [f"option {k}" for k in range(10)]
    path = write_jsonl(tmp_path / "mmlu.jsonl", [
        {"question_id": 7, "question": "Pick?", "options": options, "answer": "J", "answer_index": 9, "category": "law"},
        {"question_id": 8, "question": "Pick?", "options": options, "answer_index": 2, "category": "math"},
    ])
    law, maths = task.load(path)
    assert (law.id, law.answer["letter"], law.category) == ("mmlu_pro-7", "J", "law")
    assert maths.answer["letter"] == "C" and "J. option 9" in maths.prompt
    assert task.score(law, "<think>maybe A</think>\n\nthe answer is (J)") == 1.0
    assert task.score(maths, "The answer is (C)") == 1.0
    assert task.score(maths, "Answer: C") == 1.0
    assert task.score(maths, "The answer is (D)") == 0.0


def test_mmlu_pro_cascade():
    assert extract_mmlu_pro("the answer is (B). Answer: C") == "B"  # first pattern wins
    assert extract_mmlu_pro("so the answer is D") == "D"
    assert extract_mmlu_pro("Final Answer: E") == "E"
    assert extract_mmlu_pro("Between A and H, H fits.") == "H"  # last standalone letter
    assert extract_mmlu_pro("I think it's (G) because...") == "G"
    assert extract_mmlu_pro("no letters here") is None
    assert extract_mmlu_pro("") is None
