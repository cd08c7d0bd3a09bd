"""`phi4r eval --suite card`: the model card's results table, for the benchmark files the user has.

The card's benchmarks are its rows (CARD); a benchmark runs when the user gives its file (`--data
KEY=PATH`, or a file of a known name in `--data-dir`) and is skipped otherwise, the card saying
which files it looked for. The suite runs released files only: the procedural tasks (3SAT, TSP,
BA-Calendar, Maze, SpatialMap, FlenQA) read the released sets the card was scored on, never
generated instances. Each benchmark is an ordinary resumable evaluation in `out/<key>/` (its own
samples, report and judge cache); `card.md` and `card.json` put "mean ± std over runs" next to the
numbers the cards publish for Phi-4-reasoning and Phi-4-reasoning-plus (data/card_scores.json).
ArenaHard's cell is its pooled win rate against the baseline (tasks/arenahard.py `win_rate`).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Callable

from ..tasks import get_task
from ..tasks.arenahard import QUESTION_FILE, win_rate
from ..tasks.base import Judge
from ..tasks.external import FORMATS
from .backends import Backend
from .log import SampleLog
from .report import markdown_table
from .runner import SAMPLES_FILE, run_eval

CARD_FILE, CARD_JSON = "card.md", "card.json"


@dataclass(frozen=True)
class Benchmark:
    key: str  # the --data key and the run's subdirectory
    label: str  # as the card names it
    task: str | None  # the phi4r task, None when phi4r has none
    files: tuple[str, ...] = ()  # file stems looked for in --data-dir (each with every known extension)
    paths: tuple[str, ...] = ()  # other paths looked for in --data-dir, as they are
    missing: str = ""  # why a benchmark without a task is not run


# In the order of the card's benchmark list; file names are those of the published releases.
CARD = (
    Benchmark("aime24", "AIME 24", "aime", ("aime24", "aime_2024", "AIME_2024", "aime_2024_problems")),
    Benchmark("aime25", "AIME 25", "aime", ("aime25", "aime_2025", "AIME_2025", "AIME2025")),
    Benchmark("omnimath", "OmniMath", "math", ("omnimath", "omni_math", "Omni-MATH", "omni-math")),
    Benchmark("gpqa", "GPQA-D", "gpqa", ("gpqa_diamond", "gpqa-diamond", "gpqa")),
    Benchmark("livecodebench", "LiveCodeBench (8/1/24-2/1/25)", "livecodebench", ("livecodebench", "lcb")),
    Benchmark("sat3", "3SAT", "sat3", ("sat3", "3sat")),
    Benchmark("tsp", "TSP", "tsp", ("tsp",)),
    Benchmark("calendar", "BA-Calendar", "calendar", ("ba_calendar", "ba-calendar", "calendar")),
    Benchmark("maze", "Maze", "maze", ("maze_text_only", "maze")),
    Benchmark("spatialmap", "SpatialMap", "spatialmap", ("spatial_map_text_only", "spatial_map", "spatialmap")),
    Benchmark("flenqa", "FlenQA [3K-token subset]", "flenqa", ("flenqa_3k", "flenqa")),
    Benchmark("ifeval", "IFEval Strict", "ifeval", ("ifeval", "input_data")),
    Benchmark("arenahard", "ArenaHard", "arenahard",
              paths=tuple(f"{d}/{QUESTION_FILE}" for d in ("arena-hard-v0.1", "arenahard", "arena_hard"))),
    Benchmark("humanevalplus", "HumanEvalPlus", "humanevalplus", ("HumanEvalPlus", "humanevalplus"),
              ("HumanEvalPlus.jsonl.gz",)),
    Benchmark("mmlu_pro", "MMLU-Pro", "mmlu_pro", ("mmlu_pro", "mmlu-pro", "MMLU-Pro")),
    Benchmark("kitab", "Kitab (no-context precision / with-context precision / no-context recall / "
              "with-context recall)", None, missing="phi4r has no Kitab task"),
    Benchmark("toxigen", "Toxigen discriminative (toxic / neutral category)", None, missing="phi4r has no Toxigen task"),
    Benchmark("phibench", "PhiBench 2.21", None, missing="PhiBench is Microsoft's internal benchmark, not released"),
)
BY_KEY = {b.key: b for b in CARD}


def published() -> dict:
    """The cards' numbers: {"models": [...], "benchmarks": {key: {model: number, list or None}}}."""
    return json.loads(resources.files(__package__).joinpath("data/card_scores.json").read_text())


