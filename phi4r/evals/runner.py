"""Run an evaluation: every (instance, run) answered once, scored, logged; then metrics and report.

The sample log in `out_dir` is the state: a run that is interrupted (killed, a failing endpoint,
Ctrl-C) is resumed by calling `run_eval` again with the same settings, which skips the pairs already
scored. A sample the backend could not answer is logged with its error and scored wrong: a refusal
(e.g. a prompt longer than the context) is final, as asking again gets the same answer, while a
transient failure (the server busy or down beyond the retries) is asked again by a resumed run.
`config.json` pins the settings that decide the samples, so a resumed run cannot mix models
or sampling parameters.

Every sample is graded in both scoring modes (tasks/base.py MODES: phi4r's strict verifiers and
Eureka's rules), kept under `modes`; its top-level score, extracted answer and details are those of
the headline mode (`scoring`), which the metrics, the card table and the plots use. The report adds
the other mode wherever the two disagree.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from tqdm import tqdm

from ..tasks import MODES, get_task
from ..tasks.base import Judge
from .backends import Backend, Completion, Job, derive_seed
from .instances import select_instances
from .judge import JudgeError
from .log import SampleLog
from .metrics import breakdown, compare_modes
from .report import write_report

SAMPLES_FILE, CONFIG_FILE = "samples.jsonl", "config.json"


class EvalConfigError(ValueError):
    """`out_dir` holds an evaluation made with different settings."""


def grade_modes(inst, response: str, judge: Judge | None = None) -> dict:
    """{mode: {score, extracted, details}} for every scoring mode."""
    task, out = get_task(inst.task), {}
    for mode in MODES:
        try:
            out[mode] = vars(task.grade(inst, response, mode, judge))
        except JudgeError as e:  # the judge is down: graded without it (`needs_judge`), saying why
            out[mode] = vars(task.grade(inst, response, mode, None))
            out[mode]["details"]["judge_error"] = str(e)
    return out


def score_sample(job: Job, completion: Completion, scoring: str = "strict", judge: Judge | None = None) -> dict:
    inst = job.instance
    if completion.error is not None:
        return {"task": inst.task, "id": inst.id, "run": job.run, "category": inst.category,
                "difficulty": inst.difficulty, "seed": job.seed, "prompt": inst.prompt, "text": None,
                "reasoning": None, "content": None, "response_tokens": None, "reasoning_tokens": None,
                "finish_reason": completion.finish_reason, "extracted": None, "score": 0.0, "details": {},
                "modes": {m: {"score": 0.0, "extracted": None, "details": {}} for m in MODES},
                "error": completion.error, "retry": completion.retry}
    modes = grade_modes(inst, completion.answer_text(), judge)
    result = modes[scoring]
    budget = {} if completion.max_tokens is None else {"max_tokens": completion.max_tokens}
    return {
        "task": inst.task, "id": inst.id, "run": job.run, "category": inst.category, "difficulty": inst.difficulty,
        "seed": job.seed, "prompt": inst.prompt, "prompt_version": get_task(inst.task).prompt_version,
        "text": completion.text if completion.text is not None else completion.answer_text(),
        "reasoning": completion.reasoning, "content": completion.content,
        "response_tokens": completion.response_tokens, "reasoning_tokens": completion.reasoning_tokens,
        "finish_reason": completion.finish_reason,
        "extracted": result["extracted"], "score": result["score"], "details": result["details"],
        "modes": modes, **budget,
    }


def headline(sample: dict, inst, scoring: str) -> dict:
    """The sample with its top-level verdict in the `scoring` mode; a sample logged before modes
    existed is graded again from its logged reasoning and content, as `Completion.answer_text`."""
    if "modes" not in sample:
        graded = ({m: {"score": 0.0, "extracted": None, "details": {}} for m in MODES} if sample.get("error")
                  else grade_modes(inst, Completion(sample.get("reasoning"), sample.get("content"),
                                                    None, None, None).answer_text()))
        sample = {**sample, "modes": graded}
    return {**sample, **sample["modes"][scoring]}


def _check_config(path: Path, config: dict) -> None:
    if path.exists():
        old = json.loads(path.read_text())
        changed = sorted(k for k in config if old.get(k) != config[k])
        if changed:
            raise EvalConfigError(f"{path.parent} holds an evaluation with other settings ({', '.join(changed)} "
                                  f"differ); use another --out directory")
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(config, indent=2) + "\n")


def run_eval(backend: Backend, tasks: list[str], out_dir, *, runs: int = 1, limit: int | None = None,
             seed: int = 0, difficulty: list[int] | None = None, data: dict[str, str] | None = None,
             sampling: dict | None = None, system_prompt: str | None = None, progress: bool = True,
             on_sample: Callable[[dict], None] | None = None, plots: bool = True,
             scoring: str = "strict", judge: Judge | None = None, instances: list | None = None) -> dict:
    """Evaluate `backend` on `tasks`, `runs` samples per instance; returns the summary (report.py).

    `instances` (of `tasks`) are evaluated as given, prompts as written, instead of being selected
    by limit/seed/difficulty/data (a recipe asking the tasks in its own wording).

    `scoring` is the headline mode ("strict" or "eureka"); both are logged and reported. `judge`
    answers Eureka's LLM steps (tasks/base.py Judge); without one they are skipped.

    `sampling` overrides the backend's defaults (keys temperature, top_p, top_k, max_tokens,
    thinking_budget; None keeps the default). `system_prompt` None is the backend's default.
    `on_sample` is called with each sample once it is logged.
    """
    if runs < 1:
        raise ValueError(f"runs must be >= 1, got {runs}")
    if scoring not in MODES:
        raise ValueError(f"unknown scoring mode {scoring!r}; known: {', '.join(MODES)}")
    out = Path(out_dir)
    if instances is None:
        instances = select_instances(tasks, limit=limit, seed=seed, difficulty=difficulty, data=data)
    elif stray := {i.task for i in instances} - set(tasks):
        raise ValueError(f"instances of tasks not evaluated: {', '.join(sorted(stray))}")
    sampling = {**backend.sampling_defaults(), **{k: v for k, v in (sampling or {}).items() if v is not None}}
    system_prompt = backend.system_prompt if system_prompt is None else system_prompt
    # What decides a sample's text: a resumed run must match it exactly.
    _check_config(out / CONFIG_FILE, {"backend": backend.name, "sampling": sampling,
                                      "system_prompt": system_prompt, "seed": seed})

    with SampleLog(out / SAMPLES_FILE) as log:
        # Per-instance seeds are hashes, independent of which other instances are evaluated.
        seeds = {(i.task, i.id): derive_seed(seed, i.task, i.id) for i in instances}
        jobs = [Job(i, r, seeds[i.task, i.id]) for i in instances for r in range(runs) if not log.settled((i.task, i.id, r))]
        total = len(instances) * runs
        with tqdm(total=total, initial=total - len(jobs), desc="eval", unit="sample", disable=not progress) as bar:
            for job, completion in backend.complete(jobs, sampling, system_prompt):
                sample = score_sample(job, completion, scoring, judge)
                log.append(sample)
                bar.update()
                if on_sample is not None:
                    on_sample(sample)
        keys = [(i.task, i.id, r) for i in instances for r in range(runs)]
        missing = [k for k in keys if k not in log]
        if missing:
            raise RuntimeError(f"{backend.name} returned no answer for {len(missing)} samples, e.g. {missing[0]}")
        by_key = {(i.task, i.id): i for i in instances}
        selected = [headline(log.samples[k], by_key[k[:2]], scoring) for k in keys]

    settings = {"backend": backend.name, "tasks": tasks, "runs": runs, "limit": limit, "seed": seed,
                "difficulty": difficulty, "data": data or {}, "sampling": sampling, "system_prompt": system_prompt,
                "scoring": scoring}
    summary = {"settings": settings, "metrics": breakdown(selected, runs), "modes": compare_modes(selected, runs),
               "errors_to_retry": sum(bool(s.get("retry")) for s in selected),
               "first_errors": {}}  # task -> the first error logged, so the report says why
    for s in selected:
        if s.get("error") is not None:
            summary["first_errors"].setdefault(s["task"], f"{s['id']} run {s['run']}: {s['error']}")
    write_report(out, summary, selected, plots=plots)
    return summary
