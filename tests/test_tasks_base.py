"""The task contract: registry, seeded generation, answer extraction, teachers, small levels."""
import json

import pytest

from phi4r.tasks import TASKS, Instance, Score, approx_tokens, final_text, get_task, list_tasks

PROCEDURAL = list_tasks(procedural=True)


def test_registry():
    assert set(PROCEDURAL) == {"sat3", "tsp", "calendar", "maze", "spatialmap", "flenqa", "arithmetic", "countdown"}
    assert set(list_tasks(procedural=False)) == {"aime", "math", "gpqa", "mmlu_pro", "ifeval", "arenahard", "humaneval",
                                                 "humanevalplus", "livecodebench", "codeforces"}
    assert list_tasks() == sorted(TASKS)
    assert get_task("tsp") is TASKS["tsp"]
    with pytest.raises(KeyError, match="known"):
        get_task("nope")


@pytest.mark.parametrize("name", PROCEDURAL)
def test_generation_is_seeded(name):
    task = get_task(name)
    a = [i.to_dict() for i in task.generate(6, seed=0)]
    assert a == [i.to_dict() for i in task.generate(6, seed=0)]
    assert [i.prompt for i in task.generate(6, seed=1)] != [x["prompt"] for x in a]
    # An instance depends only on its id, not on how many were generated with it.
    assert a[:3] == [i.to_dict() for i in task.generate(3, seed=0)]
    assert [x["difficulty"] for x in a] == [task.difficulties[i % len(task.difficulties)] for i in range(6)]
    assert [x["id"] for x in a] == [f"{name}-{x['difficulty']}-0-{i}" for i, x in enumerate(a)]
    level = task.difficulties[-1]
    assert all(i.difficulty == level for i in task.generate(3, seed=0, difficulty=level))
    with pytest.raises(ValueError):
        task.generate(1, seed=0, difficulty=99)


@pytest.mark.parametrize("name", PROCEDURAL)
def test_instances_are_json_and_categorised(name):
    task = get_task(name)
    for inst in task.generate(2 * len(task.difficulties), seed=3):
        again = Instance.from_dict(json.loads(json.dumps(inst.to_dict())))
        assert again.task == name and again.category in task.categories
        # A round trip through JSON (tuples become lists) must not change the grading.
        assert task.score(again, task.teacher(again)) == 1.0


@pytest.mark.parametrize("name", PROCEDURAL)
def test_teacher_scores_full_marks_at_every_level(name):
    task = get_task(name)
    for level in task.difficulties:
        for inst in task.generate(3, seed=11, difficulty=level):
            text = task.teacher(inst)
            assert text.startswith("<think>\n") and "\n</think>\n\n" in text
            result = task.check(inst, text)
            assert isinstance(result, Score) and result.score == 1.0, (inst.id, text, result)


@pytest.mark.parametrize("name", PROCEDURAL)
def test_smallest_level_fits_a_small_context(name):
    task = get_task(name)
    for inst in task.generate(10, seed=5, difficulty=task.difficulties[0]):
        assert approx_tokens(inst.prompt) + approx_tokens(task.teacher(inst)) < 800, inst.id


def test_final_text():
    assert final_text("<think>a</think>b</think>\n\nFinal") == "\n\nFinal"
    assert final_text("<think>never closed Final Answer: 3") is None
    assert final_text("Final Answer: 3") == "Final Answer: 3"
    assert final_text("reasoning without a start tag</think>ok") == "ok"


@pytest.mark.parametrize("name,answer", [("maze", "B"), ("flenqa", "True"), ("arithmetic", "12")])
def test_extraction_reads_only_after_the_last_think(name, answer):
    task = get_task(name)
    final = f"Final Answer: {answer}"
    assert task.extract(final) is not None  # no tags: the whole text
    assert task.extract(f"<think>hmm</think>x</think>\n\n{final}") == task.extract(final)
    other = "A" if name == "maze" else ("False" if name == "flenqa" else "13")
    # The answer after the LAST </think> wins over one between two closes.
    assert task.extract(f"<think>x</think>Final Answer: {other}</think>{final}") == task.extract(final)
    assert task.extract(f"<think>x</think>Final Answer: {other}</think>no answer here") is None
    assert task.extract(f"<think>{final}</think>\n\nI am not sure.") is None  # only in the reasoning
    assert task.extract(f"<think>{final}") is None  # cut off while thinking
    assert task.extract("") is None


@pytest.mark.parametrize("name", PROCEDURAL)
def test_no_answer_scores_zero(name):
    task = get_task(name)
    inst = task.generate(1, seed=0)[0]
    teacher = task.teacher(inst)
    answer = teacher.rsplit("</think>", 1)[1]
    assert task.score(inst, "<think>" + teacher.split("<think>", 1)[1].rsplit("</think>", 1)[0] + answer) == 0.0
    assert task.score(inst, f"<think>{answer}</think>\n\nNo idea.") == 0.0
    assert task.score(inst, "") == 0.0


def test_every_sample_log_records_its_tasks_prompt_version(tmp_path):
    """Scores of different prompt wordings are not comparable: the version is in every sample."""
    from phi4r.evals import TeacherBackend, run_eval

    assert all(isinstance(t.prompt_version, int) and t.prompt_version >= 1 for t in TASKS.values())
    run_eval(TeacherBackend(), ["spatialmap", "calendar"], tmp_path, limit=2, progress=False, plots=False)
    samples = [json.loads(line) for line in (tmp_path / "samples.jsonl").read_text().splitlines()]
    assert {(s["task"], s["prompt_version"]) for s in samples} == {("spatialmap", 2), ("calendar", 1)}