def candidates(bench: Benchmark, data_dir: Path) -> list[Path]:
    return [data_dir / f"{stem}{ext}" for stem in bench.files for ext in FORMATS] + [data_dir / p for p in bench.paths]


def looked_for(bench: Benchmark, data_dir: Path | None) -> str:
    names = [f"{stem}.{{{','.join(ext.lstrip('.') for ext in FORMATS)}}}" for stem in bench.files] + list(bench.paths)
    where = f" in {data_dir}" if data_dir is not None else " (no --data-dir given)"
    return f"looked for {', '.join(names)}{where}, or pass --data {bench.key}=PATH"


def plan(data: dict[str, str], data_dir=None) -> tuple[dict[str, str], dict[str, str]]:
    """({key: file} to run, {key: why skipped}) for every benchmark of the card."""
    unknown = sorted(set(data) - set(BY_KEY))
    if unknown:
        raise ValueError(f"--data {', '.join(unknown)}: not a card benchmark; the card's keys: "
                         f"{', '.join(b.key for b in CARD if b.task)}")
    data_dir = None if data_dir is None else Path(data_dir)
    if data_dir is not None and not data_dir.is_dir():
        raise ValueError(f"--data-dir {data_dir}: no such directory")
    run, skipped = {}, {}
    for bench in CARD:
        if bench.task is None:
            skipped[bench.key] = bench.missing
        elif bench.key in data:
            run[bench.key] = data[bench.key]
        else:
            found = next((p for p in candidates(bench, data_dir) if p.is_file()), None) if data_dir else None
            if found is not None:
                run[bench.key] = str(found)
            else:
                released = (" (the card suite runs released files only; `phi4r eval --tasks "
                            f"{bench.task}` runs generated instances)") if get_task(bench.task).procedural else ""
                skipped[bench.key] = f"no file: {looked_for(bench, data_dir)}{released}"
    return run, skipped


def run_card(make_backend: Callable[[], Backend], out_dir, *, data: dict[str, str] | None = None, data_dir=None,
             runs: int = 1, limit: int | None = None, seed: int = 0, sampling: dict | None = None,
             system_prompt: str | None = None, scoring: str = "eureka", progress: bool = True, plots: bool = True,
             make_judge: Callable[[Path], Judge] | None = None) -> dict:
    """Run every card benchmark the user has a file for; writes and returns card.json's content.

    `make_backend` is called once, after every file has loaded (a bad file fails before a model is
    loaded). `make_judge(cache_path)` gives each benchmark its judge; without one, ArenaHard (judged
    only) is skipped and the other judge steps are left undecided (`needs_judge`)."""
    out = Path(out_dir)
    todo, skipped = plan(data or {}, data_dir)
    if "arenahard" in todo and make_judge is None:
        skipped["arenahard"] = f"{todo.pop('arenahard')}: ArenaHard is judged: give --judge-endpoint and --judge-model"
    for key, path in todo.items():
        try:
            get_task(BY_KEY[key].task).load(path, limit)
        except (ValueError, KeyError, TypeError, OSError, ImportError) as e:
            raise ValueError(f"{BY_KEY[key].label} ({key}={path}): {e}") from None
    if not todo:
        raise ValueError("no card benchmark has a file:\n"
                         + "\n".join(f"  {BY_KEY[k].label}: {why}" for k, why in skipped.items()))

    backend = make_backend()
    results = {}
    for key, path in todo.items():
        bench = BY_KEY[key]
        if progress:
            print(f"card: {bench.label} ({path})", flush=True)
        judge = None if make_judge is None else make_judge(out / key / "judge_cache.jsonl")
        try:
            summary = run_eval(backend, [bench.task], out / key, runs=runs, limit=limit, seed=seed,
                               data={bench.task: path}, sampling=sampling, system_prompt=system_prompt,
                               progress=progress, plots=plots, scoring=scoring, judge=judge)
        finally:
            if judge is not None and hasattr(judge, "close"):
                judge.close()
        results[key] = _result(bench, path, summary, out / key)
    card = {"settings": {"backend": getattr(backend, "name", "?"), "runs": runs, "limit": limit, "seed": seed,
                         "scoring": scoring, "sampling": summary["settings"]["sampling"],
                         "data_dir": None if data_dir is None else str(data_dir)},
            "models": published()["models"], "rows": []}
    scores = published()["benchmarks"]
    for bench in CARD:
        row = {"key": bench.key, "benchmark": bench.label, "task": bench.task, "published": scores[bench.key]}
        row.update({"status": "ran", **results[bench.key]} if bench.key in results
                   else {"status": "skipped", "reason": skipped[bench.key]})
        card["rows"].append(row)
    (out / CARD_JSON).write_text(json.dumps(card, indent=2) + "\n")
    (out / CARD_FILE).write_text(render(card))
    return card


