"""The task library shared by evaluation (phi4r.evals) and training (phi4r.train).

    from phi4r.tasks import get_task
    task = get_task("sat3")
    inst = task.generate(4, seed=0, difficulty=1)[0]
    task.score(inst, task.teacher(inst))  # 1.0

Procedural tasks generate seeded instances and have teachers; `aime`, `math`, `gpqa`, `mmlu_pro`,
`ifeval`, `arenahard` (judged against a baseline's answers) and the code benchmarks (`humaneval`,
`humanevalplus`, `livecodebench`, `codeforces`, graded in phi4r.sandbox) load the published files a
user gives (`task.load(path, limit=None)`).
"""
from __future__ import annotations

from .aime import Aime
from .arenahard import ArenaHard
from .arithmetic import Arithmetic
from .base import MODES, Instance, Judge, Score, Task, approx_tokens, final_text
from .calendar import Calendar
from .code import Codeforces, LiveCodeBench
from .countdown import Countdown
from .flenqa import FlenQA
from .gpqa import Gpqa
from .humaneval import HumanEval, HumanEvalPlus
from .ifeval import IFEval
from .maze import Maze
from .mmlu_pro import MmluPro
from .omnimath import MathTask
from .sat3 import Sat3
from .spatialmap import SpatialMap
from .tsp import Tsp

TASKS: dict[str, Task] = {t.name: t for t in (
    Sat3(), Tsp(), Calendar(), Maze(), SpatialMap(), FlenQA(), Arithmetic(), Countdown(),
    Aime(), MathTask(), Gpqa(), MmluPro(), IFEval(), ArenaHard(),
    HumanEval(), HumanEvalPlus(), LiveCodeBench(), Codeforces(),
)}


def get_task(name: str) -> Task:
    try:
        return TASKS[name]
    except KeyError:
        raise KeyError(f"unknown task {name!r}; known: {', '.join(list_tasks())}") from None


def list_tasks(procedural: bool | None = None) -> list[str]:
    """Task names, optionally only the procedural (or only the file-backed) ones."""
    return sorted(n for n, t in TASKS.items() if procedural is None or t.procedural == procedural)


__all__ = ["MODES", "Instance", "Judge", "Score", "Task", "TASKS", "get_task", "list_tasks", "final_text", "approx_tokens"]
