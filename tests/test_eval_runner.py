"""The runner: teacher sanity, resuming an interrupted run, refusing mixed settings, report files."""
import json
from collections import Counter

import matplotlib.image
import pytest

from phi4r.evals import BackendError, EvalConfigError, TeacherBackend, run_eval
from phi4r.evals.backends import Completion
from phi4r.evals.report import main_table
from phi4r.tasks import get_task, list_tasks


class CountingTeacher(TeacherBackend):
    """The teacher on even runs and a wrong answer on odd ones, counting every answer it gives."""

    def __init__(self):
        self.calls = Counter()

    def complete(self, jobs, sampling, system_prompt):
        for job, completion in super().complete(jobs, sampling, system_prompt):
            self.calls[job.instance.id, job.run] += 1
            if job.run % 2:
                completion = Completion("no idea", "I give up.", "length", 5, 2)
            yield job, completion


def logged(out):
    return [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]


def test_teacher_scores_every_procedural_task_fully(tmp_path):
    tasks = list_tasks(procedural=True)
    summary = run_eval(TeacherBackend(), tasks, tmp_path, runs=1, limit=4, progress=False, plots=False)
    for task in tasks:
        assert summary["metrics"]["by_task"][task]["mean"] == 1.0, task
        assert summary["metrics"]["by_task"][task]["instances"] == 4


def test_interrupted_run_resumes_and_scores_each_sample_once(tmp_path):
    backend = CountingTeacher()
    seen = []

    def stop_after_five(sample):
        seen.append(sample)
        if len(seen) == 5:
            raise KeyboardInterrupt

    kwargs = dict(runs=3, limit=4, progress=False, plots=False)
    with pytest.raises(KeyboardInterrupt):
        run_eval(backend, ["sat3", "tsp"], tmp_path, on_sample=stop_after_five, **kwargs)
    assert len(logged(tmp_path)) == 5

    summary = run_eval(backend, ["sat3", "tsp"], tmp_path, **kwargs)
    rows = logged(tmp_path)
    keys = [(r["task"], r["id"], r["run"]) for r in rows]
    assert len(keys) == len(set(keys)) == 8 * 3  # every pair once, none twice
    assert set(backend.calls.values()) == {1}  # and none was even answered twice
    m = summary["metrics"]["overall"]
    assert m["mean"] == pytest.approx(2 / 3) and m["best_of_n"] == 1.0 and m["worst_of_n"] == 0.0
    assert m["truncation_rate"] == pytest.approx(1 / 3)


def test_truncated_last_line_is_redone(tmp_path):
    kwargs = dict(runs=2, limit=3, progress=False, plots=False)
    run_eval(TeacherBackend(), ["sat3"], tmp_path, **kwargs)
    log = tmp_path / "samples.jsonl"
    lines = log.read_text().splitlines(keepends=True)
    lost = json.loads(lines[-1])
    log.write_text("".join(lines[:-1]) + lines[-1][:25])  # killed in the middle of a write

    backend = CountingTeacher()
    summary = run_eval(backend, ["sat3"], tmp_path, **kwargs)
    assert list(backend.calls) == [(lost["id"], lost["run"])]
    rows = logged(tmp_path)  # every line parses again
    assert len(rows) == len({(r["id"], r["run"]) for r in rows}) == 6
    assert summary["metrics"]["overall"]["samples"] == 6


def test_more_runs_and_instances_extend_a_finished_run(tmp_path):
    run_eval(TeacherBackend(), ["sat3"], tmp_path, runs=1, limit=2, progress=False, plots=False)
    backend = CountingTeacher()
    run_eval(backend, ["sat3"], tmp_path, runs=2, limit=3, progress=False, plots=False)
    assert sum(backend.calls.values()) == 3 * 2 - 2


def test_other_settings_in_the_same_directory_are_refused(tmp_path):
    run_eval(TeacherBackend(), ["sat3"], tmp_path, runs=1, limit=2, progress=False, plots=False)
    with pytest.raises(EvalConfigError, match="seed"):
        run_eval(TeacherBackend(), ["sat3"], tmp_path, runs=1, limit=2, seed=1, progress=False, plots=False)
    with pytest.raises(EvalConfigError, match="sampling"):
        run_eval(TeacherBackend(), ["sat3"], tmp_path, runs=1, limit=2, sampling={"temperature": 0.0},
                 progress=False, plots=False)


def test_permanent_failure_stops_the_run_without_scoring(tmp_path):
    class Broken(TeacherBackend):
        def complete(self, jobs, sampling, system_prompt):
            for n, item in enumerate(super().complete(jobs, sampling, system_prompt)):
                if n == 2:
                    raise BackendError("http://x failed 6 times; last error: HTTP 500")
                yield item

    with pytest.raises(BackendError, match="HTTP 500"):
        run_eval(Broken(), ["sat3"], tmp_path, runs=2, limit=2, progress=False, plots=False)
    rows = logged(tmp_path)
    assert len(rows) == 2 and all(r["score"] == 1.0 for r in rows)
    assert not (tmp_path / "report.md").exists()