def _result(bench: Benchmark, path: str, summary: dict, run_dir: Path) -> dict:
    """This run's cell: mean and std over runs in percent, both scoring modes, the instance count."""
    task = bench.task
    metrics = summary["metrics"]["by_task"][task]
    modes = summary["modes"][task]["by_mode"]
    result = {"file": path, "report": f"{bench.key}/report.md", "instances": metrics["instances"],
              "mean": _percent(metrics["mean"]), "std": _percent(metrics["std"]), "errors": metrics["errors"],
              "modes": {m: {"mean": _percent(v["mean"]), "std": _percent(v["std"])} for m, v in modes.items()}}
    if task == "arenahard":  # the pooled win rate, as arena-hard-auto scores it
        with SampleLog(run_dir / SAMPLES_FILE) as log:
            rate = win_rate(list(log.samples.values()))
        baselines = sorted({i.answer["baseline_model"] for i in get_task(task).load(path, summary["settings"]["limit"])})
        result.update(mean=_percent(rate["mean"]), std=_percent(rate["std"]), battles=rate["battles"],
                      verdict_errors=rate["verdict_errors"], unjudged=rate["unjudged"], baseline=", ".join(baselines),
                      modes={m: {"mean": result["mean"], "std": result["std"]} for m in modes})
    return result


def _percent(value):
    return None if value is None else round(100 * value, 4)


def _pm(mean, std) -> str:
    if mean is None:
        return "-"
    return f"{mean:.1f}" + (f" ± {std:.1f}" if std is not None else "")


def _cell(value) -> str:
    if value is None:
        return "—"
    if isinstance(value, list):
        return " / ".join(f"{v:.1f}" for v in value)
    return f"{value:.1f}"


def table(card: dict) -> str:
    """The card's table: a benchmark per row; this run in both scoring modes, then the cards' numbers."""
    s, models = card["settings"], card["models"]
    headline = s["scoring"]
    other = "strict" if headline == "eureka" else "eureka"
    runs = f"mean ± std over {s['runs']} runs" if s["runs"] > 1 else "1 run"
    header = ["benchmark", f"this run ({headline} scoring, {runs})", f"this run ({other} scoring)", *models]
    rows = []
    for row in card["rows"]:
        if row["status"] == "ran":
            this, m = _pm(row["mean"], row["std"]), row["modes"].get(other, {})
            alt = _pm(m.get("mean"), m.get("std"))
        else:
            this = alt = "skipped"
        rows.append([row["benchmark"], this, alt, *(_cell(row["published"][m]) for m in models)])
    return markdown_table(header, rows)


def render(card: dict) -> str:
    s = card["settings"]
    sampling = ", ".join(f"{k}={v}" for k, v in s["sampling"].items()) or "-"
    parts = [f"# The card's benchmarks: {s['backend']}",
             f"runs: {s['runs']}; limit: {s['limit']}; seed: {s['seed']}; scoring: {s['scoring']}; sampling: {sampling}. "
             f"Published columns: the model cards (— where the card names the benchmark without a number). "
             f"Only released files are run; nothing is generated.",
             table(card)]
    ran = [r for r in card["rows"] if r["status"] == "ran"]
    parts.append("Ran:\n" + "\n".join(f"- {r['benchmark']}: {r['instances']} instance{'s' * (r['instances'] != 1)} from {r['file']}; report "
                                      f"{r['report']}" + (f"; {r['errors']} samples got no answer" if r["errors"] else "")
                                      for r in ran))
    skipped = [r for r in card["rows"] if r["status"] == "skipped"]
    if skipped:
        parts.append("Skipped:\n" + "\n".join(f"- {r['benchmark']}: {r['reason']}" for r in skipped))
    arena = next((r for r in ran if r["task"] == "arenahard"), None)
    if arena is not None:
        parts.append(f"ArenaHard: the win rate against {arena['baseline']} over {arena['battles']} weighted battles "
                     f"(each question judged in both orders, strong verdicts counting 3); with one baseline this equals "
                     f"the Bradley-Terry score arena-hard-auto reports. Malformed verdicts: {arena['verdict_errors']}; "
                     f"answers left unjudged (the judge failing): {arena['unjudged']}.")
    return "\n\n".join(parts) + "\n"