def test_instance_selection_per_difficulty_and_external_files(tmp_path):
    data = tmp_path / "aime.jsonl"
    data.write_text("".join(json.dumps({"problem": f"What is {i} + 1?", "answer": i + 1}) + "\n" for i in range(5)))

    class Oracle(TeacherBackend):  # AIME has no teacher: answer with the ground truth
        def complete(self, jobs, sampling, system_prompt):
            for job in jobs:
                if job.instance.task == "aime":
                    yield job, Completion("", f"Final Answer: {job.instance.answer['value']}", "stop", 3, 0)
                else:
                    yield from super().complete([job], sampling, system_prompt)

    summary = run_eval(Oracle(), ["sat3", "aime"], tmp_path / "out", limit=3, difficulty=[1, 2],
                       data={"aime": str(data)}, progress=False, plots=False)
    metrics = summary["metrics"]
    assert metrics["by_task"]["sat3"]["instances"] == 6  # --limit per difficulty level
    assert list(metrics["by_difficulty"]["sat3"]) == ["1", "2"]
    assert metrics["by_task"]["aime"]["instances"] == 3 and metrics["by_task"]["aime"]["mean"] == 1.0
    with pytest.raises(ValueError, match="--data aime"):
        run_eval(Oracle(), ["aime"], tmp_path / "o2", progress=False, plots=False)


def test_given_instances_are_asked_as_written(tmp_path):
    """`instances=`: exactly these, their prompts as written (a recipe's own wording), scored by the task."""
    from dataclasses import replace

    insts = [replace(i, prompt="Reworded: " + i.prompt) for i in get_task("sat3").generate(3, 5, difficulty=1)]
    summary = run_eval(TeacherBackend(), ["sat3"], tmp_path / "out", instances=insts, progress=False, plots=False)
    assert summary["metrics"]["by_task"]["sat3"]["instances"] == 3
    assert [s["prompt"] for s in logged(tmp_path / "out")] == [i.prompt for i in insts]
    with pytest.raises(ValueError, match="not evaluated: sat3"):
        run_eval(TeacherBackend(), ["tsp"], tmp_path / "o2", instances=insts, progress=False, plots=False)


def test_report_files(tmp_path):
    run_eval(CountingTeacher(), ["sat3", "maze"], tmp_path, runs=2, limit=4, difficulty=[1, 2], progress=False)
    report = (tmp_path / "report.md").read_text()
    header = next(line for line in report.splitlines() if line.startswith("| metric"))
    assert header == "| metric | sat3 | maze | all |"
    row = next(line for line in report.splitlines() if line.startswith("| accuracy (mean ± std over 2 runs)"))
    # The teacher on run 0 (100%), a wrong answer on run 1 (0%): sample std sqrt(2 * 0.5^2) = 70.7.
    assert row.count("50.0 ± 70.7") == 3
    for label in ("| best-of-2 | 100.0 |", "| worst-of-2 | 0.0 |", "| majority vote |", "| pass@2 | 100.0 |",
                  "## sat3", "## maze", "| category |", "| difficulty |", "| 1 |", "| 2 |"):
        assert label in report, label
    assert "Verifier details (mean over samples): " in report and "format_ok 0.5" in report  # sat3's
    for category in {i.category for i in get_task("sat3").generate(4, 0, difficulty=1)}:
        assert f"| {category} |" in report

    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["settings"]["runs"] == 2
    assert summary["metrics"]["by_task"]["maze"]["accuracy_per_run"] == [1.0, 0.0]
    assert main_table(summary) in report

    for name in ("accuracy_by_difficulty", "length_distribution", "accuracy_vs_length"):
        png = tmp_path / "plots" / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert matplotlib.image.imread(png).shape[0] > 100  # decodes as an image
        assert f"(plots/{name}.png)" in report


def test_errors_are_scored_wrong_refusals_are_final_and_transient_failures_asked_again(tmp_path):
    class Failing(CountingTeacher):
        """Refuses instance 0 for good; fails instance 1 transiently on its first call only."""

        def complete(self, jobs, sampling, system_prompt):
            for job, completion in TeacherBackend.complete(self, jobs, sampling, system_prompt):
                key = job.instance.id, job.run
                self.calls[key] += 1
                if job.instance.id == first[0]:
                    completion = Completion.failed("HTTP 400: the prompt is too long")
                elif job.instance.id == first[1] and self.calls[key] == 1:
                    completion = Completion.failed("HTTP 503: busy", retry=True)
                yield job, completion

    first = [i.id for i in get_task("sat3").generate(3, 0)]
    backend, kwargs = Failing(), dict(runs=2, limit=3, progress=False, plots=False)
    summary = run_eval(backend, ["sat3"], tmp_path, **kwargs)
    m = summary["metrics"]["overall"]
    assert m["errors"] == 4 and summary["errors_to_retry"] == 2 and m["mean"] == pytest.approx(1 / 3)
    assert m["truncation_rate"] == 0.0 and m["majority_vote"] == pytest.approx(1 / 3)
    report = (tmp_path / "report.md").read_text()
    assert "| errors (no answer, scored 0) | 4 |" in report
    assert f"4 of 6 samples got no answer (scored 0; errors in samples.jsonl), e.g. {first[0]} run 0: HTTP 400" \
        in report

    summary = run_eval(backend, ["sat3"], tmp_path, **kwargs)  # resumed: only the transient failures again
    assert backend.calls == {(i, r): 1 + (i == first[1]) for i in first for r in range(2)}
    m = summary["metrics"]["overall"]
    assert m["errors"] == 2 and summary["errors_to_retry"] == 0 and m["mean"] == pytest.approx(2 / 3)
    rows = logged(tmp_path)  # the failure's line stays, the answer after it wins when read back
    assert len(rows) == 8 and sum(bool(r.get("retry")) for r in rows) == 2
    assert run_eval(TeacherBackend(), ["sat3"], tmp_path, **kwargs)["metrics"] == summary["metrics"]
